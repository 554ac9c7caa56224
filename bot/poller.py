"""The poller: reads each app's failed and stopped runs and puts new ones in the outbox.

Dify's log list is ordered by a second-precision time with no tie-breaker,
paged by offset, and (from Dify 1.11) a row carries its run's START time while
its status turns ``failed`` minutes later. So each cycle re-reads a look-back
window ``[checked_until - lookback, now]`` per status, and what has been seen is
remembered per log id, so re-reading never alerts twice.

Reading a window costs about one request per 100 new rows, and one request per
status when nothing changed:

- The first page of any time range (newest first, up to 100 rows) is one SQL
  snapshot: every second NEWER than the page's oldest second is complete in it.
  Those rows are compared id by id with what is known (a deleted log cannot
  hide a new one there); the older rest is compared by count (``total`` minus
  the rows above), and read only when the counts differ.
- The rest is read newest first from the page's oldest second down (that second
  is read again whole, unless a steady storm suggests the page ended between
  two seconds, which the next counts confirm), in parallel where it is large:
  split where the known rows, or the density of the page just read, put half.
- A second with more than 100 rows cannot be split by time: its offset pages
  are read (in a stable order one round covers it), then first pages again,
  each a fresh sample of the shuffled order, until every row was seen or a
  budget is spent; what was found is alerted either way and the next cycle
  continues.
- ``total`` (a separate COUNT) only decides what to read; rows come from pages
  alone, so a storm that changes the count between the two statements costs
  nothing but another look next cycle.

The cursor moves only when a whole window was read. An app's failure (Dify
down, a bug, a locked database) stays that app's: the other apps are polled,
and when Dify fails mid-read, what was read before is still alerted.

What counting cannot see: below the newest 100 logs of a window, a known log
deleted in Dify and a new failure in the same cycle cancel out until anything
else changes the count of that part; a new failure older than the deleted log
can leave the window unread.

Log ids are UUIDs, so a new key or URL of an app recognises what the old one
alerted, and takes over its cursor when the old one is no longer configured.
"""

from __future__ import annotations

import bisect
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from bot.config import AppConfig, Settings, alert_channel_for
from bot.console import ConsoleAppSource, failed_node
from bot.dify import MAX_LIMIT, DifyClient, iso
from bot.errors import DifyBadRequest, DifyError, DifyNotFound, WflogsError
from bot.logs import Reminder
from bot.records import LogEntry, LogPage
from bot.text import normalize_error
from storage import StorageError, Store, subscriptions
from storage.incidents import IncidentStore

log = logging.getLogger(__name__)
REMIND_EVERY = 300  # seconds between log lines about the same lasting failure

ALERT_STATUSES = ("failed", "stopped")
PARTIAL = "partial-succeeded"
GONE = "gone"
# Requests in flight for one app at once (a default Dify serves about ten in all).
READ_PARALLEL = 6
# Requests for one crowded second per cycle: this many per page of it, plus one round.
# With an order shuffled on every call, 167 logs are then all seen but for a chance of about
# one in 100,000, 250 of about one in 10,000; a crowd of 1,000 may need a second cycle.
CROWDED_SAMPLES_PER_PAGE = 9
# A storm's range is split for parallel reading only when each part gets a few pages: every
# part ends with a page that is not full.
SPLIT_PAGES = 10
# Statuses of a run that has not ended; such a run leaving the look-back window is followed.
STILL_GOING = ("running", "paused")
# At most this many followed runs are looked at (one request each) per app and cycle.
MAX_LONG_CHECKS = 20


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
    # Set when part of the window could not be read this cycle (what was read is alerted).
    incomplete: str | None = None


@dataclass
class _Task:
    """One request: the first page of a time range, or a page of one crowded second."""

    status: str
    lo: int
    hi: int
    page: int = 1
    second: bool = False
    first: bool = False  # the first look at a status's window
    check: _Check | None = None


@dataclass
class _Check:
    """A second guessed complete on a page: the counts of the parts read below it confirm it.

    ``with_it`` is Dify's count of [lo, second]; the parts cover [lo, second - 1].
    """

    second: int
    with_it: int
    parts: int
    below: int = 0


@dataclass
class _Crowded:
    """Progress on one second holding more than a page of logs."""

    second: int
    total: int | None = None
    requests: int = 0
    in_flight: int = 0
    next_page: int = 1
    seen_here: set[str] = field(default_factory=set)
    done: bool = False
    round_done: bool = False  # every offset page was asked for once


