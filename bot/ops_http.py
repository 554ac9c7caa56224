"""The one HTTP server of ``wflogs run``: ``/healthz``, ``/metrics`` and, with a signing secret,
``/slack/events``.

It listens in every mode (Socket Mode, HTTP, terminal only) so that Docker,
Kubernetes, systemd or a Prometheus server can tell whether wflogs is alive.
Answers come from state the poll loop keeps in memory: a health check never
waits for Dify, Slack or a locked database.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from bot.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
EVENTS_PATH = "/slack/events"
# A failing database is logged at most this often (the health check says it all the time).
DB_REPORT_EVERY = 60.0
STALE_INTERVALS = 3

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass
class ProcessHealth:
    """What ``/healthz`` reports, kept up to date by the poll loop and the lease."""

    poll_interval: int
    now: Callable[[], float] = time.time
    started_at: float = 0.0
    role: str = "standby"
    active_since: float | None = None
    last_tick_at: float | None = None
    last_cycle_at: float | None = None
    apps_ok: list[str] = field(default_factory=list)
    apps_failing: list[str] = field(default_factory=list)
    outbox_pending: int | None = None
    holder: str | None = None
    unwatched_apps: list[str] = field(default_factory=list)
    db_error: str | None = None
    _db_logged_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.started_at = self.started_at or self.now()

    # -- updates ----------------------------------------------------------------------------

    def ticked(self, *, active: bool, holder: str | None) -> None:
        """The lease was taken or renewed (or found held by ``holder``): the loop is alive."""
        now = self.now()
        with self._lock:
            if active and self.role != "active":
                self.active_since = now
            self.role = "active" if active else "standby"
            self.holder = holder
            self.last_tick_at = now

    def stepped_down(self) -> None:
        """This instance stopped acting as the active one (it could not renew its lease)."""
        with self._lock:
            self.role = "standby"

    def cycle_done(
        self, *, apps_ok: list[str], apps_failing: list[str], outbox_pending: int | None = None
    ) -> None:
        """A poll cycle finished."""
        with self._lock:
            self.last_cycle_at = self.now()
            self.apps_ok, self.apps_failing = apps_ok, apps_failing
            if outbox_pending is not None:
                self.outbox_pending = outbox_pending

    def outbox_now(self, pending: int) -> None:
        """The outbox was measured (after a cycle or a delivery pass)."""
        with self._lock:
            self.outbox_pending = pending

    def database_failed(self, message: str) -> None:
        """The database could not be used: remember it for ``/healthz``, log it once a minute."""
        now = self.now()
        with self._lock:
            due = self._db_logged_at is None or now - self._db_logged_at >= DB_REPORT_EVERY
            if due:
                self._db_logged_at = now
            self.db_error = message
        if due:
            log.error("%s (nothing is lost: polling resumes where it stopped once it works)", message)

    def database_ok(self) -> None:
        """Everything this instance writes went through again: clear a database failure (a failure
        that comes back within the minute is not logged again)."""
        with self._lock:
            was, self.db_error = self.db_error, None
        if was:
            log.info("the database works again")

    # -- the answer -------------------------------------------------------------------------

    def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for ``GET /healthz``."""
        now = self.now()
        limit = STALE_INTERVALS * self.poll_interval
        with self._lock:
            reason = None
            if self.db_error:
                reason = f"the database cannot be written: {self.db_error}"
            elif now - (self.last_tick_at or self.started_at) > limit:
                reason = f"the poll loop has not run for more than {limit}s"
            elif self.role == "active" and now - max(self.last_cycle_at or 0, self.active_since or 0) > limit:
                reason = f"no poll cycle finished in the last {limit}s"
            body: dict[str, Any] = {
                "status": "failing" if reason else "ok",
                "role": self.role,
                "last_cycle_at": _iso(self.last_cycle_at),
                "apps": {"ok": len(self.apps_ok), "failing": sorted(self.apps_failing)},
                "outbox_pending": self.outbox_pending,
                "active_instance": self.holder,
            }
            if self.unwatched_apps:
                body["unwatched_apps"] = list(self.unwatched_apps)
        if reason:
            body["reason"] = reason
        return (503 if reason else 200), body


def make_wsgi_app(health: ProcessHealth, metrics: Metrics, slack: WsgiApp | None = None) -> WsgiApp:
    """Route ``/healthz``, ``/metrics`` and (when given) ``/slack/events``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            status, body = health.report()
            data = json.dumps(body).encode()
            phrase = "200 OK" if status == 200 else "503 Service Unavailable"
            start_response(phrase, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [b"" if method == "HEAD" else data]
        if path == METRICS_PATH and method in ("GET", "HEAD"):
            data = metrics.render()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(data)))])
            return [b"" if method == "HEAD" else data]
        if path == EVENTS_PATH and slack is not None:
            return slack(environ, start_response)
        data = b"not found: wflogs serves /healthz, /metrics"
        data += b" and /slack/events\n" if slack is not None else b"\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
        return [data]

    return app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class OpsServer:
    """The WSGI app on ``host:port`` in a background thread."""

    def __init__(self, app: WsgiApp, host: str, port: int) -> None:
        self.host = host
        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="ops-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
