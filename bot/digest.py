"""The daily digest: how each workflow app and chatflow did over the last 24 hours, every morning
(a chatflow's figures come from the console's run counts and run list: ``_fill_chatflow``).

Windows. A digest is scheduled at a local time (``WFLOGS_DIGEST_TIME``) in
``WFLOGS_TIMEZONE``. Its window is the 24 real hours that end at that instant,
``[S - 86400, S - 1]`` in whole seconds (Dify's bounds are inclusive, so the
next digest's window starts exactly at ``S``), and it is compared with the 24
hours before, ``[S - 172800, S - 86401]``. Across a DST change the window is
still 24 real hours, so figures compare like with like; the price is that, on
the two days a year when the clocks change, consecutive digests overlap by an
hour (spring) or leave an hour out (autumn). The message shows the window's
local start and end, so that is visible. A local time that does not exist
(inside the spring gap) is taken with the offset before the change; a time
that exists twice means its first occurrence.

Cost. Counts come from Dify's ``total`` (a ``limit=1`` request per status and
window: 8 requests). Rows are read only when needed and never more than a cap:

- a day with at most ``run_cap`` runs is read completely (every figure exact);
- otherwise failed and stopped runs are read completely when each is under
  ``failure_cap``, else sampled: failed runs hour by hour (24 requests whose
  ``total`` gives the exact hourly chart), stopped runs in a few time slices;
  slowest runs, tokens and partial successes come from a time-stratified
  sample of all runs. Sampled figures are weighted by each slice's ``total``
  and said to be sampled.

Complete reads never page by offset across seconds (Dify's order inside one
second changes from call to call): each request asks for the window up to the
oldest second of the previous page, keeping only rows newer than that second;
a single second holding more than a page is read in repeated rounds.

Posting. One message per app (apps have their own channels; one message per
app keeps within Slack's block limits and lets a team discuss an app in its
thread). The scheduled digest is planned once per app and local day: it is
recorded and planned in the journal of Slack effects in one transaction, and the
deliverer posts it (retrying while Slack refuses it), so a full disk plans
nothing and a fail-over posts it once. ``wflogs digest --now`` plans a digest of
the 24 hours ending now; it is remembered (its error shapes count for "new" next
time) but does not count as the day's scheduled digest.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, tzinfo
from datetime import time as dtime
from typing import Any

from bot import digest_chart, digest_format, run_walk
from bot.config import AppConfig, Settings, digest_channel_for, digest_chart_for
from bot.console import ConsoleAppSource
from bot.dify import MAX_LIMIT, DifyClient
from bot.errors import DifyError
from bot.records import AppDigest, Counts, ErrorLine, LogEntry, RunLine, Window
from bot.text import normalize_error, one_line, strip_controls
from storage import STORAGE_ERRORS, Store
from storage import journal as effects
from storage.incidents import IncidentStore

log = logging.getLogger(__name__)

HOUR = 3600
RUN_CAP = 500
FAILURE_CAP = 500
SAMPLE_SLICES = 5
SAME_SECOND_ROUNDS = 6
# A scheduled digest posted this long after its time says it is late.
LATE_AFTER = 15 * 60
TOP_ERRORS = 5
TOP_SESSIONS = 3
TOP_SLOWEST = 3
HISTORY = 7
FAILURES = ("failed", "stopped")
# Run details a chatflow's digest reads at most: for failures wflogs did not alert (it keeps the
# alerted ones' error and session a week), and the slowest runs' end users.
CHAT_DETAILS = 100


# -- windows ------------------------------------------------------------------


def scheduled_instant(day: date, hour: int, minute: int, tz: tzinfo) -> int:
    """The epoch second of ``hour:minute`` on local date ``day`` in ``tz``."""
    return int(datetime.combine(day, dtime(hour, minute), tzinfo=tz).timestamp())


def latest_schedule(settings: Settings, now: int) -> tuple[date, int]:
    """The most recent scheduled digest at or before ``now``: its local date and instant."""
    hour, minute = settings.digest_hour_minute
    today = datetime.fromtimestamp(now, settings.tz).date()
    instant = scheduled_instant(today, hour, minute, settings.tz)
    if instant > now:
        today -= timedelta(days=1)
        instant = scheduled_instant(today, hour, minute, settings.tz)
    return today, instant


# -- what a digest holds --------------------------------------------------------


# -- reading rows ------------------------------------------------------------------


@dataclass
class _Rows:
    """Rows of one status (or all), each with a weight: 1 when read completely."""

    rows: dict[str, LogEntry] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    complete: bool = True
    slice_totals: list[int] | None = None

    def add(self, entry: LogEntry, weight: float = 1.0) -> None:
        self.rows[entry.log_id] = entry
        self.weights[entry.log_id] = weight

    def merge(self, other: _Rows) -> None:
        self.rows.update(other.rows)
        self.weights.update(other.weights)
        self.complete = self.complete and other.complete

    def weighted(self) -> list[tuple[LogEntry, float]]:
        return [(row, self.weights[key]) for key, row in self.rows.items()]


def _compare(digest: AppDigest, before: Counts, history: list[dict[str, Any]]) -> set[str]:
    """The figures the digest is compared with: the window before, the usual runs of recent digests,
    whether it is the first; returns the error shapes of the previous digest."""
    digest.before = before
    runs = [int(h["runs"]) for h in history if h.get("runs") is not None]
    digest.usual_runs = int(statistics.median([before.total, *runs]))
    digest.first_digest = not history
    return set(history[0]["shapes"]) if history else set()


class _Reader:
    """Reads rows of one app for one window, within a request budget."""

    def __init__(self, client: DifyClient, budget: int) -> None:
        self.client = client
        self.budget = budget

    def count(self, window: Window, status: str | None) -> int:
        return self.client.logs(status=status, after=window.start, before=window.end, limit=1).total

    def complete(self, status: str | None, window: Window) -> _Rows:
        """Every row of the window, newest second first, without offset paging across seconds."""
        out = _Rows()
        high = window.end
        while high >= window.start:
            if self.budget <= 0:
                out.complete = False
                return out
            self.budget -= 1
            page = self.client.logs(status=status, after=window.start, before=high, limit=MAX_LIMIT)
            if not page.data:
                return out
            if page.total <= len(page.data):
                for row in page.data:
                    out.add(row)
                return out
            oldest = min(row.created_at for row in page.data)
            newer = [row for row in page.data if row.created_at > oldest]
            if newer:
                for row in newer:
                    out.add(row)
                high = oldest  # read that second again, from its start
            else:
                out.merge(self._one_second(status, oldest))
                high = oldest - 1
        return out

    def _one_second(self, status: str | None, second: int) -> _Rows:
        """A second holding more than a page: Dify's order in it changes per call, so read in rounds."""
        out = _Rows()
        total = 0
        for _round in range(SAME_SECOND_ROUNDS):
            number = 1
            while True:
                if self.budget <= 0:
                    out.complete = False
                    return out
                self.budget -= 1
                page = self.client.logs(status=status, after=second, before=second, page=number)
                total = page.total
                for row in page.data:
                    out.add(row)
                if len(out.rows) >= total:
                    return out
                if number * MAX_LIMIT >= total:
                    break
                number += 1
        out.complete = False
        log.info("could not read all %d logs of second %d in %d rounds", total, second, SAME_SECOND_ROUNDS)
        return out

    def sample(self, status: str | None, window: Window, slices: int, per_slice: int) -> _Rows:
        """The newest ``per_slice`` rows of each of ``slices`` time slices, weighted by slice totals."""
        out = _Rows(complete=False, slice_totals=[])
        per_slice = min(max(per_slice, 1), MAX_LIMIT)
        for part in window.slices(slices):
            self.budget -= 1
            page = self.client.logs(status=status, after=part.start, before=part.end, limit=per_slice)
            assert out.slice_totals is not None
            out.slice_totals.append(page.total)
            rows = {row.log_id: row for row in page.data}
            weight = page.total / len(rows) if rows else 0.0
            for row in rows.values():
                out.add(row, weight)
        return out


