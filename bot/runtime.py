"""The composition root: builds every client once from :class:`Settings` and wires them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TextIO

import httpx
from slack_sdk import WebClient

from bot.breaker import HostBreaker
from bot.config import AppConfig, Settings, alert_channel_for, mentions_for, resolve_after_for
from bot.console import ConsoleClient, ConsoleLoginError, RejectionMemory
from bot.delivery import Deliverer, DeliveryResult
from bot.dify import DifyClient
from bot.digest import Digester
from bot.errors import DatabaseError, DifyError
from bot.health import check_health
from bot.incidents import IncidentActions, IncidentKeeper
from bot.journal import Fence, Journal
from bot.logs import Reminder
from bot.metrics import MeteredTransport, MeteredWebClient, Metrics
from bot.notifier import Sink, SlackSink, TerminalSink
from bot.poller import REMIND_EVERY, AppResult, Poller
from bot.text import plural
from bot.watch import Escalator, SignalMessages, Watcher, WatchReport
from bot.workspace import Workspace
from storage import STORAGE_ERRORS, Store, describe, subscriptions
from storage.db import open_incidents_count, pending_by_status

log = logging.getLogger(__name__)


def build_http(
    *,
    timeout: float = 15.0,
    transport: httpx.BaseTransport | None = None,
    metrics: Metrics | None = None,
    breaker: HostBreaker | None = None,
) -> httpx.Client:
    """One pooled HTTP client for every Dify app (its requests counted in ``metrics``; a host
    that stops answering is given up on for the cycle by ``breaker``, which wraps it)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    if metrics is not None:
        transport = MeteredTransport(transport or httpx.HTTPTransport(limits=limits), metrics)
    if breaker is not None:
        breaker.wrap(transport or httpx.HTTPTransport(limits=limits))
        transport = breaker
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=5.0),
        transport=transport,
        limits=limits,
        headers={"User-Agent": "wflogs/0.1"},
        follow_redirects=False,
    )


def build_clients(
    settings: Settings, http: httpx.Client, *, retries: int = 2, backoff: float = 0.5
) -> dict[str, DifyClient]:
    """A Dify client per configured app, keyed by the app's id."""
    return {
        app.id: DifyClient(
            http=http,
            base_url=app.api_url,
            api_key=app.api_key,
            label=app.label,
            retries=retries,
            backoff=backoff,
        )
        for app in settings.apps
    }


def build_web_client(
    settings: Settings, *, timeout: int = 15, metrics: Metrics | None = None
) -> WebClient | None:
    """The Slack Web API client (its calls counted in ``metrics``), or None without a bot token."""
    if not settings.slack_bot_token:
        return None
    if metrics is not None:
        return MeteredWebClient(
            token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=timeout, metrics=metrics
        )
    return WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=timeout)


def open_store(path: str, *, timeout: float = 30.0) -> Store:
    """The database at ``path`` (``WFLOGS_DB``), or a :class:`DatabaseError` naming it and the fix."""
    try:
        return Store.open(path, timeout=timeout)
    except STORAGE_ERRORS as exc:
        raise database_error(path, exc) from None


def database_error(path: str, exc: BaseException) -> DatabaseError:
    """One line for a database that cannot be used: ``WFLOGS_DB``, the path, the problem, the fix."""
    problem = describe(path, exc)
    # "WFLOGS_DB=/x is a directory", "WFLOGS_DB=/x cannot be written"; a problem with its own subject
    # follows a colon: "WFLOGS_DB=/x: the directory /y does not exist".
    sep = " " if problem.problem.startswith(("is ", "cannot ")) else ": "
    return DatabaseError(f"WFLOGS_DB={path}{sep}{problem.problem}; {problem.fix}")


