"""The ``/wflogs`` slash command and its buttons, as a Bolt app, served over Socket Mode or HTTP.

Every request is acknowledged at once (parse errors and refusals right in the
acknowledgement); the search itself runs on Bolt's listener thread after
``ack()`` and answers through the request's ``response_url``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import home_format as hfmt
from bot import incident_format as ifmt
from bot import search_format as fmt
from bot.blocks import Block, section
from bot.config import Settings, alert_channel_for
from bot.errors import ConfigError, QueryError, WflogsError
from bot.home import Home
from bot.ops_http import EVENTS_PATH
from bot.query import SIMILAR_DAYS, MuteCommand, Query, check_run_id, parse, parse_mute_command
from bot.runtime import Runtime
from bot.search import find_run, search, targets_for, visible_apps
from bot.subscriptions import Subscriptions, parse_subscription_command
from bot.text import duration, escape
from storage import subscriptions

T = TypeVar("T")
log = logging.getLogger(__name__)

COMMAND = "/wflogs"
MEMBER_TIMEOUT = 2  # seconds for the one Slack call a subscription makes before answering


# -- access control ------------------------------------------------------------------------


def refusal_reason(
    settings: Settings, *, user: str | None, channel: str | None
) -> tuple[str, tuple[str, ...]] | None:
    """Why ``user`` may not search from ``channel``, and the channels to suggest (None: they may)."""
    if settings.allowed_users is not None and user not in settings.allowed_users:
        return (
            "Sorry, /wflogs is limited to a list of people and you are not on it. "
            "Ask whoever runs wflogs to add your Slack member ID to allowed_users in wflogs.toml.",
            (),
        )
    if settings.allowed_channels is not None and channel not in settings.allowed_channels:
        return "Sorry, /wflogs is not enabled in this conversation.", settings.allowed_channels
    if not visible_apps(settings, channel):
        return "Sorry, no Dify app can be searched from this conversation; try the app's own channel.", ()
    return None


def _channel_of(body: dict[str, Any]) -> str | None:
    """The conversation a command or a button click came from."""
    channel = body.get("channel_id") or (body.get("channel") or {}).get("id")
    return channel or (body.get("container") or {}).get("channel_id")


def _user_of(body: dict[str, Any]) -> str | None:
    return body.get("user_id") or (body.get("user") or {}).get("id")


def _name_of(body: dict[str, Any]) -> str | None:
    """The clicker's (or command's) Slack name, as shown in replies: a name notifies nobody, where
    ``<@U…>`` would ping the person who just clicked. None when Slack sent no name."""
    user = body.get("user") or {}
    return body.get("user_name") or user.get("name") or user.get("username") or None


def similar_query(value: object, *, now: float) -> Query:
    """The search a "Similar runs" button asks for; its value (user-controlled) must be a run id."""
    run_id = check_run_id(value, "this button's run id")
    return Query(similar=run_id, since=int(now) - SIMILAR_DAYS * 86400)


# -- answering -----------------------------------------------------------------------------


class Searcher:
    """Turns a parsed query into a Slack answer (text, blocks); never raises."""

    def __init__(self, runtime: Runtime, *, now: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.now = now

    def answer(
        self, query: Query, *, channel: str | None, shared_by: str | None = None
    ) -> tuple[str, list[Block]]:
        """The message for ``query`` asked from ``channel``: results, a run, help, or what went wrong."""
        tz = self.runtime.settings.tz
        try:
            if query.kind == "help":
                return fmt.help_message()
            targets = targets_for(
                self.runtime.settings,
                self.runtime.clients,
                self.runtime.poller.app_name,
                channel=channel,
                wanted=query.app,
                routed=_routed(self.runtime, channel),
            )
            if query.kind == "run":
                return fmt.run_detail(find_run(query, targets), tz=tz)
            result = search(query, targets, now=self.now(), workers=self.runtime.settings.concurrency, tz=tz)
            return fmt.results(result, tz=tz, shared_by=shared_by)
        except QueryError as exc:
            return fmt.error(str(exc), exc.usage)
        except WflogsError as exc:
            return fmt.error(str(exc), "")
        except Exception:
            log.exception("search %s failed", query.kind)
            return fmt.error("the search failed on our side; the details are in wflogs' log. Try again.", "")


def _routed(runtime: Runtime, channel: str | None) -> set[str]:
    """The app ids (or ``*``) ``channel`` subscribed to from Slack."""
    if channel is None:
        return set()
    return {row["app_id"] for row in subscriptions.of_channel(runtime.store, channel)}


def _respond(respond: Any, text: str, blocks: list[Block], **kwargs: Any) -> None:
    try:
        respond(text=text, blocks=blocks, **kwargs)
    except Exception as exc:  # an expired or used-up response_url must not kill the listener thread
        log.warning("could not answer through response_url: %s", type(exc).__name__)


def register(app: App, runtime: Runtime, *, now: Callable[[], float] = time.time) -> None:
    """Attach the /wflogs command, the search buttons and the alert link buttons to ``app``."""
    # runtime.settings is read at each use: workspace discovery replaces it with the apps it finds.
    searcher = Searcher(runtime, now=now)

    @app.command(COMMAND)
    def on_command(ack: Any, body: dict[str, Any], respond: Any) -> None:
        if subscription_command(ack, body, runtime, now=now) or mute_command(ack, body, runtime, now=now):
            return
        channel, user = _channel_of(body), _user_of(body)
        refused = refusal_reason(runtime.settings, user=user, channel=channel)
        if refused:
            text, blocks = fmt.refusal(*refused)
            ack(text=text, blocks=blocks)
            return
        try:
            query = parse(str(body.get("text") or ""), now=now(), tz=runtime.settings.tz)
        except QueryError as exc:
            text, blocks = fmt.error(str(exc), exc.usage)
            ack(text=text, blocks=blocks)
            return
        if query.kind == "help":
            text, blocks = fmt.help_message()
            ack(text=text, blocks=blocks)
            return
        ack(text=fmt.searching(query, runtime.settings.tz), response_type="ephemeral")
        text, blocks = searcher.answer(query, channel=channel)
        _respond(respond, text, blocks, response_type="ephemeral", replace_original=True)

    def clicked_query(
        body: dict[str, Any], respond: Any, read: Callable[[], Query]
    ) -> tuple[Query, str | None, str | None] | None:
        """The query a button carries, with the clicker's channel and user; None when the click was
        refused or its value is not one wflogs wrote (the clicker is told why)."""
        channel, user = _channel_of(body), _user_of(body)
        refused = refusal_reason(runtime.settings, user=user, channel=channel)
        if refused:
            _respond(respond, *fmt.refusal(*refused), replace_original=False)
            return None
        try:
            return read(), channel, user
        except QueryError as exc:
            _respond(respond, *fmt.error(str(exc), exc.usage), replace_original=False)
            return None

    def on_button(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        ack()
        clicked = clicked_query(body, respond, lambda: fmt.read_button_value(action.get("value")))
        if clicked is None:
            return
        query, channel, user = clicked
        if action.get("action_id") == fmt.ACTION_SHARE:
            # A new message everyone in the channel sees, saying who shared it; the private one stays.
            text, blocks = searcher.answer(query, channel=channel, shared_by=user or "")
            _respond(respond, text, blocks, response_type="in_channel", replace_original=False)
        else:
            text, blocks = searcher.answer(query, channel=channel)
            _respond(respond, text, blocks, response_type="ephemeral", replace_original=True)

    def on_similar(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        # "Similar runs" on a run's detail or an alert: the value is a run id, checked before Dify sees it.
        ack()
        clicked = clicked_query(body, respond, lambda: similar_query(action.get("value"), now=now()))
        if clicked is None:
            return
        query, channel, _user = clicked
        text, blocks = searcher.answer(query, channel=channel)
        _respond(respond, text, blocks, response_type="ephemeral", replace_original=False)

    def on_link(ack: Any) -> None:
        # Url buttons (alerts' "Open in Dify") still send an action; without an ack Slack shows a warning.
        ack()

    for action_id in (fmt.ACTION_PREV, fmt.ACTION_NEXT, fmt.ACTION_SHARE):
        app.action(action_id)(on_button)
    app.action(re.compile(rf"^{fmt.ACTION_SIMILAR}(_.*)?$"))(on_similar)
    app.action(re.compile(r"^open_dify_"))(on_link)


class _NoTokenNote(logging.Filter):
    """Drops Bolt's "As you gave `client` as well, `token` will be unused": Bolt reads
    SLACK_BOT_TOKEN from the environment itself, and the client wflogs gives it carries that token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


