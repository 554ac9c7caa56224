"""The one way wflogs writes to Slack: through the journal of effects, fenced by the lease.

Every post, reply, edit, upload and deletion is an effect with an idempotency key
(``storage/journal.py``). :meth:`Journal.send` carries one out:

1. In one transaction: check the fence (this instance holds the lease in the epoch it
   took it, and the lease has not expired) and mark the effect ``sending``. An effect
   already ``sent`` is not sent again.
2. Call Slack.
3. In one transaction: check the fence again, mark the effect ``sent`` and record what it
   changed (the runs it carried, the incident's message, the digest's ts).

Between 1 and 3 the process can be paused (a VM freeze, a long GC) past its lease, and
another instance can take over and send the same effect. The write in flight then still
lands; step 3 finds the lease gone, so this instance deletes its own copy
(``chat.delete``) and writes nothing else: the channel keeps the new holder's message.

When step 3 cannot be written (a full disk), the effect is remembered in memory as sent
and never sent again; delivery pauses (said once) until the record can be written, then
resumes where it stopped. Only a crash in that state, or a kill between 1 and 3, can send
one effect twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.blocks import Block
from bot.errors import SlackError
from bot.notifier import Sink
from storage import STORAGE_ERRORS, Store
from storage import journal as effects

log = logging.getLogger(__name__)

POST = "post"
UPDATE = "update"
UPLOAD = "upload"

# What a sent effect changes, recorded in the transaction that marks it sent.
Record = Callable[[str | None], None]
# A planned effect's record, by name: (the effect's ts, its stored arguments).
Handler = Callable[[str | None, dict[str, Any]], None]


class LeaseLost(Exception):
    """Another instance holds the lease now: this one must not write to Slack."""


class DeliveryPaused(Exception):
    """The database refuses writes: nothing more is sent until what was sent is recorded."""


class Fence(Protocol):
    """Who may write: the holder of the lease in its current epoch."""

    def admits(self, now: float) -> int | None:
        """Before a Slack call: the epoch this instance holds the lease in, or None (must not write)."""
        ...

    def holds(self, epoch: int) -> bool:
        """Inside the transaction that records a call: the lease is still this instance's, in ``epoch``."""
        ...


@dataclass
class Effect:
    """One Slack write."""

    key: str
    op: str
    channel: str
    text: str = ""
    blocks: list[Block] | None = None
    thread_ts: str | None = None
    broadcast: bool = False
    ts: str | None = None  # the message an update changes
    filename: str | None = None
    content: str | bytes | None = None
    title: str | None = None
    comment: str | None = None
    alt_text: str | None = None
    source: str = ""

    def describe(self) -> str:
        """A short name for logs (no message text: it may hold end users' data)."""
        return f"{self.source or self.op} {self.key} in {self.channel}"


@dataclass
class _Unrecorded:
    effect: Effect
    epoch: int | None
    ts: str | None
    file_id: str | None
    record: Record | None
    storage: bool  # the record failed because the database did (else: a bug in the record)
    logged: bool = False