@dataclass
class CycleReport:
    """One poll-and-deliver cycle."""

    apps: list[AppResult]
    delivery: DeliveryResult
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    watch: WatchReport | None = None
    outbox_pending: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Runtime:
    """Everything ``wflogs`` runs with, built once."""

    settings: Settings
    store: Store
    http: httpx.Client
    clients: dict[str, DifyClient]
    sink: Sink
    web: WebClient | None
    poller: Poller
    deliverer: Deliverer
    digester: Digester
    actions: IncidentActions
    _now: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    # Set by ``wflogs run``'s delivery thread: it delivers, and is woken after each poll and click.
    wake: Callable[[], None] | None = None
    # Told the outbox's depth whenever it is measured (``/healthz`` keeps it).
    on_outbox: Callable[[int], None] | None = None
    watcher: Watcher | None = None
    # What the last watch found (failure rates, stuck runs), for the cycle's report.
    last_watch: WatchReport | None = None
    deliver_in_cycle: bool = True
    # Dify hosts that stopped answering are not asked again until the next cycle.
    breaker: HostBreaker | None = None
    # Workspace mode: the console client, the discovered apps, and the per-app maps to keep in step.
    console: ConsoleClient | None = None
    workspace: Workspace | None = None
    _resolve_after: dict[str, int] = field(default_factory=dict)
    _discovered_at: float | None = None
    _console_error: str | None = None
    _login_stopped: bool = False
    _discovery_tried: bool = False  # the app list was asked for (answered or not) in this process
    _discover_lock: threading.Lock = field(default_factory=threading.Lock)
    # A workspace whose app list keeps failing is logged once, then every REMIND_EVERY seconds.
    _discover_remind: Reminder = field(default_factory=lambda: Reminder(REMIND_EVERY))

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        stream: TextIO | None = None,
        now: Callable[[], float] = time.time,
        slack_min_interval: float = 1.0,
        dify_backoff: float = 0.5,
        web: WebClient | None = None,
        metrics: Metrics | None = None,
        db_timeout: float = 30.0,
    ) -> Runtime:
        """Wire the bot from settings (tests pass a transport, a stream or a WebClient).

        Raises :class:`DatabaseError` when ``WFLOGS_DB`` cannot be used."""
        metrics = metrics or Metrics()
        store = open_store(settings.db_path, timeout=db_timeout)
        breaker = HostBreaker(open_for=settings.poll_interval)
        http = build_http(transport=transport, metrics=metrics, breaker=breaker)
        clients = build_clients(settings, http, backoff=dify_backoff)
        web = web or build_web_client(settings, metrics=metrics)
        sink: Sink = SlackSink(web, min_interval=slack_min_interval) if web else TerminalSink(stream)
        poller = Poller(settings=settings, store=store, clients=clients, now=now)
        channels = {app.id: alert_channel_for(settings, app) or "terminal" for app in settings.apps}
        resolve_after = {app.id: resolve_after_for(settings, app) for app in settings.apps}
        digester = Digester(settings=settings, store=store, clients=clients, name_of=poller.app_name)

        def successes(app_id: str, after: int, before: int) -> int | None:
            client = clients.get(app_id)
            if client is None or after > before:
                return None
            return client.logs(status="succeeded", after=after, before=before, limit=1).total

        keeper = IncidentKeeper(
            store,
            resolve_after=lambda app_id: resolve_after.get(app_id, settings.resolve_after),
            successes=successes,
            watched=lambda: clients.keys(),
        )
        mentions = {app.id: mentions_for(settings, app) for app in settings.apps}
        deliverer = Deliverer(
            store=store,
            sink=sink,
            journal=Journal(store, sink, now=now),
            now=now,
            channels=channels,
            keeper=keeper,
            controls=settings.interactive,
            mentions=mentions,
            # The deliverer's own map, which workspace discovery extends with the apps it finds.
            signals=SignalMessages(store, mentions=lambda app_id: deliverer.mentions.get(app_id, ())),
            escalator=Escalator(settings=settings, store=store),
        )
        actions = IncidentActions(store, successes=successes)
        runtime = cls(
            settings, store, http, clients, sink, web, poller, deliverer, digester, actions, now, metrics
        )
        runtime.breaker = breaker
        runtime._resolve_after = resolve_after
        if settings.workspace is not None:
            ws = settings.workspace
            runtime.console = ConsoleClient(
                http=http,
                url=ws.console_url,
                admin_key=ws.admin_key,
                workspace_id=ws.workspace_id,
                email=ws.email,
                password=ws.password,
                concurrency=ws.concurrency,
                now=now,
                rejections=RejectionMemory(
                    lambda key: (store.app_state(key) or {}).get("last_error"),
                    lambda key, message: store.update_app_state(key, last_error=message),
                ),
            )

            def mark_new(app: AppConfig) -> None:
                at = int(now())
                if not store.app_state(app.id):
                    store.update_app_state(app.id, alert_from=at, first_polled=at, name=app.name)

            runtime.workspace = Workspace(settings=settings, console=runtime.console, mark_new=mark_new)
        runtime.watcher = Watcher(
            settings=settings, store=store, clients=clients, name_of=poller.app_name, now=now
        )
        return runtime

    def fence(self, fence: Fence | None) -> None:
        """Slack writes from now on only while ``fence`` admits them (the lease's holder)."""
        self.deliverer.journal.fence = fence

    def poll(self) -> list[AppResult]:
        """Poll every app and plan notices for channels about apps that cannot be read (or read
        again).

        The health notices are planned first, so "recovered; missed failures follow" comes
        before the failures that delivery then posts."""
        if self.breaker is not None:
            self.breaker.reset()
        extra = self._discover() if self.workspace is not None else []
        apps = self.poller.poll_all() + extra
        self.metrics.observe_apps(apps, self._now())
        check_health(settings=self.settings, store=self.store, results=apps, now=int(self._now()))
        self.last_watch = self._watch(apps)
        return apps

    def discover(self) -> None:
        """Workspace mode: read the app list now if due (``wflogs search`` before its first poll)."""
        if self.workspace is not None:
            for problem in self._discover():
                log.warning("%s: %s", problem.name, problem.error)

    def discover_as_standby(self) -> None:
        """Workspace mode, standby: keep the app list current (when due) for the /wflogs commands,
        clicks and Home tabs this instance serves too; the active instance tells of problems."""
        if self.workspace is not None:
            self._discover()

    def _discover(self) -> list[AppResult]:
        # One at a time: a standby promoted while it reads the list polls right away.
        with self._discover_lock:
            return self._discover_now()

    def _discover_now(self) -> list[AppResult]:
        """Re-read the workspace's apps when due; a result for the workspace itself when it
        cannot be read (so the channel hears of it, once, like an app that cannot be read)."""
        assert self.workspace is not None
        now = self._now()
        interval = self.settings.workspace.discover_interval if self.settings.workspace else 300
        due = self._discovered_at is None or now - self._discovered_at >= interval
        if (due and self._console_error is None) or (due and self.workspace.discoveries == 0):
            try:
                # An app read with its own key and no name in the configuration is known by the
                # name Dify gives it (asked once per process): its discovered twin is left out.
                keyed = [a for a in self.settings.apps if not a.via_console and not a.name]
                found = self.workspace.discover(keyed=[self.poller.app_name(a) for a in keyed])
            except ConsoleLoginError as exc:
                # Said once (by the client); wflogs waits for a restart with new settings.
                self._console_error = str(exc)
                self._login_stopped = True
                self._apply([])
            except DifyError as exc:
                if self._discover_remind.due("apps"):
                    log.warning(
                        "cannot read the Dify workspace's apps: %s (said again every %ds while it lasts)",
                        exc,
                        REMIND_EVERY,
                    )
                if self.workspace.discoveries == 0:
                    return [self._workspace_result(str(exc))]
            else:
                if self._discover_remind.clear("apps"):
                    log.info("the Dify workspace's apps can be read again")
                self._discovered_at = now
                self._console_error = None
                self._apply(found.watched)
            finally:
                self._discovery_tried = True
        if self._console_error is not None:
            return [self._workspace_result(self._console_error)]
        return []

    def _workspace_result(self, error: str) -> AppResult:
        ws = self.settings.workspace
        url = ws.console_url if ws else ""
        app = AppConfig(api_key="console:workspace", api_url=url, name="the Dify workspace")
        return AppResult(app=app, name="the Dify workspace", ok=False, error=error)

    def _apply(self, discovered: list[AppConfig]) -> None:
        """Watch exactly the keyed apps plus ``discovered`` from now on."""
        assert self.workspace is not None
        keyed = [a for a in self.settings.apps if not a.via_console]
        settings = replace(self.settings, apps=tuple(keyed + discovered))
        wanted = {a.id for a in settings.apps}
        for app_id in [k for k in self.clients if k not in wanted]:
            del self.clients[app_id]
        for app in discovered:
            self.clients[app.id] = self.workspace.sources[app.id]  # type: ignore[assignment]
            self.deliverer.channels[app.id] = alert_channel_for(settings, app) or "terminal"
            self.deliverer.mentions[app.id] = mentions_for(settings, app)
            self._resolve_after[app.id] = resolve_after_for(settings, app)
        self.settings = settings
        self.poller.settings = settings
        self.digester.settings = settings
        if self.watcher is not None:
            self.watcher.settings = settings
        escalator = self.deliverer.escalator
        if escalator is not None:
            escalator.settings = settings
            escalator.apps = {a.id: a for a in settings.apps}

    def deliver(self) -> DeliveryResult:
        """Evaluate incidents and deliver everything pending (safe from another thread than
        :meth:`poll`; one pass at a time)."""
        if self.workspace is not None and not self._discovery_tried:
            # Workspace mode: until the app list was asked for once, a discovered app's channel,
            # mention list and escalation are unknown here; runs stored by the last process would
            # go out calling nobody. The poll's first cycle asks, then wakes delivery.
            return DeliveryResult()
        waiting = pending_by_status(self.store)
        result = self.deliverer.deliver_all()
        still_waiting = pending_by_status(self.store)
        self.metrics.observe_sent(waiting, still_waiting)
        self._outbox_now(sum(still_waiting.values()))
        return result

    def cycle(self) -> CycleReport:
        """Poll every app, then deliver everything pending (including older alerts); in
        ``wflogs run`` delivery has its own thread, which the cycle wakes instead."""
        started = time.monotonic()
        apps = self.poll()
        if self.deliver_in_cycle:
            delivery = self.deliver()
        else:
            delivery = DeliveryResult()
            if self.wake is not None:
                self.wake()
        return self.report(apps, delivery, time.monotonic() - started)

    def report(self, apps: list[AppResult], delivery: DeliveryResult, seconds: float) -> CycleReport:
        """Sum up a cycle (metrics and the log)."""
        problems = [f"{r.name}: {r.error}" for r in apps if not r.ok]
        problems += [f"Slack {channel}: {error}" for channel, error in delivery.errors.items()]
        problems += self._watch_problems(self.last_watch)
        report = CycleReport(apps, delivery, seconds, problems, watch=self.last_watch)
        self._observe_cycle(report)
        new = sum(r.new_alerts for r in apps)
        head = f"cycle: {plural(len(apps), 'app')}, {plural(new, 'new alert')}"
        trouble = f", {plural(len(problems), 'problem')}" if problems else ""
        if self.deliver_in_cycle:
            log.info(
                "%s, %s delivered in %s and %s, %.1fs%s",
                head,
                plural(delivery.runs_delivered, "run"),
                plural(delivery.posts, "post"),
                plural(delivery.edits, "edit"),
                report.seconds,
                trouble,
            )
        else:
            # `wflogs run`: the delivery thread sends them (and logs what it delivered).
            waiting = sum(pending_by_status(self.store).values())
            log.info(
                "%s; %s queued for the delivery thread, %.1fs%s",
                head,
                plural(waiting, "run"),
                report.seconds,
                trouble,
            )
        return report

    def _watch(self, apps: list[AppResult]) -> WatchReport | None:
        """Failure rates and stuck runs, after the poll (they count what it remembered)."""
        if self.watcher is None:
            return None
        try:
            return self.watcher.watch_all(apps)
        except Exception:
            # Watching must never stop alerting; the stored state lets the next cycle redo it.
            log.exception("watching failure rates and stuck runs failed; the next cycle retries")
            return WatchReport(error="watching failure rates and stuck runs crashed; see the log")

    @staticmethod
    def _watch_problems(watch: WatchReport | None) -> list[str]:
        if watch is None:
            return []
        problems = [f"{r.name}: {r.error}" for r in watch.apps if r.error]
        return problems + ([watch.error] if watch.error else [])

    # -- metrics hooks (kept out of the cycle's flow) ------------------------------------------

    def _observe_cycle(self, report: CycleReport) -> None:
        """The outbox, open incidents and the cycle itself (what delivery sent is counted by
        :meth:`deliver`, wherever it runs)."""
        still_waiting = pending_by_status(self.store)
        report.outbox_pending = sum(still_waiting.values())
        self._outbox_now(report.outbox_pending)
        self.metrics.open_incidents.set(open_incidents_count(self.store))
        self.metrics.subscriptions.set(subscriptions.counts(self.store)["subscriptions"])
        self.metrics.observe_cycle(report.seconds, "ok" if report.ok else "problems")

    def _outbox_now(self, pending: int) -> None:
        """The outbox's depth changed (after a cycle, and after each delivery pass, which in
        ``wflogs run`` runs on its own thread)."""
        self.metrics.outbox_pending.set(pending)
        if self.on_outbox is not None:
            self.on_outbox(pending)

    def close(self) -> None:
        """Release connections."""
        self.http.close()
