"""SQLite storage for wflogs: migrations and the queries the bot needs."""

from storage.db import Store, open_db

__all__ = ["Store", "open_db"]
