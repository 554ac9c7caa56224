"""Watching the watcher: tell the channel when wflogs cannot read an app, and when it can again.

A bot that silently stops polling is worse than none (dagster-slack's failure
sensor had no alert when it broke itself). A rejected key or a deleted app is
reported at once; other failures (Dify down, timeouts) once they have lasted
``grace`` seconds, so a blip is not news. One notice per outage, one recovery.

An app muted with ``/wflogs mute app:NAME`` (planned maintenance) is not reported
while the mute lasts; if it still cannot be read when the mute ends, the notice
goes out then. A notice is closed even when the app it named is no longer
configured (its key was replaced): the channel hears that the warning is over.

Notices are planned in the journal of Slack effects in the same transaction as
the app's state, and posted by the deliverer.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.blocks import context, header, section
from bot.config import Settings, alert_channel_for
from bot.poller import AppResult
from bot.text import duration, escape, escape_cut
from storage import Store
from storage import journal as effects
from storage.incidents import IncidentStore

log = logging.getLogger(__name__)

DEFAULT_GRACE = 300


def notice(name: str, error: str, since: int, now: int, *, rejected: bool = False) -> tuple[str, list[dict]]:
    """The message saying an app cannot be read (pure); ``rejected``: Dify refused the key or app."""
    title = f"⚠️ wflogs cannot read {name}"
    text = f"⚠️ wflogs cannot read {escape(name)}: {escape_cut(error, 500)}"
    blocks = [
        header(title),
        section(f"```{escape_cut(error, 2000)}```"),
        context(
            f"{_how_long(since, now, rejected)}Failures of {escape(name)} are not being alerted "
            "until this is fixed; nothing is lost: once it can read again, it catches up."
        ),
    ]
    return text, blocks


def _how_long(since: int, now: int, rejected: bool) -> str:
    if rejected and now - since < 60:
        return ""
    return f"Failing for {duration(now - since)}. "


def recovery(name: str, since: int, now: int) -> tuple[str, list[dict]]:
    """The message saying an app can be read again (pure)."""
    text = f"✅ wflogs can read {escape(name)} again after {duration(now - since)}; missed failures follow."
    return text, [section(text)]


def retired(name: str) -> tuple[str, list[dict]]:
    """The message closing a notice about an app wflogs no longer reads that way (pure)."""
    text = (
        f"✅ The warning about {escape(name)} is over: wflogs no longer reads it with that key "
        "(the configuration changed)."
    )
    return text, [section(text)]


def _plan(store: Store, key: str, channel: str, now: int, message: tuple[str, list[dict]]) -> None:
    text, blocks = message
    effects.plan(store, key, "post", channel, now, payload={"text": text, "blocks": blocks}, source="notice")


def check_health(
    *,
    settings: Settings,
    store: Store,
    results: list[AppResult],
    now: int,
    grace: int = DEFAULT_GRACE,
) -> None:
    """Plan a notice for apps failing past ``grace`` (or rejected at once, unless muted) and a
    recovery after; close notices about apps no longer configured."""
    mutes = IncidentStore(store)
    recovered: dict[str, AppResult] = {}
    for result in results:
        app = result.app
        state = store.app_state(app.id) or {}
        since = state.get("failing_since")
        noticed = bool(state.get("health_notice"))
        channel = alert_channel_for(settings, app) or "terminal"
        if result.ok:
            recovered[result.name.casefold()] = result
            if since is None:
                continue
            with store.transaction():
                store.update_app_state(app.id, failing_since=None, health_notice=0)
                if noticed:
                    told = state.get("health_channel") or channel
                    _plan(
                        store,
                        f"health:{app.id}:{since}:up",
                        told,
                        now,
                        recovery(result.name, int(since), now),
                    )
            continue
        since = int(since) if since is not None else now
        if since == now:
            store.update_app_state(app.id, failing_since=now)
        error = result.error or ""
        rejected = "rejected the API key" in error or "refused access" in error or "will not try" in error
        if noticed or (now - since < grace and not rejected):
            continue
        if mutes.mute_for(app.id, None, now) is not None:
            continue  # muted for maintenance: said when the mute ends, if still true
        with store.transaction():
            store.update_app_state(app.id, health_notice=1, health_channel=channel, health_name=result.name)
            _plan(
                store,
                f"health:{app.id}:{since}:down",
                channel,
                now,
                notice(result.name, result.error or "unknown error", since, now, rejected=rejected),
            )
    _close_retired(settings, store, recovered, now, {r.app.id for r in results})


def _close_retired(
    settings: Settings, store: Store, recovered: dict[str, AppResult], now: int, polled: set[str]
) -> None:
    """Notices about app identities no longer configured (a replaced key, a removed app) are closed:
    'can read X again' when a configured app of that name reads fine, else 'the warning is over'."""
    configured = {a.id for a in settings.apps} | polled  # polled: the workspace itself too
    for row in store.query("select * from app_state where health_notice = 1"):
        if row["app_id"] in configured:
            continue
        name = str(row.get("health_name") or row.get("name") or "an app")
        channel = str(row.get("health_channel") or "terminal")
        since = int(row.get("failing_since") or now)
        successor = recovered.get(name.casefold())
        message: tuple[str, list[dict[str, Any]]] = (
            recovery(successor.name, since, now) if successor is not None else retired(name)
        )
        with store.transaction():
            store.update_app_state(row["app_id"], failing_since=None, health_notice=0)
            _plan(store, f"health:{row['app_id']}:{since}:closed", channel, now, message)
        log.info("closed the notice about %s (no longer configured)", name)