# -- the digester ------------------------------------------------------------------


@dataclass
class DigestReport:
    """What one round of digests did."""

    posted: list[str] = field(default_factory=list)  # planned for the deliverer, by app name
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    keys: list[str] = field(default_factory=list)  # the journal's keys of the planned messages
    charts: dict[str, bytes] = field(default_factory=dict)  # the PNG drawn for each channel
    chart_keys: list[str] = field(default_factory=list)  # the journal's keys of the planned uploads

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Due:
    """A scheduled digest that should be posted now."""

    app: AppConfig
    day: date
    scheduled_at: int
    late: bool


class Digester:
    """Computes and posts daily digests; every method takes ``now`` (epoch seconds)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        clients: dict[str, DifyClient],
        name_of: Callable[[AppConfig], str],
        run_cap: int = RUN_CAP,
        failure_cap: int = FAILURE_CAP,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.name_of = name_of
        self.run_cap = run_cap
        self.failure_cap = failure_cap
        self._lock = threading.Lock()

    # -- scheduling --------------------------------------------------------------

    def due(self, now: int) -> list[Due]:
        """The scheduled digests to post at ``now``: the latest scheduled day, per app not yet posted.

        An app seen for the first time after that day's digest time (a fresh
        install, a newly added app) gets none for that day.
        """
        day, instant = latest_schedule(self.settings, now)
        out: list[Due] = []
        for app in self.settings.apps:
            if not app.digest:
                continue
            state = self.store.app_state(app.id) or {}
            first_seen = self.store.digest_first_seen(app.id, min(int(state.get("first_polled") or now), now))
            if first_seen > instant:
                continue
            if self.store.digest_posted(app.id, day.isoformat()):
                continue
            out.append(Due(app, day, instant, late=now - instant > LATE_AFTER))
        return out

    def run_due(self, now: float | None = None) -> DigestReport:
        """Plan every due scheduled digest for the deliverer (idempotent; safe to call as often as wanted)."""
        now_i = int(time.time() if now is None else now)
        report = DigestReport()
        with self._lock:
            for channel, items in self._by_channel(self.due(now_i), lambda item: item.app):
                planned = [
                    (item.app, self.compute(item.app, item.scheduled_at, now=now_i, late=item.late), item.day)
                    for item in items
                ]
                self._post(channel, planned, report)
        return report

    def post_now(self, now: float | None = None, *, chart: bool = False) -> DigestReport:
        """Plan a digest of the 24 hours ending ``now`` for every app (``wflogs digest --now``).

        It does not count as the day's scheduled digest, which still goes out. ``chart``: draw
        the chart (``report.charts``) even where the settings do not upload it.
        """
        now_i = int(time.time() if now is None else now)
        report = DigestReport()
        day = datetime.fromtimestamp(now_i, self.settings.tz).date()
        apps = [app for app in self.settings.apps if app.digest]
        with self._lock:
            for channel, group in self._by_channel(apps, lambda app: app):
                planned = [(app, self.compute(app, now_i, now=now_i, kind="manual"), day) for app in group]
                self._post(channel, planned, report, draw=chart)
        return report

    def _by_channel(
        self, items: list[Any], app_of: Callable[[Any], AppConfig]
    ) -> list[tuple[str, list[Any]]]:
        """Items grouped by their app's digest channel, channels and items in the apps' order."""
        groups: dict[str, list[Any]] = {}
        for item in items:
            groups.setdefault(digest_channel_for(self.settings, app_of(item)) or "terminal", []).append(item)
        return list(groups.items())

    # -- computing ----------------------------------------------------------------

    def compute(
        self, app: AppConfig, scheduled_at: int, *, now: int, late: bool = False, kind: str = "scheduled"
    ) -> AppDigest:
        """The digest of ``app`` for the 24 hours ending at ``scheduled_at``; never raises for Dify."""
        client = self.clients[app.id]
        start_requests = client.requests
        digest = AppDigest(
            app_id=app.id,
            app_name=self.name_of(app),
            scheduled_at=scheduled_at,
            window=Window.ending_at(scheduled_at),
            previous=Window.ending_at(scheduled_at, 1),
            tz=self.settings.timezone,
            posted_at=now,
            kind=kind,
            late=late,
        )
        history = [
            h
            for h in self.store.recent_digests(app.id, before=digest.window.end, limit=HISTORY)
            if h.get("ok")
        ]
        digest.incidents = IncidentStore(self.store).window_stats(
            app.id, digest.window.start, digest.window.end + 1
        )
        try:
            if isinstance(client, ConsoleAppSource) and client.mode == "advanced-chat":
                self._fill_chatflow(app, client, digest, history, now)
            else:
                self._fill(client, digest, history)
        except DifyError as exc:
            digest.error = str(exc)
            log.error("digest of %s: cannot read Dify: %s", digest.app_name, exc)
        log.info(
            "digest of %s for %s: %d Dify requests",
            digest.app_name,
            datetime.fromtimestamp(scheduled_at, self.settings.tz).isoformat(),
            client.requests - start_requests,
        )
        return digest

    def _fill(self, client: DifyClient, digest: AppDigest, history: list[dict[str, Any]]) -> None:
        reader = _Reader(client, budget=4 * math.ceil(max(self.run_cap, self.failure_cap) / MAX_LIMIT) + 40)
        window = digest.window

        def counts(w: Window) -> Counts:
            return Counts(
                total=reader.count(w, None),
                succeeded=reader.count(w, "succeeded"),
                failed=reader.count(w, "failed"),
                stopped=reader.count(w, "stopped"),
            )

        current = digest.current = counts(window)
        previous_shapes = _compare(digest, counts(digest.previous), history)

        if current.total == 0:
            digest.hourly = [0] * 24
            return
        if current.total <= self.run_cap:
            everything = reader.complete(None, window)
            failures = _Rows(complete=everything.complete)
            for key, row in everything.rows.items():
                if row.status in FAILURES:
                    failures.add(row, everything.weights[key])
            failed_hourly = None
        else:
            everything = reader.sample(None, window, SAMPLE_SLICES, MAX_LIMIT)
            failures = _Rows()
            failed_hourly = None
            if current.failed > self.failure_cap:
                part = reader.sample("failed", window, 24, math.ceil(self.failure_cap / 24))
                failed_hourly = part.slice_totals
            elif current.failed:
                part = reader.complete("failed", window)
            else:
                part = _Rows()
            failures.merge(part)
            if current.stopped > self.failure_cap:
                per_slice = self.failure_cap // SAMPLE_SLICES
                failures.merge(reader.sample("stopped", window, SAMPLE_SLICES, per_slice))
            elif current.stopped:
                failures.merge(reader.complete("stopped", window))

        digest.runs_read = len(everything.rows)
        digest.runs_sampled = not everything.complete
        digest.failures_read = len(failures.rows)
        digest.failures_sampled = not failures.complete
        if failed_hourly is not None:
            digest.hourly = list(failed_hourly)
        else:
            digest.hourly_exact = failures.complete
            digest.hourly = [0] * 24
            for row in failures.rows.values():
                if row.status == "failed" and window.start <= row.created_at <= window.end:
                    digest.hourly[(row.created_at - window.start) // HOUR] += 1
        _rank_failures(digest, failures, previous_shapes)
        _describe_runs(digest, everything)

    def _fill_chatflow(
        self,
        app: AppConfig,
        source: ConsoleAppSource,
        digest: AppDigest,
        history: list[dict[str, Any]],
        now: int,
    ) -> None:
        """A chatflow's digest: it writes no log rows, so counts come from the run count endpoint and
        rows from the run list (docs/workspace.md).

        Counts: ``time_range`` is relative to Dify's now, so the runs started in [a, b) are
        count(now - a) - count(now - b): three requests give both windows, every status at once.
        Rows: the run list walked down to the window's start (every run up to ``run_cap``, else the
        failed and stopped runs up to ``failure_cap`` each, and the newest ``run_cap`` runs as a
        sample). The list has elapsed time, tokens and status, not the error or the end user: those
        come from the alerts wflogs stored for the app (free, kept a week), else from run details,
        at most CHAT_DETAILS per digest (the rest is estimated and said to be)."""
        window = digest.window
        zero = {"total": 0, "succeeded": 0, "failed": 0, "stopped": 0}
        cache: dict[int, dict[str, int]] = {}

        def started_since(instant: int) -> dict[str, int]:
            if instant not in cache:
                cache[instant] = source.counts(now - instant) if now > instant else zero
            return cache[instant]

        def between(a: int, b: int) -> Counts:
            older, newer = started_since(a), started_since(b)
            return Counts(
                *(
                    max(int(older.get(k, 0)) - int(newer.get(k, 0)), 0)
                    for k in ("total", "succeeded", "failed", "stopped")
                )
            )

        current = digest.current = between(window.start, window.end + 1)
        previous_shapes = _compare(digest, between(digest.previous.start, digest.previous.end + 1), history)
        if current.total == 0:
            digest.hourly = [0] * 24
            return

        def read(status: str | None, cap: int) -> tuple[list[dict[str, Any]], bool]:
            pages = math.ceil(cap / MAX_LIMIT) + 5  # runs started after the window are walked past
            walked = run_walk.walk(
                source, status=status, since=window.start, until=window.end, max_pages=pages, enough=cap + 1
            )
            return walked.items[:cap], walked.complete

        everything = _Rows()
        fail_items: list[tuple[dict[str, Any], float]] = []
        if current.total <= self.run_cap:
            items, complete = read(None, self.run_cap)
            everything.complete = fail_complete = complete
            for item in items:
                everything.add(LogEntry.from_run(item))
            fail_items = [(i, 1.0) for i in items if i.get("status") in FAILURES]
        else:
            items, _ = read(None, self.run_cap)
            everything.complete = False
            for item in items:
                everything.add(LogEntry.from_run(item), current.total / len(items) if items else 0.0)
            fail_complete = True
            for status, count in (("failed", current.failed), ("stopped", current.stopped)):
                if count:
                    part, complete = read(status, self.failure_cap)
                    fail_complete = fail_complete and complete and len(part) >= count
                    weight = 1.0 if len(part) >= count else count / max(len(part), 1)
                    fail_items += [(i, weight) for i in part]
        known = self.store.alerted_entries(app.id, [str(i["id"]) for i, _ in fail_items])
        missing = [str(i["id"]) for i, _ in fail_items if str(i["id"]) not in known][:CHAT_DETAILS]
        details = run_walk.details(source, missing, source.console.concurrency)
        failures = _Rows()
        described: list[tuple[LogEntry, float]] = []
        for item, weight in fail_items:
            run_id = str(item["id"])
            if run_id in known:
                entry = replace(LogEntry.from_run(item), **_who_and_error(known[run_id]))
            elif run_id in details:
                entry = LogEntry.from_run(item, details[run_id])
            else:
                continue
            described.append((entry, weight))
        # Failures whose error was not read (beyond CHAT_DETAILS) are stood for by the others.
        scale = sum(w for _, w in fail_items) / sum(w for _, w in described) if described else 1.0
        for entry, weight in described:
            failures.add(entry, weight * scale if scale != 1.0 else weight)
            if entry.log_id in everything.rows:
                everything.rows[entry.log_id] = entry
        failures.complete = fail_complete and len(described) == len(fail_items)
        self._name_slowest(source, everything)

        digest.runs_read = len(everything.rows)
        digest.runs_sampled = not everything.complete
        digest.failures_read = len(failures.rows)
        digest.failures_sampled = not failures.complete
        digest.hourly_exact = fail_complete
        hourly = [0.0] * 24
        for item, weight in fail_items:
            at = int(item.get("created_at") or 0)
            if item.get("status") == "failed" and window.start <= at <= window.end:
                hourly[(at - window.start) // HOUR] += weight
        digest.hourly = [round(n) for n in hourly]
        _rank_failures(digest, failures, previous_shapes)
        _describe_runs(digest, everything)

    def _name_slowest(self, source: ConsoleAppSource, everything: _Rows) -> None:
        """The slowest runs' end users (the list has none): a detail each, TOP_SLOWEST at most."""
        finished = [r for r in everything.rows.values() if r.status not in ("running", "paused", None)]
        finished.sort(key=lambda r: (-(r.elapsed_time or 0.0), r.log_id))
        unnamed = [r.log_id for r in finished[:TOP_SLOWEST] if not r.who and r.elapsed_time]
        for run_id, detail in run_walk.details(source, unnamed, source.console.concurrency).items():
            if detail:
                everything.rows[run_id] = replace(
                    everything.rows[run_id], **_who_and_error(_detail_fields(detail))
                )

    # -- posting --------------------------------------------------------------------

    def _post(
        self,
        channel: str,
        planned: list[tuple[AppConfig, AppDigest, date]],
        report: DigestReport,
        *,
        draw: bool = False,
    ) -> None:
        """Record one channel's digests and plan their messages, and the chart in the first one's
        thread, in one transaction: the deliverer posts them (a full disk plans nothing, so nothing
        is posted that cannot be remembered)."""
        rendered = [digest_format.render(digest) for _app, digest, _day in planned]
        charted = [(app, digest) for app, digest, _day in planned if digest_chart_for(self.settings, app)]
        upload = self._safe_chart(charted) if charted else None
        if draw:
            shown = upload if len(charted) == len(planned) else None
            drawn = shown or self._safe_chart([(a, d) for a, d, _ in planned])
            if drawn is not None:
                report.charts[channel] = drawn[0]
        keys: list[str] = []
        chart_key = None
        with self.store.transaction():
            for (app, digest, day), (text, blocks) in zip(planned, rendered, strict=True):
                current = digest.current
                digest_id = self.store.record_digest(
                    {
                        "app_id": app.id,
                        "day": day.isoformat(),
                        "kind": digest.kind,
                        "scheduled_at": digest.scheduled_at,
                        "window_start": digest.window.start,
                        "window_end": digest.window.end,
                        "channel": channel,
                        "ts": None,
                        "posted_at": digest.posted_at,
                        "late": int(digest.late),
                        "ok": int(digest.error is None),
                        "runs": current.total if current else None,
                        "failed": current.failed if current else None,
                        "stopped": current.stopped if current else None,
                        "shapes": digest.shapes,
                    }
                )
                if digest_id is None:
                    continue  # planned already (another instance, an earlier run)
                effects.plan(
                    self.store,
                    f"digest:{digest_id}",
                    "post",
                    channel,
                    digest.posted_at,
                    payload={"text": text, "blocks": blocks},
                    handler="digest",
                    handler_args={"digest_id": digest_id},
                    source="digest",
                )
                keys.append(f"digest:{digest_id}")
                report.posted.append(digest.app_name)
                if digest.error:
                    report.problems.append(f"{digest.app_name}: {digest.error}")
                log.info(
                    "digest of %s planned for %s%s",
                    digest.app_name,
                    channel,
                    " (late)" if digest.late else "",
                )
            if upload is not None and keys:
                # In the thread of the channel's first digest message, sent once that one is.
                png, chart = upload
                chart_key = f"chart:{keys[0]}"
                effects.plan(
                    self.store,
                    chart_key,
                    "upload",
                    channel,
                    planned[0][1].posted_at,
                    payload={
                        "filename": digest_chart.filename(chart, keys[0]),
                        "title": digest_chart.title(chart),
                        "alt_text": digest_chart.alt_text(chart),
                        "comment": digest_chart.COMMENT,
                    },
                    thread_key=keys[0],
                    content=png,
                    source="chart",
                )
        report.keys.extend(keys)
        if chart_key is not None:
            report.chart_keys.append(chart_key)

    def _safe_chart(
        self, digests: list[tuple[AppConfig, AppDigest]]
    ) -> tuple[bytes, digest_chart.Chart] | None:
        """The chart, or None when it cannot be drawn: the text digests go out without it."""
        try:
            return self._chart(digests)
        except STORAGE_ERRORS:
            raise
        except Exception as exc:
            if self.store.tell_once(f"chart:{type(exc).__name__}", str(exc), int(time.time())):
                log.exception("the digest's chart cannot be drawn; the digests go out without it")
            return None

    def _chart(self, digests: list[tuple[AppConfig, AppDigest]]) -> tuple[bytes, digest_chart.Chart]:
        """The chart of these digests' apps: each one's counts and its stored digests' before it."""
        tz = self.settings.tz
        chart = digest_chart.Chart(manual=any(d.kind == "manual" for _app, d in digests))
        for app, digest in digests:
            end = digest.window.end
            day = digest_chart.day_of(end, tz)
            current = digest.current if digest.error is None else None
            last = (
                digest_chart.Day(day, current.total, current.failed, current.stopped)
                if current is not None
                else digest_chart.Day(day)
            )
            history = self.store.digest_days(app.id, end - (digest_chart.DAYS + 1) * 86400, end)
            chart.panels.append(digest_chart.panel(digest.app_name, last, history, tz))
        started = time.perf_counter()
        png = digest_chart.draw(chart)
        log.info(
            "digest chart of %d apps: %d bytes in %.2fs",
            len(chart.panels),
            len(png),
            time.perf_counter() - started,
        )
        return png, chart


