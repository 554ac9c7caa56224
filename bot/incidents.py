"""Incidents: every cycle counts new runs into their incident, ends mutes whose time is up and
resolves incidents that stopped failing. Clicks and commands record intent through
:class:`IncidentActions`. Everything here writes SQLite only; the deliverer posts and edits
from what is stored (state that Slack shows lives in storage first)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from typing import Any

from bot import incident_format as ifmt
from bot.errors import WflogsError
from bot.logs import Reminder
from bot.records import LogEntry
from storage import Store
from storage.incidents import IncidentStore

log = logging.getLogger(__name__)

DEFAULT_RESOLVE_AFTER = 1800

# (app_id, after, before) -> successful runs of the app in [after, before], or None when unknown.
SuccessCounter = Callable[[str, int, int], "int | None"]


def end_mute(store: Store, mute: dict[str, Any], now: int, by: str | None) -> bool:
    """End a mute (by a person, or None: its time ran out) and tell its thread or channel, in one
    transaction; False when it had already ended."""
    incidents = IncidentStore(store)
    with store.transaction():
        if not incidents.end_mute(int(mute["id"]), now, by):
            return False
        if mute.get("incident_id"):
            incidents.add_event(int(mute["incident_id"]), mute["channel"], ifmt.unmuted_text(by), now)
        else:
            incidents.add_event(None, mute["channel"], ifmt.unmuted_text(by, mute["app_name"]), now)
    return True


class IncidentKeeper:
    """The life of incidents, evaluated once per cycle before delivery."""

    def __init__(
        self,
        store: Store,
        *,
        resolve_after: Callable[[str], int] | None = None,
        successes: SuccessCounter | None = None,
        watched: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.store = store
        self.incidents = IncidentStore(store)
        self._resolve_after = resolve_after or (lambda _app_id: DEFAULT_RESOLVE_AFTER)
        self._successes = successes
        # The ids of the apps this instance polls (None: every app it sees).
        self._watched = watched
        self._remind = Reminder(600)

    def evaluate(self, now: int) -> None:
        """Expire mutes, count new runs into incidents (muted ones are recorded, not posted),
        and resolve incidents with no failure for their app's ``resolve_after``."""
        self._expire_mutes(now)
        self._assign(now)
        self._resolve(now)

    def _expire_mutes(self, now: int) -> None:
        for mute in self.incidents.expired_mutes(now):
            end_mute(self.store, mute, now, None)

    def _assign(self, now: int) -> None:
        groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
        for row in self.incidents.unassigned_alerts():
            key = (row["app_id"], row["channel"], row["status"], row["group_key"] or "")
            groups.setdefault(key, []).append(row)
        for (app_id, channel, status, group_key), rows in groups.items():
            try:
                entries = [LogEntry.from_dict(json.loads(r["entry"]) if r.get("entry") else {}) for r in rows]
            except (ValueError, TypeError):
                # A damaged row must not hold up every other app's runs; it stays in the outbox.
                if self._remind.due(f"damaged:{app_id}"):
                    log.exception("runs of app %s cannot be read from the database; they wait", app_id)
                continue
            self.incidents.attach_or_open(
                {"app_id": app_id, "channel": channel, "status": status, "group_key": group_key},
                [int(r["id"]) for r in rows],
                sessions=[e.who or "unknown" for e in entries],
                first=min(e.ended_at for e in entries),
                last=max(e.ended_at for e in entries),
                error=entries[-1].error,
                now=now,
                new={"app_name": rows[-1]["app_name"], "console_url": rows[-1].get("console_url")},
            )

    def _resolve(self, now: int) -> None:
        for row in self.incidents.open_incidents():
            if row.get("kind"):
                continue  # failure-rate and stuck-runs incidents resolve by their own rule
            quiet_since = max(int(row.get("last_seen") or 0), int(row["opened_at"]))
            after = self._resolve_after(row["app_id"])
            if row["opened_at"] >= now or now - quiet_since < after:
                continue
            if not self._read_through(row["app_id"], quiet_since + after):
                continue  # no evidence that it stopped failing: wflogs has not read that far
            if self.incidents.unsent_count(int(row["id"])):
                continue  # its runs are still on their way to Slack
            successes = self._count_successes(row["app_id"], int(row.get("last_seen") or quiet_since), now)
            with self.store.transaction():
                if self.incidents.resolve(int(row["id"]), now, by=None, successes=successes):
                    self._resolved_event(int(row["id"]), now)

    def _read_through(self, app_id: str, until: int) -> bool:
        """Whether the app was read, completely, up to ``until`` and can be read now: quiet time
        counts only while wflogs could see failures. An app this instance does not watch (no
        longer configured) resolves by the clock: nothing will ever read it again."""
        if self._watched is not None and app_id not in self._watched():
            return True
        state = self.store.app_state(app_id) or {}
        if state.get("failing_since") is not None:
            return False
        return int(state.get("checked_until") or 0) >= until

    def _count_successes(self, app_id: str, after: int, before: int) -> int | None:
        if self._successes is None:
            return None
        try:
            return self._successes(app_id, after + 1, before)
        except WflogsError as exc:
            log.info("cannot count successful runs since the last failure: %s", exc)
            return None

    def _resolved_event(self, incident_id: int, now: int) -> None:
        row = self.incidents.get(incident_id)
        if row is not None:
            self.incidents.add_event(
                incident_id, row["channel"], ifmt.resolved_text(ifmt.Incident.from_row(row)), now
            )


