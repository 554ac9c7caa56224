"""Messages about failure rates and stuck runs (pure: data in, Block Kit + fallback text out).

Mentions appear only in an opening message (a signal's first post); follow-ups
and resolutions never mention anyone.
"""

from __future__ import annotations

from typing import Any

from bot.blocks import Block, code_block, context, fit, header, mention_text, section, who_text
from bot.records import LogEntry
from bot.text import clock, duration, escape, one_line, plural

# Stuck runs listed in one message; the rest are counted.
RUNS_LISTED = 20


def window_words(seconds: int) -> str:
    """``15 min``, ``1 h``, ``90 s``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def rate_line(detail: dict[str, Any]) -> str:
    """``failure rate 30.0% over the last 15 min: 6 of 20 runs``."""
    return (
        f"failure rate {float(detail.get('rate') or 0) * 100:.1f}% over the last "
        f"{window_words(int(detail.get('window') or 0))}: {int(detail.get('failures') or 0):,} of "
        f"{plural(int(detail.get('runs') or 0), 'run')}"
    )


def _mention_line(mentions: tuple[str, ...]) -> list[Block]:
    return [section(mention_text(mentions))] if mentions else []


def _with_mentions(text: str, mentions: tuple[str, ...]) -> str:
    return f"{mention_text(mentions)} {text}" if mentions else text


def rate_opened(name: str, detail: dict[str, Any], mentions: tuple[str, ...] = ()) -> tuple[str, list[Block]]:
    """A failure rate above the threshold: the figures and the top error shapes."""
    line = rate_line(detail)
    threshold = float(detail.get("threshold") or 0) * 100
    blocks: list[Block] = [header(f"📈 {name}: failure rate {float(detail.get('rate') or 0) * 100:.1f}%")]
    blocks += _mention_line(mentions)
    blocks.append(section(f"*{escape(name)}*: {line} (threshold {threshold:.1f}%)."))
    shapes = detail.get("shapes") or []
    if shapes:
        blocks.append(section("*Top errors*"))
        for shape in shapes:
            runs = plural(int(shape.get("runs") or 0), "run")
            error = one_line(shape.get("error") or shape.get("shape") or "(no error message)")
            status = escape(shape.get("status") or "failed")
            blocks.append(section(f"{runs} {status}:\n" + code_block(error, 500)))
    blocks.append(context("Resolved when the rate falls below the threshold. Muted errors count here too."))
    text = _with_mentions(f"📈 {escape(name)}: {line}", mentions)
    return text, fit(blocks)


def rate_resolved(name: str, detail: dict[str, Any], lasted: int) -> tuple[str, list[Block]]:
    """The failure rate fell back below the threshold (no mentions)."""
    peak = float(detail.get("peak") or detail.get("rate") or 0) * 100
    text = (
        f"✅ {escape(name)}: failure rate back to {float(detail.get('rate') or 0) * 100:.1f}% "
        f"({int(detail.get('failures') or 0):,} of {plural(int(detail.get('runs') or 0), 'run')} over the "
        f"last {window_words(int(detail.get('window') or 0))}). Resolved after {duration(lasted)}; "
        f"the peak was {peak:.1f}%."
    )
    return text, [section(text)]


def _stuck_line(run: dict[str, Any], now: int) -> str:
    entry = LogEntry.from_dict(run.get("entry") or {"log_id": run["log_id"], "created_at": 0})
    started = int(run.get("started_at") or entry.created_at)
    return (
        f"• `{escape(run.get('run_id') or entry.log_id)}` · {who_text(entry)} · started {clock(started)} "
        f"· running for {duration(now - started)}"
    )


def stuck_found(
    name: str,
    runs: list[dict[str, Any]],
    *,
    after: int,
    now: int,
    first: bool,
    mentions: tuple[str, ...] = (),
) -> tuple[str, list[Block]]:
    """Runs still running long after they started; ``first`` for the opening message."""
    count = len(runs)
    if first:
        title = f"⏳ {name}: {plural(count, 'run')} stuck in running"
    else:
        title = f"⏳ {name}: {plural(count, 'more run')} stuck in running"
    lines = [_stuck_line(run, now) for run in runs[:RUNS_LISTED]]
    if count > RUNS_LISTED:
        lines.append(f"… and {count - RUNS_LISTED:,} more")
    blocks: list[Block] = [header(title)]
    blocks += _mention_line(mentions)
    blocks.append(
        section(
            f"*{escape(name)}*: {plural(count, 'run')} still running more than {duration(after)} after "
            "starting. Dify can leave a run in running for good (a stopped or crashed worker)."
        )
    )
    if lines:
        blocks.append(section("\n".join(lines)))
    blocks.append(context("Resolved when they end; look them up with `/wflogs run <run id>`."))
    text = _with_mentions(f"{escape(title)}", mentions)
    return text, fit(blocks)


def stuck_ended(name: str, runs: list[dict[str, Any]]) -> tuple[str, list[Block]]:
    """Every stuck run of a signal ended: how each ended (no mentions)."""
    lines = []
    for run in runs[:RUNS_LISTED]:
        status = run.get("end_status") or "ended"
        took = int(run.get("ended_at") or 0) - int(run.get("started_at") or 0)
        how = "is gone from Dify" if status == "gone" else f"{escape(status)} after {duration(took)}"
        lines.append(f"• `{escape(run.get('run_id') or run['log_id'])}` {how}")
    if len(runs) > RUNS_LISTED:
        lines.append(f"… and {len(runs) - RUNS_LISTED:,} more")
    text = f"✅ {escape(name)}: no stuck runs any more ({plural(len(runs), 'run')} ended)."
    blocks: list[Block] = [section(text)]
    if lines:
        blocks.append(section("\n".join(lines)))
    return text, fit(blocks)


def with_mentions(
    text: str, blocks: list[Block], mentions: tuple[str, ...] | list[str]
) -> tuple[str, list[Block]]:
    """A message that mentions ``mentions``: their syntax first in the text and in a section after
    the header (the one place a mention is added; replies and edits never call this)."""
    if not mentions:
        return text, blocks
    line = mention_text(tuple(mentions))
    at = 1 if blocks and blocks[0].get("type") == "header" else 0
    return f"{line} {text}", fit([*blocks[:at], section(line), *blocks[at:]])


def escalation(
    name: str, what: str, targets: tuple[str, ...], *, failing_for: int, runs: int
) -> tuple[str, list[Block]]:
    """The one escalation of an incident nobody acknowledged: a thread reply also sent to the channel."""
    who = mention_text(targets)
    body = (
        f"🚨 {escape(name)}: {escape(what)} has been failing for {duration(failing_for)} "
        f"({plural(runs, 'run')}) and nobody has acknowledged it."
    )
    text = f"{who} {body}" if who else body
    return text, [section(text)]
