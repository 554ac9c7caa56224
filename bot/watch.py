"""Trouble that per-run alerts miss: a high failure rate, and runs that never end.

Runs once per cycle, after the poller, for every app the poller could read.

**Failure rate.** Over the last ``rate_window`` seconds, failed + stopped runs
against all runs. The failed and stopped runs are counted from what the poller
already holds (it remembers every failed and stopped log of its look-back
window, which is at least as long as the rate window), so only the window's
total costs a request: Dify's ``total`` of an unfiltered ``limit=1`` query. The
total counts every log row of the window, runs still going included (from Dify
1.11 a row is written when a run starts). A signal opens when the share
exceeds the threshold with at least ``rate_min_runs`` runs, and resolves when
it falls below the threshold. It does not look at error shapes, so muting
every shape does not silence it.

**Stuck runs.** A run whose row still says ``running`` ``stuck_after`` seconds
after it started. Once a tenth of that limit has passed (at least one cycle),
wflogs looks at the band of start times that crossed that age since it last
looked, ``(checked_until, now - stuck_after]``: its first page is both its
count and, up to 100 rows, its content (one request). A busier
band is counted by status first (succeeded, failed, stopped) and read only when
those do not add up to its total, i.e. when something in it is not finished.
Runs found running are remembered in storage with when to look again; each is
checked (``/workflows/run/{id}``) every cycle for its first hour, then with
growing pauses up to an hour, since Dify can leave a row ``running`` for good.
The stuck runs of an app form one signal, resolved when they have all ended.
Dify before 1.11 writes a row only when a run ends, so there is nothing to
watch there and no request is made.

**Incidents.** Each signal is shown as an incident (``kind`` failure_rate or
stuck_runs) with the life of any other: :meth:`Watcher.sync` opens, updates and
resolves it in SQLite, :class:`SignalMessages` tells the deliverer (the one
writer of channel messages) how to draw it, and :class:`Escalator` records the
one escalation of any incident nobody acknowledged in time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bot import run_walk
from bot import watch_format as fmt
from bot.config import (
    AppConfig,
    Settings,
    alert_channel_for,
    escalation_for,
    rate_threshold_for,
    stuck_after_for,
)
from bot.dify import MAX_LIMIT, DifyClient
from bot.errors import DifyError, DifyNotFound
from bot.incident_format import Incident
from bot.incident_format import controls as incident_controls
from bot.poller import AppResult
from bot.records import LogEntry
from storage import Store, WatchStore, subscriptions
from storage.incidents import IncidentStore

log = logging.getLogger(__name__)

FAILURE_RATE = "failure_rate"
STUCK_RUNS = "stuck_runs"
# How far back the first look (or the first after a long outage) reaches for stuck runs.
STUCK_CATCHUP = 6 * 3600
# At most this many stuck runs are looked at again per app and cycle.
MAX_STUCK_CHECKS = 20
FINISHED = ("succeeded", "failed", "stopped")
KEEP_ENDED = 7 * 86400


@dataclass
class WatchResult:
    """What one watch of one app did."""

    app_id: str
    name: str
    requests: int = 0
    rate: float | None = None
    runs: int | None = None
    failures: int | None = None
    new_stuck: int = 0
    ended_stuck: int = 0
    error: str | None = None


@dataclass
class WatchReport:
    """One watch cycle over every app."""

    apps: list[WatchResult] = field(default_factory=list)
    error: str | None = None


def _chatflow(client: object) -> bool:
    """Whether ``client`` reads a chatflow through the console (its runs write no log rows)."""
    return getattr(client, "mode", None) == "advanced-chat" and hasattr(client, "counts")


def dify_logs_at_start(version: str | None) -> bool:
    """Whether this Dify writes a log row when a run starts (1.11 and later); unknown: assume so."""
    if not version:
        return True
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return True
    return parts >= (1, 11)


class Watcher:
    """Evaluates failure rates and stuck runs, and keeps the incidents that show them."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        clients: dict[str, DifyClient],
        name_of: Callable[[AppConfig], str],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.db = WatchStore(store)
        self.clients = clients
        self.incidents = IncidentStore(store)
        self.name_of = name_of
        self._now = now

    @property
    def enabled(self) -> bool:
        """Whether any app has a failure-rate threshold or a stuck-run limit."""
        return any(
            rate_threshold_for(self.settings, a) or stuck_after_for(self.settings, a)
            for a in self.settings.apps
        )

    # -- one cycle -----------------------------------------------------------------

    def watch_all(self, results: list[AppResult]) -> WatchReport:
        """Evaluate every app the poller read this cycle, then bring the signals' incidents up to date."""
        report = WatchReport()
        if not self.enabled:
            return report
        readable = [r for r in results if r.ok]
        if len(readable) <= 1:
            report.apps = [self.watch_app(r) for r in readable]
        else:
            workers = min(self.settings.concurrency, len(readable))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="watch") as pool:
                report.apps = list(pool.map(self.watch_app, readable))
        self.sync(int(self._now()))
        self.db.forget_stuck(int(self._now()) - KEEP_ENDED)
        return report

    def watch_app(self, polled: AppResult) -> WatchResult:
        """Failure rate and stuck runs of one app; Dify errors leave the state for the next cycle."""
        app = polled.app
        client = self.clients[app.id]
        result = WatchResult(app_id=app.id, name=polled.name)
        before = client.requests
        now = polled.window[1] if polled.window else int(self._now())
        try:
            if rate_threshold_for(self.settings, app):
                self._rate(app, client, now, result)
            if stuck_after_for(self.settings, app) and dify_logs_at_start(client.last_version):
                self._stuck(app, client, now, result)
        except DifyError as exc:
            result.error = str(exc)
            log.warning("watching %s: %s; trying again next cycle", app.label, exc)
        result.requests = client.requests - before
        return result

    # -- failure rate --------------------------------------------------------------

    def _rate(self, app: AppConfig, client: DifyClient, now: int, result: WatchResult) -> None:
        watch = self.settings.watch
        threshold = rate_threshold_for(self.settings, app)
        start = now - watch.rate_window + 1
        runs = self._runs_started(client, start, now)
        failures = min(self.db.failures_between(app.id, start, now), runs)
        rate = failures / runs if runs else 0.0
        result.rate, result.runs, result.failures = rate, runs, failures
        detail: dict[str, Any] = {
            "rate": rate,
            "runs": runs,
            "failures": failures,
            "window": watch.rate_window,
            "threshold": threshold,
        }
        current = self.db.open_signal(app.id, FAILURE_RATE)
        if current is None:
            if runs >= watch.rate_min_runs and rate > threshold:
                detail["shapes"] = self._shapes(app, start, now)
                detail["peak"] = rate
                self.db.open_new_signal(app.id, FAILURE_RATE, detail, now)
                log.info("%s: failure rate %.1f%% (%d of %d runs)", app.label, rate * 100, failures, runs)
            return
        previous = current["detail"]
        detail["peak"] = max(rate, float(previous.get("peak") or 0.0))
        detail["shapes"] = self._shapes(app, start, now) if failures else previous.get("shapes", [])
        detail["opened"] = {k: previous.get(k) for k in ("rate", "runs", "failures")}
        if "opened" in previous:
            detail["opened"] = previous["opened"]
        self.db.update_signal(current["id"], detail, now, resolve=rate < threshold)

    @staticmethod
    def _runs_started(client: DifyClient, start: int, end: int) -> int:
        """Runs started in [start, end]: the log total; a chatflow (no log rows) asks the console's
        run count for the last ``end - start + 1`` seconds, one request (relative to Dify's clock)."""
        if _chatflow(client):
            return int(client.counts(end - start + 1).get("total") or 0)  # type: ignore[attr-defined]
        return client.logs(after=start, before=end, limit=1).total

    def _shapes(self, app: AppConfig, start: int, end: int) -> list[dict[str, Any]]:
        out = []
        for row in self.db.top_shapes(app.id, start, end):
            status, _, shape = str(row["group_key"]).partition(":")
            out.append(
                {
                    "status": status,
                    "shape": shape,
                    "runs": int(row["runs"]),
                    "error": (row["entry"] or {}).get("error"),
                }
            )
        return out

    # -- stuck runs ----------------------------------------------------------------

    def _stuck(self, app: AppConfig, client: DifyClient, now: int, result: WatchResult) -> None:
        after = stuck_after_for(self.settings, app)
        cut = now - after
        checked = self.db.stuck_checked_until(app.id)
        start = cut - self.settings.lookback if checked is None else checked + 1
        start = max(start, cut - STUCK_CATCHUP)
        # Bands of at least a tenth of the limit: a stuck run is reported at most that late, and a
        # quiet app costs one request every few cycles rather than one every cycle.
        if checked is None or cut - checked >= self.stuck_step(after):
            rows = self._running_between(client, start, cut)
            found = [
                {
                    "log_id": row.log_id,
                    "run_id": row.run_id or row.log_id,
                    "started_at": row.run_created_at or row.created_at,
                    "found_at": now,
                    "next_check": now + self.settings.poll_interval,
                    "entry": row.to_dict(),
                }
                for row in rows
            ]
            result.new_stuck = self.db.record_stuck(app.id, found, cut)
        for run in self.db.stuck_due(app.id, now, MAX_STUCK_CHECKS):
            try:
                detail = client.run(run["run_id"])
            except DifyNotFound:
                self.db.stuck_ended(app.id, run["log_id"], "gone", now)
                result.ended_stuck += 1
                continue
            status = str(detail.get("status") or "")
            if status and status != "running":
                ended = int(detail.get("finished_at") or now)
                self.db.stuck_ended(app.id, run["log_id"], status, ended)
                result.ended_stuck += 1
            else:
                self.db.stuck_checked(app.id, run["log_id"], now + self._pause(now - int(run["found_at"])))
        self._stuck_signal(app, after, now)

    def stuck_step(self, after: int) -> int:
        """Seconds of start times looked at together for stuck runs: a tenth of the limit, at least
        one poll interval."""
        return max(self.settings.poll_interval, after // 10)

    def _pause(self, stuck_for: int) -> int:
        """How long to wait before looking at a stuck run again: every cycle for an hour, then
        a tenth of how long it has been stuck, at most an hour."""
        if stuck_for < 3600:
            return self.settings.poll_interval
        return max(self.settings.poll_interval, min(3600, stuck_for // 10))

    def _running_between(self, client: DifyClient, a: int, b: int) -> list[LogEntry]:
        """The rows of [a, b] still running: one page when it holds them all, else counted first. A
        chatflow's come from its run list filtered on running (newest first: one page, usually)."""
        if _chatflow(client):
            found = run_walk.walk(client, status="running", since=a, until=b)  # type: ignore[arg-type]
            return [LogEntry.from_run(item) for item in found.items]
        page = client.logs(after=a, before=b, limit=MAX_LIMIT)
        if page.total <= len(page.data):
            return [r for r in page.data if r.status == "running"]
        finished = sum(client.logs(status=s, after=a, before=b, limit=1).total for s in FINISHED)
        if finished >= page.total:
            return []
        return self._read_running(client, a, b)

    def _read_running(self, client: DifyClient, a: int, b: int) -> list[LogEntry]:
        page = client.logs(after=a, before=b, limit=MAX_LIMIT)
        if page.total <= len(page.data):
            return [r for r in page.data if r.status == "running"]
        if a >= b:
            # More than a page in one second, ordered differently per call: read the pages twice.
            rows = {r.log_id: r for r in page.data}
            for _round in range(2):
                for number in range(1, -(-page.total // MAX_LIMIT) + 1):
                    more = client.logs(after=a, before=b, page=number, limit=MAX_LIMIT)
                    rows.update((r.log_id, r) for r in more.data)
            return [r for r in rows.values() if r.status == "running"]
        mid = (a + b) // 2
        return self._read_running(client, a, mid) + self._read_running(client, mid + 1, b)

    def _stuck_signal(self, app: AppConfig, after: int, now: int) -> None:
        running = self.db.stuck_runs(app.id, open_only=True)
        current = self.db.open_signal(app.id, STUCK_RUNS)
        if current is None:
            if not running:
                return
            signal_id = self.db.open_new_signal(app.id, STUCK_RUNS, {"after": after, "running": 0}, now)
        else:
            signal_id = int(current["id"])
        self.db.attach_stuck(app.id, signal_id)
        mine = self.db.stuck_runs(app.id, signal_id=signal_id)
        still = [r for r in mine if r["ended_at"] is None]
        detail = {"after": after, "running": len(still), "runs": len(mine)}
        self.db.update_signal(signal_id, detail, now, resolve=not still)

    # -- incidents ------------------------------------------------------------------

    def sync(self, now: int) -> None:
        """Open, keep current and resolve the incidents that show the signals. Only SQLite is
        written; the deliverer posts and edits from it."""
        apps = {a.id: a for a in self.settings.apps}
        for signal in self.db.signals_to_sync():
            app = apps.get(signal["app_id"])
            if app is None:
                continue  # no longer configured: its incident stays as it is
            try:
                self._sync(app, signal, now)
                self._sync_copies(app, signal, now)
            except Exception:
                log.exception("cannot update the incident of %s's %s", app.label, signal["kind"])

    def _sync(self, app: AppConfig, signal: dict[str, Any], now: int) -> None:
        kind = signal["kind"]
        detail = signal["detail"]
        runs = self._runs_of(signal)
        count = len(runs) if kind == STUCK_RUNS else int(detail.get("failures") or 0)
        if signal.get("incident_id") is None:
            if signal["resolved_at"] is not None:
                return
            if self.incidents.mute_for(app.id, None, now) is not None:
                return  # the whole app is muted: open it when the mute ends, if still true
            with self.store.transaction():
                incident_id = self.incidents.create(self._fields(app, signal, now, count))
                self.db.link_incident(int(signal["id"]), incident_id)
            return
        if signal["resolved_at"] is not None and signal.get("incident_state") != "open":
            return  # resolved by hand before the signal ended: only its copies may be left open
        incident_id = int(signal["incident_id"])
        if signal["resolved_at"] is None and signal.get("incident_state") != "open":
            # Someone resolved it while it still holds. Stuck runs they resolved are not looked
            # at again (they may never end); a failure rate opens anew once it fell below.
            if kind == STUCK_RUNS:
                self.db.dismiss_stuck(int(signal["id"]), now)
                self.db.update_signal(int(signal["id"]), {**detail, "running": 0}, now, resolve=True)
                channel = signal.get("incident_channel") or "terminal"
                where = f"<#{channel}>" if channel != "terminal" else "the alert channel"
                for row in self.db.copies(int(signal["id"])).values():
                    if row["state"] == "open":
                        self._resolve(
                            int(row["id"]),
                            f"Resolved by hand in {where}: wflogs no longer looks at these runs.",
                            now,
                        )
            return
        self.db.show_figures(incident_id, detail, count, now)
        if signal["resolved_at"] is None:
            return
        # The signal ended while its incident is open: resolve it and say so in its thread, at once.
        self._resolve(incident_id, self._resolved_text(signal, runs, now), now)

    def _fields(self, app: AppConfig, signal: dict[str, Any], now: int, count: int) -> dict[str, Any]:
        kind = signal["kind"]
        return {
            "app_id": app.id,
            "app_name": self.name_of(app),
            "channel": alert_channel_for(self.settings, app) or "terminal",
            "status": kind,
            "group_key": kind,
            "kind": kind,
            "detail": json.dumps(signal["detail"]),
            "opened_at": now,
            "first_seen": int(signal["opened_at"]),
            "last_seen": now,
            "runs": count,
            "error": TITLES[kind],
            "console_url": app.console_url,
        }

    @staticmethod
    def _resolved_text(signal: dict[str, Any], runs: list[dict[str, Any]], now: int) -> str:
        if signal["kind"] == FAILURE_RATE:
            return fmt.rate_resolved_text(signal["detail"], now - int(signal["opened_at"]))
        return fmt.stuck_resolved_text(runs, now)

    def _resolve(self, incident_id: int, text: str, now: int) -> None:
        with self.store.transaction():
            if self.incidents.resolve(incident_id, now, by=None, successes=None):
                row = self.incidents.get(incident_id) or {}
                self.incidents.add_event(incident_id, row.get("channel") or "terminal", text, now)

    # -- channels subscribed to the app ----------------------------------------------

    def _subscribed(self, app: AppConfig, kind: str) -> list[str]:
        """Channels subscribed to ``app`` that take this signal: subscriptions without a text
        filter (a rate or a stuck run has no one error to match), and for a failure rate those
        not limited to stopped runs; never the configured channel itself, nor a channel outside
        the app's own ``channels``."""
        configured = alert_channel_for(self.settings, app) or "terminal"
        channels: list[str] = []
        for sub in subscriptions.for_app(self.store, app.id):
            if sub.get("text") or sub["channel"] in channels or sub["channel"] == configured:
                continue
            if app.channels is not None and sub["channel"] not in app.channels:
                continue  # an app searchable only from its own channels goes nowhere else (as its runs)
            if (sub.get("status") or "") not in (("", "failed") if kind == FAILURE_RATE else ("",)):
                continue
            channels.append(sub["channel"])
        return channels

    def _sync_copies(self, app: AppConfig, signal: dict[str, Any], now: int) -> None:
        """The signal in each subscribed channel: that channel's own incident (parent, edits,
        buttons; no mention list, no escalation), opened while the signal holds and resolved with
        it. One resolved there by hand is not opened again for the same signal."""
        signal_id = int(signal["id"])
        copies = self.db.copies(signal_id)
        runs = self._runs_of(signal)
        count = len(runs) if signal["kind"] == STUCK_RUNS else int(signal["detail"].get("failures") or 0)
        resolved, shown = self.db.signal_state(signal_id)
        if not resolved:
            if shown:
                # Opened alongside the configured channel's incident (not while the app is muted).
                for channel in self._subscribed(app, signal["kind"]):
                    if channel in copies:
                        continue
                    fields = {**self._fields(app, signal, now, count), "channel": channel}
                    self.incidents.create({**fields, "copy_of_signal": signal_id})
            for row in copies.values():
                if row["state"] == "open":
                    self.db.show_figures(int(row["id"]), signal["detail"], count, now)
            return
        text = self._resolved_text(signal, runs, now)
        for row in copies.values():
            if row["state"] == "open":
                self._resolve(int(row["id"]), text, now)

    def _runs_of(self, signal: dict[str, Any]) -> list[dict[str, Any]]:
        if signal["kind"] != STUCK_RUNS:
            return []
        return self.db.stuck_runs(signal["app_id"], signal_id=int(signal["id"]))


# What an incident of each kind is called where an error text would be (e.g. /wflogs mutes).
TITLES = {FAILURE_RATE: "failure rate above the threshold", STUCK_RUNS: "runs stuck in running"}


class SignalMessages:
    """How the deliverer draws incidents that show signals: their parents (with the mention list
    on the first post only), edits, and the thread replies listing more stuck runs."""

    def __init__(self, store: Store, *, mentions: Callable[[str], tuple[str, ...]]) -> None:
        self.store = store
        self.db = WatchStore(store)
        self.incidents = IncidentStore(store)
        self.mentions = mentions

    @staticmethod
    def shows_signal(incident: dict[str, Any]) -> bool:
        """Whether the incident is a failure rate or stuck runs rather than one error's runs."""
        return incident.get("kind") in TITLES

    def channels_with_work(self) -> list[str]:
        """Channels with a signal incident to post, or stuck runs to tell."""
        rows = self.store.query(
            "select channel from incidents where kind is not null and parent_ts is null "
            "and thread_ts is null union select i.channel from stuck_runs r "
            "join signals s on s.id = r.signal_id join incidents i on i.id = s.incident_id "
            "where r.reported = 0 and i.thread_ts is not null and i.state = 'open'"
        )
        return [r["channel"] for r in rows]

    def unposted(self, channel: str) -> list[dict[str, Any]]:
        """Signal incidents of ``channel`` whose parent is not in Slack yet, oldest first."""
        return self.store.query(
            "select * from incidents where channel = ? and kind is not null and parent_ts is null "
            "and thread_ts is null order by id",
            [channel],
        )

    def render(
        self, incident: dict[str, Any], *, controls: bool, now: int, first: bool = False
    ) -> tuple[str, list[dict[str, Any]]]:
        """The parent as it should look now; ``first`` adds the mention list (a new incident)."""
        mute = self.incidents.mute_for(incident["app_id"], int(incident["id"]), now)
        view = Incident.from_row(incident, mute)
        elements = incident_controls(view) if controls else []
        detail = json.loads(incident["detail"]) if incident.get("detail") else {}
        if incident["kind"] == FAILURE_RATE:
            text, blocks = fmt.rate_incident(view, detail, controls=elements)
        else:
            text, blocks = fmt.stuck_incident(
                view, detail, self._runs(int(incident["id"])), controls=elements, now=now
            )
        if first and not view.resolved and not incident.get("copy_of_signal"):
            # A subscribed channel's copy calls nobody: the configured channel's incident does.
            text, blocks = fmt.with_mentions(text, blocks, self.mentions(incident["app_id"]))
        return text, blocks

    def posted(self, incident: dict[str, Any], ts: str) -> None:
        """The parent is in Slack: it listed every stuck run it holds."""
        with self.store.transaction():
            self.incidents.set_parent(int(incident["id"]), ts, "[]", shown=int(incident.get("dirty") or 0))
            runs = self._runs(int(incident["id"]))
            if runs:
                self.db.mark_stuck_reported(incident["app_id"], [r["log_id"] for r in runs])

    def news(self, channel: str, now: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Stuck-runs incidents of ``channel`` in Slack with runs not told yet, and those runs."""
        out = []
        for incident in self.store.query(
            "select * from incidents where channel = ? and kind = ? and thread_ts is not null "
            "and state = 'open' and copy_of_signal is null order by id",  # copies: their parent shows them
            [channel, STUCK_RUNS],
        ):
            fresh = [r for r in self._runs(int(incident["id"])) if not r["reported"]]
            if fresh:
                out.append((incident, fresh))
        return out

    def muted(self, incident: dict[str, Any], now: int) -> bool:
        """Whether the incident (or its app) is muted now."""
        return self.incidents.mute_for(incident["app_id"], int(incident["id"]), now) is not None

    def told(self, incident: dict[str, Any], runs: list[dict[str, Any]]) -> None:
        """These stuck runs were told (or, while muted, are counted on the parent only)."""
        with self.store.transaction():
            self.db.mark_stuck_reported(incident["app_id"], [r["log_id"] for r in runs])
            self.store.execute(
                "update incidents set dirty = dirty + 1 where id = ? and parent_ts is not null",
                [incident["id"]],
            )

    def _runs(self, incident_id: int) -> list[dict[str, Any]]:
        rows = self.store.query(
            "select id, app_id from signals where incident_id = ? union "
            "select s.id, s.app_id from signals s join incidents i on i.copy_of_signal = s.id where i.id = ?",
            [incident_id, incident_id],
        )
        if not rows:
            return []
        return self.db.stuck_runs(rows[0]["app_id"], signal_id=int(rows[0]["id"]))


class Escalator:
    """Escalates each open incident nobody acknowledged within its app's ``escalate_after``:
    ONE thread reply, also sent to the channel, mentioning ``escalate_to``. Acknowledging,
    muting or resolving first cancels it. The escalation is recorded with its reply in one
    transaction, so a restart neither repeats nor forgets it."""

    def __init__(self, *, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.db = WatchStore(store)
        self.incidents = IncidentStore(store)
        self.apps = {a.id: a for a in settings.apps}

    @property
    def enabled(self) -> bool:
        """Whether any app escalates."""
        return any(escalation_for(self.settings, a)[0] for a in self.settings.apps)

    def evaluate(self, now: int) -> int:
        """Record the escalations that are due; returns how many."""
        if not self.enabled:
            return 0
        # Incidents due, by the thread their escalation goes to and who it calls: the incidents
        # of a storm summary share its thread and get ONE escalation between them, not one each.
        due: dict[tuple[str, str, tuple[str, ...]], list[dict[str, Any]]] = {}
        for row in self.db.escalation_candidates():
            app = self.apps.get(row["app_id"])
            if app is None or row["channel"] != (alert_channel_for(self.settings, app) or "terminal"):
                continue  # a channel subscribed from Slack is told, never escalated to (one page)
            after, targets = escalation_for(self.settings, app)
            if not after or now - int(row["opened_at"]) < after:
                continue
            if self.incidents.mute_for(app.id, int(row["id"]), now) is not None:
                continue  # the whole app is muted for now
            thread = row.get("thread_ts") or f"incident {row['id']}"
            due.setdefault((row["channel"], thread, tuple(targets)), []).append(row)
        done = 0
        for (channel, _thread, targets), rows in due.items():
            views = [(Incident.from_row(r), r.get("kind")) for r in rows]
            items = [(view, fmt.incident_what(view, kind)) for view, kind in views]
            if len(rows) == 1:
                text = fmt.escalation(items[0][0], items[0][1], targets, now=now)
            else:
                text = fmt.escalation_many(items, targets, now=now)
            ids = [int(r["id"]) for r in rows]
            if self.db.escalate(ids, channel, text, now):
                done += len(ids)
                log.info("escalated incident(s) %s", ", ".join(map(str, ids)))
        return done
