"""SQLite through sqlite-utils: the schema (as migrations) and every query the bot runs.

Tables:

- ``app_state``: per app, how far its logs are known to be read (``checked_until``),
  the earliest end time that is alerted (``alert_from``), and its last error.
- ``seen``: every failed/stopped/partial log the poller has read inside the
  look-back window, alerted or not; pruned once it falls out of every window.
- ``alerts``: the outbox. One row per alerted run, written in the same
  transaction as ``seen``; ``sent_at`` is set only after Slack took it. A log
  already alerted (or seen) under another identity of the same app (a new key,
  the URL written differently) is not enqueued again: log ids are UUIDs.
- ``messages``: Slack messages planned from alerts (a single alert, a group, a
  summary) and, once posted, their ``ts`` so that thread replies follow.
- ``digests``: every daily digest posted, per app: its local day, window, ``ts``,
  headline figures (runs, failed, stopped: the chart's 14 days) and the error shapes it saw
  (for "new" errors next time).
  At most one ``scheduled`` digest per app and day (a unique index).
- ``digest_apps``: when the digest scheduler first saw each app, so that a fresh
  install does not post a late digest for a day before it ran.
- ``notices``: what the operator has been told once (a refused CSV upload, a refused message).
- ``incidents``, ``incident_sessions``, ``mutes``, ``incident_events``: see
  ``storage/incidents.py``; ``alerts.incident_id`` and ``messages.incident_id`` tie
  runs and messages to their incident, ``alerts.muted`` marks runs recorded but not posted.
- ``lease``: which of several ``wflogs run`` sharing this file is the active one
  (one row: owner and expiry, taken and renewed in a transaction).

This module never imports ``bot``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from storage.errors import STORAGE_ERRORS, describe, precheck

migrations = Migrations("wflogs")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["app_state"].create(  # type: ignore[union-attr]
        {
            "app_id": str,
            "name": str,
            "checked_until": int,
            "alert_from": int,
            "first_polled": int,
            "last_ok": int,
            "last_error": str,
            "dify_version": str,
        },
        pk="app_id",
    )
    db["seen"].create(  # type: ignore[union-attr]
        {"app_id": str, "log_id": str, "status": str, "created_at": int, "alerted": int},
        pk=("app_id", "log_id"),
    )
    db["seen"].create_index(["app_id", "status", "created_at"])  # type: ignore[union-attr]
    db["messages"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "channel": str,
            "kind": str,
            "parent_ts": str,
            "created_at": int,
            "done": int,
            "last_error": str,
        },
        pk="id",
    )
    db["messages"].create_index(["channel", "done"])  # type: ignore[union-attr]
    db["alerts"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "app_id": str,
            "log_id": str,
            "channel": str,
            "status": str,
            "group_key": str,
            "entry": str,
            "app_name": str,
            "console_url": str,
            "enqueued_at": int,
            "message_id": int,
            "sent_at": int,
        },
        pk="id",
    )
    db["alerts"].create_index(["app_id", "log_id"], unique=True)  # type: ignore[union-attr]
    db["alerts"].create_index(["channel", "message_id", "sent_at"])  # type: ignore[union-attr]


@migrations()
def m002_digest(db: sqlite_utils.Database) -> None:
    db["digests"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "app_id": str,
            "day": str,
            "kind": str,
            "scheduled_at": int,
            "window_start": int,
            "window_end": int,
            "channel": str,
            "ts": str,
            "posted_at": int,
            "late": int,
            "ok": int,
            "runs": int,
            "failed": int,
            "shapes": str,
        },
        pk="id",
    )
    db.execute("create unique index digests_scheduled_once on digests (app_id, day) where kind = 'scheduled'")
    db["digests"].create_index(["app_id", "window_end"])  # type: ignore[union-attr]
    db["digest_apps"].create({"app_id": str, "first_seen": int}, pk="app_id")  # type: ignore[union-attr]


def open_db(path: str, *, timeout: float = 30.0) -> sqlite_utils.Database:
    """Open (creating if needed) the database at ``path``, apply pending migrations and make sure it
    can be written; raises :class:`StorageError` naming the problem and the fix."""
    if path == ":memory:":
        db = sqlite_utils.Database(memory=True)
        migrations.apply(db)
        return db
    precheck(path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _open_once(path, timeout)
        except sqlite3.OperationalError as exc:
            # Processes starting together on one file: switching it to WAL and the first reads
            # after the switch can be refused at once ("database is locked") without SQLite's busy
            # wait; a moment later they succeed. Only a lock held for the whole timeout is an error.
            if not _busy(exc) or time.monotonic() >= deadline:
                raise describe(path, exc) from None
            time.sleep(0.05)
        except STORAGE_ERRORS as exc:
            raise describe(path, exc) from None


def _busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _open_once(path: str, timeout: float) -> sqlite_utils.Database:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=timeout)
    try:
        db = sqlite_utils.Database(conn)
        with db.ensure_autocommit_on():
            # Two processes starting on a new file at once (a standby and its twin): the write lock
            # first, so the second waits for the first instead of failing half-way.
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
            db.execute("PRAGMA journal_mode=WAL")
        migrate(db)
        probe_write(db)
    except BaseException:
        conn.close()
        raise
    return db


def migrate(db: sqlite_utils.Database) -> None:
    """Apply pending migrations under the write lock, all or none: processes that start together
    on one file apply them once, one after the other (each migration is a savepoint)."""
    with db.ensure_autocommit_on():
        db.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
        except BaseException:
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def probe_write(db: sqlite_utils.Database) -> None:
    """Write a page and roll it back: fails at once when the file cannot be written (SQLite opens a
    read-only file read-only and takes the write lock all the same; only a real write fails)."""
    with db.ensure_autocommit_on():
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE _wflogs_write_probe (x)")
        finally:
            db.execute("ROLLBACK")


class Store:
    """The bot's queries, safe to call from several threads (one lock, one connection)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._lock = threading.RLock()
        # Writes SQLite refused (full, locked, read-only), counted even when a caller handles the
        # error, so that the process can tell its database is failing.
        self.write_failures = 0
        self.last_write_error: sqlite3.Error | None = None

    @classmethod
    def open(cls, path: str, *, timeout: float = 30.0) -> Store:
        """Open the database at ``path``, migrated; raises :class:`StorageError` when it is unusable."""
        if path == ":memory:":
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            db = sqlite_utils.Database(conn)
            migrations.apply(db)
            return cls(db)
        return cls(open_db(path, timeout=timeout))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit: all of it is written, or none.

        The outermost one takes SQLite's write lock at once (``BEGIN IMMEDIATE``): another process
        on this file (a standby answering a click) then waits for it rather than failing half-way
        when a read turns into a write. Nested ones are savepoints."""
        with self._lock, self._noting_failures():
            conn = self.db.conn
            if conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _noting_failures(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            # The file or the disk (locked, full, read-only, damaged), not a constraint or a bug.
            if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                self.write_failures += 1
                self.last_write_error = exc
            raise

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read query, as dicts."""
        with self._lock:
            return list(self.db.query(sql, params))  # type: ignore[arg-type]

    def execute(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> None:
        """Run one write statement (in a transaction when there is one)."""
        with self._lock, self._noting_failures():
            self.db.execute(sql, params)  # type: ignore[arg-type]

    # -- app state -------------------------------------------------------------

    def app_state(self, app_id: str) -> dict[str, Any] | None:
        """The stored state of one app, or None before its first poll."""
        rows = self.query("select * from app_state where app_id = ?", [app_id])
        return rows[0] if rows else None

    def update_app_state(self, app_id: str, **fields: Any) -> None:
        """Create or update an app's state row."""
        with self.transaction():
            self.db["app_state"].upsert({"app_id": app_id, **fields}, pk="app_id")  # type: ignore[union-attr]

    def orphan_identities(self, configured: Iterable[str], limit: int = 3) -> list[dict[str, Any]]:
        """App states read before but no longer configured (a replaced key or URL), newest first."""
        ids = list(configured)
        marks = ",".join("?" * len(ids)) or "''"
        return self.query(
            f"select * from app_state where checked_until is not null and app_id not in ({marks}) "
            "order by coalesce(last_ok, checked_until) desc limit ?",
            [*ids, limit],
        )

    def recent_alerted_run_ids(self, app_id: str, limit: int = 1) -> list[str]:
        """Run ids of the app's most recent alerts (still in the outbox), newest first."""
        out = []
        for row in self.query(
            "select entry from alerts where app_id = ? order by id desc limit ?", [app_id, limit * 5]
        ):
            run_id = (json.loads(row["entry"]) if row.get("entry") else {}).get("run_id")
            if run_id and run_id not in out:
                out.append(run_id)
        return out[:limit]

    def alerted_entries(self, app_id: str, log_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored entries (error, session, ...) of those of ``log_ids`` that were alerted;
        delivered alerts are kept a week."""
        ids = list(log_ids)
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"select log_id, entry from alerts where app_id = ? and log_id in ({marks})", [app_id, *chunk]
            ):
                if row.get("entry"):
                    out[str(row["log_id"])] = json.loads(row["entry"])
        return out

    def adopt_identity(self, old_id: str, new_id: str) -> dict[str, Any]:
        """``new_id`` takes over ``old_id``'s cursor and what it has seen; returns the new state."""
        with self.transaction():
            old = self.app_state(old_id) or {}
            keep = {k: old.get(k) for k in ("checked_until", "alert_from", "first_polled", "name")}
            self.db["app_state"].upsert(  # type: ignore[union-attr]
                {"app_id": new_id, **{k: v for k, v in keep.items() if v is not None}}, pk="app_id"
            )
            self.db.execute("update or ignore seen set app_id = ? where app_id = ?", [new_id, old_id])
            self.db.execute("delete from seen where app_id = ?", [old_id])
            self.db.execute("delete from app_state where app_id = ?", [old_id])
        return self.app_state(new_id) or {}

    # -- what the poller has seen ----------------------------------------------

    def known_statuses(self, app_id: str, log_ids: Iterable[str]) -> dict[str, str]:
        """For the given log ids, the status each was last seen with."""
        ids = list(log_ids)
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"select log_id, status from seen where app_id = ? and log_id in ({marks})",
                [app_id, *chunk],
            ):
                out[row["log_id"]] = row["status"]
        return out

    def record_seen(
        self,
        app_id: str,
        seen: list[dict[str, Any]],
        alerts: list[dict[str, Any]],
        status_changes: dict[str, str],
    ) -> int:
        """Atomically remember logs and enqueue their alerts; returns alerts enqueued.

        ``seen`` rows: ``log_id, status, created_at, alerted``. ``alerts`` rows
        carry the outbox columns. A log already in the outbox is not enqueued again.
        """
        with self.transaction():
            if seen:
                self.db["seen"].insert_all(  # type: ignore[union-attr]
                    [{"app_id": app_id, **row} for row in seen], pk=("app_id", "log_id"), ignore=True
                )
            for log_id, status in status_changes.items():
                self.db.execute(
                    "update seen set status = ? where app_id = ? and log_id = ?",
                    [status, app_id, log_id],
                )
            if alerts:
                # Log ids are UUIDs: one alerted, or seen, under another identity of the same app
                # (a new key, the URL spelled differently) is not alerted again.
                taken = self._taken_elsewhere(app_id, [row["log_id"] for row in alerts])
                alerts = [row for row in alerts if row["log_id"] not in taken]
            before = self.db.conn.total_changes
            if alerts:
                self.db["alerts"].insert_all(  # type: ignore[union-attr]
                    [{"app_id": app_id, **row} for row in alerts], ignore=True
                )
            return self.db.conn.total_changes - before

    def _taken_elsewhere(self, app_id: str, log_ids: list[str]) -> set[str]:
        taken: set[str] = set()
        for start in range(0, len(log_ids), 500):
            chunk = log_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.query(
                f"select log_id from alerts where log_id in ({marks}) and app_id != ? "
                f"union select log_id from seen where log_id in ({marks}) and app_id != ?",
                [*chunk, app_id, *chunk, app_id],
            )
            taken.update(row["log_id"] for row in rows)
        return taken

    def follow_long_runs(self, app_id: str, runs: list[dict[str, Any]], checked_until: int) -> None:
        """Remember runs still going as they leave the look-back window, and how far that was
        looked at, atomically."""
        with self.transaction():
            for run in runs:
                self.db.execute(
                    "insert or ignore into long_runs (app_id, log_id, run_id, status, started_at, found_at, "
                    "next_check, entry) values (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        app_id,
                        run["log_id"],
                        run["run_id"],
                        run["status"],
                        run["started_at"],
                        run["found_at"],
                        run["next_check"],
                        json.dumps(run["entry"]),
                    ],
                )
            self.db["app_state"].upsert(  # type: ignore[union-attr]
                {"app_id": app_id, "long_checked_until": checked_until}, pk="app_id"
            )

    def long_runs_due(self, app_id: str, now: int, limit: int) -> list[dict[str, Any]]:
        """Followed runs whose next look is due, most overdue first."""
        rows = self.query(
            "select * from long_runs where app_id = ? and next_check <= ? order by next_check limit ?",
            [app_id, now, limit],
        )
        return [_alert(row) for row in rows]

    def stuck_next_check(self, app_id: str, log_id: str) -> int | None:
        """When the stuck-run watch looks at this run next, while it follows it as still running."""
        rows = self.query(
            "select next_check from stuck_runs where app_id = ? and log_id = ? and ended_at is null",
            [app_id, log_id],
        )
        return int(rows[0]["next_check"]) if rows else None

    def long_run_checked(self, app_id: str, log_id: str, next_check: int) -> None:
        """A followed run is still going: look again at ``next_check``."""
        self.execute(
            "update long_runs set next_check = ? where app_id = ? and log_id = ?",
            [next_check, app_id, log_id],
        )

    def long_run_ended(self, app_id: str, log_id: str) -> None:
        """A followed run ended (its failure, if any, is in the outbox) or is gone."""
        self.execute("delete from long_runs where app_id = ? and log_id = ?", [app_id, log_id])

    def long_runs_count(self, app_id: str) -> int:
        """Runs of the app followed past the look-back window."""
        return int(self.query("select count(*) as n from long_runs where app_id = ?", [app_id])[0]["n"])

    def prune_seen(self, app_id: str, older_than: int) -> None:
        """Forget logs that no future window will read again."""
        self.execute("delete from seen where app_id = ? and created_at < ?", [app_id, older_than])

    # -- the outbox -------------------------------------------------------------

    def unplanned_alerts(self, channel: str) -> list[dict[str, Any]]:
        """Alerts for ``channel`` not yet part of a message, oldest first."""
        return [
            _alert(row)
            for row in self.query(
                "select * from alerts where channel = ? and message_id is null order by id",
                [channel],
            )
        ]

    def pending_channels(self) -> list[str]:
        """Channels with alerts that are not yet delivered."""
        rows = self.query("select distinct channel from alerts where sent_at is null order by channel")
        return [row["channel"] for row in rows]

    def plan_message(
        self, channel: str, kind: str, alert_ids: list[int], now: int, *, incident_id: int | None = None
    ) -> int:
        """Create a message for ``alert_ids`` (of an incident) and assign them to it; returns its id."""
        with self.transaction():
            cursor = self.db.execute(
                "insert into messages (channel, kind, created_at, done, incident_id) values (?, ?, ?, 0, ?)",
                [channel, kind, now, incident_id],
            )
            message_id = int(cursor.lastrowid or 0)
            for start in range(0, len(alert_ids), 500):
                chunk = alert_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self.db.execute(
                    f"update alerts set message_id = ? where id in ({marks}) and message_id is null",
                    [message_id, *chunk],
                )
            return message_id

    def open_messages(self, channel: str) -> list[dict[str, Any]]:
        """Planned messages of ``channel`` not completely delivered, in order."""
        return self.query("select * from messages where channel = ? and done = 0 order by id", [channel])

    def message_alerts(self, message_id: int) -> list[dict[str, Any]]:
        """Every alert of a message, in order."""
        return [
            _alert(row)
            for row in self.query("select * from alerts where message_id = ? order by id", [message_id])
        ]

    def mark_posted(
        self, message_id: int, alert_ids: list[int], now: int, *, parent_ts: str | None = None
    ) -> None:
        """Record that Slack took a post carrying ``alert_ids`` (and the parent's ts)."""
        with self.transaction():
            if parent_ts is not None:
                self.db.execute(
                    "update messages set parent_ts = ?, last_error = null where id = ?",
                    [parent_ts, message_id],
                )
            for start in range(0, len(alert_ids), 500):
                chunk = alert_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self.db.execute(
                    f"update alerts set sent_at = ? where id in ({marks}) and sent_at is null",
                    [now, *chunk],
                )

    def finish_message(self, message_id: int) -> None:
        """Mark a message completely delivered."""
        self.execute("update messages set done = 1 where id = ?", [message_id])

    def message_error(self, message_id: int, error: str) -> None:
        """Remember why a message could not be delivered yet."""
        self.execute("update messages set last_error = ? where id = ?", [error, message_id])

    def outbox_size(self) -> int:
        """Alerts waiting for Slack."""
        return int(self.query("select count(*) as n from alerts where sent_at is null")[0]["n"])

    def prune_outbox(self, older_than: int) -> None:
        """Drop delivered alerts and finished messages older than ``older_than``."""
        with self.transaction():
            self.db.execute("delete from alerts where sent_at is not null and sent_at < ?", [older_than])
            self.db.execute(
                "delete from messages where done = 1 and created_at < ? and id not in "
                "(select message_id from alerts where message_id is not null)",
                [older_than],
            )

    # -- daily digests ----------------------------------------------------------

    def digest_first_seen(self, app_id: str, default: int) -> int:
        """When the digest scheduler first saw ``app_id``; records ``default`` the first time."""
        with self.transaction():
            self.db.execute(
                "insert or ignore into digest_apps (app_id, first_seen) values (?, ?)", [app_id, default]
            )
            rows = list(self.db.query("select first_seen from digest_apps where app_id = ?", [app_id]))
        return int(rows[0]["first_seen"])

    def digest_posted(self, app_id: str, day: str) -> bool:
        """Whether the scheduled digest of ``app_id`` for local date ``day`` was posted."""
        rows = self.query(
            "select 1 from digests where app_id = ? and day = ? and kind = 'scheduled'", [app_id, day]
        )
        return bool(rows)

    def record_digest(self, row: dict[str, Any]) -> int | None:
        """Remember a digest (planned for Slack in the same transaction by the caller); returns its
        id, or None when that app's scheduled digest of the day was already there.

        ``row`` carries the ``digests`` columns; ``shapes`` is a list of error shapes.
        """
        data = dict(row)
        data["shapes"] = json.dumps(list(data.get("shapes") or []))
        columns = ", ".join(data)
        marks = ", ".join("?" * len(data))
        with self.transaction():
            before = self.db.conn.total_changes
            sql = f"insert or ignore into digests ({columns}) values ({marks})"
            cursor = self.db.execute(sql, list(data.values()))
            return int(cursor.lastrowid or 0) if self.db.conn.total_changes > before else None

    def digest_sent(self, digest_id: int, ts: str | None, now: int) -> None:
        """A planned digest reached Slack: its message and when."""
        self.execute("update digests set ts = ? where id = ?", [ts, digest_id])

    def recent_digests(self, app_id: str, before: int, limit: int = 7) -> list[dict[str, Any]]:
        """The app's digests whose window ended before ``before``, newest first, shapes decoded."""
        rows = self.query(
            "select * from digests where app_id = ? and window_end < ? order by window_end desc, id desc "
            "limit ?",
            [app_id, before, limit],
        )
        for row in rows:
            row["shapes"] = json.loads(row["shapes"]) if row.get("shapes") else []
        return rows

    def digest_days(self, app_id: str, since: int, before: int) -> list[dict[str, Any]]:
        """The app's digests that read Dify (scheduled, and ``--now`` ones for a cron-driven
        install), with a window ending in ``[since, before)``, oldest first: their kind, window
        and counts (the history the digest's chart draws)."""
        return self.query(
            "select kind, day, window_start, window_end, runs, failed, stopped from digests "
            "where app_id = ? and ok = 1 and window_end >= ? and window_end < ? "
            "order by window_end, id",
            [app_id, since, before],
        )

    # -- delivery upkeep ------------------------------------------------------------

    def release_unposted(self, channel: str) -> int:
        """Dissolve the channel's planned messages that never reached Slack, so that their alerts
        are planned again together with what is pending; returns how many were dissolved."""
        with self.transaction():
            rows = list(
                self.db.query(
                    "select id from messages where channel = ? and done = 0 and parent_ts is null "
                    "and not exists (select 1 from alerts "
                    "where alerts.message_id = messages.id and alerts.sent_at is not null)",
                    [channel],
                )
            )
            ids = [int(r["id"]) for r in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self.db.execute(f"update alerts set message_id = null where message_id in ({marks})", chunk)
                self.db.execute(f"delete from messages where id in ({marks})", chunk)
            return len(ids)

    def rebind_channels(self, channels: dict[str, str]) -> int:
        """Move the unsent alerts of each app (``app_id -> channel``) to its current channel,
        out of messages planned for the old one; returns how many alerts moved."""
        moved = 0
        with self.transaction():
            for app_id, channel in channels.items():
                before = self.db.conn.total_changes
                # A subscribed channel's alerts stay where they are; only the configured route moves.
                self.db.execute(
                    "update or ignore alerts set channel = ?, message_id = null, incident_id = null "
                    "where app_id = ? and sent_at is null and channel != ? and coalesce(subscription, 0) = 0",
                    [channel, app_id, channel],
                )
                # Left behind: runs the new channel already has through its subscription.
                self.db.execute(
                    "delete from alerts where app_id = ? and sent_at is null and channel != ? "
                    "and coalesce(subscription, 0) = 0",
                    [app_id, channel],
                )
                moved += self.db.conn.total_changes - before
            if moved:
                # Messages left with nothing to send are complete; unposted empty ones go.
                self.db.execute(
                    "delete from messages where done = 0 and parent_ts is null and not exists "
                    "(select 1 from alerts where alerts.message_id = messages.id)"
                )
                self.db.execute(
                    "update messages set done = 1 where done = 0 and not exists "
                    "(select 1 from alerts where alerts.message_id = messages.id and alerts.sent_at is null)"
                )
        return moved

    def tell_once(self, key: str, text: str, now: int) -> bool:
        """Record that the operator was told ``key``; True only the first time."""
        with self.transaction():
            before = self.db.conn.total_changes
            self.db.execute(
                "insert or ignore into notices (key, told_at, text) values (?, ?, ?)", [key, now, text]
            )
            return self.db.conn.total_changes > before


def _alert(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["entry"] = json.loads(row["entry"]) if row.get("entry") else {}
    return row


@migrations()
def m003_health(db: sqlite_utils.Database) -> None:
    """Per app: since when polling fails, and whether the channel was told."""
    table = db["app_state"]
    table.add_column("failing_since", int)  # type: ignore[union-attr]
    table.add_column("health_notice", int)  # type: ignore[union-attr]


@migrations()
def m005_lease(db: sqlite_utils.Database) -> None:
    """Who the active instance is: one row per lease name, with its owner, expiry (epoch seconds)
    and the apps it watches (a JSON list of app ids, so a standby can tell when configs differ)."""
    db["lease"].create(  # type: ignore[union-attr]
        {
            "name": str,
            "owner": str,
            "expires_at": float,
            "acquired_at": float,
            "renewed_at": float,
            "apps": str,
        },
        pk="name",
    )


# -- operations: the lease, health figures ------------------------------------------------------


def claim_lease(
    store: Store, name: str, owner: str, now: float, ttl: float, apps: str = "[]"
) -> dict[str, Any]:
    """Take the lease ``name`` for ``owner`` when it is free, expired or already ``owner``'s, and
    renew it until ``now + ttl`` (noting the ``apps`` it watches); returns the row as it stands
    (whoever holds it), in one transaction."""
    with store.transaction():
        # The epoch (a fencing token) grows whenever the lease changes hands, so a holder that was
        # paused past its expiry can tell, before and after each Slack write, that it lost it.
        store.db.execute(
            "insert into lease (name, owner, expires_at, acquired_at, renewed_at, apps, epoch) "
            "values (?, ?, ?, ?, ?, ?, 1) "
            "on conflict(name) do update set owner = excluded.owner, expires_at = excluded.expires_at, "
            "renewed_at = excluded.renewed_at, apps = excluded.apps, acquired_at = case "
            "when lease.owner = excluded.owner then lease.acquired_at else excluded.acquired_at end, "
            "epoch = case when lease.owner = excluded.owner then coalesce(lease.epoch, 1) "
            "else coalesce(lease.epoch, 0) + 1 end "
            "where lease.owner = excluded.owner or lease.expires_at <= excluded.renewed_at",
            [name, owner, now + ttl, now, now, apps],
        )
        rows = list(store.db.query("select * from lease where name = ?", [name]))
    return rows[0]


def fence_holds(store: Store, name: str, owner: str, epoch: int, now: float | None = None) -> bool:
    """Whether ``owner`` still holds lease ``name`` in ``epoch`` (and, given ``now``, unexpired).
    Inside a transaction it is the fence of what that transaction writes."""
    sql = "select 1 from lease where name = ? and owner = ? and epoch = ?"
    params: list[Any] = [name, owner, epoch]
    if now is not None:
        sql += " and expires_at > ?"
        params.append(now)
    return bool(store.query(sql, params))


def release_lease(store: Store, name: str, owner: str) -> None:
    """Give the lease up at once (a clean stop), if ``owner`` holds it."""
    store.execute("update lease set expires_at = 0 where name = ? and owner = ?", [name, owner])


def read_lease(store: Store, name: str) -> dict[str, Any] | None:
    """The lease row, or None when nobody ever took it."""
    rows = store.query("select * from lease where name = ?", [name])
    return rows[0] if rows else None


def pending_by_status(store: Store) -> dict[str, int]:
    """Alerts waiting for Slack, per run status."""
    rows = store.query("select status, count(*) as n from alerts where sent_at is null group by status")
    return {str(row["status"]): int(row["n"]) for row in rows}


def open_incidents_count(store: Store) -> int:
    """Incidents not resolved yet."""
    return int(store.query("select count(*) as n from incidents where state != 'resolved'")[0]["n"])


@migrations()
def m006_log_ids(db: sqlite_utils.Database) -> None:
    """Find a log by its id whatever app identity (key, URL) recorded it."""
    db["seen"].create_index(["log_id"], if_not_exists=True)  # type: ignore[union-attr]
    db["alerts"].create_index(["log_id"], if_not_exists=True)  # type: ignore[union-attr]


@migrations()
def m007_delivery_notices(db: sqlite_utils.Database) -> None:
    """Things the operator has been told once (e.g. a refused CSV upload), by key."""
    db["notices"].create({"key": str, "told_at": int, "text": str}, pk="key")  # type: ignore[union-attr]


@migrations()
def m008_incidents(db: sqlite_utils.Database) -> None:
    """Incidents (one app + status + error shape while it keeps failing), their mutes, the
    events their threads tell, and which incident (and whether muted) each alert belongs to."""
    db["incidents"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "app_id": str,
            "app_name": str,
            "channel": str,
            "status": str,
            "group_key": str,
            "state": str,  # open, resolved
            "opened_at": int,
            "first_seen": int,
            "last_seen": int,
            "runs": int,
            "muted_runs": int,
            "sessions": int,
            "error": str,
            "console_url": str,
            "parent_ts": str,  # its own channel message
            "thread_ts": str,  # where its runs go: its parent, or a storm summary's thread
            "parent_body": str,  # the first post's blocks below the header, kept through every edit
            "dirty": int,  # the parent must be edited to show the current state
            "edits": int,
            "ack_by": str,
            "ack_at": int,
            "resolved_at": int,
            "resolved_by": str,
            "successes": int,
            "previous_id": int,
            "previous_link": str,
        },
        pk="id",
    )
    db["incidents"].create_index(["app_id", "status", "group_key", "state"])  # type: ignore[union-attr]
    db["incidents"].create_index(["state", "channel"])  # type: ignore[union-attr]
    db["incident_sessions"].create(  # type: ignore[union-attr]
        {"incident_id": int, "who": str}, pk=("incident_id", "who")
    )
    db["mutes"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "app_id": str,
            "app_name": str,
            "channel": str,
            "incident_id": int,  # null: the whole app
            "until": int,  # null: until the incident resolves
            "by_user": str,
            "reason": str,
            "created_at": int,
            "ended_at": int,
            "ended_by": str,
        },
        pk="id",
    )
    db["incident_events"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "incident_id": int,  # null: a channel notice (an app muted or unmuted)
            "channel": str,
            "text": str,
            "created_at": int,
            "posted_at": int,
        },
        pk="id",
    )
    db["incident_events"].create_index(["channel", "posted_at"])  # type: ignore[union-attr]
    db["alerts"].add_column("incident_id", int)  # type: ignore[union-attr]
    db["alerts"].add_column("muted", int)  # type: ignore[union-attr]
    db["messages"].add_column("incident_id", int)  # type: ignore[union-attr]


