"""Incidents in SQLite: their rows, mutes, thread events, and the alerts that belong to them.

An incident is one app + status + error shape (+ channel) from its first failed
run until it resolves. Clicks and commands write intent here (acknowledged,
muted, resolved) and count a change in ``dirty``; the deliverer, the one writer
of channel messages, edits the parent from this state. ``incident_events`` are
the thread replies (and channel notices) still to be posted.

This module never imports ``bot``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from storage.db import Store

OPEN = "open"
RESOLVED = "resolved"


class IncidentStore:
    """The queries of incidents, over a :class:`Store` (its lock and connection)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # -- reading -------------------------------------------------------------------------

    def get(self, incident_id: int) -> dict[str, Any] | None:
        """One incident, or None."""
        rows = self.store.query("select * from incidents where id = ?", [incident_id])
        return rows[0] if rows else None

    def find_open(self, app_id: str, channel: str, status: str, group_key: str) -> dict[str, Any] | None:
        """The open incident of this shape in this channel, if any."""
        rows = self.store.query(
            "select * from incidents where app_id = ? and channel = ? and status = ? and group_key = ? "
            "and state = 'open' order by id desc limit 1",
            [app_id, channel, status, group_key],
        )
        return rows[0] if rows else None

    def last_resolved(self, app_id: str, status: str, group_key: str) -> dict[str, Any] | None:
        """The newest resolved incident of this shape (for "back again")."""
        rows = self.store.query(
            "select * from incidents where app_id = ? and status = ? and group_key = ? "
            "and state = 'resolved' order by id desc limit 1",
            [app_id, status, group_key],
        )
        return rows[0] if rows else None

    def open_incidents(self) -> list[dict[str, Any]]:
        """Every open incident, oldest first."""
        return self.store.query("select * from incidents where state = 'open' order by id")

    def unassigned_alerts(self) -> list[dict[str, Any]]:
        """Alerts not yet counted in an incident, oldest first."""
        return self.store.query(
            "select id, app_id, app_name, channel, status, group_key, entry, console_url from alerts "
            "where incident_id is null and sent_at is null order by id"
        )

    def unsent_count(self, incident_id: int) -> int:
        """Runs of the incident not yet in Slack."""
        rows = self.store.query(
            "select count(*) as n from alerts where incident_id = ? and sent_at is null", [incident_id]
        )
        return int(rows[0]["n"])

    def channels_with_work(self) -> list[str]:
        """Channels with runs to post, events to tell or parents to edit."""
        rows = self.store.query(
            "select channel from alerts where sent_at is null "
            "union select channel from incident_events where posted_at is null "
            "union select channel from incidents where dirty > 0 and parent_ts is not null order by 1"
        )
        return [r["channel"] for r in rows]

    def dirty(self, channel: str) -> list[dict[str, Any]]:
        """Incidents of ``channel`` whose parent must be edited."""
        return self.store.query(
            "select * from incidents where channel = ? and dirty > 0 and parent_ts is not null order by id",
            [channel],
        )

    # -- writing -------------------------------------------------------------------------

    def attach_or_open(
        self,
        shape: dict[str, Any],
        alert_ids: list[int],
        *,
        sessions: Iterable[str],
        first: int,
        last: int,
        error: str | None,
        now: int,
        new: dict[str, Any],
    ) -> tuple[int, bool]:
        """Count alerts into the open incident of ``shape`` (app_id, channel, status, group_key),
        opening one (with ``new``'s columns) when there is none, in ONE transaction: a Resolve
        that lands meanwhile cannot swallow them. Muted runs are recorded as handled.
        Returns (incident id, whether it was opened now)."""
        with self.store.transaction():
            current = self.find_open(shape["app_id"], shape["channel"], shape["status"], shape["group_key"])
            opened = current is None
            if current is None:
                previous = self.last_resolved(shape["app_id"], shape["status"], shape["group_key"])
                incident_id = self.create(
                    {**shape, **new, "opened_at": now, "previous_id": previous["id"] if previous else None}
                )
            else:
                incident_id = int(current["id"])
            muted = self.mute_for(shape["app_id"], incident_id, now) is not None
            attached = self.attach(
                incident_id,
                alert_ids,
                sessions=sessions,
                first=first,
                last=last,
                error=error,
                muted=muted,
                now=now,
            )
            if not attached:
                raise RuntimeError(f"incident {incident_id} was not open inside its own transaction")
        return incident_id, opened

    def create(self, fields: dict[str, Any]) -> int:
        """A new open incident; returns its id."""
        row = {"state": OPEN, "runs": 0, "muted_runs": 0, "sessions": 0, "dirty": 0, "edits": 0, **fields}
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        with self.store.transaction():
            cursor = self.db.execute(
                f"insert into incidents ({columns}) values ({marks})", list(row.values())
            )
            return int(cursor.lastrowid or 0)

    def attach(
        self,
        incident_id: int,
        alert_ids: list[int],
        *,
        sessions: Iterable[str],
        first: int,
        last: int,
        error: str | None,
        muted: bool,
        now: int,
    ) -> bool:
        """Count alerts into an OPEN incident (atomically); False, and nothing changed, when the
        incident is not open. Muted ones are recorded as handled: they are posted nowhere."""
        with self.store.transaction():
            state = self.db.execute("select state from incidents where id = ?", [incident_id]).fetchone()
            if state is None or state[0] != OPEN:
                return False
            for start in range(0, len(alert_ids), 500):
                chunk = alert_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self.db.execute(
                    f"update alerts set incident_id = ?, muted = ?, sent_at = ? where id in ({marks})",
                    [incident_id, int(muted), now if muted else None, *chunk],
                )
            who = sessions_list(sessions)
            for start in range(0, len(who), 400):
                names = who[start : start + 400]
                self.db.execute(
                    "insert or ignore into incident_sessions (incident_id, who) values "
                    + ", ".join("(?, ?)" for _ in names),
                    [v for name in names for v in (incident_id, name)],
                )
            self.db.execute(
                "update incidents set runs = runs + ?, muted_runs = muted_runs + ?, "
                "first_seen = min(coalesce(first_seen, ?), ?), last_seen = max(coalesce(last_seen, ?), ?), "
                "error = coalesce(?, error), "
                "sessions = (select count(*) from incident_sessions where incident_id = ?), "
                "dirty = case when parent_ts is null then dirty else dirty + 1 end where id = ?",
                [
                    len(alert_ids),
                    len(alert_ids) if muted else 0,
                    first,
                    first,
                    last,
                    last,
                    error,
                    incident_id,
                    incident_id,
                ],
            )
            return True

    def set_parent(self, incident_id: int, ts: str, body: str, *, shown: int) -> None:
        """The incident's own channel message was posted, showing the changes counted up to ``shown``
        (its ``dirty`` when it was drawn); changes made meanwhile are still to be shown."""
        self.store.execute(
            "update incidents set parent_ts = ?, thread_ts = ?, parent_body = ?, dirty = max(dirty - ?, 0) "
            "where id = ?",
            [ts, ts, body, shown, incident_id],
        )

    def set_thread(self, incident_ids: list[int], ts: str) -> None:
        """Incidents without a parent of their own continue in this (storm summary's) thread."""
        with self.store.transaction():
            for incident_id in incident_ids:
                self.db.execute(
                    "update incidents set thread_ts = ? where id = ? and parent_ts is null", [ts, incident_id]
                )

    def set_previous_link(self, incident_id: int, link: str) -> None:
        """The link to the previous incident's thread, for an incident that is back."""
        self.store.execute("update incidents set previous_link = ? where id = ?", [link, incident_id])

    def thread_lost(self, incident_id: int, thread_ts: str) -> None:
        """Slack has no thread ``thread_ts`` any more (its first message was deleted before any
        reply): an incident with its own parent is edited next, which posts a new parent when the
        old one is gone; one that continued in a storm summary's thread gets a parent of its own."""
        with self.store.transaction():
            self.db.execute(
                "update incidents set dirty = dirty + 1 where id = ? and parent_ts = ?",
                [incident_id, thread_ts],
            )
            self.db.execute(
                "update incidents set thread_ts = null where thread_ts = ? and parent_ts is null", [thread_ts]
            )

    def edited(self, incident_id: int, shown: int) -> None:
        """The parent shows the state drawn when ``dirty`` was ``shown``: a click that came while
        the edit was on its way keeps the incident dirty, so the next pass shows it too."""
        self.store.execute(
            "update incidents set dirty = max(dirty - ?, 0), edits = edits + 1 where id = ?",
            [shown, incident_id],
        )

    def stop_editing(self, incident_id: int) -> None:
        """Slack will not let the parent be edited any more."""
        self.store.execute("update incidents set dirty = 0 where id = ?", [incident_id])

    def add_event(self, incident_id: int | None, channel: str, text: str, now: int) -> None:
        """A thread reply (or, without an incident, a channel notice) to post."""
        self.store.execute(
            "insert into incident_events (incident_id, channel, text, created_at) values (?, ?, ?, ?)",
            [incident_id, channel, text, now],
        )

    def pending_events(self, channel: str) -> list[dict[str, Any]]:
        """Events of ``channel`` not yet posted, oldest first, with their incident's thread."""
        return self.store.query(
            "select e.*, i.thread_ts as thread_ts from incident_events e "
            "left join incidents i on i.id = e.incident_id "
            "where e.channel = ? and e.posted_at is null order by e.id",
            [channel],
        )

    def event_posted(self, event_id: int, now: int) -> None:
        """Slack took the event."""
        self.store.execute("update incident_events set posted_at = ? where id = ?", [now, event_id])

    def acknowledge(self, incident_id: int, user: str, now: int) -> bool:
        """Record an acknowledgement; False when the incident is resolved or already acknowledged."""
        with self.store.transaction():
            before = self.db.conn.total_changes
            self.db.execute(
                "update incidents set ack_by = ?, ack_at = ?, dirty = dirty + 1 "
                "where id = ? and state = 'open' and ack_by is null",
                [user, now, incident_id],
            )
            return self.db.conn.total_changes > before

    def resolve(self, incident_id: int, now: int, *, by: str | None, successes: int | None) -> bool:
        """Resolve an open incident (ending its mutes); False when it was not open."""
        with self.store.transaction():
            before = self.db.conn.total_changes
            self.db.execute(
                "update incidents set state = 'resolved', resolved_at = ?, resolved_by = ?, successes = ?, "
                "dirty = dirty + 1 where id = ? and state = 'open'",
                [now, by, successes, incident_id],
            )
            changed = self.db.conn.total_changes > before
            if changed:
                self.db.execute(
                    "update mutes set ended_at = ? where incident_id = ? and ended_at is null",
                    [now, incident_id],
                )
            return changed

    def set_successes(self, incident_id: int, successes: int) -> None:
        """The successful runs between a resolved incident's last failure and its end (counted late)."""
        self.store.execute(
            "update incidents set successes = ?, dirty = dirty + 1 "
            "where id = ? and state = 'resolved' and successes is null",
            [successes, incident_id],
        )

    def prune(self, older_than: int) -> None:
        """Forget incidents resolved before ``older_than``, with their sessions, events and mutes."""
        with self.store.transaction():
            old = "select id from incidents where state = 'resolved' and resolved_at < ?"
            self.db.execute(f"delete from incident_sessions where incident_id in ({old})", [older_than])
            self.db.execute(
                f"delete from incident_events where posted_at is not null and incident_id in ({old})",
                [older_than],
            )
            self.db.execute(
                "delete from mutes where ended_at is not null and ended_at < ? "
                "and (incident_id is null or incident_id in "
                "(select id from incidents where state = 'resolved'))",
                [older_than],
            )
            gone = (
                "select id from incidents where state = 'resolved' and resolved_at < ? "
                "and id not in (select incident_id from alerts where incident_id is not null)"
            )
            # A signal goes with its incident (an open one only lets go of it): an old signal must
            # never be joined to a new incident.
            self.db.execute(
                f"delete from signals where resolved_at is not null and incident_id in ({gone})", [older_than]
            )
            self.db.execute(
                f"update signals set incident_id = null where incident_id in ({gone})", [older_than]
            )
            self.db.execute(f"delete from incidents where id in ({gone})", [older_than])
            self.db.execute(
                "delete from incident_events where incident_id is null "
                "and posted_at is not null and posted_at < ?",
                [older_than],
            )

    # -- mutes ---------------------------------------------------------------------------

    def add_mute(self, fields: dict[str, Any]) -> int:
        """A new mute (of an incident, or of a whole app when ``incident_id`` is None)."""
        columns = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        with self.store.transaction():
            cursor = self.db.execute(f"insert into mutes ({columns}) values ({marks})", list(fields.values()))
            if fields.get("incident_id"):
                self.db.execute(
                    "update incidents set dirty = dirty + 1 where id = ?", [fields["incident_id"]]
                )
            return int(cursor.lastrowid or 0)

    def mute(self, mute_id: int) -> dict[str, Any] | None:
        """One mute row."""
        rows = self.store.query("select * from mutes where id = ?", [mute_id])
        return rows[0] if rows else None

    def end_mute(self, mute_id: int, now: int, by: str | None) -> bool:
        """End a mute now; False when it had already ended."""
        with self.store.transaction():
            before = self.db.conn.total_changes
            self.db.execute(
                "update mutes set ended_at = ?, ended_by = ? where id = ? and ended_at is null",
                [now, by, mute_id],
            )
            changed = self.db.conn.total_changes > before
            if changed:
                self.db.execute(
                    "update incidents set dirty = dirty + 1 "
                    "where id = (select incident_id from mutes where id = ?) and parent_ts is not null",
                    [mute_id],
                )
            return changed

    def active_mutes(self, now: int) -> list[dict[str, Any]]:
        """Mutes in force at ``now``, with their incident's shape."""
        return self.store.query(
            "select m.*, i.status as incident_status, i.error as incident_error from mutes m "
            "left join incidents i on i.id = m.incident_id "
            "where m.ended_at is null and (m.until is null or m.until > ?) order by m.id",
            [now],
        )

    def expired_mutes(self, now: int) -> list[dict[str, Any]]:
        """Mutes whose time is up but that are not yet marked ended."""
        return self.store.query(
            "select * from mutes where ended_at is null and until is not null and until <= ? order by id",
            [now],
        )

    def mute_for(self, app_id: str, incident_id: int | None, now: int) -> dict[str, Any] | None:
        """The mute in force for this incident (or its whole app), if any."""
        rows = self.store.query(
            "select * from mutes where ended_at is null and (until is null or until > ?) and app_id = ? "
            "and (incident_id is null or incident_id = ?) order by incident_id is not null, id desc limit 1",
            [now, app_id, incident_id if incident_id is not None else -1],
        )
        return rows[0] if rows else None

    # -- the digest ------------------------------------------------------------------------

    def window_stats(self, app_id: str, start: int, end: int) -> dict[str, Any]:
        """Incidents of an app in [start, end): opened, resolved, median time to resolve, still open."""
        opened = self.store.query(
            "select count(*) as n from incidents where app_id = ? and opened_at >= ? and opened_at < ?",
            [app_id, start, end],
        )[0]["n"]
        resolved = self.store.query(
            "select opened_at, resolved_at from incidents where app_id = ? and resolved_at >= ? "
            "and resolved_at < ?",
            [app_id, start, end],
        )
        still_open = self.store.query(
            "select count(*) as n from incidents where app_id = ? and opened_at < ? "
            "and (resolved_at is null or resolved_at >= ?)",
            [app_id, end, end],
        )[0]["n"]
        spans = [int(r["resolved_at"]) - int(r["opened_at"]) for r in resolved]
        return {
            "opened": int(opened),
            "resolved": len(resolved),
            "median_resolve": int(statistics.median(spans)) if spans else None,
            "open": int(still_open),
        }


def sessions_list(sessions: Iterable[str]) -> list[str]:
    """Distinct session names, in order."""
    return list(dict.fromkeys(s for s in sessions if s))