def build_app(runtime: Runtime, *, now: Callable[[], float] = time.time) -> App:
    """The Bolt app on the runtime's WebClient; makes no network call while being built."""
    settings = runtime.settings
    if runtime.web is None or not settings.slack_bot_token:
        raise ConfigError("serving /wflogs needs SLACK_BOT_TOKEN (the bot token, xoxb-...)")
    secret = settings.slack_signing_secret
    bolt_log = logging.getLogger("slack_bolt.wflogs")
    if not any(isinstance(f, _NoTokenNote) for f in bolt_log.filters):
        bolt_log.addFilter(_NoTokenNote())
    app = App(
        client=runtime.web,  # carries the bot token and SLACK_API_URL
        # Given explicitly (even empty) so that Bolt does not read the environment itself.
        signing_secret=secret or "",
        request_verification_enabled=bool(secret),
        token_verification_enabled=False,
        process_before_response=False,
        logger=bolt_log,
    )
    register(app, runtime, now=now)
    register_incident_controls(app, runtime, now=now)
    return app


# -- incident controls and mutes ------------------------------------------------------------


def control_refusal(settings: Settings, *, user: str | None, channel: str | None) -> str | None:
    """Why ``user`` may not act on incidents from ``channel`` (None: they may)."""
    if settings.allowed_users is not None and user not in settings.allowed_users:
        return (
            "Sorry, wflogs' controls are limited to a list of people and you are not on it; nothing was "
            "changed. Ask whoever runs wflogs to add your Slack member ID to allowed_users in wflogs.toml."
        )
    if settings.allowed_channels is not None and channel not in settings.allowed_channels:
        return "Sorry, wflogs' controls are not enabled in this conversation; nothing was changed."
    return None