@migrations()
def m009_incident_indexes(db: sqlite_utils.Database) -> None:
    """Runs by incident (counting what is still to send) and alerts not yet in an incident."""
    db["alerts"].create_index(["incident_id", "sent_at"])  # type: ignore[union-attr]
    db["incidents"].create_index(["dirty"])  # type: ignore[union-attr]


@migrations()
def m010_watch(db: sqlite_utils.Database) -> None:
    """Signals (failure rate, stuck runs) and the incidents they open, the running rows found
    stuck, how far each app's runs were checked for being stuck, and escalations."""
    db["watch_state"].create({"app_id": str, "stuck_checked_until": int}, pk="app_id")  # type: ignore[union-attr]
    db["signals"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "app_id": str,
            "kind": str,
            "opened_at": int,
            "updated_at": int,
            "resolved_at": int,
            "detail": str,
            "incident_id": int,
        },
        pk="id",
    )
    db.execute("create unique index signals_one_open on signals (app_id, kind) where resolved_at is null")
    db["stuck_runs"].create(  # type: ignore[union-attr]
        {
            "app_id": str,
            "log_id": str,
            "run_id": str,
            "started_at": int,
            "found_at": int,
            "next_check": int,
            "ended_at": int,
            "end_status": str,
            "signal_id": int,
            "reported": int,
            "entry": str,
        },
        pk=("app_id", "log_id"),
    )
    db["stuck_runs"].create_index(["app_id", "ended_at", "next_check"])  # type: ignore[union-attr]
    # Incidents that are not one error shape's runs: "failure_rate" or "stuck_runs" (null: runs),
    # with their figures as JSON; when an unacknowledged incident was escalated.
    db["incidents"].add_column("kind", str)  # type: ignore[union-attr]
    db["incidents"].add_column("detail", str)  # type: ignore[union-attr]
    db["incidents"].add_column("escalated_at", int)  # type: ignore[union-attr]
    # A thread reply also sent to the channel (an escalation).
    db["incident_events"].add_column("broadcast", int)  # type: ignore[union-attr]


