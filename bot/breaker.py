"""A Dify that stopped answering is not asked again in the same cycle.

Without this, one hanging Dify costs every request its full timeout and retries (15 s, three
times, plus backoff): the app's name, both statuses, the failure-rate count, the stuck-run
band... A cycle then outlasts several poll intervals, ``/healthz`` reports the poll loop as
stuck, and a liveness probe restarts a process that was fine. Here, after ``after`` timeouts
or refused connections in a row, requests to that host fail at once (as a timeout) until the
next poll cycle starts (:meth:`HostBreaker.reset`) or ``open_for`` seconds have passed. A
single slow answer followed by a good one changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

log = logging.getLogger(__name__)

Host = tuple[str, str, int | None]


class HostBreaker(httpx.BaseTransport):
    """An httpx transport that stops calling a host after it failed ``after`` times in a row."""

    def __init__(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        after: int = 2,
        open_for: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._after = max(1, after)
        self._open_for = open_for
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[Host, int] = {}
        self._open_until: dict[Host, float] = {}
        self._kind: dict[Host, type[httpx.TransportError]] = {}

    def wrap(self, inner: httpx.BaseTransport) -> None:
        """The transport that really sends the requests."""
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert self._inner is not None, "HostBreaker.wrap() first"
        host: Host = (request.url.scheme, request.url.host, request.url.port)
        with self._lock:
            until = self._open_until.get(host)
            kind = self._kind.get(host, httpx.ConnectTimeout)
        if until is not None and self._clock() < until:
            # Fail as the host did (refused, or timed out), so callers say the same thing.
            raise kind(
                f"{request.url.host} failed the last requests; not asked again this cycle", request=request
            )
        try:
            response = self._inner.handle_request(request)
        except (httpx.TimeoutException, httpx.ConnectError) as exc:
            with self._lock:
                self._kind[host] = (
                    httpx.ConnectError if isinstance(exc, httpx.ConnectError) else httpx.ConnectTimeout
                )
                failures = self._failures.get(host, 0) + 1
                self._failures[host] = failures
                opened = failures >= self._after and host not in self._open_until
                if failures >= self._after:
                    self._open_until[host] = self._clock() + self._open_for
            if opened:
                log.warning(
                    "%s did not answer %d requests in a row: not asked again until the next cycle",
                    request.url.host,
                    failures,
                )
            raise
        with self._lock:
            self._failures.pop(host, None)
            self._open_until.pop(host, None)
        return response

    def reset(self) -> None:
        """A new cycle: every host is asked again."""
        with self._lock:
            self._open_until.clear()
            self._failures.clear()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
