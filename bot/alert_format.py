"""Alert messages: data in, Block Kit and fallback text out (pure)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence

from bot.blocks import (
    STATUS_EMOJI,
    Block,
    actions,
    button,
    code_block,
    context,
    fields,
    fit,
    header,
    section,
    who_text,
)
from bot.records import Alert, LogEntry
from bot.text import clock, duration, escape, escape_cut, one_line, plural, truncate

STATUS_WORD = {
    "failed": "failed",
    "stopped": "was stopped",
    "partial-succeeded": "partially succeeded",
}
RUNS_IN_PARENT = 10
RUNS_PER_REPLY = 40


def _source(entry: LogEntry) -> str:
    parts = [p for p in (entry.created_from, entry.triggered_from) if p]
    return escape(" · ".join(parts)) if parts else "?"


def _next_steps(entry: LogEntry) -> str:
    steps = []
    if entry.session_id:
        steps.append(f"`/wflogs session {escape_cut(entry.session_id, 200)}`")
    if entry.run_id:
        steps.append(f"`/wflogs run {escape(entry.run_id)}`")
    return "Next: " + "  ·  ".join(steps) if steps else ""


def _link_buttons(alert: Alert) -> list[Block]:
    if not alert.console_url:
        return []
    return [actions(button("Open in Dify", f"open_dify_{alert.id}", url=alert.console_url))]


def _title(alert: Alert, count: int = 1) -> str:
    emoji = STATUS_EMOJI.get(alert.status, "🔴")
    word = STATUS_WORD.get(alert.status, alert.status)
    if count == 1:
        return f"{emoji} {alert.app_name}: run {word}"
    return f"{emoji} {alert.app_name}: {count:,} runs {word}"


def single(alert: Alert) -> tuple[str, list[Block]]:
    """One run, in full."""
    entry = alert.entry
    error = entry.error or "(Dify gave no error message)"
    blocks: list[Block] = [header(_title(alert)), section(code_block(error))]
    tokens = f"{entry.total_tokens if entry.total_tokens is not None else '?'} tokens · "
    tokens += f"{entry.total_steps if entry.total_steps is not None else '?'} steps"
    blocks.append(
        fields(
            [
                ("End user / session" if entry.session_id else "Started by", who_text(entry)),
                ("Run ID", f"`{escape(entry.run_id or '?')}`"),
                ("Started", clock(entry.run_created_at or entry.created_at)),
                ("Ran for", duration(entry.elapsed_time)),
                ("Usage", tokens),
                ("Workflow version", escape(entry.version or "?")),
                ("Source", _source(entry)),
                *(
                    [("Conversation", f"`{escape_cut(entry.conversation_id, 100)}`")]
                    if entry.conversation_id
                    else []
                ),
            ]
        )
    )
    node = node_line(entry)
    if node:
        blocks.insert(2, context(node))
    steps = _next_steps(entry)
    if steps:
        blocks.append(context(steps))
    blocks.extend(_link_buttons(alert))
    who = entry.session_id or entry.account_email or "unknown user"
    text = (
        f"{STATUS_EMOJI.get(alert.status, '')} {escape(alert.app_name)}: run "
        f"{STATUS_WORD.get(alert.status, alert.status)}: {escape_cut(one_line(error), 300)} "
        f"(session {escape_cut(who, 100)}, run {escape(entry.run_id or '?')})"
    )
    return text, fit(blocks)


def run_line(alert: Alert, *, with_error: bool = False) -> str:
    """One compact line per run: run id, who, when, how long."""
    entry = alert.entry
    parts = [f"`{escape(entry.run_id or entry.log_id)}`", who_text(entry)]
    parts.append(clock(entry.run_created_at or entry.created_at))
    parts.append(duration(entry.elapsed_time))
    if with_error:
        parts.append(escape_cut(one_line(entry.error or ""), 80))
    return "• " + " · ".join(parts)


def _sessions(alerts: Sequence[Alert]) -> tuple[int, str]:
    who = Counter(a.entry.who or "unknown" for a in alerts)
    top = ", ".join(
        f"`{escape_cut(name, 60)}`" + (f" ×{n}" if n > 1 else "") for name, n in who.most_common(5)
    )
    more = len(who) - 5
    return len(who), top + (f" and {more} more" if more > 0 else "")


def pack_lines(lines: Sequence[str], *, section_limit: int = 2900, budget: int = 9000) -> list[str]:
    """Join whole lines into section texts of at most ``section_limit`` characters, stopping
    before ``budget`` characters in all: what a message can hold, never a cut line."""
    sections: list[str] = []
    chunk: list[str] = []
    size = total = 0
    for line in lines:
        cost = len(line) + 1
        if total + cost > budget:
            break
        if chunk and size + cost > section_limit:
            sections.append("\n".join(chunk))
            chunk, size = [], 0
        if cost > section_limit:
            break
        chunk.append(line)
        size += cost
        total += cost
    if chunk:
        sections.append("\n".join(chunk))
    return sections


def _count_lines(sections: Sequence[str]) -> int:
    return sum(s.count("\n") + 1 for s in sections)


def node_line(entry: LogEntry) -> str | None:
    """The node that failed the run (workspace mode, for a new incident), or None."""
    if not entry.node_title:
        return None
    node = f"Failed node: *{escape_cut(entry.node_title, 100)}* ({escape_cut(entry.node_type or '?', 40)})"
    if entry.node_error and entry.node_error != entry.error:
        node += f": {escape_cut(one_line(entry.node_error), 300)}"
    return node


def group(alerts: Sequence[Alert], *, rest_in: str) -> tuple[str, list[Block], int]:
    """Many runs of one app with the same status and error shape, in one message.

    ``rest_in`` says where the run ids not listed here go: "thread" or "csv".
    Returns the text, the blocks and how many of ``alerts`` (from the first) the
    message lists; the rest must go elsewhere.
    """
    first = alerts[min(RUNS_IN_PARENT, len(alerts)) - 1]  # the newest run listed stands for the group
    count = len(alerts)
    error = first.entry.error or "(Dify gave no error message)"
    n_sessions, top = _sessions(alerts)
    starts = [a.entry.run_created_at or a.entry.created_at for a in alerts]
    runs = pack_lines([run_line(a) for a in alerts[:RUNS_IN_PARENT]], budget=2900)
    listed = _count_lines(runs)
    blocks: list[Block] = [
        header(_title(first, count)),
        section(
            f"{plural(count, 'run')} with this error (numbers, ids and quoted values vary):\n"
            + code_block(error, 1500)
        ),
        fields(
            [
                ("Sessions affected", f"{n_sessions:,}: {top}"),
                ("Between", f"{clock(min(starts))}\nand {clock(max(starts))}"),
            ]
        ),
        *(section(text) for text in runs),
    ]
    node = next((line for a in alerts if (line := node_line(a.entry))), None)
    if node:
        blocks.insert(2, context(node))
    rest = count - listed
    if rest > 0:
        where = "in a CSV file in the thread" if rest_in == "csv" else "in the thread"
        blocks.append(context(f"The other {plural(rest, 'run')} are listed {where}."))
    steps = _next_steps(first.entry)
    if steps:
        blocks.append(context(steps))
    blocks.extend(_link_buttons(first))
    text = (
        f"{STATUS_EMOJI.get(first.status, '')} {escape(first.app_name)}: {count:,} runs "
        f"{STATUS_WORD.get(first.status, first.status)}: {escape_cut(one_line(error), 300)}"
    )
    kept = fit(blocks)
    at = 4 if node else 3
    if len(kept) < at + 1 or kept[at] is not blocks[at]:
        listed = 0  # the size guard dropped the run list: every run goes to the thread
    return text, kept, listed


def summary(alerts: Sequence[Alert]) -> tuple[str, list[Block]]:
    """A storm across many error shapes (and apps): counts per group, runs in the thread."""
    groups: dict[tuple[str, str, str], list[Alert]] = {}
    for alert in alerts:
        groups.setdefault((alert.app_name, alert.status, alert.group_key), []).append(alert)
    ranked = sorted(groups.values(), key=len, reverse=True)
    apps = {a.app_name for a in alerts}
    lines = []
    for members in ranked[:15]:
        sample = members[-1]
        lines.append(
            f"{STATUS_EMOJI.get(sample.status, '🔴')} *{escape(sample.app_name)}* ×{len(members):,}: "
            f"`{escape_cut(one_line(sample.entry.error or '(no error message)'), 120)}`"
        )
    if len(ranked) > 15:
        lines.append(f"…and {plural(len(ranked) - 15, 'more error')}")
    title = f"🔴 {len(alerts):,} failed or stopped runs in {plural(len(apps), 'app')}"
    blocks: list[Block] = [
        header(title),
        section("\n".join(lines)),
        context(f"{plural(len(ranked), 'kind')} of error. Every run is listed in the thread."),
    ]
    text = f"{title}; the biggest: " + (lines[0] if lines else "")
    return truncate(text, 3000), fit(blocks)


def thread_reply(alerts: Sequence[Alert], *, start: int, total: int) -> tuple[str, list[Block], int]:
    """A thread reply listing runs from ``start+1`` of ``total``: as many of ``alerts`` as fit.

    Returns the text, the blocks and how many runs (from the first) it lists; the
    caller sends the rest in the next reply.
    """
    sections = pack_lines([run_line(a, with_error=True) for a in alerts[:RUNS_PER_REPLY]])
    listed = _count_lines(sections)
    label = (
        f"Runs {start + 1:,}–{start + listed:,} of {total:,}"
        if listed > 1
        else f"Run {start + 1:,} of {total:,}"
    )
    blocks: list[Block] = [context(label), *(section(text) for text in sections)]
    return label, blocks, listed


CSV_COLUMNS = [
    "app",
    "status",
    "run_id",
    "log_id",
    "session_id",
    "account",
    "started_at",
    "finished_at",
    "elapsed_s",
    "tokens",
    "error",
]


def runs_csv(alerts: Sequence[Alert]) -> str:
    """Every run as CSV, for a file in the thread."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for alert in alerts:
        e = alert.entry
        error = e.error or ""
        # Spreadsheet formula injection: a cell starting with = + - @ is text.
        if error[:1] in ("=", "+", "-", "@"):
            error = "'" + error
        writer.writerow(
            [
                alert.app_name,
                alert.status,
                e.run_id or "",
                e.log_id,
                e.session_id or "",
                e.account_email or "",
                clock(e.run_created_at or e.created_at),
                clock(e.finished_at) if e.finished_at else "",
                f"{e.elapsed_time:.3f}" if e.elapsed_time is not None else "",
                e.total_tokens if e.total_tokens is not None else "",
                error,
            ]
        )
    return out.getvalue()
