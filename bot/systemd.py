"""systemd's notify protocol: ``READY=1`` once serving, ``WATCHDOG=1`` while healthy.

Under ``Type=notify`` with ``WatchdogSec=``, systemd restarts wflogs when the
pings stop, which they do as soon as ``/healthz`` would answer 503 (a hung poll
loop, a database that cannot be written). Without ``NOTIFY_SOCKET`` (not
started by systemd) nothing is sent. No library is needed: it is one datagram
on a Unix socket.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to systemd over ``NOTIFY_SOCKET`` (a path, or ``@name``: abstract)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications."""
        return bool(self.address)

    def send(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``); False when not under systemd or it could not be sent."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(target)
                sock.sendall(state.encode())
        except OSError as exc:
            if not self._failed:  # once: the watchdog will say the rest
                log.warning("cannot notify systemd at NOTIFY_SOCKET (%s)", exc.strerror or exc)
            self._failed = True
            return False
        self._failed = False
        return True
