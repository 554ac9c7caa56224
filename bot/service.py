"""``wflogs run``: the long-running process (scheduler, lease, health and metrics, Slack serving)."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.config import Settings
from bot.digest import Digester
from bot.errors import ConfigError, WflogsError
from bot.lease import Lease, LeaseFence, lease_timings
from bot.logs import Reminder
from bot.ops_http import EVENTS_PATH, HEALTH_PATH, METRICS_PATH, OpsServer, ProcessHealth, make_wsgi_app
from bot.runtime import CycleReport, Runtime, database_error
from bot.slack_app import build_app, events_handler
from bot.socket_mode import FIRST_DELAY as SOCKET_FIRST_DELAY
from bot.socket_mode import TOKEN_ERRORS, SocketModeConnector
from bot.systemd import Notifier
from bot.text import strip_controls
from storage import STORAGE_ERRORS

log = logging.getLogger(__name__)


DELIVERY_INTERVAL = 15


class DeliveryLoop:
    """Delivery on its own thread: a slow Slack does not hold up polling and a slow Dify does
    not hold up alerts already found. It runs at once, when woken (after each poll, after a
    click), and every ``interval`` seconds to retry what waits."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval: float = DELIVERY_INTERVAL,
        active: Callable[[], bool] | None = None,
        database_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.interval = interval
        # Only the active instance (the lease holder) writes channel messages.
        self._active = active
        # A database that refuses writes is reported there (one line a minute), not per pass.
        self._database_failed = database_failed
        self._remind = Reminder(600)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deliver", daemon=True)

    def start(self) -> DeliveryLoop:
        """Take over delivery from the poll cycles (which then wake this thread) and start."""
        self.runtime.wake = self.wake
        self.runtime.deliver_in_cycle = False
        self._thread.start()
        return self

    def wake(self) -> None:
        """Deliver as soon as the current pass (if any) ends."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current pass and stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if self._active is not None and not self._active():
                self._wake.wait(self.interval)
                continue
            try:
                result = self.runtime.deliver()
                if result.posts or result.edits:
                    log.info(
                        "delivered %d runs in %d posts and %d edits%s",
                        result.runs_delivered,
                        result.posts,
                        result.edits,
                        f"; waiting: {', '.join(result.errors)}" if result.errors else "",
                    )
            except STORAGE_ERRORS as exc:
                if self._database_failed is not None:
                    self._database_failed(exc)
                else:
                    log.error("delivery waits: the database failed: %s", exc)
            except Exception:
                if self._remind.due("crash"):
                    log.exception("delivery crashed; every pass retries")
            self._wake.wait(self.interval)


def add_poll_job(scheduler: BackgroundScheduler, runtime: Runtime, ops: Operations | None = None) -> None:
    """Poll every ``poll_interval`` seconds, starting now; overlapping cycles are skipped.

    With ``ops``, only while this instance holds the lease (see :mod:`bot.lease`)."""

    def job() -> None:
        try:
            if ops is not None:
                ops.cycle()
            else:
                runtime.cycle()
        except Exception:
            # A cycle must never kill the scheduler; the next one starts from the stored state.
            log.exception("poll cycle crashed; the next cycle will retry")

    scheduler.add_job(
        job,
        "interval",
        seconds=runtime.settings.poll_interval,
        id="poll",
        coalesce=True,
        max_instances=1,
        next_run_time=datetime.now(runtime.settings.tz),
        misfire_grace_time=runtime.settings.poll_interval,
    )


def add_lease_job(scheduler: BackgroundScheduler, ops: Operations) -> None:
    """Take or renew the lease every fifth of a poll interval, in its own thread: a slow cycle
    must not let the lease lapse."""

    def job() -> None:
        try:
            ops.tick()
            ops.watchdog()
        except Exception:
            log.exception("lease check crashed; the next one will retry")

    scheduler.add_job(
        job,
        "interval",
        seconds=ops.lease_every,
        id="lease",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=ops.lease_every,
    )


class Operations:
    """The lease, the process health and the metrics around the runtime's cycle."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        lease: Lease | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        settings = runtime.settings
        ttl, self.lease_every = lease_timings(settings.poll_interval)
        self.runtime = runtime
        self.lease = lease or Lease(runtime.store, ttl=ttl, now=now, apps=[a.id for a in settings.apps])
        self.health = ProcessHealth(settings.poll_interval, now=now)
        self.metrics = runtime.metrics
        self.on_promoted: Callable[[], None] | None = None
        self.systemd = Notifier(settings.notify_socket)
        self._ticked = False
        runtime.on_outbox = self.health.outbox_now
        # Slack writes only while this instance holds the lease, in the epoch it took it.
        runtime.fence(LeaseFence(self.lease))

    @property
    def active(self) -> bool:
        """Whether this instance polls, delivers and posts digests now."""
        return self.lease.active

    def database_failed(self, exc: BaseException) -> None:
        """The database refused a write somewhere (the delivery thread): /healthz says 503 and the
        log says so once a minute."""
        self._database_failed(exc)

    def _database_failed(self, exc: BaseException) -> None:
        self.health.database_failed(str(database_error(self.runtime.settings.db_path, exc)))
        self.metrics.database_ok.set(0)

    def _database_ok(self) -> None:
        self.health.database_ok()
        self.metrics.database_ok.set(1)

    def tick(self) -> bool:
        """Take or renew the lease and update the role; True while this instance is active."""
        was = self.health.role == "active"
        try:
            active = self.lease.tick()
        except STORAGE_ERRORS as exc:
            self._database_failed(exc)
            active = self.lease.active  # keeps acting only until its own lease runs out
            if was and not active:
                self.health.stepped_down()
                self.metrics.role.state("standby")
                log.warning("this instance stops polling: it cannot renew its lease in the database")
            return active
        self.health.ticked(active=active, holder=self.lease.holder)
        if not active:
            # A standby writes only the lease; the active one is fine again once a cycle is.
            self._database_ok()
        self.metrics.role.state("active" if active else "standby")
        if active and not was:
            log.info(
                "this instance (%s) is the active one: it polls, delivers and posts digests", self.lease.owner
            )
            if self.on_promoted is not None:
                self.on_promoted()
        elif was and not active:
            log.warning("this instance is standby now: %s holds the lease", self.lease.holder)
        elif not active and not self._ticked:
            log.info(
                "standby: %s is active on this database; this instance serves /wflogs and /healthz "
                "and takes over when it stops",
                self.lease.holder,
            )
        self._ticked = True
        self._check_unwatched(active)
        return active

    def _check_unwatched(self, active: bool) -> None:
        """A standby whose apps the active instance does not watch (the configs differ) says so."""
        watched = self.lease.holder_apps
        # Discovered apps (workspace mode) are not in the lease: every copy finds the same ones.
        apps = [a for a in self.runtime.settings.apps if not a.via_console]
        unwatched = [] if active or not watched else [a.label for a in apps if a.id not in watched]
        if unwatched and unwatched != self.health.unwatched_apps:
            log.error(
                "the active instance %s does not watch %s from this instance's configuration: they are "
                "not polled; give every wflogs on one database the same apps",
                self.lease.holder,
                ", ".join(unwatched),
            )
        self.health.unwatched_apps = unwatched

    def cycle(self) -> CycleReport | None:
        """One poll cycle when this instance is active (None when standby or the database failed)."""
        if not self.active:
            # Workspace mode: a standby serves /wflogs too, so it keeps the app list current
            # (reading it writes nothing but what a rejected login must remember).
            try:
                self.runtime.discover_as_standby()
            except Exception:
                log.exception("a standby cannot read the Dify workspace's apps")
            return None
        started = time.monotonic()
        store = self.runtime.store
        failures = store.write_failures
        try:
            report = self.runtime.cycle()
        except STORAGE_ERRORS as exc:
            # Whatever was not stored is read again next cycle: the cursor moves only after a store.
            self._database_failed(exc)
            self.metrics.observe_cycle(time.monotonic() - started, "error")
            return None
        except Exception:
            self.metrics.observe_cycle(time.monotonic() - started, "error")
            raise
        if store.write_failures > failures and store.last_write_error is not None:
            # A write failed inside the cycle and was handled there (as one app's error, say):
            # the database is failing all the same.
            self._database_failed(store.last_write_error)
        else:
            self._database_ok()
        self.health.cycle_done(
            apps_ok=[r.name for r in report.apps if r.ok],
            apps_failing=[r.name for r in report.apps if not r.ok],
        )  # the outbox's depth reached health through runtime.on_outbox (also after delivery passes)
        return report

    def watchdog(self) -> None:
        """Tell systemd this process is alive, but only while ``/healthz`` would say 200."""
        if self.systemd.enabled and self.health.report()[0] == 200:
            self.systemd.send("WATCHDOG=1")

    def stop(self) -> None:
        """Hand the lease over at once (a clean stop)."""
        self.systemd.send("STOPPING=1")
        try:
            self.lease.release()
        except STORAGE_ERRORS as exc:
            log.warning("could not release the lease (%s); another instance takes over when it expires", exc)


