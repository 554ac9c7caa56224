"""What can go wrong with the database file, said so that a person can fix it.

SQLite's own messages ("unable to open database file", "attempt to write a
readonly database") name neither the file nor the fix. :func:`describe` turns
an ``sqlite3`` or ``OSError`` into a :class:`StorageError` with both.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path


class StorageError(Exception):
    """The database cannot be used; ``problem`` says why, ``fix`` what to do."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


def precheck(path: str) -> None:
    """Refuse a path that cannot hold the database before SQLite gives a vaguer answer."""
    if path == ":memory:":
        return
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise StorageError(path, "is a directory", f"give a file path instead, e.g. {target / 'wflogs.db'}")
    if not parent.exists():
        raise StorageError(
            path, f"the directory {parent} does not exist", "create it or choose a path in an existing one"
        )
    if not parent.is_dir():
        raise StorageError(path, f"{parent} is not a directory", "choose a path in a directory")
    if target.exists():
        with target.open("rb") as fh:
            head = fh.read(16)
        if head and not head.startswith(b"SQLite format 3\x00"):
            raise StorageError(
                path,
                "is not an SQLite database (some other file is there)",
                "move that file away or choose another path",
            )


def describe(path: str, exc: BaseException) -> StorageError:
    """The :class:`StorageError` for an error SQLite or the OS raised while using ``path``."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc).lower()
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    where = Path(path).parent if path != ":memory:" else Path(".")
    if "full" in text or name == "SQLITE_FULL" or getattr(exc, "errno", None) == 28:
        return StorageError(path, "the disk is full", f"free space on the disk holding {where}")
    if "locked" in text or "busy" in text or name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StorageError(
            path,
            "is locked by another program",
            "stop whatever holds it (an sqlite3 shell, a backup, a second copy of wflogs on another host)",
        )
    if (
        path != ":memory:"
        and _read_only(where)
        and (
            "readonly" in text
            or "read-only" in text
            or "permission" in text
            or "unable to open" in text
            or name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN"))
            or getattr(exc, "errno", None) == errno.EROFS
        )
    ):
        # Not a matter of permissions: no user may write there.
        return StorageError(
            path,
            f"{where} is on a read-only file system",
            "mount it read-write (in a container: a writable volume) or choose a path on a writable disk",
        )
    if (
        "readonly" in text
        or "read-only" in text
        or "permission" in text
        or name.startswith("SQLITE_READONLY")
    ):
        return StorageError(
            path,
            "cannot be written (permission denied)",
            f"let the user running wflogs write the file and its directory {where}",
        )
    if "not a database" in text or "malformed" in text or name in {"SQLITE_NOTADB", "SQLITE_CORRUPT"}:
        return StorageError(
            path,
            "is not a usable SQLite database (another kind of file, or damaged)",
            "move it away (wflogs starts a new one) or restore a backup",
        )
    if "unable to open" in text or name.startswith("SQLITE_CANTOPEN"):
        if path != ":memory:" and not os.access(where, os.W_OK):
            return StorageError(
                path,
                "cannot be created or opened (permission denied)",
                f"let the user running wflogs write the directory {where}",
            )
        return StorageError(path, "cannot be opened", "check that the path and its directory are usable")
    if isinstance(exc, OSError):
        return StorageError(
            path, f"cannot be used ({exc.strerror or exc})", "check the path and its directory"
        )
    if "disk i/o" in text or name.startswith("SQLITE_IOERR"):
        return StorageError(path, "a disk error occurred", "check the disk and the file system")
    return StorageError(path, f"cannot be used ({exc})", "check the file, its directory and the disk")


def _read_only(where: Path) -> bool:
    """Whether ``where`` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        return False


STORAGE_ERRORS = (sqlite3.Error, OSError, StorageError)
