"""Queries of failure-rate and stuck-run watching (tables made by ``m010_watch`` in ``db.py``).

- ``signals``: one row per failure-rate or stuck-runs episode of an app (``kind``), open until
  ``resolved_at``; at most one open per app and kind (a unique index). ``detail`` holds the
  latest figures as JSON; ``incident_id`` the incident that shows it in Slack.
- ``stuck_runs``: runs found still ``running`` past the app's limit, remembered until they end
  (Dify can leave a row running for good), with when to look at each again.
- ``watch_state``: per app, up to which start time runs were checked for being stuck.

This module never imports ``bot``.
"""

from __future__ import annotations

import json
from typing import Any

from storage.db import Store


class WatchStore:
    """The queries of failure-rate and stuck-run watching, over the same :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- counts the poller already knows ---------------------------------------------

    def failures_between(self, app_id: str, after: int, before: int) -> int:
        """Failed and stopped logs the poller has seen with a time in [after, before]."""
        rows = self.store.query(
            "select count(*) as n from seen where app_id = ? and status in ('failed', 'stopped') "
            "and created_at between ? and ?",
            [app_id, after, before],
        )
        return int(rows[0]["n"])

    def top_shapes(self, app_id: str, after: int, before: int, limit: int = 3) -> list[dict[str, Any]]:
        """The most frequent error shapes among the alerted failures in [after, before]:
        ``group_key``, ``runs`` and one example ``entry``."""
        rows = self.store.query(
            "select a.group_key, count(*) as runs, max(a.entry) as entry from alerts a "
            "join seen s on s.app_id = a.app_id and s.log_id = a.log_id "
            "where a.app_id = ? and s.created_at between ? and ? and s.status in ('failed', 'stopped') "
            "group by a.group_key order by runs desc, a.group_key limit ?",
            [app_id, after, before, limit],
        )
        for row in rows:
            row["entry"] = json.loads(row["entry"]) if row.get("entry") else {}
        return rows

    # -- signals ---------------------------------------------------------------------

    def open_signal(self, app_id: str, kind: str) -> dict[str, Any] | None:
        """The open signal of ``kind`` for the app, detail decoded."""
        rows = self.store.query(
            "select * from signals where app_id = ? and kind = ? and resolved_at is null", [app_id, kind]
        )
        return _signal(rows[0]) if rows else None

    def open_new_signal(self, app_id: str, kind: str, detail: dict[str, Any], now: int) -> int:
        """Open a signal (at most one open per app and kind); returns its id."""
        with self.store.transaction():
            self.store.execute(
                "insert or ignore into signals (app_id, kind, opened_at, updated_at, detail) "
                "values (?, ?, ?, ?, ?)",
                [app_id, kind, now, now, json.dumps(detail)],
            )
            rows = self.store.query(
                "select id from signals where app_id = ? and kind = ? and resolved_at is null", [app_id, kind]
            )
        return int(rows[0]["id"])

    def update_signal(
        self, signal_id: int, detail: dict[str, Any], now: int, *, resolve: bool = False
    ) -> None:
        """Store a signal's latest figures, resolving it when asked."""
        if resolve:
            self.store.execute(
                "update signals set detail = ?, updated_at = ?, resolved_at = ? where id = ?",
                [json.dumps(detail), now, now, signal_id],
            )
        else:
            self.store.execute(
                "update signals set detail = ?, updated_at = ? where id = ?",
                [json.dumps(detail), now, signal_id],
            )

    def signals_to_sync(self) -> list[dict[str, Any]]:
        """Signals whose incident may need opening, updating or resolving: the open ones, and the
        resolved ones whose incident is still open; with the incident's state and mute status."""
        # Joined by id AND kind: a signal is only ever shown by an incident of its own kind.
        rows = self.store.query(
            "select s.id, s.app_id, s.kind, s.opened_at, s.updated_at, s.resolved_at, s.detail, "
            "i.id as incident_id, i.state as incident_state, i.channel as incident_channel from signals s "
            "left join incidents i on i.id = s.incident_id and i.kind = s.kind and i.app_id = s.app_id "
            "where s.resolved_at is null or i.state = 'open' "
            "or exists (select 1 from incidents c where c.copy_of_signal = s.id and c.state = 'open') "
            "order by s.id"
        )
        return [_signal(r) for r in rows]

    def copies(self, signal_id: int) -> dict[str, dict[str, Any]]:
        """The incidents showing the signal in subscribed channels, by channel (the newest)."""
        rows = self.store.query("select * from incidents where copy_of_signal = ? order by id", [signal_id])
        return {r["channel"]: r for r in rows}

    def signal_state(self, signal_id: int) -> tuple[bool, bool]:
        """Whether the signal ended, and whether the configured channel's incident shows it (as
        stored now: a sync may have just changed either)."""
        rows = self.store.query("select resolved_at, incident_id from signals where id = ?", [signal_id])
        if not rows:
            return True, False
        return rows[0]["resolved_at"] is not None, rows[0]["incident_id"] is not None

    def link_incident(self, signal_id: int, incident_id: int) -> None:
        """The signal is shown as this incident."""
        self.store.execute("update signals set incident_id = ? where id = ?", [incident_id, signal_id])

    def show_figures(self, incident_id: int, detail: dict[str, Any], runs: int, last_seen: int) -> None:
        """Keep a signal's incident current; its parent is edited when the figures changed."""
        encoded = json.dumps(detail)
        self.store.execute(
            "update incidents set detail = ?, runs = ?, last_seen = ?, "
            "dirty = case when parent_ts is not null and (detail is not ? or runs != ?) "
            "then dirty + 1 else dirty end "
            "where id = ?",
            [encoded, runs, last_seen, encoded, runs, incident_id],
        )

    # -- escalation ------------------------------------------------------------------

    def escalation_candidates(self) -> list[dict[str, Any]]:
        """Open incidents nobody acknowledged, never muted and not escalated yet, oldest first."""
        return self.store.query(
            "select * from incidents i where state = 'open' and ack_by is null and escalated_at is null "
            "and not exists (select 1 from mutes m where m.incident_id = i.id) order by id"
        )

    def escalate(self, incident_ids: list[int], channel: str, text: str, now: int) -> bool:
        """Record the one escalation of incidents sharing a thread and its broadcast reply,
        atomically; False when all were acknowledged, resolved or escalated in the meantime."""
        with self.store.transaction():
            before = self.store.db.conn.total_changes
            for incident_id in incident_ids:
                self.store.execute(
                    "update incidents set escalated_at = ? where id = ? and state = 'open' "
                    "and ack_by is null and escalated_at is null",
                    [now, incident_id],
                )
            if self.store.db.conn.total_changes == before:
                return False
            self.store.execute(
                "insert into incident_events (incident_id, channel, text, created_at, broadcast) "
                "values (?, ?, ?, ?, 1)",
                [incident_ids[0], channel, text, now],
            )
            return True

    # -- stuck runs ------------------------------------------------------------------

    def stuck_checked_until(self, app_id: str) -> int | None:
        """Runs started up to this time were checked for being stuck."""
        rows = self.store.query("select stuck_checked_until from watch_state where app_id = ?", [app_id])
        return (
            int(rows[0]["stuck_checked_until"])
            if rows and rows[0]["stuck_checked_until"] is not None
            else None
        )

    def record_stuck(self, app_id: str, runs: list[dict[str, Any]], checked_until: int) -> int:
        """Remember runs found running past the limit and move the app's mark, atomically;
        returns how many were new."""
        with self.store.transaction():
            before = self.store.db.conn.total_changes
            for run in runs:
                self.store.execute(
                    "insert or ignore into stuck_runs (app_id, log_id, run_id, started_at, found_at, "
                    "next_check, reported, entry) values (?, ?, ?, ?, ?, ?, 0, ?)",
                    [
                        app_id,
                        run["log_id"],
                        run["run_id"],
                        run["started_at"],
                        run["found_at"],
                        run["next_check"],
                        json.dumps(run["entry"]),
                    ],
                )
            added = self.store.db.conn.total_changes - before
            self.store.execute(
                "insert into watch_state (app_id, stuck_checked_until) values (?, ?) "
                "on conflict (app_id) do update set stuck_checked_until = excluded.stuck_checked_until",
                [app_id, checked_until],
            )
        return added

    def stuck_due(self, app_id: str, now: int, limit: int) -> list[dict[str, Any]]:
        """Stuck runs still running as far as known whose next check is due, most overdue first."""
        return [
            _stuck(r)
            for r in self.store.query(
                "select * from stuck_runs where app_id = ? and ended_at is null and next_check <= ? "
                "order by next_check, started_at limit ?",
                [app_id, now, limit],
            )
        ]

    def stuck_checked(self, app_id: str, log_id: str, next_check: int) -> None:
        """A stuck run is still running; look again at ``next_check``."""
        self.store.execute(
            "update stuck_runs set next_check = ? where app_id = ? and log_id = ?",
            [next_check, app_id, log_id],
        )

    def stuck_ended(self, app_id: str, log_id: str, status: str, ended_at: int) -> None:
        """A stuck run ended (or is gone)."""
        self.store.execute(
            "update stuck_runs set ended_at = ?, end_status = ? where app_id = ? and log_id = ?",
            [ended_at, status, app_id, log_id],
        )

    def stuck_runs(
        self, app_id: str, *, signal_id: int | None = None, open_only: bool = False
    ) -> list[dict[str, Any]]:
        """The app's stuck runs (of one signal, or only those still running), oldest first."""
        sql = "select * from stuck_runs where app_id = ?"
        params: list[Any] = [app_id]
        if signal_id is not None:
            sql += " and signal_id = ?"
            params.append(signal_id)
        if open_only:
            sql += " and ended_at is null"
        return [_stuck(r) for r in self.store.query(sql + " order by started_at, log_id", params)]

    def attach_stuck(self, app_id: str, signal_id: int) -> None:
        """Put the app's running stuck runs that belong to no signal into ``signal_id``."""
        self.store.execute(
            "update stuck_runs set signal_id = ? where app_id = ? and signal_id is null and ended_at is null",
            [signal_id, app_id],
        )

    def dismiss_stuck(self, signal_id: int, now: int) -> None:
        """Someone resolved the stuck-runs incident: stop looking at its runs (they may never end)."""
        self.store.execute(
            "update stuck_runs set ended_at = ?, end_status = 'dismissed' "
            "where signal_id = ? and ended_at is null",
            [now, signal_id],
        )

    def mark_stuck_reported(self, app_id: str, log_ids: list[str]) -> None:
        """Record that these stuck runs were told."""
        with self.store.transaction():
            for log_id in log_ids:
                self.store.execute(
                    "update stuck_runs set reported = 1 where app_id = ? and log_id = ?", [app_id, log_id]
                )

    def forget_stuck(self, older_than: int) -> None:
        """Drop stuck runs that ended before ``older_than`` and whose signal is resolved."""
        self.store.execute(
            "delete from stuck_runs where ended_at < ? and signal_id in "
            "(select id from signals where resolved_at is not null)",
            [older_than],
        )


def _signal(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["detail"] = json.loads(row["detail"]) if row.get("detail") else {}
    return row


def _stuck(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["entry"] = json.loads(row["entry"]) if row.get("entry") else {}
    return row