@migrations()
def m011_lease_epoch(db: sqlite_utils.Database) -> None:
    """The lease's fencing token: it grows every time the lease changes hands."""
    db["lease"].add_column("epoch", int)  # type: ignore[union-attr]
    db.execute("update lease set epoch = 1 where epoch is null")


@migrations()
def m012_effects(db: sqlite_utils.Database) -> None:
    """The journal of Slack effects (see ``storage/journal.py``)."""
    db.execute(
        "create table effects ("
        "id integer primary key autoincrement, "
        "key text not null unique, "  # the idempotency key: one effect, one row
        "op text not null, "  # post, update, upload, delete
        "channel text not null, "
        "thread_ts text, "
        "thread_key text, "  # in the thread of another effect (its ts once sent)
        "payload text, "  # JSON: text, blocks, broadcast, file names; null: drawn at send time
        "content blob, "  # an upload's bytes
        "handler text, "  # what to record with it once sent, by name, and its arguments
        "handler_args text, "
        "source text, "
        "state text not null, "  # planned, sending, sent, refused
        "epoch integer, "  # the lease epoch of the instance that last sent it
        "attempts integer not null default 0, "
        "ts text, "
        "file_id text, "
        "error text, "
        "created_at integer not null, "
        "sent_at integer)"
    )
    db.execute(
        "create index effects_waiting on effects (state, channel) where state in ('planned', 'sending')"
    )
    db.execute("create index effects_sent on effects (sent_at)")


