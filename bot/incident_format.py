"""Incident messages: the parent (first post and every edit), its controls, thread events and the
lines ``/wflogs mutes`` shows (pure: data in, Block Kit + fallback text out)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bot import alert_format as fmt
from bot.blocks import (
    ACTION_SIMILAR,
    Block,
    actions,
    button,
    code_block,
    context,
    fit,
    header,
    section,
    similar_button,
)
from bot.records import Alert
from bot.text import clock, escape, escape_cut, one_line, plural, span

ACTION_ACK = "incident_ack"
ACTION_MUTE = "incident_mute"
ACTION_RESOLVE = "incident_resolve"
# What the Mute menu offers: (label, seconds; None = until the incident resolves).
MUTE_CHOICES: tuple[tuple[str, int | None], ...] = (
    ("1 hour", 3600),
    ("4 hours", 4 * 3600),
    ("24 hours", 86400),
    ("7 days", 7 * 86400),
    ("until resolved", None),
)


@dataclass(frozen=True)
class Incident:
    """What the messages show of an incident (built from its stored row)."""

    id: int
    app_name: str
    status: str
    state: str
    runs: int
    sessions: int
    opened_at: int
    first_seen: int | None = None
    last_seen: int | None = None
    error: str | None = None
    ack_by: str | None = None
    ack_at: int | None = None
    resolved_at: int | None = None
    resolved_by: str | None = None
    successes: int | None = None
    console_url: str | None = None
    previous_link: str | None = None
    previous_id: int | None = None
    previous_at: int | None = None  # when the previous incident of this error resolved (or opened)
    muted_until: int | None = None  # set with ``muted``; None while muted means "until resolved"
    muted: bool = False
    muted_by: str | None = None
    # A run of the incident, for the "Similar runs" button (only drawn with the controls).
    sample_run: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], mute: dict[str, Any] | None = None) -> Incident:
        """From an ``incidents`` row and the mute in force (if any)."""
        return cls(
            id=int(row["id"]),
            app_name=row.get("app_name") or "Dify app",
            status=row.get("status") or "failed",
            state=row.get("state") or "open",
            runs=int(row.get("runs") or 0),
            sessions=int(row.get("sessions") or 0),
            opened_at=int(row.get("opened_at") or 0),
            first_seen=row.get("first_seen"),
            last_seen=row.get("last_seen"),
            error=row.get("error"),
            ack_by=row.get("ack_by"),
            ack_at=row.get("ack_at"),
            resolved_at=row.get("resolved_at"),
            resolved_by=row.get("resolved_by"),
            successes=row.get("successes"),
            console_url=row.get("console_url") or None,
            previous_link=row.get("previous_link") or None,
            previous_id=row.get("previous_id"),
            previous_at=row.get("previous_at"),
            muted_until=(mute or {}).get("until"),
            muted=mute is not None,
            muted_by=(mute or {}).get("by_user"),
        )

    @property
    def resolved(self) -> bool:
        return self.state == "resolved"


def who(user: str | None) -> str:
    """Who did something, as text that notifies nobody: the name stored at the click (or the member ID
    an earlier version stored), never a ``<@U…>`` mention."""
    if not user:
        return "wflogs"
    return escape(user)


def failed_for(inc: Incident) -> str:
    """How long the error failed: from its first failure to its last (the runs' own times)."""
    if inc.first_seen and inc.last_seen and inc.last_seen > inc.first_seen:
        return f"failed for {span(inc.last_seen - inc.first_seen)}"
    return "failed once" if inc.runs <= 1 else "failed within a second"


def quiet_for(inc: Incident) -> str:
    """How long it had been quiet when it resolved (from its last failure)."""
    since = inc.last_seen or inc.opened_at
    return f"quiet for {span(max(0, (inc.resolved_at or since) - since))}"


def _title(inc: Incident) -> str:
    word = fmt.STATUS_WORD.get(inc.status, inc.status)
    runs = "run" if inc.runs == 1 else f"{inc.runs:,} runs"
    if inc.resolved:
        return f"✅ Resolved · {inc.app_name}: {runs} {word}"
    return f"{fmt.STATUS_EMOJI.get(inc.status, '🔴')} {inc.app_name}: {runs} {word}"


def state_line(inc: Incident, now: int) -> str:
    """The incident's running state: totals, first and last seen, and who did what."""
    parts = [plural(inc.runs, "run"), plural(inc.sessions, "session") + " affected"]
    if inc.first_seen:
        parts.append(f"first failure {clock(inc.first_seen)}")
    if inc.last_seen and inc.last_seen != inc.first_seen:
        parts.append(f"last {clock(inc.last_seen)}")
    line = " · ".join(parts)
    if inc.resolved and inc.resolved_at:
        by = f" by {who(inc.resolved_by)}" if inc.resolved_by else ""
        line = f"*Resolved* {clock(inc.resolved_at)}{by}: {failed_for(inc)}, then {quiet_for(inc)} · " + line
        if inc.successes:
            line += f" · {plural(inc.successes, 'successful run')} since the last failure"
    else:
        line = "*Open* · " + line
    if inc.ack_by:
        line += f"\nAcknowledged by {who(inc.ack_by)} at {clock(inc.ack_at)}"
    if inc.muted and not inc.resolved:
        until = clock(inc.muted_until) if inc.muted_until else "it resolves"
        line += f"\n🔕 Muted by {who(inc.muted_by)} until {until}: new failures are counted, not posted"
    return line


def controls(inc: Incident) -> list[dict[str, Any]]:
    """The parent's buttons and menu (only while open)."""
    if inc.resolved:
        return []
    elements: list[dict[str, Any]] = []
    if not inc.ack_by:
        elements.append(button("Acknowledge", ACTION_ACK, value=str(inc.id), style="primary"))
    elements.append(
        {
            "type": "static_select",
            "action_id": ACTION_MUTE,
            "placeholder": {"type": "plain_text", "text": "Mute"},
            "options": [
                {
                    "text": {"type": "plain_text", "text": label},
                    "value": f"{inc.id}:{seconds if seconds is not None else 'resolved'}",
                }
                for label, seconds in MUTE_CHOICES
            ],
        }
    )
    elements.append(button("Resolve", ACTION_RESOLVE, value=str(inc.id)))
    return elements


def similar(inc: Incident) -> dict[str, Any] | None:
    """The "Similar runs" button of an incident's message (its action id unique to the incident)."""
    return similar_button(inc.sample_run, f"{ACTION_SIMILAR}_i{inc.id}")


def _actions(inc: Incident, *, with_controls: bool) -> list[Block]:
    elements = controls(inc) if with_controls else []
    similar_runs = similar(inc) if with_controls else None
    if similar_runs is not None:
        elements.append(similar_runs)
    if inc.console_url:
        elements.append(button("Open in Dify", f"open_dify_i{inc.id}", url=inc.console_url))
    return [actions(*elements)] if elements else []


def _back_line(inc: Incident) -> list[Block]:
    if not (inc.previous_link or inc.previous_id):
        return []
    when = f"the previous one was resolved {clock(inc.previous_at)}" if inc.previous_at else ""
    if inc.previous_link:
        thread = f"<{inc.previous_link}|the previous incident's thread>"
        said = f"{when} ({thread})" if when else thread
        return [context(f"🔁 This error is back; {said}.")]
    return [context(f"🔁 This error is back; {when}." if when else "🔁 This error is back.")]


def _error_section(inc: Incident) -> Block:
    """The incident's error, as of its latest run (the parent shows it anew on every edit)."""
    error = code_block(inc.error or "(Dify gave no error message)", 1500)
    if inc.runs > 1:
        return section(f"Latest error (numbers, ids and quoted values vary between runs):\n{error}")
    return section(error)


def _kept(blocks: Sequence[Block]) -> list[Block]:
    """The part of a first post that stays true: not its error (drawn anew) nor the counts, sessions
    and times of its first runs (the state line has them, current). Also cleans bodies stored by
    earlier versions."""
    out = []
    for block in blocks:
        if block.get("type") == "actions":
            continue
        text = str((block.get("text") or {}).get("text") or "")
        if block.get("type") == "section" and (text.startswith("```") or " with this error (" in text):
            continue
        labels = [str(f.get("text") or "") for f in block.get("fields") or []]
        if any(label.startswith(("*Sessions affected*", "*Between*")) for label in labels):
            continue
        out.append(block)
    return out


def parent(
    inc: Incident, alerts: Sequence[Alert], *, with_controls: bool, now: int, rest_in: str = "thread"
) -> tuple[str, list[Block], int, str]:
    """The incident's first channel message, listing the first of ``alerts``.

    Returns text, blocks, how many runs it lists, and the body (JSON) that every
    later edit keeps, so that the runs listed here stay in Slack."""
    if len(alerts) == 1:
        text, blocks = fmt.single(alerts[0])
        listed = 1
    else:
        text, blocks, listed = fmt.group(alerts, rest_in=rest_in)
    body = _kept(blocks[1:])
    run_id = alerts[0].entry.run_id if alerts else None
    inc = replace(inc, sample_run=run_id)
    out = _compose(inc, body, with_controls=with_controls, now=now)
    if inc.previous_link or inc.previous_id:
        text = f"Back again: {text}"
    return text, out, listed, json.dumps({"blocks": body, "run": run_id})


def _stored_body(body_json: str | None) -> tuple[list[Block], str | None]:
    """The kept body and its sample run; older rows hold the blocks alone."""
    body = json.loads(body_json) if body_json else []
    if isinstance(body, dict):
        run = body.get("run")
        return list(body.get("blocks") or []), run if isinstance(run, str) else None
    return list(body), None


def _compose(inc: Incident, body: list[Block], *, with_controls: bool, now: int) -> list[Block]:
    head = [header(_title(inc)), *_back_line(inc), _error_section(inc)]
    tail = [context(state_line(inc, now)), *_actions(inc, with_controls=with_controls)]
    blocks = fit(head + body + tail)
    if blocks[-len(tail) :] != tail:
        # The body is cut rather than the state and the controls.
        blocks = fit(head + body[:1] + tail)
    return blocks


def edit(inc: Incident, body_json: str | None, *, with_controls: bool, now: int) -> tuple[str, list[Block]]:
    """The parent as it should look now (its first body kept), and a one-line text of the state."""
    body, run_id = _stored_body(body_json)
    body = _kept(body)
    if run_id and not inc.sample_run:
        inc = replace(inc, sample_run=run_id)
    return line(inc, now), _compose(inc, body, with_controls=with_controls, now=now)


def line(inc: Incident, now: int) -> str:
    """One line for the terminal and notifications: still failing, acknowledged, muted, resolved."""
    error = escape_cut(one_line(inc.error or "(no error message)"), 150)
    if inc.resolved and inc.resolved_at:
        extra = f", {plural(inc.successes, 'successful run')} since" if inc.successes else ""
        return (
            f"✅ {escape(inc.app_name)}: resolved: {failed_for(inc)}, then {quiet_for(inc)} "
            f"({plural(inc.runs, 'run')}{extra}): {error}"
        )
    bits = [f"{fmt.STATUS_EMOJI.get(inc.status, '🔴')} {escape(inc.app_name)}: still failing: "]
    bits.append(f"{plural(inc.runs, 'run')}, {plural(inc.sessions, 'session')}: {error}")
    if inc.ack_by:
        bits.append(f" · acknowledged by {who(inc.ack_by)}")
    if inc.muted:
        bits.append(" · muted until " + (clock(inc.muted_until) if inc.muted_until else "resolved"))
    return "".join(bits)


def event(text: str) -> tuple[str, list[Block]]:
    """A thread reply (or channel notice) telling what happened to an incident."""
    return text, [section(text)]


def acknowledged_text(user: str) -> str:
    return f"👀 Acknowledged by {who(user)}."


def muted_text(user: str, until: int | None, app_name: str | None = None, reason: str | None = None) -> str:
    what = f"*{escape(app_name)}* is muted" if app_name else "Muted"
    end = f"until {clock(until)}" if until else "until this incident resolves"
    why = f": {escape_cut(reason, 300)}" if reason else ""
    tail = " New failures are recorded and counted, not posted." if app_name else ""
    return f"🔕 {what} by {who(user)} {end}{why}.{tail}"


def unmuted_text(user: str | None, app_name: str | None = None) -> str:
    what = f"*{escape(app_name)}* is no longer muted" if app_name else "No longer muted"
    by = f" ({who(user)} ended the mute)" if user else " (the mute ran out)"
    return f"🔔 {what}{by}; failures are alerted again."


def resolved_text(inc: Incident) -> str:
    by = f" by {who(inc.resolved_by)}" if inc.resolved_by else ""
    text = f"✅ Resolved{by}: {failed_for(inc)}, then {quiet_for(inc)}; {plural(inc.runs, 'run')} in all."
    if inc.successes:
        text += f" {plural(inc.successes, 'successful run')} since the last failure."
    return text + " A new failure of this kind opens a new incident."


def mutes_list(mutes: Sequence[dict[str, Any]], now: int) -> tuple[str, list[Block]]:
    """``/wflogs mutes``: the mutes in force, numbered for ``/wflogs unmute N``."""
    if not mutes:
        text = "No mutes are in force."
        return text, [section(text)]
    lines = []
    for m in mutes[:40]:
        shape = (
            f"`{escape_cut(one_line(m.get('incident_error') or '(no error message)'), 80)}`"
            if m.get("incident_id")
            else "the whole app"
        )
        until = clock(m["until"]) if m.get("until") else "the incident resolves"
        why = f" ({escape_cut(m['reason'], 100)})" if m.get("reason") else ""
        lines.append(
            f"*{m['id']}.* {escape(m.get('app_name') or '?')} · {shape} · until {until} · "
            f"by {who(m.get('by_user'))}{why}"
        )
    text = f"{plural(len(mutes), 'mute')} in force"
    return text, [section(f"*{text}* (end one with `/wflogs unmute N`)"), section("\n".join(lines))]
