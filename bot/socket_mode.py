"""Socket Mode that does not give up: the first connection is retried with backoff.

Slack's client reconnects by itself once a session was established, but a
refused ``apps.connections.open`` at start-up (Slack down, a network blip, a
proxy still starting) raises once and nobody tries again. Here a background
thread keeps trying, doubling the wait up to a cap, and says so in the log.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

FIRST_DELAY = 2.0
MAX_DELAY = 300.0
# Refusals that only a new token fixes (still retried, since the token may be fixed in Slack's settings).
TOKEN_ERRORS = {"invalid_auth", "not_authed", "not_allowed_token_type", "token_revoked", "account_inactive"}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        error = str(exc.response.get("error") or "") if exc.response is not None else ""
        if error in TOKEN_ERRORS:
            return f"{error}: check SLACK_APP_TOKEN (an app-level token with connections:write)"
        status = exc.response.status_code if exc.response is not None else 0
        return f"Slack answered {error or f'HTTP {status}'}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SocketModeConnector:
    """Connects ``app`` over Socket Mode from a background thread until it works or :meth:`close`."""

    def __init__(
        self,
        app: App,
        app_token: str,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        on_connected: Callable[[bool], None] | None = None,
        check_every: float = 2.0,
        ping_interval: float = 10.0,
    ) -> None:
        # Slack's client pings every ``ping_interval`` seconds and drops a connection that has not
        # answered for four of them, then reconnects; the gauge follows what it finds.
        self.handler = SocketModeHandler(app, app_token, ping_interval=ping_interval)
        self.check_every = check_every
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.attempts = 0
        self.connected = threading.Event()
        self._on_connected = on_connected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-mode-connect", daemon=True)

    def start(self) -> SocketModeConnector:
        """Start connecting; returns at once."""
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = self.first_delay
        while not self._stop.is_set():
            self.attempts += 1
            try:
                # A URL from a failed attempt may be spent: ask Slack for a new one every time.
                self.handler.client.wss_uri = None
                self.handler.connect()
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning(
                    "/wflogs: cannot open Socket Mode (%s); retrying in %.0fs (attempt %d)",
                    _reason(exc),
                    delay,
                    self.attempts,
                )
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_delay)
                continue
            after = f" after {self.attempts} attempts" if self.attempts > 1 else ""
            log.info("/wflogs is served over Socket Mode%s", after)
            self.connected.set()
            if self._on_connected is not None:
                self._on_connected(True)
            self._watch()
            return

    def _watch(self) -> None:
        """Follow the connection (Slack's client reconnects by itself): report when it drops and
        when it is back, so the gauge says the truth."""
        up = True
        while not self._stop.wait(self.check_every):
            now_up = bool(self.handler.client.is_connected())
            if now_up == up:
                continue
            up = now_up
            if up:
                log.info("/wflogs: the Socket Mode connection is back")
            else:
                log.warning("/wflogs: the Socket Mode connection dropped; Slack's client reconnects")
            if self._on_connected is not None:
                self._on_connected(up)

    def close(self) -> None:
        """Stop trying and disconnect."""
        self._stop.set()
        self._thread.join(timeout=5)
        client = self.handler.client
        try:
            # Wake the receiving thread (it waits up to 3 s in recv and holds the lock close needs).
            client.auto_reconnect_enabled = False
            session = client.current_session
            if session is not None and session.sock is not None:
                session.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.handler.close()
        except Exception as exc:  # closing a half-open client must not stop the shutdown
            log.debug("closing Socket Mode: %s", exc)
        if self._on_connected is not None:
            self._on_connected(False)
