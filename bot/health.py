"""Watching the watcher: tell the channel when wflogs cannot read an app, and when it can again.

A bot that silently stops polling is worse than none (dagster-slack's failure
sensor had no alert when it broke itself). A rejected key or a deleted app is
reported at once; other failures (Dify down, timeouts) once they have lasted
``grace`` seconds, so a blip is not news. One notice per outage, one recovery.
"""

from __future__ import annotations

import logging

from bot.blocks import context, header, section
from bot.config import Settings, alert_channel_for
from bot.errors import SlackError
from bot.notifier import Sink
from bot.poller import AppResult
from bot.text import duration, escape, escape_cut
from storage import Store

log = logging.getLogger(__name__)

DEFAULT_GRACE = 300


def notice(name: str, error: str, since: int, now: int, *, rejected: bool = False) -> tuple[str, list[dict]]:
    """The message saying an app cannot be read (pure); ``rejected``: Dify refused the key or app."""
    title = f"⚠️ wflogs cannot read {name}"
    text = f"{title}: {escape_cut(error, 500)}"
    blocks = [
        header(title),
        section(f"```{escape_cut(error, 2000)}```"),
        context(
            f"{_how_long(since, now, rejected)} Failures of {escape(name)} are not being alerted "
            "until this is fixed; nothing is lost: once it can read again, it catches up."
        ),
    ]
    return text, blocks


def _how_long(since: int, now: int, rejected: bool) -> str:
    if rejected and now - since < 60:
        return "Dify rejected it."
    return f"Failing for {duration(now - since)}."


def recovery(name: str, since: int, now: int) -> tuple[str, list[dict]]:
    """The message saying an app can be read again (pure)."""
    text = f"✅ wflogs can read {escape(name)} again after {duration(now - since)}; missed failures follow."
    return text, [section(text)]


def check_health(
    *,
    settings: Settings,
    store: Store,
    sink: Sink,
    results: list[AppResult],
    now: int,
    grace: int = DEFAULT_GRACE,
) -> None:
    """Post a notice for apps failing past ``grace`` (or rejected at once) and a recovery after."""
    for result in results:
        app = result.app
        state = store.app_state(app.id) or {}
        since = state.get("failing_since")
        noticed = bool(state.get("health_notice"))
        channel = alert_channel_for(settings, app) or "terminal"
        if result.ok:
            if since is None:
                continue
            if noticed:
                text, blocks = recovery(result.name, int(since), now)
                try:
                    sink.post(channel, text, blocks)
                except SlackError as exc:
                    log.warning("cannot tell %s that %s recovered: %s", channel, result.name, exc)
                    continue
            store.update_app_state(app.id, failing_since=None, health_notice=0)
            continue
        since = int(since) if since is not None else now
        if since == now:
            store.update_app_state(app.id, failing_since=now)
        rejected = "rejected the API key" in (result.error or "") or "refused access" in (result.error or "")
        if noticed or (now - since < grace and not rejected):
            continue
        text, blocks = notice(result.name, result.error or "unknown error", since, now, rejected=rejected)
        try:
            sink.post(channel, text, blocks)
        except SlackError as exc:
            log.warning("cannot tell %s that %s is failing: %s", channel, result.name, exc)
            continue
        store.update_app_state(app.id, health_notice=1)