class IncidentActions:
    """What people do to incidents (from Slack clicks and commands): recorded, never posted here.

    Each action changes the incident and records the thread event that tells it in one
    transaction, guarded by the state it expects (a crash never leaves one without the other)."""

    def __init__(self, store: Store, *, successes: SuccessCounter | None = None) -> None:
        self.store = store
        self.incidents = IncidentStore(store)
        self._successes = successes

    def _find(self, incident_id: int, channel: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """The incident, or None and what to tell the person."""
        row = self.incidents.get(incident_id)
        if row is None:
            return None, "That incident is not known to wflogs any more."
        if channel is not None and row["channel"] != channel:
            # A copy of the message shared into another channel: the controls act where it lives.
            return None, f"That incident belongs to <#{row['channel']}>: act on it there."
        return row, None

    def acknowledge(self, incident_id: int, user: str, now: int, *, channel: str | None = None) -> str:
        """Acknowledge; returns what to tell the person."""
        row, refusal = self._find(incident_id, channel)
        if row is None:
            return refusal or ""
        with self.store.transaction():
            done = self.incidents.acknowledge(incident_id, user, now)
            if done:
                self.incidents.add_event(incident_id, row["channel"], ifmt.acknowledged_text(user), now)
        if not done:
            row = self.incidents.get(incident_id) or row
            if row["state"] != "open":
                return "That incident is already resolved."
            return f"Already acknowledged by {ifmt.who(row['ack_by'])}."
        return "Acknowledged. The message shows it in a moment."

    def mute(self, incident_id: int, choice: str, user: str, now: int, *, channel: str | None = None) -> str:
        """Mute an incident for ``choice`` seconds (or "resolved")."""
        row, refusal = self._find(incident_id, channel)
        if row is None:
            return refusal or ""
        if choice == "resolved":
            until = None
        else:
            seconds = int(choice)
            if seconds not in {s for _, s in ifmt.MUTE_CHOICES if s}:
                raise ValueError(f"not a mute choice: {choice!r}")
            until = now + seconds
        with self.store.transaction():
            current = self.incidents.get(incident_id) or row
            if current["state"] != "open":
                return "That incident is already resolved; a new failure opens a new one."
            for mute in self.incidents.active_mutes(now):
                if mute.get("incident_id") == incident_id:
                    self.incidents.end_mute(int(mute["id"]), now, user)
            self.incidents.add_mute(
                {
                    "app_id": row["app_id"],
                    "app_name": row["app_name"],
                    "channel": row["channel"],
                    "incident_id": incident_id,
                    "until": until,
                    "by_user": user,
                    "created_at": now,
                }
            )
            self.incidents.add_event(incident_id, row["channel"], ifmt.muted_text(user, until), now)
        return "Muted. New failures of this error are counted but not posted."

    def resolve(self, incident_id: int, user: str, now: int, *, channel: str | None = None) -> str:
        """Resolve now; the next failure opens a new incident."""
        row, refusal = self._find(incident_id, channel)
        if row is None:
            return refusal or ""
        # No Dify request here: a click is answered within Slack's 3 seconds whatever Dify does;
        # the successful runs since the last failure are counted afterwards (count_successes).
        with self.store.transaction():
            if not self.incidents.resolve(incident_id, now, by=user, successes=None):
                return "That incident is already resolved."
            done = self.incidents.get(incident_id) or row
            self.incidents.add_event(
                incident_id, row["channel"], ifmt.resolved_text(ifmt.Incident.from_row(done)), now
            )
        return "Resolved. A new failure of this error opens a new incident."

    def count_successes(self, incident_id: int) -> None:
        """After a Resolve click was answered: how many runs of the app succeeded between the
        incident's last failure and its resolution (asks Dify), shown by the next edit."""
        row = self.incidents.get(incident_id)
        if (
            self._successes is None
            or row is None
            or row["state"] != "resolved"
            or row.get("successes") is not None
            or not row.get("last_seen")
            or not row.get("resolved_at")
        ):
            return
        try:
            successes = self._successes(row["app_id"], int(row["last_seen"]) + 1, int(row["resolved_at"]))
        except WflogsError as exc:
            log.info("cannot count successful runs since the last failure: %s", exc)
            return
        if successes:
            self.incidents.set_successes(incident_id, successes)

    def mute_app(
        self,
        *,
        app_id: str,
        app_name: str,
        channel: str,
        seconds: int,
        reason: str | None,
        user: str,
        now: int,
    ) -> int:
        """Mute a whole app for maintenance; its channel is told now and when it ends."""
        with self.store.transaction():
            mute_id = self.incidents.add_mute(
                {
                    "app_id": app_id,
                    "app_name": app_name,
                    "channel": channel,
                    "incident_id": None,
                    "until": now + seconds,
                    "by_user": user,
                    "reason": reason,
                    "created_at": now,
                }
            )
            self.incidents.add_event(
                None, channel, ifmt.muted_text(user, now + seconds, app_name, reason), now
            )
        return mute_id

    def unmute(self, mute_id: int, user: str, now: int, *, apps: set[str] | None = None) -> str:
        """End mute number ``mute_id`` (only of one of ``apps`` when given)."""
        mute = self.incidents.mute(mute_id)
        refusal = f"There is no mute number {mute_id} in force; `/wflogs mutes` lists them."
        if mute is None or (apps is not None and mute["app_id"] not in apps):
            return refusal
        if not end_mute(self.store, mute, now, user):
            return refusal
        return f"Mute {mute_id} ended."

    def active_mutes(self, now: int) -> list[dict[str, Any]]:
        """The mutes in force."""
        return self.incidents.active_mutes(now)