@dataclass
class _StatusRead:
    """Everything read of one status in one window, and what is still open."""

    status: str
    known: dict[str, int]
    found: dict[str, LogEntry] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    crowded: dict[int, _Crowded] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # A round over a crowded second's pages left it incomplete: the order changes per call.
    shuffled: bool = False
    _known_times: list[int] = field(default_factory=list)
    _new_times: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._known_times = sorted(self.known.values())

    @property
    def complete(self) -> bool:
        return not self.notes

    def add(self, rows: Iterable[LogEntry]) -> set[str]:
        """Keep rows read; returns the ids not seen before (this cycle or earlier)."""
        fresh = set()
        for row in rows:
            if row.log_id not in self.found and row.log_id not in self.known:
                bisect.insort(self._new_times, row.created_at)
                fresh.add(row.log_id)
            self.found[row.log_id] = row
        return fresh

    def count(self, lo: int, hi: int) -> int:
        """Logs known to be in [lo, hi]: seen before or read this cycle, less those now gone."""
        known = bisect.bisect_right(self._known_times, hi) - bisect.bisect_left(self._known_times, lo)
        new = bisect.bisect_right(self._new_times, hi) - bisect.bisect_left(self._new_times, lo)
        gone = sum(1 for log_id in self.gone if lo <= self.known[log_id] <= hi)
        return known + new - gone

    def settle(self, lo: int, hi: int, present: set[str]) -> None:
        """[lo, hi] was read whole: known logs there that were not in it are gone."""
        for log_id, created_at in self.known.items():
            if lo <= created_at <= hi and log_id not in present:
                self.gone.add(log_id)

    def known_split(self, lo: int, hi: int) -> int | None:
        """A time in (lo, hi] with about half the known logs of [lo, hi] at or after it."""
        left = bisect.bisect_left(self._known_times, lo)
        right = bisect.bisect_right(self._known_times, hi)
        if right - left < 2:
            return None
        middle = self._known_times[(left + right) // 2]
        return middle if lo < middle <= hi else None


class _ReadFailed(Exception):
    """A request failed while reading; carries what was read before it."""

    def __init__(self, reads: dict[str, _StatusRead], error: Exception) -> None:
        super().__init__(str(error))
        self.reads = reads
        self.error = error


class Poller:
    """Polls every configured app; thread-safe across apps."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        clients: dict[str, DifyClient],
        now: Callable[[], float] = time.time,
        parallel: int = READ_PARALLEL,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self._now = now
        self._names: dict[str, str] = {}
        # A lasting failure (a rejected key, Dify down) is logged once, then at most every few minutes.
        self._remind = Reminder(REMIND_EVERY, now=now)
        self._parallel = max(1, parallel)
        # Every log request of every app shares this bound (apps poll concurrently).
        self._in_flight = threading.BoundedSemaphore(max(1, settings.concurrency))

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
            if self._remind.due(f"name:{app.id}"):
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
        if not apps:
            return []  # a workspace with nothing (yet) to watch
        if len(apps) == 1:
            return [self._poll_guarded(apps[0])]
        workers = min(self.settings.concurrency, len(apps))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll") as pool:
            return list(pool.map(self._poll_guarded, apps))

    def _poll_guarded(self, app: AppConfig) -> AppResult:
        """:meth:`poll_app`, with anything unexpected turned into that app's error."""
        try:
            return self.poll_app(app)
        except (sqlite3.Error, StorageError) as exc:
            # The database failed (full, locked, read-only): `wflogs run` says so once a minute and
            # /healthz turns 503; a traceback per app and cycle would only bury that line. Nothing
            # is recorded (it would fail too) and the cursor did not move: the next cycle reads again.
            log.debug("polling %s stopped: the database failed: %s", app.label, exc)
            error = f"the database failed ({exc}); what was read is read again once it works"
            return AppResult(app=app, name=self._names.get(app.id) or app.label, ok=False, error=error)
        except Exception as exc:
            # A bug, a locked database, a body httpx cannot decode: this app's cycle failed,
            # the others (and delivery, and health checks) go on; its cursor did not move.
            log.exception("polling %s failed unexpectedly", app.label)
            error = (
                f"unexpected error while polling ({type(exc).__name__}: {str(exc)[:300]}); "
                "wflogs retries every cycle, see its log for details"
            )
            try:
                self.store.update_app_state(app.id, last_error=error)
            except Exception:
                log.exception("cannot record the error of %s", app.label)
            return AppResult(app=app, name=self._names.get(app.id) or app.label, ok=False, error=error)

    def poll_app(self, app: AppConfig) -> AppResult:
        """One cycle for one app: read its window, enqueue new alerts, move its cursor."""
        client = self.clients[app.id]
        if app.mode == "advanced-chat":
            return self._poll_runs(app, client)  # type: ignore[arg-type]
        before_requests = client.requests
        name = self.app_name(app)
        result = AppResult(app=app, name=name)
        now = int(self._now())
        state = self.store.app_state(app.id) or {}
        if not state.get("first_polled") and state.get("checked_until") is None:
            try:
                state = self._adopt_predecessor(client, app) or state
            except DifyError as exc:
                # Asked again next cycle, before anything is backfilled.
                result.ok, result.error = False, str(exc)
                self._failed(app, name, exc)
                result.requests = client.requests - before_requests
                return result
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
        error: Exception | None = None
        try:
            reads = self._read_window(client, app, ALERT_STATUSES, after, before)
        except _ReadFailed as failed:
            reads, error = failed.reads, failed.error
        # Whatever was read is alerted now, even when the rest failed or must wait.
        for status in ALERT_STATUSES:
            result.new_alerts += self._record(app, name, status, reads[status], alert_from)
        if error is None and app.alert_partial:
            try:
                partial = _StatusRead(PARTIAL, {})
                self._read_unfiltered(client, app, after, before, partial)
                result.new_alerts += self._record(app, name, PARTIAL, partial, alert_from)
            except WflogsError as exc:
                error = exc
        notes = [note for status in ALERT_STATUSES for note in reads[status].notes]
        if error is not None:
            result.ok = False
            result.error = str(error)
            self.store.update_app_state(app.id, last_error=str(error))
            self._failed(app, name, error)
        elif notes:
            # Not an outage: what was found is alerted, the cursor waits, the next cycle goes on.
            result.incomplete = "; ".join(notes)
            self.store.update_app_state(app.id, last_ok=now, last_error=None)
            log.warning("%s: %s", name, result.incomplete)
        else:
            if self._remind.clear(f"poll:{app.id}"):
                log.info("polling %s works again", name)
            edge = before - self.settings.lookback  # the window's start from now on
            try:
                result.new_alerts += self._follow_long_runs(client, app, name, edge, alert_from, state)
            except DifyError as exc:
                # Looked at again next cycle: the mark did not move and the seen rows are kept.
                log.warning("%s: runs outliving the look-back not checked this cycle: %s", name, exc)
            marked = (self.store.app_state(app.id) or {}).get("long_checked_until")
            with self.store.transaction():
                self.store.update_app_state(app.id, checked_until=before, last_ok=now, last_error=None)
                # Seen rows stay until the runs that left the window were looked at.
                self.store.prune_seen(app.id, min(edge, int(marked) + 1) if marked is not None else edge)
        result.requests = client.requests - before_requests
        return result

    def _failed(self, app: AppConfig, name: str, error: Exception) -> None:
        """ERROR the first time; while the same app keeps failing, a reminder every REMIND_EVERY s."""
        if self._remind.due(f"poll:{app.id}"):
            log.error(
                "polling %s failed: %s (said again every %ds while it lasts)", name, error, REMIND_EVERY
            )
        else:
            log.debug("polling %s failed: %s", name, error)

    # -- chatflows: the console's run list ------------------------------------------------------

    def _poll_runs(self, app: AppConfig, source: ConsoleAppSource) -> AppResult:
        """One cycle for a chatflow: its failed and stopped production runs in the look-back window.

        The run list has no time filter, is newest first by start time and pages with a cursor
        that skips the runs sharing the cursor's start time: each page after the first starts
        from the last run of an EARLIER second than the page's oldest, so that second is read
        again whole (what was already read is recognised by id). A quiet cycle costs one request
        per status; a new run one more (its detail, for the error and the end user)."""
        before_requests = source.requests
        name = self.app_name(app)
        result = AppResult(app=app, name=name)
        now = int(self._now())
        state = self.store.app_state(app.id) or {}
        if state.get("alert_from") is None:
            state["alert_from"] = now - self.settings.backfill
            self.store.update_app_state(app.id, alert_from=state["alert_from"], first_polled=now)
        alert_from = int(state["alert_from"])
        start = int(state["checked_until"]) if state.get("checked_until") is not None else alert_from
        after = start - self.settings.lookback
        result.window = (after, now)
        reads: dict[str, _StatusRead] = {}
        try:
            for status in ALERT_STATUSES:
                reads[status] = self._read_runs(source, app, status, after, now, alert_from)
        except DifyError as exc:
            for status, read in reads.items():
                result.new_alerts += self._record(app, name, status, read, alert_from)
            result.ok, result.error = False, str(exc)
            self.store.update_app_state(app.id, last_error=str(exc))
            self._failed(app, name, exc)
            result.requests = source.requests - before_requests
            return result
        for status, read in reads.items():
            result.new_alerts += self._record(app, name, status, read, alert_from)
        notes = [note for read in reads.values() for note in read.notes]
        if notes:
            result.incomplete = "; ".join(notes)
            self.store.update_app_state(app.id, last_ok=now, last_error=None)
            log.warning("%s: %s", name, result.incomplete)
        else:
            with self.store.transaction():
                self.store.update_app_state(app.id, checked_until=now, last_ok=now, last_error=None)
                self.store.prune_seen(app.id, now - self.settings.lookback)
        result.requests = source.requests - before_requests
        return result

    def _read_runs(
        self, source: ConsoleAppSource, app: AppConfig, status: str, after: int, before: int, alert_from: int
    ) -> _StatusRead:
        read = _StatusRead(status, self._known(app, status, after, before))
        last_id: str | None = None
        while True:
            try:
                with self._in_flight:
                    page = source.runs(status=status, last_id=last_id)
            except DifyBadRequest:
                if last_id is None:
                    raise
                # The cursor's run is gone (Dify's log clean-up): the next cycle reads again.
                read.notes.append(f"{status} runs: the list changed while it was read")
                return read
            rows = [item for item in page.get("data") or [] if item.get("id")]
            inside = [item for item in rows if int(item.get("created_at") or 0) >= after]
            fresh = [item for item in inside if str(item["id"]) not in read.found]
            fresh = [item for item in fresh if str(item["id"]) not in read.known]
            for item in [
                i for i in fresh if int(i.get("finished_at") or i.get("created_at") or 0) < alert_from
            ]:
                # Ended before wflogs alerts from (history): remembered, not alerted, no detail needed.
                read.found[str(item["id"])] = LogEntry.from_run(item)
                fresh.remove(item)
            if fresh:
                # One detail per new run (the list has no error): in parallel, the console client
                # bounds how many are in flight.
                workers = min(self._parallel, len(fresh))
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detail") as pool:
                    details = list(pool.map(lambda item: self._run_detail(source, str(item["id"])), fresh))
                for item, detail in zip(fresh, details, strict=True):
                    read.found[str(item["id"])] = LogEntry.from_run(item, detail)
            if len(inside) < len(rows) or not page.get("has_more") or not rows:
                return read
            oldest = int(rows[-1].get("created_at") or 0)
            # The cursor skips runs sharing its start time: go on from the last run of an earlier
            # second, so the oldest second is read again whole.
            earlier = [item for item in rows if int(item.get("created_at") or 0) > oldest]
            if not earlier:
                read.notes.append(
                    f"more than {len(rows)} {status} runs started in one second ({iso(oldest)}); "
                    "some may be read only next cycle"
                )
                last_id = str(rows[-1]["id"])
            else:
                last_id = str(earlier[-1]["id"])
            if last_id in (None, ""):
                return read

    @staticmethod
    def _run_detail(source: ConsoleAppSource, run_id: str) -> dict[str, Any]:
        try:
            return source.run(run_id)
        except DifyNotFound:
            return {}

    # -- runs that outlive the look-back -------------------------------------------------------

    def _follow_long_runs(
        self, client: DifyClient, app: AppConfig, name: str, edge: int, alert_from: int, state: dict[str, Any]
    ) -> int:
        """Runs still going (running, or paused for human input) when their start time leaves the
        look-back window are remembered and looked at until they end: one that fails an hour or a
        day later is alerted then, once. A band of start times (a quarter of the look-back, at least
        a cycle) is read when it has left the window: one request when it holds at most a page."""
        now = int(self._now())
        mark = state.get("long_checked_until")
        if mark is None:
            # From now on; runs that left the window before wflogs watched them are not followed.
            self.store.follow_long_runs(app.id, [], edge - 1)
            mark = edge - 1
        new = 0
        step = max(self.settings.poll_interval, self.settings.lookback // 4)
        if edge - 1 - int(mark) >= step:
            band = _StatusRead("any", {})
            self._read_band(client, int(mark) + 1, edge - 1, band)
            ended = {status: _StatusRead(status, {}) for status in (*ALERT_STATUSES, PARTIAL)}
            going = []
            for row in band.found.values():
                if row.status in STILL_GOING:
                    going.append(
                        {
                            "log_id": row.log_id,
                            "run_id": row.run_id or row.log_id,
                            "status": row.status,
                            "started_at": row.run_created_at or row.created_at,
                            "found_at": now,
                            "next_check": now,
                            "entry": row.to_dict(),
                        }
                    )
                elif row.status in ended and (row.status != PARTIAL or app.alert_partial):
                    # It ended after it left the window, before this look: alerted now (seen ones are not).
                    ended[row.status].found[row.log_id] = row
            for status, read in ended.items():
                new += self._record(app, name, status, read, alert_from)
            self.store.follow_long_runs(app.id, going, edge - 1)
        for run in self.store.long_runs_due(app.id, now, MAX_LONG_CHECKS):
            new += self._check_long_run(client, app, name, run, alert_from, now)
        return new

    def _check_long_run(
        self, client: DifyClient, app: AppConfig, name: str, run: dict[str, Any], alert_from: int, now: int
    ) -> int:
        stuck_check = self.store.stuck_next_check(app.id, run["log_id"])
        if stuck_check is not None:
            # The stuck-run watch looks at it already: ask Dify once it has seen it end.
            self.store.long_run_checked(
                app.id, run["log_id"], max(stuck_check, now + self.settings.poll_interval)
            )
            return 0
        try:
            detail = client.run(run["run_id"])
        except DifyNotFound:
            self.store.long_run_ended(app.id, run["log_id"])
            return 0
        status = str(detail.get("status") or "")
        if not status or status in STILL_GOING:
            # Every cycle for its first hour, then a tenth of how long it has been followed, at most an hour.
            followed = now - int(run["found_at"])
            pause = self.settings.poll_interval if followed < 3600 else min(3600, followed // 10)
            self.store.long_run_checked(app.id, run["log_id"], now + pause)
            return 0
        new = 0
        if status in ALERT_STATUSES or (status == PARTIAL and app.alert_partial):
            entry = replace(
                LogEntry.from_dict(run["entry"]),
                status=status,
                error=detail.get("error"),
                finished_at=int(detail.get("finished_at") or now),
                elapsed_time=detail.get("elapsed_time"),
                total_tokens=detail.get("total_tokens"),
            )
            read = _StatusRead(status, {})
            read.found[entry.log_id] = entry
            new = self._record(app, name, status, read, alert_from)
        self.store.long_run_ended(app.id, run["log_id"])
        return new

    def _read_band(self, client: DifyClient, a: int, b: int, read: _StatusRead) -> None:
        """Every row with a start in [a, b], whatever its status."""
        page = client.logs(after=a, before=b, limit=MAX_LIMIT)
        if page.total <= MAX_LIMIT or a >= b:
            rows = list(page.data)
            number = 1
            while a >= b and page.has_more:
                number += 1
                page = client.logs(after=a, before=b, page=number, limit=MAX_LIMIT)
                rows.extend(page.data)
            read.add(rows)
            return
        mid = (a + b) // 2
        self._read_band(client, mid + 1, b, read)
        self._read_band(client, a, mid, read)

    # -- identities ----------------------------------------------------------------

    def _adopt_predecessor(self, client: DifyClient, app: AppConfig) -> dict[str, Any] | None:
        """A new identity (new key, URL spelled differently) of an app wflogs already watched
        takes over that app's cursor, so the time in between is read, not backfilled.

        Candidates are identities no longer configured; one is the same app when a run it
        alerted is found through this key (a run's UUID as keyword matches exactly that run).
        """
        configured = {configured_app.id for configured_app in self.settings.apps}
        for candidate in self.store.orphan_identities(configured, limit=3):
            run_ids = self.store.recent_alerted_run_ids(candidate["app_id"], limit=1)
            if not run_ids:
                continue
            page = client.logs(keyword=run_ids[0], limit=1)
            if not any(row.run_id == run_ids[0] for row in page.data):
                continue
            log.info("%s was watched before under another key or URL: going on from there", app.label)
            return self.store.adopt_identity(candidate["app_id"], app.id)
        return None

    # -- reading windows ---------------------------------------------------------

    def _read_window(
        self, client: DifyClient, app: AppConfig, statuses: Iterable[str], a: int, b: int
    ) -> dict[str, _StatusRead]:
        """Read [a, b] for each status, up to ``parallel`` requests at once.

        Workers only make requests; this thread decides what to read next, so the
        bookkeeping needs no lock. A Dify error stops new requests and raises
        :class:`_ReadFailed` carrying what was read; anything else propagates.
        """
        reads = {status: _StatusRead(status, self._known(app, status, a, b)) for status in statuses}
        # Ranges go first: they find the work (and the crowded seconds) that samples then share.
        # Each status is first looked at after the previous one answered, so an outage costs
        # one failed request (with its retries), not one per status.
        starts = deque(_Task(status, a, b, first=True) for status in reads)
        ranges: deque[_Task] = deque([starts.popleft()])
        samples: deque[_Task] = deque()
        pending: dict[Future[LogPage], _Task] = {}
        failure: Exception | None = None
        with ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="read") as pool:
            while ranges or samples or pending:
                while (ranges or samples) and len(pending) < self._parallel and failure is None:
                    task = ranges.popleft() if ranges else samples.popleft()
                    pending[pool.submit(self._fetch, client, task)] = task
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        page = future.result()
                    except DifyError as exc:
                        failure = failure or exc
                        self._abandon(reads[task.status], task)
                        continue
                    if task.first and starts:
                        ranges.appendleft(starts.popleft())
                    read = reads[task.status]
                    if task.second:
                        follow = self._on_second(read, task, page)
                    else:
                        chains = len(ranges) + sum(1 for t in pending.values() if not t.second)
                        spare = self._parallel - len(pending) - len(ranges) - len(samples)
                        follow = self._on_range(read, task, page, split=spare > 0 or chains < 3)
                    if failure is None:
                        for follow_task in follow:
                            (samples if follow_task.second else ranges).append(follow_task)
                if failure is not None:
                    ranges.clear()
                    samples.clear()
        if failure is not None:
            raise _ReadFailed(reads, failure)
        return reads

    def _fetch(self, client: DifyClient, task: _Task) -> LogPage:
        with self._in_flight:
            return client.logs(
                status=task.status, after=task.lo, before=task.hi, page=task.page, limit=MAX_LIMIT
            )

    def _known(self, app: AppConfig, status: str, a: int, b: int) -> dict[str, int]:
        rows = self.store.query(
            "select log_id, created_at from seen "
            "where app_id = ? and status = ? and created_at between ? and ?",
            [app.id, status, a, b],
        )
        return {row["log_id"]: int(row["created_at"]) for row in rows}

    def _abandon(self, read: _StatusRead, task: _Task) -> None:
        if task.second:
            crowded = read.crowded[task.lo]
            crowded.in_flight -= 1
        read.notes.append(f"{task.status} logs from {iso(task.lo)} to {iso(task.hi)} not read")

    def _on_range(self, read: _StatusRead, task: _Task, page: LogPage, *, split: bool) -> list[_Task]:
        """The first page of [lo, hi]: settle what it proves, and say what to read next."""
        lo, hi = task.lo, task.hi
        rows = [row for row in page.data if lo <= row.created_at <= hi]
        read.add(rows)
        ids = {row.log_id for row in rows}
        follow: list[_Task] = []
        check = task.check
        if check is not None:
            check.parts -= 1
            check.below += page.total
            if check.parts == 0 and check.with_it - check.below > read.count(check.second, check.second):
                follow.append(_Task(task.status, check.second, check.second))  # it was cut after all
        return follow + self._next_ranges(read, task, page, rows, ids, split=split)

    def _next_ranges(
        self,
        read: _StatusRead,
        task: _Task,
        page: LogPage,
        rows: list[LogEntry],
        ids: set[str],
        *,
        split: bool,
    ) -> list[_Task]:
        lo, hi = task.lo, task.hi
        if len(page.data) < MAX_LIMIT:
            # Fewer rows than asked for: this one SELECT returned every row of the range.
            read.settle(lo, hi, ids)
            return []
        if not rows:
            read.notes.append(f"Dify answered {task.status} logs outside {iso(lo)} to {iso(hi)}")
            return []
        oldest = min(row.created_at for row in rows)
        newest = max(row.created_at for row in rows)
        above = sum(1 for row in rows if row.created_at > oldest)
        read.settle(oldest + 1, hi, ids)  # newer than the page's oldest second: all on the page
        rest = page.total - above  # logs in [lo, oldest] by Dify's count
        if rest == read.count(lo, oldest):
            return []  # nothing changed below (as far as counting can tell)
        if oldest < newest:
            density = len(rows) / (newest - oldest + 1)
            per_second = Counter(row.created_at for row in rows)
            cut_here = per_second.pop(oldest)
            steady = set(per_second.values())
            if len(steady) > 1 or cut_here < min(steady):
                # The oldest second may be cut: go on from it (read again whole), maybe in parts.
                return self._split(read, task.status, lo, oldest, rest, density=density, split=split)
            # A steady storm (every whole second on the page holds as many rows) and the oldest
            # second holds as many too: the page probably ended between two seconds. Go on
            # below it; the counts of what is read next tell whether it really was whole.
            if lo == oldest:
                return [_Task(task.status, oldest, oldest)]
            tasks = self._split(
                read, task.status, lo, oldest - 1, rest - cut_here, density=density, split=split
            )
            check = _Check(oldest, rest, parts=len(tasks))
            for part in tasks:
                part.check = check
            return tasks
        # A full page of one second: it may hold more than a page. Read it on its own.
        tasks = self._start_second(read, task.status, oldest, sample=ids)
        if lo < oldest:
            below = max(rest - len(rows), 0)
            tasks += self._split(read, task.status, lo, oldest - 1, below, density=len(rows), split=split)
        return tasks

    def _split(
        self, read: _StatusRead, status: str, lo: int, hi: int, total: int, *, density: float, split: bool
    ) -> list[_Task]:
        """Read [lo, hi] (``total`` logs by Dify's count) next: as one range, or two parts in parallel."""
        known = read.count(lo, hi)
        mostly_known = known * 2 >= total
        if lo >= hi or total <= MAX_LIMIT:
            return [_Task(status, lo, hi)]
        if mostly_known:
            # A few changes among many known logs: halve where the known logs are; only a half
            # whose count differs is read further.
            cut = read.known_split(lo, hi) or (lo + hi + 1) // 2
        elif split and total >= SPLIT_PAGES * MAX_LIMIT:
            # Mostly new (a storm) and a worker to spare: guess from the density of the page
            # just read where half of the rest lies; a wrong guess costs a request, never a row.
            cut = hi - int(total / 2 / max(density, 1e-9))
        else:
            return [_Task(status, lo, hi)]
        cut = min(max(cut, lo + 1), hi)
        return [_Task(status, cut, hi), _Task(status, lo, cut - 1)]

    def _start_second(self, read: _StatusRead, status: str, second: int, sample: set[str]) -> list[_Task]:
        crowded = read.crowded.get(second)
        if crowded is None:
            crowded = read.crowded[second] = _Crowded(second)
        elif crowded.done:
            return []
        crowded.seen_here |= sample
        if read.shuffled:
            # Another second showed that the order changes per call: sample first pages.
            crowded.round_done = True
            crowded.next_page = 1
        else:
            # The page just read was this second's first page: ask for the second page, which
            # also says how many logs the second holds.
            crowded.next_page = 2
        return self._next_samples(read, status, crowded)

    def _on_second(self, read: _StatusRead, task: _Task, page: LogPage) -> list[_Task]:
        """A page of one crowded second: done when every log of it was seen, else sample again."""
        crowded = read.crowded[task.lo]
        crowded.in_flight -= 1
        crowded.requests += 1
        rows = [row for row in page.data if row.created_at == task.lo]
        fresh = read.add(rows)
        crowded.seen_here |= {row.log_id for row in rows}
        first_total = crowded.total is None and not crowded.round_done
        crowded.total = page.total
        if crowded.done:
            return []
        if len(crowded.seen_here) >= page.total:
            crowded.done = True
            read.settle(task.lo, task.lo, crowded.seen_here)
            return []
        if read.count(task.lo, task.lo) >= page.total and not read.gone:
            crowded.done = True  # what is missing here was seen in earlier cycles
            return []
        pages = max(1, math.ceil(page.total / MAX_LIMIT))
        if first_total:
            # One round over every page reads a stable order completely.
            crowded.next_page = 3
            tasks = [_Task(task.status, task.lo, task.lo, page=n, second=True) for n in range(3, pages + 1)]
            crowded.in_flight += len(tasks)
            if tasks:
                crowded.next_page = pages + 1
                return tasks
        elif not fresh and task.page == crowded.next_page:
            crowded.next_page += 1  # this page keeps showing the same rows: look at another one
        return self._next_samples(read, task.status, crowded)

    def _next_samples(self, read: _StatusRead, status: str, crowded: _Crowded) -> list[_Task]:
        """The next page(s) of a crowded second, within its budget for this cycle."""
        if crowded.in_flight:
            return []
        total = crowded.total or 2 * MAX_LIMIT
        pages = max(1, math.ceil(total / MAX_LIMIT))
        budget = pages * CROWDED_SAMPLES_PER_PAGE + pages
        if crowded.requests >= budget:
            crowded.done = True
            read.notes.append(
                f"{total} {status} logs share one second ({iso(crowded.second)}); "
                f"{len(crowded.seen_here)} read so far, the rest next cycle"
            )
            return []
        if crowded.next_page > pages:
            crowded.next_page = 1
            if not crowded.round_done:
                crowded.round_done = read.shuffled = True
        # After the first round the order is known to change per call: a first page is then a
        # fresh sample of 100 rows, the most any request can bring.
        number = crowded.next_page
        crowded.in_flight += 1
        return [_Task(status, crowded.second, crowded.second, page=number, second=True)]

    def _read_unfiltered(self, client: DifyClient, app: AppConfig, a: int, b: int, read: _StatusRead) -> None:
        """Every row in [a, b] (Dify cannot filter partial successes); keep the partial ones."""
        band = _StatusRead("any", {})
        self._read_band(client, a, b, band)
        for row in band.found.values():
            if row.status == PARTIAL:
                read.found[row.log_id] = row

    # -- recording ---------------------------------------------------------------

    def _record(self, app: AppConfig, name: str, status: str, read: _StatusRead, alert_from: int) -> int:
        """Remember what was read and enqueue alerts for new runs, atomically."""
        if not read.found and not read.gone:
            return 0
        known = self.store.known_statuses(app.id, list(read.found) + list(read.gone))
        channel = alert_channel_for(self.settings, app) or "terminal"
        # Channels subscribed from Slack get the run too, as their own alert (never instead).
        # An app searchable only from some channels (``channels``) goes to no other through app:*.
        subscribed = [
            s
            for s in subscriptions.for_app(self.store, app.id)
            if s["channel"] != channel and (app.channels is None or s["channel"] in app.channels)
        ]
        now = int(self._now())
        seen: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        changes: dict[str, str] = {}
        for log_id in read.gone:
            if known.get(log_id) not in (None, GONE) and log_id not in read.found:
                changes[log_id] = GONE
        # Oldest first, so the outbox (and Slack) tells the story in order.
        for row in sorted(read.found.values(), key=lambda r: (r.ended_at, r.created_at, r.log_id)):
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
                        "subscription": 0,
                    }
                )
                routed = {channel}
                for sub in subscribed:
                    if sub["channel"] in routed:
                        continue
                    if not subscriptions.matches(sub, status=row_status, error=row.error):
                        continue
                    routed.add(sub["channel"])
                    alerts.append({**alerts[-1], "channel": sub["channel"], "subscription": 1})
        self._name_failed_nodes(app, channel, alerts)
        return self.store.record_seen(app.id, seen, alerts, changes)

    def _name_failed_nodes(self, app: AppConfig, channel: str, alerts: list[dict[str, Any]]) -> None:
        """Workspace mode: the first run of each group that opens a NEW incident gets the node that
        failed it (one request per new incident, not per run); a group with an open incident, or
        an app read with an ``app-`` key (the Service API has no node list), gets nothing."""
        nodes_of = getattr(self.clients.get(app.id), "nodes", None)
        if nodes_of is None or not alerts:
            return
        incidents = IncidentStore(self.store)
        done: set[tuple[str, str]] = set()
        for alert in alerts:
            shape = (alert["status"], alert["group_key"])
            if shape in done or alert["status"] != "failed":
                continue
            done.add(shape)
            if incidents.find_open(app.id, channel, alert["status"], alert["group_key"]) is not None:
                continue
            entry = alert["entry"]
            try:
                node = failed_node(nodes_of(entry.get("run_id") or entry["log_id"]))
            except DifyError as exc:
                log.info("cannot read the nodes of run %s: %s", entry.get("run_id"), exc)
                continue
            if node is not None:
                entry["node_title"] = node.get("title")
                entry["node_type"] = node.get("node_type")
                entry["node_error"] = node.get("error")
