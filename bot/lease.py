"""Which of several ``wflogs run`` on one database is the active one.

One row in SQLite (owner, expiry) is taken or renewed in a transaction every
few seconds. Its holder polls, delivers and posts digests; the others serve
``/wflogs`` and ``/healthz`` and take the lease when it expires (its holder died)
or is released (its holder stopped cleanly). A holder that could not renew in
time stops acting on its own before anyone else can take over, so two
instances never both deliver for long.

Timings follow the poll interval: the lease lasts two intervals and is renewed
every fifth of one, so a standby takes over well within three intervals.

The lease carries an epoch, a fencing token that grows every time it changes hands.
:class:`LeaseFence` lets the journal of Slack effects check, just before each Slack
call and again in the transaction that records it, that this instance still holds
the lease in the epoch it took it: a holder paused past its expiry (a VM freeze, a
long GC) writes nothing once it resumes, beyond deleting the copy of a write that was
already in flight.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from storage import Store
from storage.db import claim_lease, fence_holds, read_lease, release_lease

log = logging.getLogger(__name__)

LEASE_NAME = "active"


def _pid_namespace() -> str:
    """This process's pid namespace (containers on one host have their own), or ``-``."""
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "-"


def instance_id() -> str:
    """This process's name in the lease: host, process id, and its pid namespace with a random
    tag (pids are reused, and mean something only inside one namespace)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace()}.{secrets.token_hex(2)}"


def lease_timings(poll_interval: int) -> tuple[int, int]:
    """(how long a lease lasts, how often it is renewed or tried), in seconds, for a poll interval."""
    return 2 * poll_interval, max(1, poll_interval // 5)


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` is a process of this host that no longer exists (a crash, then a restart)."""
    try:
        host, pid_text, tag = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    namespace = tag.split(".", 1)[0]
    if host != socket.gethostname() or namespace != _pid_namespace() or namespace == "-":
        # Another host, or another container on this one: its pids are not ours to look up.
        return False
    if pid == os.getpid() or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _app_ids(raw: Any) -> frozenset[str]:
    try:
        ids = json.loads(raw or "[]")
    except ValueError:
        return frozenset()
    return frozenset(str(i) for i in ids) if isinstance(ids, list) else frozenset()


@dataclass(frozen=True)
class LeaseView:
    """The lease as ``wflogs check`` reports it."""

    owner: str | None
    expires_at: float
    renewed_at: float
    acquired_at: float
    apps: frozenset[str] = frozenset()

    def alive(self, now: float) -> bool:
        return self.owner is not None and self.expires_at > now


class Lease:
    """This instance's side of the lease; :meth:`tick` takes or renews it."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float,
        owner: str | None = None,
        now: Callable[[], float] = time.time,
        apps: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = owner or instance_id()
        self._now = now
        self._apps = json.dumps(sorted(set(apps)))
        self._lock = threading.Lock()
        self._expires_at = 0.0
        self.holder: str | None = None
        self.holder_apps: frozenset[str] = frozenset()
        self.epoch: int | None = None  # the epoch this instance holds the lease in

    @property
    def active(self) -> bool:
        """Whether this instance holds the lease right now (by its own clock: no database read)."""
        with self._lock:
            return self.holder == self.owner and self._now() < self._expires_at

    def tick(self) -> bool:
        """Take or renew the lease; True when this instance holds it. Raises storage errors."""
        now = self._now()
        row = claim_lease(self.store, LEASE_NAME, self.owner, now, self.ttl, self._apps)
        if row["owner"] != self.owner and _dead_here(str(row["owner"])):
            log.info("the active instance %s is gone (its process ended); taking over", row["owner"])
            release_lease(self.store, LEASE_NAME, str(row["owner"]))
            row = claim_lease(self.store, LEASE_NAME, self.owner, now, self.ttl, self._apps)
        with self._lock:
            self.holder = str(row["owner"])
            self.holder_apps = _app_ids(row.get("apps"))
            self._expires_at = float(row["expires_at"]) if self.holder == self.owner else 0.0
            self.epoch = int(row.get("epoch") or 0) if self.holder == self.owner else None
        return self.holder == self.owner

    def release(self) -> None:
        """Let another instance take over at once (a clean stop)."""
        with self._lock:
            held = self.holder == self.owner
            self.holder, self._expires_at, self.epoch = None, 0.0, None
        if held:
            release_lease(self.store, LEASE_NAME, self.owner)


class LeaseFence:
    """The journal's fence: only this instance, while it holds the lease in its epoch, writes."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def admits(self, now: float) -> int | None:
        """Before a Slack call: the epoch this instance holds the lease in, by its own clock and by
        the database (same epoch, not expired); None when it must not write."""
        epoch = self.lease.epoch
        if epoch is None or not self.lease.active:
            return None
        return epoch if fence_holds(self.lease.store, LEASE_NAME, self.lease.owner, epoch, now) else None

    def holds(self, epoch: int) -> bool:
        """In the transaction that records a Slack call: nobody took the lease over since ``epoch``."""
        return fence_holds(self.lease.store, LEASE_NAME, self.lease.owner, epoch)


def view(store: Store) -> LeaseView | None:
    """The lease as stored, or None when no ``wflogs run`` ever used this database."""
    row: dict[str, Any] | None = read_lease(store, LEASE_NAME)
    if row is None:
        return None
    return LeaseView(
        owner=row["owner"],
        expires_at=float(row["expires_at"] or 0),
        renewed_at=float(row["renewed_at"] or 0),
        acquired_at=float(row["acquired_at"] or 0),
        apps=_app_ids(row.get("apps")),
    )
