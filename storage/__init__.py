"""SQLite storage for wflogs: migrations and the queries the bot needs."""

from storage.db import Store, open_db
from storage.errors import STORAGE_ERRORS, StorageError, describe

__all__ = ["STORAGE_ERRORS", "StorageError", "Store", "describe", "open_db"]
