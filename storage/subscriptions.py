"""Channels' subscriptions to apps, made from Slack (``/wflogs subscribe``): one row per channel,
app (or ``*``), status filter and text filter. A subscription only adds a destination: the poller
enqueues a matching run once more, for the subscribed channel, where it becomes that channel's own
incident like any other.

This module never imports ``bot``.
"""

from __future__ import annotations

from typing import Any

from storage.db import Store

EVERY_APP = "*"


def subscribe(
    store: Store,
    *,
    channel: str,
    app_id: str,
    app_name: str,
    status: str,
    text: str,
    user: str,
    now: int,
) -> bool:
    """Add a subscription; False when the channel already had exactly this one."""
    with store.transaction():
        before = store.db.conn.total_changes
        store.db.execute(
            "insert or ignore into subscriptions "
            "(channel, app_id, app_name, status, text, by_user, created_at) values (?, ?, ?, ?, ?, ?, ?)",
            [channel, app_id, app_name, status, text, user, now],
        )
        return store.db.conn.total_changes > before


def unsubscribe(store: Store, *, channel: str, app_id: str) -> int:
    """End every subscription of ``channel`` to ``app_id``; returns how many ended."""
    with store.transaction():
        before = store.db.conn.total_changes
        store.db.execute("delete from subscriptions where channel = ? and app_id = ?", [channel, app_id])
        return store.db.conn.total_changes - before


def of_channel(store: Store, channel: str) -> list[dict[str, Any]]:
    """The channel's subscriptions, oldest first."""
    return store.query("select * from subscriptions where channel = ? order by id", [channel])


def for_app(store: Store, app_id: str) -> list[dict[str, Any]]:
    """Subscriptions that take ``app_id``'s runs (its own and every-app ones)."""
    return store.query("select * from subscriptions where app_id in (?, ?) order by id", [app_id, EVERY_APP])


def counts(store: Store) -> dict[str, int]:
    """How many subscriptions there are and how many channels hold them."""
    row = store.query("select count(*) as n, count(distinct channel) as c from subscriptions")[0]
    return {"subscriptions": int(row["n"]), "channels": int(row["c"])}


def matches(sub: dict[str, Any], *, status: str, error: str | None) -> bool:
    """Whether a run of ``status`` failing with ``error`` goes to this subscription's channel."""
    wanted = sub.get("status") or ""
    if wanted == "failed" and status not in ("failed", "partial-succeeded"):
        return False
    if wanted == "stopped" and status != "stopped":
        return False
    text = (sub.get("text") or "").lower()
    return not text or text in (error or "").lower()


def all_rows(store: Store) -> list[dict[str, Any]]:
    """Every subscription, by channel."""
    return store.query("select * from subscriptions order by channel, id")