@migrations()
def m013_incident_ids_never_reused(db: sqlite_utils.Database) -> None:
    """Incident ids are never reused (AUTOINCREMENT): a pruned incident's id lives on in old
    signals, mutes and Slack buttons, and must never name a new incident."""
    row = next(iter(db.query("select sql from sqlite_master where type = 'table' and name = 'incidents'")))
    create = str(row["sql"])
    indexes = [
        str(r["sql"])
        for r in db.query(
            "select sql from sqlite_master where type = 'index' and tbl_name = 'incidents' "
            "and sql is not null"
        )
    ]
    _, _, rest = create.partition("(")
    columns = rest.rsplit(")", 1)[0]
    new_columns, found = re.subn(
        r"""^(\s*["\[`]?id["\]`]?\s+INTEGER\s+PRIMARY\s+KEY)\b""",
        r"\1 AUTOINCREMENT",
        columns,
        count=1,
        flags=re.I,
    )
    if not found:
        raise RuntimeError("incidents: unexpected schema, cannot make ids never reused")
    db.execute(f"create table incidents_new ({new_columns})")
    db.execute("insert into incidents_new select * from incidents")
    db.execute("drop table incidents")
    db.execute("alter table incidents_new rename to incidents")
    for sql in indexes:
        db.execute(sql)
    # Ids already handed out anywhere stay taken.
    high = next(
        iter(
            db.query(
                "select max(n) as n from (select max(id) as n from incidents "
                "union all select max(incident_id) from alerts "
                "union all select max(incident_id) from messages "
                "union all select max(incident_id) from signals union all select max(incident_id) from mutes "
                "union all select max(incident_id) from incident_events)"
            )
        )
    )["n"]
    db.execute("delete from sqlite_sequence where name = 'incidents'")
    db.execute("insert into sqlite_sequence (name, seq) values ('incidents', ?)", [int(high or 0)])