DIGEST_CATCHUP_MINUTES = 5


def add_digest_jobs(
    scheduler: BackgroundScheduler,
    runtime: Runtime,
    digester: Digester,
    *,
    now: Callable[[], float] = time.time,
    active: Callable[[], bool] | None = None,
) -> None:
    """The daily digest: a cron job at ``WFLOGS_DIGEST_TIME`` in ``WFLOGS_TIMEZONE``, plus a catch-up
    check at start-up and every few minutes that posts a digest missed while wflogs was down or
    Slack refused it (marked late). Both run the same idempotent :meth:`Digester.run_due`."""
    settings = runtime.settings
    if settings.workspace is None and not any(app.digest for app in settings.apps):
        return  # (a workspace's apps are found once running)

    def job() -> None:
        if active is not None and not active():
            return  # the active instance posts the digests
        try:
            report = digester.run_due(now())
        except Exception:
            log.exception("digest job crashed; the catch-up check will retry")
            return
        if report.posted and runtime.wake is not None:
            runtime.wake()  # the deliverer posts what was planned

    hour, minute = settings.digest_hour_minute
    scheduler.add_job(
        job,
        CronTrigger(hour=hour, minute=minute, timezone=settings.tz),
        id="digest",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=3600,
    )
    scheduler.add_job(
        job,
        "interval",
        minutes=DIGEST_CATCHUP_MINUTES,
        id="digest-catchup",
        coalesce=True,
        max_instances=1,
        next_run_time=datetime.now(settings.tz),
    )


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.is_set():
            # Only set a flag and log here: the main thread stops the jobs and hands the lease over.
            log.info(
                "%s received: stopping (finishing the message in flight, handing over the lease)",
                signal.Signals(signum).name,
            )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def start_serving(
    runtime: Runtime, ops: Operations, *, socket_first_delay: float = SOCKET_FIRST_DELAY
) -> Callable[[], None]:
    """The HTTP server on ``WFLOGS_HTTP_HOST:PORT`` (health, metrics and, with a signing secret,
    ``/slack/events``) and Socket Mode with an app token; returns the function that stops both.

    Raises :class:`ConfigError` when the port cannot be had."""
    settings = runtime.settings
    slack_http = None
    connector: SocketModeConnector | None = None
    bolt_app = None
    if settings.slack_app_token or settings.slack_signing_secret:
        try:
            bolt_app = build_app(runtime)
        except ConfigError as exc:
            log.warning("/wflogs is not served: %s", exc)
    else:
        log.info("/wflogs is not served: set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP)")
    if bolt_app is not None and settings.slack_signing_secret and not settings.slack_app_token:
        slack_http = events_handler(bolt_app)
    try:
        server = OpsServer(
            make_wsgi_app(ops.health, ops.metrics, slack_http), settings.http_host, settings.port
        )
    except OSError as exc:
        where = f"{settings.http_host}:{settings.port}"
        raise ConfigError(f"cannot listen on {where} ({exc.strerror or exc}); {_listen_fix(exc)}")
    where = f"http://{settings.http_host}:{server.port}"
    log.info("health at %s%s, metrics at %s%s", where, HEALTH_PATH, where, METRICS_PATH)
    if slack_http is not None:
        log.info("/wflogs is served at %s%s", where, EVENTS_PATH)
    if bolt_app is not None and settings.slack_app_token:
        connector = SocketModeConnector(
            bolt_app,
            settings.slack_app_token,
            first_delay=socket_first_delay,
            on_connected=lambda up: ops.metrics.socket_mode_connected.set(1 if up else 0),
        ).start()

    def stop() -> None:
        if connector is not None:
            connector.close()
        server.close()

    return stop


