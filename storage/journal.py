"""The journal of Slack effects: every post, reply, edit, upload and deletion wflogs makes.

One row per effect (table ``effects``, made by ``m012_effects`` in ``db.py``), found by its
idempotency key, with what it does (``op``), where (``channel``, ``thread_ts`` or the key of
the effect whose thread it joins) and its state::

    planned --> sending --> sent
       ^           |
       +-----------+------> refused   (Slack refused it for good; never sent again)
      (Slack failed: retried)

A feature that wants something said plans it here in the same transaction as the state
change that calls for it (a digest and its record, a health notice and the app's state), so a
full disk plans nothing rather than posting something it cannot remember. The incidents'
messages are drawn by the deliverer at send time (``payload`` null): their intent is the
incident's state. Either way the deliverer (``bot/journal.py``) is the only one that calls
Slack, and it marks a row ``sending`` before the call and ``sent`` after it, each in a
transaction that checks the lease's epoch (the fence).

This module never imports ``bot``.
"""

from __future__ import annotations

import json
from typing import Any

from storage.db import Store

PLANNED = "planned"
SENDING = "sending"
SENT = "sent"
REFUSED = "refused"
DONE = (SENT, REFUSED)


def plan(
    store: Store,
    key: str,
    op: str,
    channel: str,
    now: int,
    *,
    payload: dict[str, Any] | None = None,
    thread_ts: str | None = None,
    thread_key: str | None = None,
    content: bytes | None = None,
    handler: str | None = None,
    handler_args: dict[str, Any] | None = None,
    source: str | None = None,
) -> bool:
    """Plan an effect (call it inside the transaction of the change that calls for it);
    False when an effect with this key was planned before (it is not planned twice)."""
    with store.transaction():
        before = store.db.conn.total_changes
        store.db.execute(
            "insert or ignore into effects (key, op, channel, thread_ts, thread_key, payload, content, "
            "handler, handler_args, source, state, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                key,
                op,
                channel,
                thread_ts,
                thread_key,
                json.dumps(payload) if payload is not None else None,
                content,
                handler,
                json.dumps(handler_args) if handler_args is not None else None,
                source,
                PLANNED,
                now,
            ],
        )
        return store.db.conn.total_changes > before


def get(store: Store, key: str) -> dict[str, Any] | None:
    """The effect with this key, or None."""
    rows = store.query("select * from effects where key = ? ", [key])
    return _decoded(rows[0]) if rows else None


def start(
    store: Store, key: str, op: str, channel: str, epoch: int | None, now: int, **fields: Any
) -> dict[str, Any]:
    """Mark the effect ``sending`` (creating it when it was not planned) and return it as it was;
    the caller sends it only when the returned state is not ``sent`` or ``refused``. Call it inside
    a transaction that checked the fence."""
    with store.transaction():
        store.db.execute(
            "insert or ignore into effects (key, op, channel, thread_ts, source, state, created_at) "
            "values (?, ?, ?, ?, ?, ?, ?)",
            [key, op, channel, fields.get("thread_ts"), fields.get("source"), PLANNED, now],
        )
        row = _decoded(next(iter(store.db.query("select * from effects where key = ?", [key]))))
        if row["state"] not in DONE:
            store.db.execute(
                "update effects set state = ?, epoch = ?, attempts = attempts + 1, channel = ? where key = ?",
                [SENDING, epoch, channel, key],
            )
    return row


def sent(
    store: Store, key: str, epoch: int | None, ts: str | None, now: int, *, file_id: str | None = None
) -> bool:
    """Slack took the effect sent in ``epoch`` (call it inside the transaction that records what it
    changed); False when the row is no longer this sender's (another instance sent it since)."""
    before = store.db.conn.total_changes
    store.execute(
        "update effects set state = ?, ts = ?, file_id = ?, sent_at = ?, error = null "
        "where key = ? and state = ? and epoch is ?",
        [SENT, ts, file_id, now, key, SENDING, epoch],
    )
    return store.db.conn.total_changes > before


def failed(store: Store, key: str, epoch: int | None, error: str) -> None:
    """Slack did not take what this sender sent in ``epoch``: back to ``planned`` (retried)."""
    store.execute(
        "update effects set state = ?, error = ? where key = ? and state = ? and epoch is ?",
        [PLANNED, error, key, SENDING, epoch],
    )


def refuse(store: Store, key: str, error: str) -> None:
    """The effect can never be sent (e.g. the message whose thread it joins was refused)."""
    store.execute("update effects set state = ?, error = ? where key = ?", [REFUSED, error, key])


def waiting(store: Store, channel: str | None = None) -> list[dict[str, Any]]:
    """Planned effects that carry what they say (features' posts, notices, uploads) and are not
    sent yet, oldest first (of one channel when given)."""
    sql = "select * from effects where state in ('planned', 'sending') and payload is not null"
    params: list[Any] = []
    if channel is not None:
        sql += " and channel = ?"
        params.append(channel)
    return [_decoded(r) for r in store.query(sql + " order by id", params)]


def waiting_channels(store: Store) -> list[str]:
    """Channels with planned effects that carry what they say."""
    rows = store.query(
        "select distinct channel from effects where state in ('planned', 'sending') and payload is not null"
    )
    return [r["channel"] for r in rows]


def waiting_count(store: Store) -> int:
    """Effects planned or in flight (of every kind)."""
    return int(store.query("select count(*) as n from effects where state in ('planned', 'sending')")[0]["n"])


def prune(store: Store, older_than: int) -> None:
    """Forget effects sent or refused before ``older_than``, and those drawn at send time that were
    left unsent that long (their intent went another way: a plan dissolved, a lease lost)."""
    store.execute(
        "delete from effects where (state in ('sent', 'refused') or payload is null) "
        "and coalesce(sent_at, created_at) < ?",
        [older_than],
    )


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["payload"] = json.loads(row["payload"]) if row.get("payload") else None
    row["handler_args"] = json.loads(row["handler_args"]) if row.get("handler_args") else {}
    return row
