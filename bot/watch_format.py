"""Failure-rate and stuck-run incidents, mentions and escalations (pure: data in, Block Kit +
fallback text out).

A failure-rate or stuck-runs incident has the same life as any incident (a
parent kept current by edits, a thread, Acknowledge / Mute / Resolve), drawn
from its figures instead of its runs. Mentions are added only to a new
incident's first channel message (:func:`with_mentions`) and to its one
escalation; edits, thread replies and resolutions never carry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.blocks import Block, actions, code_block, context, fit, header, mention_text, section, who_text
from bot.incident_format import Incident, who
from bot.records import LogEntry
from bot.text import clock, duration, escape, escape_cut, one_line, plural

# Stuck runs listed in one message; the rest are counted.
RUNS_LISTED = 20
# Characters of run lines in one section (Slack takes 3000, with room for a heading).
LINES_BUDGET = 2700


def window_words(seconds: int) -> str:
    """``15 min``, ``1 h``, ``90 s``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _pct(value: Any) -> str:
    return f"{float(value or 0) * 100:.1f}%"


def rate_line(detail: dict[str, Any]) -> str:
    """``failure rate 30.0% over the last 15 min: 6 of 20 runs``."""
    return (
        f"failure rate {_pct(detail.get('rate'))} over the last "
        f"{window_words(int(detail.get('window') or 0))}: {int(detail.get('failures') or 0):,} of "
        f"{plural(int(detail.get('runs') or 0), 'run')}"
    )


def with_mentions(text: str, blocks: list[Block], mentions: Sequence[str]) -> tuple[str, list[Block]]:
    """A new incident's first channel message with ``mentions`` in its text and in a section
    under the header. Only configured, validated IDs come here, never text from Dify."""
    if not mentions:
        return text, blocks
    line = mention_text(tuple(mentions))
    at = 1 if blocks and blocks[0].get("type") == "header" else 0
    return f"{line} {text}", fit([*blocks[:at], section(line), *blocks[at:]])


def _state(inc: Incident) -> str:
    if inc.resolved and inc.resolved_at:
        by = f" by {who(inc.resolved_by)}" if inc.resolved_by else ""
        line = f"*Resolved* {clock(inc.resolved_at)}{by}, after {duration(inc.resolved_at - inc.opened_at)}"
    else:
        line = f"*Open* since {clock(inc.opened_at)}"
    if inc.ack_by:
        line += f"\nAcknowledged by {who(inc.ack_by)} at {clock(inc.ack_at)}"
    if inc.muted and not inc.resolved:
        until = clock(inc.muted_until) if inc.muted_until else "it resolves"
        line += f"\n🔕 Muted by {who(inc.muted_by)} until {until}: changes are shown here, not posted"
    return line


def _line_state(inc: Incident) -> str:
    bits = ""
    if inc.ack_by:
        bits += f" · acknowledged by {who(inc.ack_by)}"
    if inc.muted and not inc.resolved:
        bits += " · muted until " + (clock(inc.muted_until) if inc.muted_until else "resolved")
    return bits


def _compose(head: list[Block], body: list[Block], tail: list[Block]) -> list[Block]:
    blocks = fit(head + body + tail)
    if blocks[-len(tail) :] != tail:
        blocks = fit(head + body[:1] + tail)  # cut the body, never the state and the controls
    return blocks


def _tail(inc: Incident, controls: list[dict[str, Any]]) -> list[Block]:
    return [context(_state(inc)), *([actions(*controls)] if controls else [])]


# -- failure rate ------------------------------------------------------------------------


def rate_incident(
    inc: Incident, detail: dict[str, Any], *, controls: list[dict[str, Any]]
) -> tuple[str, list[Block]]:
    """The parent of a failure-rate incident as it should look now (first post and every edit)."""
    name = inc.app_name
    threshold = _pct(detail.get("threshold"))
    peak = _pct(detail.get("peak") or detail.get("rate"))
    if inc.resolved:
        title = f"✅ Resolved · {name}: failure rate"
        summary = (
            f"*{escape(name)}*: the failure rate was above {threshold}, peaking at {peak}; "
            f"now {rate_line(detail)}."
        )
        text = f"✅ {escape(name)}: failure rate back to {_pct(detail.get('rate'))} (peak {peak})"
    else:
        title = f"📈 {name}: failure rate {_pct(detail.get('rate'))}"
        summary = f"*{escape(name)}*: {rate_line(detail)} (threshold {threshold}, peak {peak})."
        text = f"📈 {escape(name)}: {rate_line(detail)}{_line_state(inc)}"
    body = [section(summary)]
    shapes = detail.get("shapes") or []
    if shapes:
        body.append(section("*Top errors in the window*"))
        for shape in shapes:
            runs = plural(int(shape.get("runs") or 0), "run")
            error = one_line(shape.get("error") or shape.get("shape") or "(no error message)")
            status = escape(shape.get("status") or "failed")
            body.append(section(f"{runs} {status}:\n" + code_block(error, 500)))
    body.append(
        context(
            "Every failed and stopped run counts, muted errors too. Resolves when the rate falls "
            "below the threshold."
        )
    )
    return text, _compose([header(title)], body, _tail(inc, controls))


def rate_resolved_text(detail: dict[str, Any], lasted: int) -> str:
    """The thread reply when the rate fell back below the threshold (no mentions)."""
    return (
        f"✅ Failure rate back to {_pct(detail.get('rate'))} ({int(detail.get('failures') or 0):,} of "
        f"{plural(int(detail.get('runs') or 0), 'run')} over the last "
        f"{window_words(int(detail.get('window') or 0))}) after {duration(lasted)}; "
        f"the peak was {_pct(detail.get('peak') or detail.get('rate'))}."
    )