def _listen_fix(exc: OSError) -> str:
    """What to change when the HTTP server cannot listen."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (
            "set WFLOGS_HTTP_HOST to an address of this host (0.0.0.0: every address, 127.0.0.1: this host "
            "only)"
        )
    if exc.errno == errno.EACCES:
        return "ports below 1024 need privileges: set PORT to 1024 or above (default 3000)"
    return "set PORT to a free port (each wflogs on one host needs its own)"


def slack_token_line(error: str) -> str:
    """What ``wflogs check`` prints (after its ✗) and ``wflogs run`` stops with when Slack refuses the
    bot token."""
    return f"Slack: {error}: check SLACK_BOT_TOKEN"


def refuse_rejected_token(runtime: Runtime) -> None:
    """Stop at start-up when Slack rejects the bot token (it would fail every post, forever); a Slack
    that cannot be reached now is not a reason: delivery waits for it."""
    if runtime.web is None:
        return
    try:
        runtime.web.auth_test()
    except SlackApiError as exc:
        error = str(exc.response.get("error") or "")
        if error in TOKEN_ERRORS:
            raise ConfigError(slack_token_line(error))
        log.warning("Slack auth.test failed at start-up: %s; going on", error)
    except (SlackClientError, OSError) as exc:
        log.warning("Slack cannot be reached at start-up (%s); alerts wait for it", type(exc).__name__)


def serve(settings: Settings, *, out: TextIO, stop: threading.Event | None = None) -> int:
    """Serve health and metrics, take part in the lease, poll (when active) and serve /wflogs, until
    ``stop`` is set (SIGTERM/SIGINT)."""
    stop = stop or threading.Event()
    install_stop_signals(stop)
    runtime = Runtime.build(settings, stream=out)
    try:
        refuse_rejected_token(runtime)
    except WflogsError:
        runtime.close()
        raise
    for warning in settings.warnings:
        log.warning("%s", warning)
    ops = Operations(runtime)
    scheduler = BackgroundScheduler(timezone=settings.tz)
    try:
        stop_serving = start_serving(runtime, ops)
    except WflogsError:
        runtime.close()
        raise

    def promoted() -> None:
        # Poll (and catch up on digests) at once rather than at the next tick of the schedule.
        for job_id in ("poll", "digest-catchup"):
            if scheduler.get_job(job_id) is not None:
                scheduler.modify_job(job_id, next_run_time=datetime.now(settings.tz))

    ops.tick()
    add_lease_job(scheduler, ops)
    delivery = DeliveryLoop(runtime, active=lambda: ops.active, database_failed=ops.database_failed).start()
    add_poll_job(scheduler, runtime, ops)
    add_digest_jobs(scheduler, runtime, runtime.digester, active=lambda: ops.active)
    ops.on_promoted = promoted
    scheduler.start()
    ops.systemd.send("READY=1")
    where = "Slack" if settings.slack_enabled else "this terminal"
    # Names known without asking Dify (configured, or stored by an earlier run), else the key's label.
    names = [
        strip_controls(app.name or (runtime.store.app_state(app.id) or {}).get("name") or app.label)
        for app in settings.apps
    ]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    log.info(
        "wflogs is watching %s every %ds (%s); alerts go to %s",
        "1 app" if len(names) == 1 else f"{len(names)} apps",
        settings.poll_interval,
        shown,
        where,
    )
    try:
        stop.wait()
    finally:
        stop_serving()
        scheduler.shutdown(wait=True)
        delivery.stop()
        ops.stop()
        runtime.close()
    return 0
