"""The App Home view (pure): records of the stored state in, a ``home`` view out.

Most urgent first: apps that cannot be read, open incidents (not yet acknowledged first, then by
runs), mutes, then every app's line (cannot be read, failing, muted, ok) with yesterday's runs and
failure rate. Within Slack's limits for a view (100 blocks, text lengths); what does not fit is
counted ("N more"). Untrusted text (app names, errors, reasons) is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from bot import alert_format as fmt
from bot import incident_format as ifmt
from bot.blocks import SECTION_LIMIT, Block, actions, blocks_size, button, context, divider, header, section
from bot.text import clock, duration, escape, escape_cut, one_line, plural, truncate

ACTION_UNMUTE = "home_unmute"
ACTION_THREAD = "home_thread"  # a url button: Slack still sends the click, which is acknowledged
CALLBACK_ID = "wflogs_home"
MAX_VIEW_BLOCKS = 100
# Slack documents no total for a view's text; stay far below what was seen refused for messages
# times the view's larger block count.
VIEW_BUDGET = 60000
MAX_INCIDENTS = 20  # two blocks each
MAX_MUTES = 12  # one block each
ERROR_CHARS = 300


@dataclass(frozen=True)
class HomeIncident:
    """An open incident as the Home tab shows it: where it lives and a link to its thread."""

    incident: ifmt.Incident
    channel: str
    link: str | None = None
    # The app may be searched only from some channels (``channels``): its error stays there.
    private: bool = False


@dataclass(frozen=True)
class HomeMute:
    id: int
    app_name: str
    channel: str
    until: int | None  # None: until the incident resolves
    by_user: str | None = None
    reason: str | None = None
    incident_id: int | None = None
    incident_error: str | None = None
    # The app may be searched only from some channels (``channels``): its error stays there.
    private: bool = False


@dataclass(frozen=True)
class HomeApp:
    """One watched app's state, from stored state only."""

    app_id: str
    name: str
    open_incidents: int = 0
    unreadable_since: int | None = None
    unreadable_error: str | None = None
    muted_until: int | None = None  # an app-wide mute in force
    mute_reason: str | None = None
    yesterday_runs: int | None = None  # from the last daily digest
    yesterday_failed: int | None = None
    before_runs: int | None = None  # the digest before it, for the trend
    before_failed: int | None = None


@dataclass(frozen=True)
class HomeState:
    now: int
    apps: Sequence[HomeApp] = ()
    incidents: Sequence[HomeIncident] = ()
    mutes: Sequence[HomeMute] = ()
    controls: bool = True
    notes: list[str] = field(default_factory=list)


def app_rank(app: HomeApp) -> tuple[int, int, str]:
    """Most urgent first: cannot be read, failing (most incidents first), muted, ok."""
    if app.unreadable_since is not None:
        return (0, -app.open_incidents, app.name.lower())
    if app.open_incidents:
        return (1, -app.open_incidents, app.name.lower())
    if app.muted_until is not None:
        return (2, 0, app.name.lower())
    return (3, 0, app.name.lower())


def incident_rank(item: HomeIncident) -> tuple[int, int, int]:
    """Not yet acknowledged nor muted first, then the most runs, then the newest."""
    inc = item.incident
    return (1 if (inc.ack_by or inc.muted) else 0, -inc.runs, -(inc.last_seen or inc.opened_at))


def _rate(failed: int | None, runs: int | None) -> float | None:
    if not runs or failed is None:
        return None
    return failed / runs


def yesterday(app: HomeApp) -> str:
    """``yesterday 1,234 runs, 2.1% failed (↑ from 0.8%)``; or that no digest counted it yet."""
    if app.yesterday_runs is None:
        return "no daily figures yet"
    rate = _rate(app.yesterday_failed, app.yesterday_runs)
    text = f"yesterday {plural(app.yesterday_runs, 'run')}"
    if rate is None:
        return text
    text += f", {rate:.1%} failed"
    before = _rate(app.before_failed, app.before_runs)
    if before is not None:
        if abs(rate - before) < 0.0005:
            text += " (steady)"
        else:
            text += f" ({'↑' if rate > before else '↓'} from {before:.1%})"
    return text


def app_line(app: HomeApp, now: int, tz: ZoneInfo | None = None) -> str:
    name = f"*{escape_cut(app.name, 80)}*"
    if app.unreadable_since is not None:
        why = f": {escape_cut(one_line(app.unreadable_error), 120)}" if app.unreadable_error else ""
        state = f"⚠️ {name} cannot be read since {clock(app.unreadable_since, tz)}{why}"
    elif app.open_incidents:
        state = f"🔴 {name} failing: {plural(app.open_incidents, 'open incident')}"
    elif app.muted_until is not None:
        why = f" ({escape_cut(one_line(app.mute_reason), 100)})" if app.mute_reason else ""
        state = f"🔕 {name} muted until {clock(app.muted_until, tz)}{why}"
    else:
        state = f"🟢 {name} ok"
    return f"{state} · {yesterday(app)}"


