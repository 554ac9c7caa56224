"""The poller: reads each app's failed and stopped runs and puts new ones in the outbox.

Dify's log list is ordered by a second-precision time with no tie-breaker,
paged by offset, and (from Dify 1.11) a row carries its run's START time while
its status turns ``failed`` minutes later. So each cycle re-reads a look-back
window ``[checked_until - lookback, now]`` and compares Dify's ``total`` (a
fresh COUNT) with how many of those logs are already known. Equal: nothing new,
one request per status. Different: the window is halved until each part fits
one page, so only the parts that changed are read, and the order of rows
within a page never matters. What has been seen is remembered per log id, so
re-reading never alerts twice; the cursor moves only when a whole window was read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bot.config import AppConfig, Settings, alert_channel_for
from bot.dify import MAX_LIMIT, DifyClient
from bot.errors import DifyError, WflogsError
from bot.records import LogEntry
from bot.text import normalize_error
from storage import Store

log = logging.getLogger(__name__)

ALERT_STATUSES = ("failed", "stopped")
PARTIAL = "partial-succeeded"
GONE = "gone"
# Rounds of offset paging inside one crowded second before giving up until next cycle.
SAME_SECOND_ROUNDS = 8


class IncompleteRead(WflogsError):
    """A window could not be read completely this cycle (the next cycle tries again)."""


@dataclass
class AppResult:
    """What one poll of one app did."""

    app: AppConfig
    name: str
    ok: bool = True
    error: str | None = None
    new_alerts: int = 0
    requests: int = 0
    window: tuple[int, int] | None = None


@dataclass
class _Read:
    """Rows gathered for one status, and whether the window was read to the end."""

    rows: dict[str, LogEntry] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)


class Poller:
    """Polls every configured app; thread-safe across apps."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        clients: dict[str, DifyClient],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self._now = now
        self._names: dict[str, str] = {}

    # -- names -------------------------------------------------------------------

    def app_name(self, app: AppConfig) -> str:
        """The name alerts show: configured, else Dify's (asked once per process)."""
        if app.name:
            return app.name
        if app.id in self._names:
            return self._names[app.id]
        try:
            info = self.clients[app.id].info()
        except DifyError as exc:
            log.warning("cannot read the name of %s yet: %s", app.label, exc)
            stored = (self.store.app_state(app.id) or {}).get("name")
            if stored:
                # Known from an earlier run: use it for the rest of this process rather than
                # asking /info (with its retries) again on every cycle and search while Dify is down.
                self._names[app.id] = stored
            return stored or app.label
        name = info.name or app.label
        self._names[app.id] = name
        self.store.update_app_state(app.id, name=name, dify_version=info.dify_version)
        return name

    # -- one cycle ---------------------------------------------------------------

    def poll_all(self) -> list[AppResult]:
        """Poll every app concurrently (bounded); never raises for one app's failure."""
        apps = list(self.settings.apps)
        if len(apps) == 1:
            return [self.poll_app(apps[0])]
        workers = min(self.settings.concurrency, len(apps))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll") as pool:
            return list(pool.map(self.poll_app, apps))

    def poll_app(self, app: AppConfig) -> AppResult:
        """One cycle for one app: read its window, enqueue new alerts, move its cursor."""
        client = self.clients[app.id]
        before_requests = client.requests
        name = self.app_name(app)
        result = AppResult(app=app, name=name)
        now = int(self._now())
        state = self.store.app_state(app.id) or {}
        if state.get("checked_until") is None:
            # First read of this app; keep the first attempt's start if that one failed.
            if state.get("alert_from") is None:
                state["alert_from"] = now - self.settings.backfill
                self.store.update_app_state(app.id, alert_from=state["alert_from"], first_polled=now)
            alert_from = int(state["alert_from"])
            after = alert_from - self.settings.lookback
        else:
            alert_from = int(state["alert_from"])
            after = int(state["checked_until"]) - self.settings.lookback
        before = now
        result.window = (after, before)
        try:
            for status in ALERT_STATUSES:
                read = _Read()
                self._read(client, app, status, after, before, read)
                result.new_alerts += self._record(app, name, status, read, alert_from)
            if app.alert_partial:
                read = _Read()
                self._read_unfiltered(client, app, after, before, read)
                result.new_alerts += self._record(app, name, PARTIAL, read, alert_from)
        except WflogsError as exc:
            result.ok = False
            result.error = str(exc)
            self.store.update_app_state(app.id, last_error=str(exc))
            log.error("polling %s failed: %s", name, exc)
        else:
            with self.store.transaction():
                self.store.update_app_state(app.id, checked_until=before, last_ok=now, last_error=None)
                self.store.prune_seen(app.id, before - self.settings.lookback)
        result.requests = client.requests - before_requests
        return result

    # -- reading windows ---------------------------------------------------------

    def _read(self, client: DifyClient, app: AppConfig, status: str, a: int, b: int, read: _Read) -> None:
        """Gather the rows of ``status`` in [a, b] that may be new, halving as needed."""
        known = self.store.known_count(app.id, status, a, b)
        page = client.logs(status=status, after=a, before=b, limit=MAX_LIMIT)
        if page.total == known:
            return
        if page.total <= MAX_LIMIT:
            if len(page.data) != page.total:
                # The COUNT and the rows disagree: something changed in between. Ask again.
                page = client.logs(status=status, after=a, before=b, limit=MAX_LIMIT)
                if len(page.data) != page.total:
                    raise IncompleteRead(f"{app.label}: {status} logs kept changing while read")
            self._leaf(app, status, a, b, page.data, read)
            return
        if a >= b:
            self._read_crowded_second(client, app, status, a, page.total, read)
            return
        mid = (a + b) // 2
        self._read(client, app, status, mid + 1, b, read)
        self._read(client, app, status, a, mid, read)

    def _leaf(self, app: AppConfig, status: str, a: int, b: int, rows: list[LogEntry], read: _Read) -> None:
        """All rows of ``status`` in [a, b]: keep them; known ones now absent are gone."""
        ids = set()
        for row in rows:
            read.rows[row.log_id] = row
            ids.add(row.log_id)
        for known_id in self._known_ids(app, status, a, b) - ids:
            read.gone.add(known_id)

    def _known_ids(self, app: AppConfig, status: str, a: int, b: int) -> set[str]:
        rows = self.store.query(
            "select log_id from seen where app_id = ? and status = ? and created_at between ? and ?",
            [app.id, status, a, b],
        )
        return {row["log_id"] for row in rows}

    def _read_crowded_second(
        self, client: DifyClient, app: AppConfig, status: str, second: int, total: int, read: _Read
    ) -> None:
        """More than a page of logs in one second: offset pages, whose order varies per call,
        are read again until every row has been seen."""
        found: dict[str, LogEntry] = {}
        for _round in range(SAME_SECOND_ROUNDS):
            pages = -(-total // MAX_LIMIT)
            for number in range(1, pages + 1):
                page = client.logs(status=status, after=second, before=second, page=number, limit=MAX_LIMIT)
                total = page.total
                for row in page.data:
                    found[row.log_id] = row
            if len(found) >= total:
                self._leaf(app, status, second, second, list(found.values()), read)
                return
        # Keep what was found (it is alerted now) and read the rest next cycle.
        read.rows.update(found)
        raise IncompleteRead(
            f"{app.label}: {total} {status} logs share one second; {len(found)} read so far, "
            "the rest next cycle"
        )

    def _read_unfiltered(self, client: DifyClient, app: AppConfig, a: int, b: int, read: _Read) -> None:
        """Every row in [a, b] (Dify cannot filter partial successes); keep the partial ones."""
        page = client.logs(after=a, before=b, limit=MAX_LIMIT)
        if page.total <= MAX_LIMIT or a >= b:
            rows = list(page.data)
            number = 1
            while a >= b and page.has_more:
                number += 1
                page = client.logs(after=a, before=b, page=number, limit=MAX_LIMIT)
                rows.extend(page.data)
            for row in rows:
                if row.status == PARTIAL:
                    read.rows[row.log_id] = row
            return
        mid = (a + b) // 2
        self._read_unfiltered(client, app, mid + 1, b, read)
        self._read_unfiltered(client, app, a, mid, read)

    # -- recording ---------------------------------------------------------------

    def _record(self, app: AppConfig, name: str, status: str, read: _Read, alert_from: int) -> int:
        """Remember what was read and enqueue alerts for new runs, atomically."""
        if not read.rows and not read.gone:
            return 0
        known = self.store.known_statuses(app.id, list(read.rows) + list(read.gone))
        channel = alert_channel_for(self.settings, app) or "terminal"
        now = int(self._now())
        seen: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        changes: dict[str, str] = {}
        for log_id in read.gone:
            if known.get(log_id) not in (None, GONE) and log_id not in read.rows:
                changes[log_id] = GONE
        # Oldest first, so the outbox (and Slack) tells the story in order.
        for row in sorted(read.rows.values(), key=lambda r: (r.ended_at, r.created_at, r.log_id)):
            row_status = row.status or status
            previous = known.get(row.log_id)
            if previous is not None:
                if previous != row_status:
                    changes[row.log_id] = row_status
                continue
            alert = row.ended_at >= alert_from
            seen.append(
                {
                    "log_id": row.log_id,
                    "status": row_status,
                    "created_at": row.created_at,
                    "alerted": int(alert),
                }
            )
            if alert:
                alerts.append(
                    {
                        "log_id": row.log_id,
                        "channel": channel,
                        "status": row_status,
                        "group_key": f"{row_status}:{normalize_error(row.error)}",
                        "entry": row.to_dict(),
                        "app_name": name,
                        "console_url": app.console_url,
                        "enqueued_at": now,
                    }
                )
        return self.store.record_seen(app.id, seen, alerts, changes)
