"""SQLite storage for wflogs: migrations and the queries the bot needs."""

from storage.db import Store, open_db
from storage.watch import WatchStore

__all__ = ["Store", "WatchStore", "open_db"]