# -- stuck runs ----------------------------------------------------------------------------


def _run_line(run: dict[str, Any], now: int) -> str:
    entry = LogEntry.from_dict(run.get("entry") or {"log_id": run["log_id"], "created_at": 0})
    started = int(run.get("started_at") or entry.created_at)
    run_id = escape(run.get("run_id") or entry.log_id)
    status = run.get("end_status")
    if run.get("ended_at") is None:
        how = f"running for {duration(now - started)}"
    elif status == "gone":
        how = "gone from Dify"
    elif status == "dismissed":
        ran = duration(int(run["ended_at"]) - started)
        how = f"still running when the incident was resolved, after {ran}"
    else:
        how = f"{escape(status or 'ended')} after {duration(int(run['ended_at']) - started)}"
    return f"• `{run_id}` · {who_text(entry)} · started {clock(started)} · {how}"


def _run_lines(runs: Sequence[dict[str, Any]], now: int) -> str:
    """One line per run, as many as fit a section (and at most ``RUNS_LISTED``), then a count."""
    lines: list[str] = []
    size = 0
    for run in runs[:RUNS_LISTED]:
        line = _run_line(run, now)
        if size + len(line) + 1 > LINES_BUDGET:
            break
        lines.append(line)
        size += len(line) + 1
    if len(runs) > len(lines):
        lines.append(f"… and {len(runs) - len(lines):,} more")
    return "\n".join(lines)


def stuck_incident(
    inc: Incident,
    detail: dict[str, Any],
    runs: Sequence[dict[str, Any]],
    *,
    controls: list[dict[str, Any]],
    now: int,
) -> tuple[str, list[Block]]:
    """The parent of a stuck-runs incident as it should look now: every run it holds, and how."""
    name = inc.app_name
    still = [r for r in runs if r.get("ended_at") is None]
    after = duration(int(detail.get("after") or 0))
    if inc.resolved:
        title = f"✅ Resolved · {name}: stuck runs"
        text = f"✅ {escape(name)}: no stuck runs any more ({plural(len(runs), 'run')})"
    else:
        title = f"⏳ {name}: {plural(len(still), 'run')} stuck in running"
        text = f"⏳ {escape(name)}: {plural(len(still), 'run')} stuck in running{_line_state(inc)}"
    body = [
        section(
            f"*{escape(name)}*: runs still running more than {after} after they started. Dify can "
            "leave a run in running for good (a stopped or crashed worker)."
        )
    ]
    if runs:
        body.append(section(_run_lines(runs, now)))
    body.append(context("Resolves when they end. Look one up with `/wflogs run RUN_ID`."))
    return text, _compose([header(title)], body, _tail(inc, controls))


def stuck_more(runs: Sequence[dict[str, Any]], now: int) -> tuple[str, list[Block]]:
    """A thread reply: more runs of the app got stuck (no mentions)."""
    text = f"⏳ {plural(len(runs), 'more run')} stuck in running:"
    return text, fit([section(f"{text}\n{_run_lines(runs, now)}")])


def stuck_resolved_text(runs: Sequence[dict[str, Any]], now: int) -> str:
    """The thread reply when every stuck run ended: how each ended (no mentions)."""
    return f"✅ No stuck runs any more:\n{_run_lines(runs, now)}"


# -- escalation ------------------------------------------------------------------------------


def escalation(inc: Incident, what: str, targets: Sequence[str], *, now: int) -> str:
    """The one escalation of an incident nobody acknowledged (a thread reply also sent to the
    channel): who is called, how long it has been going on and how many runs."""
    since = inc.first_seen or inc.opened_at
    call = mention_text(tuple(targets))
    body = (
        f"🚨 Nobody has acknowledged this: *{escape(inc.app_name)}*, {what}, going on for "
        f"{duration(now - since)} ({plural(inc.runs, 'run')})."
    )
    return f"{call} {body}" if call else body


ESCALATION_LINES = 10


def escalation_many(items: Sequence[tuple[Incident, str]], targets: Sequence[str], *, now: int) -> str:
    """One escalation for several incidents that share a thread (a storm summary's): who is
    called once, how long the oldest has been going on, and each incident on a line."""
    since = min(inc.first_seen or inc.opened_at for inc, _ in items)
    runs = sum(inc.runs for inc, _ in items)
    lines = [
        f"• *{escape(inc.app_name)}*: {what} ({plural(inc.runs, 'run')})"
        for inc, what in items[:ESCALATION_LINES]
    ]
    if len(items) > ESCALATION_LINES:
        lines.append(f"• and {len(items) - ESCALATION_LINES} more (listed in this thread)")
    body = (
        f"🚨 Nobody has acknowledged these {len(items)} incidents, going on for {duration(now - since)} "
        f"({plural(runs, 'run')}):\n" + "\n".join(lines)
    )
    call = mention_text(tuple(targets))
    return f"{call} {body}" if call else body


def incident_what(inc: Incident, kind: str | None) -> str:
    """How an escalation names the incident (escaped)."""
    if kind == "failure_rate":
        return "a failure rate above its threshold"
    if kind == "stuck_runs":
        return "runs stuck in running"
    return f"`{escape_cut(one_line(inc.error or '(no error message)'), 150)}`"