def _detail_fields(detail: dict[str, Any]) -> dict[str, Any]:
    """A run detail's error and end user, in a stored entry's terms."""
    end_user = detail.get("created_by_end_user") or {}
    return {
        "error": detail.get("error"),
        "session_id": end_user.get("session_id"),
        "end_user_type": end_user.get("type"),
        "created_by_role": detail.get("created_by_role"),
    }


def _who_and_error(stored: dict[str, Any]) -> dict[str, Any]:
    """What a stored alert entry (or a detail) adds to a run list item: the error and who ran it."""
    keys = ("error", "session_id", "end_user_type", "created_by_role", "account_email", "account_name")
    return {k: stored.get(k) for k in keys if stored.get(k) is not None}


def _weighted_count(total: float) -> int:
    return round(total)


def _rank_failures(digest: AppDigest, failures: _Rows, previous_shapes: set[str]) -> None:
    """Top error shapes (with the newest example), and the sessions with the most failures."""
    by_shape: dict[str, float] = defaultdict(float)
    weighted_shapes: set[str] = set()
    newest: dict[str, LogEntry] = {}
    sessions: dict[str, float] = defaultdict(float)
    for row, weight in failures.weighted():
        shape = normalize_error(row.error)
        by_shape[shape] += weight
        if weight != 1.0:
            weighted_shapes.add(shape)
        best = newest.get(shape)
        if best is None or (row.created_at, row.log_id) > (best.created_at, best.log_id):
            newest[shape] = row
        if row.who:
            sessions[row.who] += weight
    ranked = sorted(by_shape, key=lambda s: (-by_shape[s], -newest[s].created_at, s))
    digest.error_shapes = len(ranked)
    digest.shapes = ranked[:200]
    digest.errors = [
        ErrorLine(
            shape=shape,
            count=_weighted_count(by_shape[shape]),
            example=one_line(strip_controls(newest[shape].error or "(no error message)")),
            newest_run_id=newest[shape].run_id,
            newest_at=newest[shape].created_at,
            status=newest[shape].status or "failed",
            new=not digest.first_digest and shape not in previous_shapes,
            # Estimated from a weighted sample, or from a read cut short by the request budget.
            approx=shape in weighted_shapes or (not failures.complete and not weighted_shapes),
        )
        for shape in ranked[:TOP_ERRORS]
    ]
    digest.sessions = [
        (who, _weighted_count(n)) for who, n in sorted(sessions.items(), key=lambda kv: (-kv[1], kv[0]))
    ][:TOP_SESSIONS]


def _describe_runs(digest: AppDigest, everything: _Rows) -> None:
    """Slowest runs, tokens, partial successes and runs still running."""
    finished = [r for r in everything.rows.values() if r.status not in ("running", "paused", None)]
    finished.sort(key=lambda r: (-(r.elapsed_time or 0.0), r.log_id))
    digest.slowest = [
        RunLine(r.run_id, r.status or "?", r.elapsed_time or 0.0, r.who, r.created_at)
        for r in finished[:TOP_SLOWEST]
        if r.elapsed_time
    ]
    tokens = 0.0
    partial = 0.0
    running = 0.0
    for row, weight in everything.weighted():
        tokens += (row.total_tokens or 0) * weight
        if row.status == "partial-succeeded" or (
            (row.exceptions_count or 0) > 0 and row.status not in ("failed", "stopped")
        ):
            partial += weight
        if row.status in ("running", "paused"):
            running += weight
    digest.tokens = round(tokens)
    digest.partial = round(partial)
    digest.running = round(running)
