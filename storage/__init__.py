"""SQLite storage for wflogs: migrations and the queries the bot needs."""

from storage.db import Store, open_db
from storage.errors import STORAGE_ERRORS, StorageError, describe
from storage.watch import WatchStore

__all__ = ["STORAGE_ERRORS", "StorageError", "Store", "WatchStore", "describe", "open_db"]
