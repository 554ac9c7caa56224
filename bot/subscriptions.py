"""``/wflogs subscribe``, ``unsubscribe`` and ``subscriptions``: a channel routes an app's alerts to
itself from Slack. Parsing is pure; applying reads and writes only SQLite (plus one
``conversations.info`` to see whether the bot is in the channel), so the answer fits Slack's 3
seconds. A subscription only adds a destination; the configured channel keeps every run."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.config import AppConfig, Settings, alert_channel_for
from bot.errors import QueryError
from bot.query import tokenize
from bot.text import escape, escape_cut, truncate
from storage import Store
from storage import subscriptions as subs

VERBS = ("subscribe", "unsubscribe", "subscriptions")
USAGE = (
    '`/wflogs subscribe app:NAME [failed|stopped] ["text"]` (`app:*` for every app), '
    "`/wflogs unsubscribe app:NAME`, `/wflogs subscriptions`"
)
MAX_TEXT = 200


@dataclass(frozen=True)
class SubscriptionCommand:
    kind: str  # subscribe, unsubscribe, list
    app: str | None = None
    status: str = ""
    text: str = ""


def parse_subscription_command(text: str) -> SubscriptionCommand | None:
    """The subscription command in ``text``; None when it is not one (a search or a mute)."""
    head = text.strip().split(maxsplit=1)
    if not head or head[0].lower() not in VERBS:
        return None
    verb = head[0].lower()
    try:
        # Straight and curly quotes (Slack clients on macOS type “...”), as searches take them.
        tokens = tokenize(text.strip())[1:]
    except QueryError as exc:
        raise QueryError(str(exc), usage=USAGE) from None
    if verb == "subscriptions":
        if tokens:
            raise QueryError("`/wflogs subscriptions` takes nothing more", usage=USAGE)
        return SubscriptionCommand("list")
    app: str | None = None
    status = ""
    needle = ""
    for token in tokens:
        word = f"{token.key}:{token.text}" if token.key is not None else token.text
        if token.key == "app" and app is None:
            app = token.text.strip()
        elif token.key is None and not token.quoted and word.lower() in ("failed", "stopped") and not status:
            status = word.lower()
        elif verb == "subscribe" and token.quoted and not needle and word.strip():
            needle = word.strip()[:MAX_TEXT]
        else:
            # Plain: the answer (search_format.error) escapes the whole message once.
            raise QueryError(f"`{truncate(word, 60)}` is not understood here", usage=USAGE)
    if not app:
        raise QueryError(f"say which app: `/wflogs {verb} app:NAME`", usage=USAGE)
    if verb == "unsubscribe" and (status or needle):
        raise QueryError("`/wflogs unsubscribe app:NAME` ends every subscription to that app", usage=USAGE)
    return SubscriptionCommand(verb, app, status, needle)


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "-", name.strip().lower())


def describe(row: dict[str, Any]) -> str:
    """One subscription as a line (escaped)."""
    what = "every app" if row["app_id"] == subs.EVERY_APP else escape(row.get("app_name") or row["app_id"])
    parts = [what]
    if row.get("status"):
        parts.append(f"{row['status']} runs only")
    if row.get("text"):
        parts.append(f"errors containing “{escape(row['text'])}”")
    return ", ".join(parts)


class Subscriptions:
    """Applies subscription commands for one channel and person; every answer is a text."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        names: Callable[[], dict[str, str]],
        is_member: Callable[[str], bool | None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.names = names  # app id -> name, from the configuration and stored state only
        self.is_member = is_member  # None: cannot tell

    def _find(self, wanted: str) -> tuple[AppConfig | None, str | None]:
        names = self.names()
        found = [a for a in self.settings.apps if _norm(names.get(a.id, a.label)) == _norm(wanted)]
        if len(found) == 1:
            return found[0], None
        known = sorted(set(names.values()))
        close = difflib.get_close_matches(wanted, known, n=len(known), cutoff=0.0)
        listed = ", ".join(f"`{escape(n)}`" for n in close[:15])
        more = f" and {len(close) - 15} more" if len(close) > 15 else ""
        asked = escape_cut(wanted, 80)
        return None, f"No single app is called `{asked}`; the apps are (closest first): {listed}{more}."

    def _stored(self, channel: str, wanted: str) -> tuple[str, str] | None:
        """The (app id, stored name) of this channel's one subscription to an app no longer watched
        called ``wanted``; None when there is none (or several)."""
        watched = {a.id for a in self.settings.apps}
        found = {
            row["app_id"]: row.get("app_name") or row["app_id"]
            for row in subs.of_channel(self.store, channel)
            if row["app_id"] not in watched
            and row["app_id"] != subs.EVERY_APP
            and _norm(row.get("app_name") or row["app_id"]) == _norm(wanted)
        }
        return next(iter(found.items())) if len(found) == 1 else None

    def run(self, command: SubscriptionCommand, *, channel: str, user: str, now: int) -> tuple[str, bool]:
        """What to say, and whether the whole channel should see it (a change of routing)."""
        if command.kind == "list":
            return self.listing(channel), False
        if channel.startswith("D"):
            return "Subscriptions are made in a channel, not in a direct message.", False
        if command.kind == "subscribe" and self.is_member(channel) is False:
            return "wflogs is not in this channel yet: type `/invite @wflogs`, then subscribe again.", False
        if command.app == subs.EVERY_APP:
            app_id, name = subs.EVERY_APP, "every app"
        else:
            app, problem = self._find(command.app or "")
            if app is None:
                gone = self._stored(channel, command.app or "") if command.kind == "unsubscribe" else None
                if gone is None:
                    return problem or "", False
                # An app no longer watched (left the configuration or the workspace): its
                # subscriptions are listed by their stored name and end by it too.
                app_id, name = gone
                ended = subs.unsubscribe(self.store, channel=channel, app_id=app_id)
                return f"{escape(user)} unsubscribed this channel from {escape(name)}.", bool(ended)
            app_id, name = app.id, self.names().get(app.id, app.label)
            if command.kind == "subscribe" and app.channels is not None and channel not in app.channels:
                return f"{escape(name)} is limited to its own channels; it cannot be routed here.", False
        if command.kind == "unsubscribe":
            ended = subs.unsubscribe(self.store, channel=channel, app_id=app_id)
            configured = app_id != subs.EVERY_APP and any(
                a.id == app_id and alert_channel_for(self.settings, a) == channel for a in self.settings.apps
            )
            if not ended:
                extra = " It comes here from wflogs.toml: change it there." if configured else ""
                return f"This channel has no subscription to {escape(name)}.{extra}", False
            return f"{escape(user)} unsubscribed this channel from {escape(name)}.", True
        row = {"app_id": app_id, "app_name": name, "status": command.status, "text": command.text}
        added = subs.subscribe(
            self.store,
            channel=channel,
            app_id=app_id,
            app_name=name,
            status=command.status,
            text=command.text,
            user=user,
            now=now,
        )
        if not added:
            return f"This channel is already subscribed to {describe(row)}.", False
        return (
            f"{escape(user)} subscribed this channel to {describe(row)}: its failures come here from the "
            f"next poll on. End it with `/wflogs unsubscribe app:{escape(command.app or '')}`.",
            True,
        )

    def listing(self, channel: str) -> str:
        names = self.names()
        lines = [
            f"• {escape(names.get(a.id, a.label))}: from wflogs.toml (change it there)"
            for a in self.settings.apps
            if alert_channel_for(self.settings, a) == channel
        ]
        rows = subs.of_channel(self.store, channel)
        lines += [f"• {describe(row)}: subscribed by {escape(row['by_user'])}" for row in rows]
        if not lines:
            return "This channel receives no alerts. `/wflogs subscribe app:NAME` changes that."
        shown = lines[:40]
        more = [f"…and {len(lines) - 40} more"] if len(lines) > 40 else []
        return "This channel receives alerts of:\n" + "\n".join(shown + more)