@migrations()
def m014_health_notice_where(db: sqlite_utils.Database) -> None:
    """Where and under which name an app's 'cannot read' notice was posted, so that it can be closed
    there even after the app's key (and so its identity) changed."""
    db["app_state"].add_column("health_channel", str)  # type: ignore[union-attr]
    db["app_state"].add_column("health_name", str)  # type: ignore[union-attr]


@migrations()
def m015_long_runs(db: sqlite_utils.Database) -> None:
    """Runs still going (running, paused for human input) when they left the look-back window: they
    are followed until they end, and alerted then if they failed. ``long_checked_until``: up to which
    start time the runs leaving the window were looked at."""
    db["long_runs"].create(  # type: ignore[union-attr]
        {
            "app_id": str,
            "log_id": str,
            "run_id": str,
            "status": str,
            "started_at": int,
            "found_at": int,
            "next_check": int,
            "entry": str,
        },
        pk=("app_id", "log_id"),
    )
    db["long_runs"].create_index(["app_id", "next_check"])  # type: ignore[union-attr]
    db["app_state"].add_column("long_checked_until", int)  # type: ignore[union-attr]


@migrations()
def m040_subscriptions(db: sqlite_utils.Database) -> None:
    """Channels subscribed from Slack (``/wflogs subscribe``) to an app (or ``*``), optionally only
    one status and runs whose error contains a text; a run is then an alert in each channel it goes
    to (``alerts.subscription``: that alert came from a subscription, not the configuration)."""
    db["subscriptions"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "channel": str,
            "app_id": str,  # an app's id, or * for every app
            "app_name": str,
            "status": str,  # '' (failed and stopped), failed or stopped
            "text": str,  # '' or a case-insensitive part of the error
            "by_user": str,
            "created_at": int,
        },
        pk="id",
    )
    db["subscriptions"].create_index(["channel", "app_id", "status", "text"], unique=True)  # type: ignore[union-attr]
    db["alerts"].add_column("subscription", int)  # type: ignore[union-attr]
    db.execute("drop index if exists idx_alerts_app_id_log_id")
    db["alerts"].create_index(["app_id", "log_id", "channel"], unique=True)  # type: ignore[union-attr]


@migrations()
def m041_signal_copies(db: sqlite_utils.Database) -> None:
    """A failure rate or stuck runs shown in a channel subscribed to the app (``/wflogs subscribe``):
    that channel's own incident, a copy kept by the signal it shows (the configured channel's
    incident stays ``signals.incident_id``)."""
    db["incidents"].add_column("copy_of_signal", int)  # type: ignore[union-attr]
    db["incidents"].create_index(["copy_of_signal"])  # type: ignore[union-attr]


@migrations()
def m050_digest_stopped(db: sqlite_utils.Database) -> None:
    """Stopped runs of each digest's window, beside its failed runs: the digest's chart draws the
    last 14 days from the digests' own counts (null for digests recorded before this column)."""
    db["digests"].add_column("stopped", int)  # type: ignore[union-attr]