GONE = "That incident is not known to wflogs any more; nothing was changed."


def _user_refused(settings: Settings, user: str | None) -> bool:
    """Whether ``user`` is left out by allowed_users (wherever they act)."""
    return settings.allowed_users is not None and user not in settings.allowed_users


def _note(text: str) -> tuple[str, list[Block]]:
    return text, [section(text)]


def register_incident_controls(app: App, runtime: Runtime, *, now: Callable[[], float] = time.time) -> None:
    """Acknowledge / Mute / Resolve on incident messages: each click is acknowledged at once,
    checked against allowed_users / allowed_channels, and recorded in SQLite; the deliverer then
    edits the message from the stored state."""
    settings = runtime.settings
    home = Home(lambda: runtime.settings, runtime.store, runtime.web, names=lambda: app_names(runtime))

    def answer_click(body: dict[str, Any], respond: Any, text: str) -> None:
        """Tell the clicker: in the Home tab by publishing it again, else through response_url."""
        user = _user_of(body)
        if _from_home(body):
            if user:
                home.publish(user, int(now()), notes=[text])
        else:
            _respond(respond, *_note(text), response_type="ephemeral", replace_original=False)

    def on_control(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        # The click is recorded (one quick SQLite write) before Slack is answered, so an answered
        # click is never lost to a crash in between; the deliverer edits the message afterwards.
        channel, user = _channel_of(body), _user_of(body)
        if _from_home(body):
            # The Home tab is no conversation: the click acts where the incident lives.
            channel = _incident_channel(runtime, action)
        refused = control_refusal(settings, user=user, channel=channel)
        if channel is None and _from_home(body) and not _user_refused(settings, user):
            # No channel to check: the incident is gone (pruned since the view was drawn).
            refused = GONE
        if refused:
            ack()
            answer_click(body, respond, refused)
            return
        actions, at, who = runtime.actions, int(now()), _name_of(body) or user or "someone"
        kind = action.get("action_id")
        try:
            if kind == ifmt.ACTION_MUTE:
                number, choice = str((action.get("selected_option") or {}).get("value") or "").split(":", 1)
                answer = actions.mute(int(number), choice, who, at, channel=channel)
            elif kind == ifmt.ACTION_ACK:
                answer = actions.acknowledge(int(str(action.get("value"))), who, at, channel=channel)
            else:
                answer = actions.resolve(int(str(action.get("value"))), who, at, channel=channel)
        except ValueError:
            answer = "That control's value is damaged; nothing was changed."
        except WflogsError as exc:
            answer = f"Nothing was changed: {exc}"
        ack()
        answer_click(body, respond, answer)
        if kind == ifmt.ACTION_RESOLVE:
            # After the answer: this asks Dify, which may take its time.
            try:
                actions.count_successes(int(str(action.get("value"))))
            except ValueError:
                pass
            except Exception:
                log.exception("counting the successful runs of a resolved incident failed")
        if runtime.wake is not None:
            runtime.wake()

    for action_id in (ifmt.ACTION_ACK, ifmt.ACTION_MUTE, ifmt.ACTION_RESOLVE):
        app.action(action_id)(on_control)

    def on_unmute(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        # Unmute in the Home tab: like `/wflogs unmute N`, checked against where the mute acts.
        ack()
        user = _user_of(body) or "someone"
        try:
            mute_id = int(str(action.get("value")))
        except ValueError:
            answer_click(body, respond, "That control's value is damaged; nothing was changed.")
            return
        mute = runtime.actions.incidents.mute(mute_id) or {}
        refused = control_refusal(settings, user=user, channel=mute.get("channel"))
        if not mute and not _user_refused(settings, user):
            refused = f"There is no mute number {mute_id} in force any more; nothing was changed."
        if refused:
            answer_click(body, respond, refused)
            return
        answer = runtime.actions.unmute(mute_id, user, int(now()))
        if runtime.wake is not None:
            runtime.wake()
        answer_click(body, respond, answer)

    def on_home_opened(event: dict[str, Any]) -> None:
        # Bolt has acknowledged the event already; this reads SQLite only, then views.publish.
        user = event.get("user")
        if event.get("tab", "home") != "home" or not user:
            return
        if settings.allowed_users is not None and user not in settings.allowed_users:
            home.publish_refusal(user)
            return
        home.publish(user, int(now()))

    app.action(hfmt.ACTION_UNMUTE)(on_unmute)
    app.action(re.compile(rf"^{hfmt.ACTION_THREAD}_"))(lambda ack: ack())
    app.event("app_home_opened")(on_home_opened)


def _from_home(body: dict[str, Any]) -> bool:
    """Whether a click came from the Home tab (a view, not a message)."""
    return (body.get("container") or {}).get("type") == "view"


def _incident_channel(runtime: Runtime, action: dict[str, Any]) -> str | None:
    """The channel of the incident a control acts on (None when unknown)."""
    raw = action.get("value") or (action.get("selected_option") or {}).get("value") or ""
    try:
        incident_id = int(str(raw).split(":", 1)[0])
    except ValueError:
        return None
    row = runtime.actions.incidents.get(incident_id)
    return row["channel"] if row else None


def app_names(runtime: Runtime) -> dict[str, str]:
    """Each watched app's name from the configuration and stored state (no Dify request)."""
    return {
        app.id: app.name or (runtime.store.app_state(app.id) or {}).get("name") or app.label
        for app in runtime.settings.apps
    }


def _is_member(runtime: Runtime, channel: str) -> bool | None:
    """Whether the bot is in ``channel`` (None: Slack could not say)."""
    if runtime.web is None:
        return None
    # Within Slack's 3 seconds whatever Slack does: a short timeout and no retry; unknown goes on.
    quick = WebClient(
        token=runtime.web.token, base_url=runtime.web.base_url, timeout=MEMBER_TIMEOUT, retry_handlers=[]
    )
    try:
        info = quick.conversations_info(channel=channel)
    except SlackApiError as exc:
        if exc.response.get("error") == "channel_not_found":
            return False  # a private channel the bot is not in
        return None
    except Exception:
        return None
    member = (info.get("channel") or {}).get("is_member")
    return None if member is None else bool(member)


def _parsed(ack: Any, body: dict[str, Any], parse: Callable[[str], T | None]) -> tuple[bool, T | None]:
    """Parse the command's text with ``parse``: (False, None) when it is another command; a
    malformed one is answered here with what is wrong and the usage: (True, None)."""
    try:
        command = parse(str(body.get("text") or ""))
    except QueryError as exc:
        text, blocks = fmt.error(str(exc), exc.usage)
        ack(text=text, blocks=blocks)
        return True, None
    return command is not None, command


def subscription_command(
    ack: Any, body: dict[str, Any], runtime: Runtime, *, now: Callable[[], float]
) -> bool:
    """``/wflogs subscribe|unsubscribe|subscriptions``, answered in the acknowledgement (changes
    visible to the channel); False when the command is something else."""
    parsed, command = _parsed(ack, body, parse_subscription_command)
    if not parsed or command is None:
        return parsed
    channel, user = _channel_of(body), _user_of(body) or "someone"
    refused = control_refusal(runtime.settings, user=user, channel=channel)
    if refused or not channel:
        ack(*_note(refused or "Subscriptions are made in a channel."))
        return True
    handler = Subscriptions(
        runtime.settings,
        runtime.store,
        names=lambda: app_names(runtime),
        is_member=lambda c: _is_member(runtime, c),
    )
    # Shown to the channel as a name that pings nobody (as for clicks); the member ID without one.
    text, public = handler.run(command, channel=channel, user=_name_of(body) or user, now=int(now()))
    ack(text=text, blocks=[section(text)], response_type="in_channel" if public else "ephemeral")
    return True


def mute_command(ack: Any, body: dict[str, Any], runtime: Runtime, *, now: Callable[[], float]) -> bool:
    """``/wflogs mutes``, ``/wflogs unmute N``, ``/wflogs mute app:NAME 2h [reason]``, answered in the
    acknowledgement; False when the command is a search."""
    parsed, command = _parsed(ack, body, parse_mute_command)
    if not parsed or command is None:
        return parsed
    settings = runtime.settings
    channel, user = _channel_of(body), _user_of(body) or "someone"
    refused = control_refusal(settings, user=user, channel=channel)
    if refused:
        ack(*_note(refused))
        return True
    user = _name_of(body) or user  # recorded and shown as a name that pings nobody
    at = int(now())
    # Like searches, mutes are seen and ended only where their app may be searched from.
    visible = {app.id for app in visible_apps(settings, channel)}
    if command.kind == "list":
        mutes = [m for m in runtime.actions.active_mutes(at) if m["app_id"] in visible]
        text, blocks = ifmt.mutes_list(mutes, at)
        ack(text=text, blocks=blocks)
        return True
    if command.kind == "unmute":
        answer = runtime.actions.unmute(command.number or 0, user, at, apps=visible)
    else:
        answer = _mute_app(runtime, command, user, at, channel)
    if runtime.wake is not None:
        runtime.wake()
    ack(*_note(answer))
    return True


def _mute_app(runtime: Runtime, command: MuteCommand, user: str, at: int, channel: str | None) -> str:
    settings = runtime.settings
    names = {
        app.id: app.name or (runtime.store.app_state(app.id) or {}).get("name") or app.label
        for app in settings.apps
    }

    def norm(name: str) -> str:
        return re.sub(r"[\s_-]+", "-", name.strip().lower())

    wanted = norm(command.app or "")
    found = [app for app in settings.apps if norm(names[app.id]) == wanted]
    if len(found) != 1:
        known = ", ".join(f"`{escape(n)}`" for n in sorted(names.values())[:20])
        return f"No single app is called `{escape(command.app or '')}`; the apps are: {known}."
    app = found[0]
    if app.channels is not None and channel not in app.channels:
        return f"{escape(names[app.id])} cannot be muted from this conversation; try its own channel."
    mute_id = runtime.actions.mute_app(
        app_id=app.id,
        app_name=names[app.id],
        channel=alert_channel_for(settings, app) or "terminal",
        seconds=command.seconds or 3600,
        reason=command.reason,
        user=user,
        now=at,
    )
    return (
        f"Muted {escape(names[app.id])} for {duration(command.seconds)} (mute {mute_id}); "
        f"its channel is told. End it early with `/wflogs unmute {mute_id}`."
    )


# -- serving ----------------------------------------------------------------------------------


def events_handler(app: App) -> SlackRequestHandler:
    """The WSGI handler of ``/slack/events`` (Bolt checks every signature); the one HTTP server of
    ``wflogs run`` (:mod:`bot.ops_http`) routes that path to it."""
    return SlackRequestHandler(app, path=EVENTS_PATH)