@dataclass
class Journal:
    """Carries out effects through a :class:`Sink`; the only caller of the sink's writes."""

    store: Store
    sink: Sink
    fence: Fence | None = None
    now: Callable[[], float] = time.time
    _unrecorded: dict[str, _Unrecorded] = field(default_factory=dict)
    _paused: str | None = None

    @property
    def paused(self) -> bool:
        """Whether delivery waits for the database to take the records of what was sent."""
        return self._paused is not None

    @property
    def unrecorded(self) -> int:
        """Effects sent to Slack whose record is not written yet."""
        return len(self._unrecorded)

    # -- one effect -----------------------------------------------------------------------

    def send(self, effect: Effect, record: Record | None = None) -> str | None:
        """Carry out ``effect`` once and record it with ``record``; returns the message's ts.

        Raises :class:`SlackError` (nothing recorded but the error), :class:`LeaseLost`
        (nothing sent, or the copy sent was deleted), :class:`DeliveryPaused` (sent, not
        recorded: it never is sent again) or a storage error (nothing sent)."""
        held = self._unrecorded.get(effect.key)
        if held is not None:
            # Sent before and not recorded: record it now, never send it again.
            self._flush_one(effect.key, held)
            return held.ts
        if self._paused is not None:
            raise DeliveryPaused(self._paused)
        row, epoch = self._start(effect)
        if row["state"] == effects.SENT:
            return row.get("ts")
        if row["state"] == effects.REFUSED:
            return None
        try:
            ts, file_id = self._call(effect)
        except SlackError as exc:
            try:
                effects.failed(self.store, effect.key, epoch, str(exc))
            except STORAGE_ERRORS:
                pass  # it stays 'sending' and is sent again: Slack did not take it
            raise
        self._finish(effect, epoch, ts, file_id, record)
        return ts

    def _start(self, effect: Effect) -> tuple[dict[str, Any], int | None]:
        now = self.now()
        with self.store.transaction():
            epoch = None
            if self.fence is not None:
                epoch = self.fence.admits(now)
                if epoch is None:
                    raise LeaseLost(f"not the active instance: {effect.describe()} is left to it")
            row = effects.start(
                self.store,
                effect.key,
                effect.op,
                effect.channel,
                epoch,
                int(now),
                thread_ts=effect.thread_ts,
                source=effect.source,
            )
            return row, epoch

    def _call(self, effect: Effect) -> tuple[str | None, str | None]:
        if effect.op == POST:
            ts = self.sink.post(
                effect.channel,
                effect.text,
                effect.blocks,
                thread_ts=effect.thread_ts,
                broadcast=effect.broadcast,
            )
            return ts, None
        if effect.op == UPDATE:
            assert effect.ts is not None
            self.sink.update(effect.channel, effect.ts, effect.text, effect.blocks)
            return effect.ts, None
        if effect.op == UPLOAD:
            file_id = self.sink.upload(
                effect.channel,
                effect.thread_ts,
                effect.filename or "file",
                effect.content if effect.content is not None else "",
                effect.comment or "",
                title=effect.title,
                alt_text=effect.alt_text,
            )
            return None, file_id
        raise ValueError(f"unknown effect {effect.op!r}")

    def _finish(
        self, effect: Effect, epoch: int | None, ts: str | None, file_id: str | None, record: Record | None
    ) -> None:
        try:
            self._record(effect, epoch, ts, file_id, record)
        except LeaseLost:
            self._undo(effect, ts, file_id)
            raise
        except STORAGE_ERRORS as exc:
            self._unrecorded[effect.key] = _Unrecorded(effect, epoch, ts, file_id, record, storage=True)
            self._pause(exc)
            raise DeliveryPaused(self._paused) from None
        except Exception:
            # A bug in what the effect records: it is in Slack, so it is never sent again; the
            # record is tried again every pass (and the bug is in the log once).
            log.exception("recording %s failed; it is not sent again", effect.describe())
            self._unrecorded[effect.key] = _Unrecorded(
                effect, epoch, ts, file_id, record, storage=False, logged=True
            )

    def _record(
        self, effect: Effect, epoch: int | None, ts: str | None, file_id: str | None, record: Record | None
    ) -> None:
        with self.store.transaction():
            if self.fence is not None and (epoch is None or not self.fence.holds(epoch)):
                raise LeaseLost(f"the lease moved while sending {effect.describe()}")
            if not effects.sent(self.store, effect.key, epoch, ts, int(self.now()), file_id=file_id):
                # Another instance sent it meanwhile (and the lease came back here since).
                raise LeaseLost(f"{effect.describe()} was sent by another instance meanwhile")
            if record is not None:
                record(ts)

    def _undo(self, effect: Effect, ts: str | None, file_id: str | None) -> None:
        """The lease moved while this write was in flight: take back what it left in Slack."""
        try:
            if effect.op == POST and ts:
                self.sink.delete(effect.channel, ts)
            elif effect.op == UPLOAD and file_id:
                self.sink.delete_file(file_id)
            else:
                log.warning(
                    "another instance took over while %s was in flight; it shows its own state next",
                    effect.describe(),
                )
                return
        except SlackError as exc:
            log.error(
                "another instance took over while %s was in flight, and deleting this copy failed: %s",
                effect.describe(),
                exc,
            )
            return
        log.warning(
            "another instance took over while %s was in flight; this instance deleted its copy",
            effect.describe(),
        )

    # -- what waits to be recorded -------------------------------------------------------

    def flush(self) -> bool:
        """Record what was sent but not recorded; True when delivery may go on."""
        for key, held in list(self._unrecorded.items()):
            try:
                self._flush_one(key, held)
            except DeliveryPaused:
                return False
            except LeaseLost:
                return False
        if self._paused is not None and not any(h.storage for h in self._unrecorded.values()):
            log.info("the database takes writes again: delivery resumes")
            self._paused = None
        return self._paused is None

    def _flush_one(self, key: str, held: _Unrecorded) -> None:
        try:
            self._record(held.effect, held.epoch, held.ts, held.file_id, held.record)
        except LeaseLost:
            del self._unrecorded[key]
            self._undo(held.effect, held.ts, held.file_id)
            raise
        except STORAGE_ERRORS as exc:
            held.storage = True
            self._pause(exc)
            raise DeliveryPaused(self._paused) from None
        except Exception:
            if not held.logged:
                log.exception("recording %s failed again; it is not sent again", held.effect.describe())
                held.logged = True
            return
        del self._unrecorded[key]

    def _pause(self, exc: BaseException) -> None:
        if self._paused is None:
            self._paused = f"the database refuses writes ({exc})"
            log.error(
                "delivery paused: %s; what Slack already took is kept in memory and recorded once the "
                "database takes writes again (nothing is posted twice, nothing new is posted meanwhile)",
                self._paused,
            )

    # -- planned effects ------------------------------------------------------------------

    def run_planned(
        self,
        channel: str,
        handlers: Mapping[str, Handler],
        *,
        refused: Callable[[dict[str, Any], SlackError], None] | None = None,
    ) -> int:
        """Send the channel's planned effects (digests, notices, uploads) in order; returns how
        many were sent. An effect in the thread of another waits until that one is sent. A
        Slack error is raised, unless ``refused`` takes it (a refusal of that one message: the
        others go on, and it is retried next time)."""
        sent = 0
        for row in effects.waiting(self.store, channel):
            thread_ts = row.get("thread_ts")
            if row.get("thread_key"):
                parent = effects.get(self.store, row["thread_key"])
                if parent is None or parent["state"] == effects.REFUSED:
                    effects.refuse(self.store, row["key"], "its thread's message was refused")
                    continue
                if parent["state"] != effects.SENT or not parent.get("ts"):
                    continue
                thread_ts = parent["ts"]
            payload = row["payload"] or {}
            effect = Effect(
                key=row["key"],
                op=row["op"],
                channel=channel,
                text=payload.get("text") or "",
                blocks=payload.get("blocks"),
                thread_ts=thread_ts,
                broadcast=bool(payload.get("broadcast")),
                filename=payload.get("filename"),
                content=row.get("content"),
                title=payload.get("title"),
                comment=payload.get("comment"),
                alt_text=payload.get("alt_text"),
                source=row.get("source") or "",
            )
            handler = handlers.get(row["handler"]) if row.get("handler") else None
            args = row.get("handler_args") or {}
            record: Record | None = (lambda ts, h=handler, a=args: h(ts, a)) if handler else None
            try:
                self.send(effect, record)
            except SlackError as exc:
                if refused is None:
                    raise
                refused(row, exc)
                continue
            sent += 1
        return sent
