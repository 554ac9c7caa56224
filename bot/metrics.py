"""Prometheus metrics of one wflogs process, served at ``GET /metrics``.

Each :class:`Metrics` has its own ``CollectorRegistry`` (not the library's global
one), so two runtimes in one process (tests, a second copy) never share or
clash over counters. Dify requests are counted at the HTTP transport and Slack
calls at the Web API client, so every caller is covered without knowing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROLES = ("active", "standby")


class Metrics:
    """The instruments wflogs updates; :meth:`render` is the ``/metrics`` body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cycles = Counter(
            "wflogs_cycles", "Poll cycles finished, by result (ok, problems, error)", ["result"], registry=r
        )
        self.cycle_seconds = Histogram(
            "wflogs_cycle_duration_seconds",
            "How long a poll cycle (poll every app, deliver, health checks) took",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.app_poll_ok = Gauge(
            "wflogs_app_poll_ok", "1 when the last poll of the app succeeded, else 0", ["app"], registry=r
        )
        self.app_last_success = Gauge(
            "wflogs_app_last_success_timestamp_seconds",
            "When the app was last polled successfully (Unix time)",
            ["app"],
            registry=r,
        )
        self.dify_requests = Counter(
            "wflogs_dify_requests",
            "HTTP requests to Dify by outcome (ok, rejected, not_found, rate_limited, client_error, "
            "server_error, timeout, unreachable)",
            ["outcome"],
            registry=r,
        )
        self.alerts_sent = Counter(
            "wflogs_alerts_sent",
            "Alerted runs delivered to Slack (or the terminal), by run status",
            ["status"],
            registry=r,
        )
        self.slack_calls = Counter(
            "wflogs_slack_calls",
            "Slack Web API calls by method and outcome (ok, a Slack error code, or unreachable)",
            ["method", "outcome"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "wflogs_outbox_pending",
            "Alerts waiting to be delivered (as of the last cycle or delivery pass)",
            registry=r,
        )
        self.open_incidents = Gauge(
            "wflogs_open_incidents", "Incidents not resolved yet (as of the last cycle)", registry=r
        )
        self.subscriptions = Gauge(
            "wflogs_subscriptions",
            "Channel subscriptions made from Slack with /wflogs subscribe (as of the last cycle)",
            registry=r,
        )
        self.role = Enum(
            "wflogs_role",
            "Whether this instance polls (active) or waits (standby)",
            states=list(ROLES),
            registry=r,
        )
        self.role.state("standby")
        self.database_ok = Gauge(
            "wflogs_database_ok", "1 while the database can be written, 0 after a failure", registry=r
        )
        self.database_ok.set(1)
        self.socket_mode_connected = Gauge(
            "wflogs_slack_socket_mode_connected", "1 while the Socket Mode connection is up", registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    # -- updates -------------------------------------------------------------------------------

    def observe_apps(self, results: Iterable[Any], now: float) -> None:
        """Per app: whether its poll succeeded and, if so, when (``results`` are poller results)."""
        for result in results:
            self.app_poll_ok.labels(app=result.name).set(1 if result.ok else 0)
            if result.ok:
                self.app_last_success.labels(app=result.name).set(now)

    def observe_sent(self, waiting_before: Mapping[str, int], waiting_after: Mapping[str, int]) -> None:
        """Count what delivery took out of the outbox, per status."""
        for status, before in waiting_before.items():
            sent = before - waiting_after.get(status, 0)
            if sent > 0:
                self.alerts_sent.labels(status=status).inc(sent)

    def observe_cycle(self, seconds: float, result: str) -> None:
        """One finished (or failed) cycle."""
        self.cycles.labels(result=result).inc()
        self.cycle_seconds.observe(seconds)


def dify_outcome(status: int) -> str:
    """The ``outcome`` label of a Dify answer with HTTP ``status``."""
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "rejected"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    return "client_error" if status < 500 else "server_error"


class MeteredTransport(httpx.BaseTransport):
    """An httpx transport that counts every request to Dify by outcome, then hands it on."""

    def __init__(self, inner: httpx.BaseTransport, metrics: Metrics) -> None:
        self._inner = inner
        self._counter = metrics.dify_requests

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException:
            self._counter.labels(outcome="timeout").inc()
            raise
        except httpx.TransportError:
            self._counter.labels(outcome="unreachable").inc()
            raise
        self._counter.labels(outcome=dify_outcome(response.status_code)).inc()
        return response

    def close(self) -> None:
        self._inner.close()


class MeteredWebClient(WebClient):
    """A Slack ``WebClient`` that counts every Web API call by method and outcome."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls = metrics.slack_calls

    def api_call(self, api_method: str, **kwargs: Any) -> SlackResponse:
        try:
            response = super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            status = exc.response.status_code if exc.response is not None else 0
            self._calls.labels(method=api_method, outcome=str(error or f"http_{status}")).inc()
            raise
        except Exception:
            self._calls.labels(method=api_method, outcome="unreachable").inc()
            raise
        self._calls.labels(method=api_method, outcome="ok").inc()
        return response
