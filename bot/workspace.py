"""Workspace mode: every app of a Dify workspace, found through the console API and kept up to date.

Discovery reads the app list (every ``WFLOGS_DISCOVER_INTERVAL`` seconds) and decides, per
app, whether it is watched and why not: ``WFLOGS_APPS`` name globs, the app's mode (workflow
and chatflow apps are; plain chat, agent and completion apps are not), and whether it was
ever published (an unpublished app has no production runs). ``[[apps]]`` entries without a
key set options for one discovered app, matched by app id, else by name; an ``[[apps]]``
entry with its own key keeps being read with that key, and the discovered app of the same
name is left to it.

An app found after the first discovery of a process is watched from that moment: its
history is not alerted. A deleted app is dropped with a line in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from bot.config import AppConfig, Settings
from bot.console import CONSOLE_PREFIX, ConsoleAppSource, ConsoleClient

log = logging.getLogger(__name__)

WATCHED_MODES = ("workflow", "advanced-chat")
MODE_NAMES = {
    "workflow": "workflow",
    "advanced-chat": "chatflow",
    "chat": "chat",
    "agent-chat": "agent",
    "completion": "completion",
}
WHY_NOT = {
    "chat": "plain chat apps keep errors per conversation only (one request per active conversation)",
    "agent-chat": "agent apps keep errors per conversation only (one request per active conversation)",
    "completion": "completion apps keep no run or error list wflogs can read",
}


@dataclass
class Found:
    """One app of the workspace and whether it is watched."""

    app_id: str
    name: str
    mode: str
    watched: bool
    reason: str = ""
    config: AppConfig | None = None


@dataclass
class Discovery:
    """What one read of the app list found."""

    apps: list[Found] = field(default_factory=list)
    added: list[AppConfig] = field(default_factory=list)
    removed: list[AppConfig] = field(default_factory=list)

    @property
    def watched(self) -> list[AppConfig]:
        return [f.config for f in self.apps if f.watched and f.config is not None]


def console_app_key(app_id: str) -> str:
    """The stand-in key of a discovered app (not a secret: it only makes its state id)."""
    return f"console:{app_id}"


def app_logs_url(console_base: str, app_id: str) -> str:
    """The app's logs page in Dify's web UI (its "Open in Dify" link): the console API's origin
    without ``/console/api`` (where Dify's default set-up serves the web UI too)."""
    origin = console_base.rstrip("/").removesuffix(CONSOLE_PREFIX)
    return f"{origin}/app/{app_id}/logs"


def classify(
    settings: Settings, console: ConsoleClient, items: list[dict[str, Any]], keyed: Collection[str] = ()
) -> list[Found]:
    """Each app of the list, watched or not and why (pure but for ``console.base``). ``keyed``: the
    names Dify gave apps read with their own key and no ``name`` set (they are left to that key)."""
    workspace = settings.workspace
    keyed_names = {(a.name or "").casefold() for a in settings.apps if a.name and not a.via_console}
    keyed_names |= {name.casefold() for name in keyed}
    found = []
    for item in sorted(items, key=lambda i: (str(i.get("name") or "").casefold(), str(i["id"]))):
        app_id, name, mode = str(item["id"]), str(item.get("name") or item["id"]), str(item.get("mode") or "")
        entry = Found(app_id, name, mode, watched=False)
        found.append(entry)
        if workspace is not None and not workspace.wants(name):
            entry.reason = "left out by WFLOGS_APPS"
            continue
        if name.casefold() in keyed_names:
            entry.reason = "read with its own API key ([[apps]])"
            continue
        if mode not in WATCHED_MODES:
            entry.reason = WHY_NOT.get(mode, f"mode {mode!r} cannot be watched")
            continue
        if not item.get("workflow"):
            entry.reason = "never published: no production runs yet"
            continue
        entry.watched = True
        entry.config = _config(settings, console, app_id, name, mode)
    return found


def _config(settings: Settings, console: ConsoleClient, app_id: str, name: str, mode: str) -> AppConfig:
    override = next((o for o in settings.overrides if o.app_id and o.app_id == app_id), None)
    if override is None:
        override = next(
            (o for o in settings.overrides if not o.app_id and (o.name or "").casefold() == name.casefold()),
            None,
        )
    base = override or AppConfig(api_key="", alert_partial=any(a.alert_partial for a in settings.apps))
    return replace(
        base,
        api_key=console_app_key(app_id),
        api_url=console.base,
        console_url=base.console_url or app_logs_url(console.base, app_id),
        name=name,
        app_id=app_id,
        mode=mode,
        source=f"discovered ({override.source})" if override else "discovered",
    )


class Workspace:
    """Keeps the watched apps in step with the workspace."""

    def __init__(
        self,
        *,
        settings: Settings,
        console: ConsoleClient,
        mark_new: Callable[[AppConfig], None],
    ) -> None:
        self.settings = settings
        self.console = console
        self._mark_new = mark_new
        self.current: dict[str, AppConfig] = {}
        self.sources: dict[str, ConsoleAppSource] = {}
        self.discoveries = 0
        self.last: Discovery | None = None

    def discover(self, keyed: Collection[str] = ()) -> Discovery:
        """Read the app list; raises :class:`DifyError` (the watched set is then unchanged).
        ``keyed``: see :func:`classify`."""
        items = self.console.apps()
        found = classify(self.settings, self.console, items, keyed)
        result = Discovery(apps=found)
        watched = {c.id: c for c in result.watched}
        for app_id, config in watched.items():
            if app_id not in self.current:
                if self.discoveries:
                    # Found while running: watched from now on, its history is not alerted.
                    self._mark_new(config)
                    log.info("new Dify app found: %s (%s), watched from now on", config.name, config.mode)
                result.added.append(config)
                self.sources[app_id] = ConsoleAppSource(
                    self.console, config.app_id or "", config.name or "", config.mode or "workflow"
                )
        for app_id, config in self.current.items():
            if app_id not in watched:
                result.removed.append(config)
                self.sources.pop(app_id, None)
                gone = not any(f.app_id == config.app_id for f in found)
                log.info(
                    "Dify app %s is %s: no longer watched",
                    config.name,
                    "deleted" if gone else "left out now",
                )
        self.current = watched
        self.discoveries += 1
        self.last = result
        return result
