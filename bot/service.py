"""``wflogs run``: the long-running process (scheduler, Slack serving)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.config import Settings
from bot.digest import Digester
from bot.runtime import Runtime
from bot.slack_app import start_slack

log = logging.getLogger(__name__)


DELIVERY_INTERVAL = 15


class DeliveryLoop:
    """Delivery on its own thread: a slow Slack does not hold up polling and a slow Dify does
    not hold up alerts already found. It runs at once, when woken (after each poll, after a
    click), and every ``interval`` seconds to retry what waits."""

    def __init__(self, runtime: Runtime, *, interval: float = DELIVERY_INTERVAL) -> None:
        self.runtime = runtime
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deliver", daemon=True)

    def start(self) -> DeliveryLoop:
        """Start the thread; returns self."""
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
            except Exception:
                log.exception("delivery crashed; the next pass will retry")
            self._wake.wait(self.interval)


def add_poll_job(
    scheduler: BackgroundScheduler, runtime: Runtime, *, delivery: DeliveryLoop | None = None
) -> None:
    """Poll every ``poll_interval`` seconds, starting now; overlapping cycles are skipped.

    With a :class:`DeliveryLoop`, each poll wakes it; without one, each poll delivers itself."""

    def job() -> None:
        try:
            if delivery is None:
                runtime.cycle()
                return
            apps = runtime.poll()
            delivery.wake()
            log.info("poll: %d apps, %d new alerts", len(apps), sum(r.new_alerts for r in apps))
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


DIGEST_CATCHUP_MINUTES = 5


def add_digest_jobs(
    scheduler: BackgroundScheduler,
    runtime: Runtime,
    digester: Digester,
    *,
    now: Callable[[], float] = time.time,
) -> None:
    """The daily digest: a cron job at ``WFLOGS_DIGEST_TIME`` in ``WFLOGS_TIMEZONE``, plus a catch-up
    check at start-up and every few minutes that posts a digest missed while wflogs was down or
    Slack refused it (marked late). Both run the same idempotent :meth:`Digester.run_due`."""
    settings = runtime.settings
    if not any(app.digest for app in settings.apps):
        return

    def job() -> None:
        try:
            digester.run_due(now())
        except Exception:
            log.exception("digest job crashed; the catch-up check will retry")

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
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def serve(settings: Settings, *, out: TextIO, stop: threading.Event | None = None) -> int:
    """Start the scheduler and the /wflogs serving, and block until ``stop`` is set (SIGTERM/SIGINT)."""
    stop = stop or threading.Event()
    install_stop_signals(stop)
    runtime = Runtime.build(settings, stream=out)
    for warning in settings.warnings:
        log.warning("%s", warning)
    scheduler = BackgroundScheduler(timezone=settings.tz)
    delivery = DeliveryLoop(runtime).start()
    runtime.wake = delivery.wake
    add_poll_job(scheduler, runtime, delivery=delivery)
    add_digest_jobs(scheduler, runtime, runtime.digester)
    scheduler.start()
    stop_slack = start_slack(runtime)
    where = "Slack" if settings.slack_enabled else "this terminal"
    log.info(
        "wflogs is watching %d app(s) every %ds; alerts go to %s",
        len(settings.apps),
        settings.poll_interval,
        where,
    )
    try:
        stop.wait()
    finally:
        if stop_slack is not None:
            stop_slack()
        scheduler.shutdown(wait=True)
        delivery.stop()
        runtime.close()
    return 0