def _incident_blocks(item: HomeIncident, now: int, controls: bool, tz: ZoneInfo | None) -> list[Block]:
    inc = item.incident
    word = fmt.STATUS_WORD.get(inc.status, inc.status)
    since = inc.first_seen or inc.opened_at
    error = escape_cut(one_line(inc.error or "(no error message)"), ERROR_CHARS)
    if item.private:
        error = "the error is shown in its channel only"
    where = f"<#{item.channel}>" if item.channel.startswith(("C", "G")) else escape(item.channel)
    state = []
    if inc.ack_by:
        state.append(f"acknowledged by {ifmt.who(inc.ack_by)}")
    if inc.muted:
        state.append("muted until " + (clock(inc.muted_until, tz) if inc.muted_until else "resolved"))
    text = (
        f"{fmt.STATUS_EMOJI.get(inc.status, '🔴')} *{escape_cut(inc.app_name, 80)}* {word} · "
        f"{plural(inc.runs, 'run')} · {plural(inc.sessions, 'session')} · since {clock(since, tz)} "
        f"({duration(max(0, now - since))}) · {where}"
        + (f" · {', '.join(state)}" if state else "")
        + f"\n`{error}`"
    )
    elements: list[dict[str, Any]] = ifmt.controls(inc) if controls else []
    if item.link:
        elements.append(button("Open thread", f"{ACTION_THREAD}_{inc.id}", url=item.link))
    blocks = [section(text)]
    if elements:
        blocks.append(actions(*elements))
    return blocks


def _mute_block(m: HomeMute, controls: bool, tz: ZoneInfo | None) -> Block:
    shape = (
        f"`{escape_cut(one_line(m.incident_error or '(no error message)'), 80)}`"
        if m.incident_id
        else "the whole app"
    )
    if m.incident_id and m.private:
        shape = "an error shown in its channel only"
    until = clock(m.until, tz) if m.until else "the incident resolves"
    why = f" ({escape_cut(one_line(m.reason), 100)})" if m.reason else ""
    block = section(
        f"🔕 *{escape_cut(m.app_name, 80)}* · {shape} · until {until} · by {ifmt.who(m.by_user)}{why}"
    )
    if controls:
        block["accessory"] = button("Unmute", ACTION_UNMUTE, value=str(m.id))
    return block


def _line_sections(lines: list[str], room: int) -> tuple[list[Block], int]:
    """Lines packed into at most ``room`` sections; returns them and how many lines did not fit."""
    out: list[Block] = []
    current: list[str] = []
    shown = 0
    for line in lines:
        if current and len("\n".join([*current, line])) > SECTION_LIMIT:
            if len(out) + 1 >= room:
                break
            out.append(section("\n".join(current)))
            current = []
        current.append(line)
        shown += 1
    if current and len(out) < room:
        out.append(section("\n".join(current)))
    elif current:
        shown -= len(current)
    return out, len(lines) - shown


def home_view(state: HomeState, tz: ZoneInfo | None = None) -> dict[str, Any]:
    """The Home tab for one person (everyone sees the same state; each gets their own publish)."""
    now = state.now
    apps = sorted(state.apps, key=app_rank)
    incidents = sorted(state.incidents, key=incident_rank)
    unreadable = sum(1 for a in apps if a.unreadable_since is not None)
    failing = sum(1 for a in apps if a.unreadable_since is None and a.open_incidents)
    muted = sum(1 for a in apps if a.unreadable_since is None and not a.open_incidents and a.muted_until)
    ok = len(apps) - unreadable - failing - muted
    summary = [f"{plural(len(apps), 'app')} watched"]
    counts = ((unreadable, "cannot be read"), (failing, "failing"), (muted, "muted"))
    summary += [f"{n} {word}" for n, word in counts]
    summary.append(f"{ok} ok")
    blocks: list[Block] = [
        header("wflogs: Dify workflow failures"),
        context(" · ".join(summary) + f" · as of {clock(now, tz)}"),
    ]
    # Answers to the person's own clicks: wflogs' own text (its untrusted parts already escaped).
    blocks += [context(truncate(n, 500)) for n in state.notes[:2]]

    # Open incidents, most urgent first.
    blocks += [divider(), section(f"*Open incidents* ({len(incidents)})")]
    if not incidents:
        blocks.append(context("Nothing is failing right now."))
    shown = 0
    for item in incidents[:MAX_INCIDENTS]:
        blocks += _incident_blocks(item, now, state.controls, tz)
        shown += 1
    if len(incidents) > shown:
        blocks.append(context(f"{len(incidents) - shown} more open incidents; see their channels."))

    # Mutes in force.
    mutes = list(state.mutes)
    blocks += [divider(), section(f"*Mutes in force* ({len(mutes)})")]
    if not mutes:
        blocks.append(context("No mutes are in force."))
    blocks += [_mute_block(m, state.controls, tz) for m in mutes[:MAX_MUTES]]
    if len(mutes) > MAX_MUTES:
        blocks.append(context(f"{len(mutes) - MAX_MUTES} more mutes; `/wflogs mutes` lists them all."))

    # Every app, most urgent first, packed into what is left.
    blocks += [divider(), section(f"*Apps* ({len(apps)})")]
    room = MAX_VIEW_BLOCKS - len(blocks) - 1
    app_blocks, left = _line_sections([app_line(a, now, tz) for a in apps], room)
    while app_blocks and blocks_size(blocks + app_blocks) > VIEW_BUDGET:
        dropped = app_blocks.pop()
        left += dropped["text"]["text"].count("\n") + 1
    blocks += app_blocks
    if left:
        blocks.append(context(f"{left} more apps (ok, or less urgent than those above)."))
    return {"type": "home", "callback_id": CALLBACK_ID, "blocks": blocks[:MAX_VIEW_BLOCKS]}


def home_text(view: dict[str, Any]) -> str:
    """The view's text, for tests and logs."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(view.get("blocks"))
    return "\n".join(parts)


def refusal_view() -> dict[str, Any]:
    """The Home tab of someone not on ``allowed_users``."""
    text = (
        "wflogs' overview is limited to a list of people and you are not on it. Ask whoever runs "
        "wflogs to add your Slack member ID to allowed_users in wflogs.toml."
    )
    return {"type": "home", "callback_id": CALLBACK_ID, "blocks": [header("wflogs"), section(text)]}
