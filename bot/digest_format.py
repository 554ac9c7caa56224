"""Daily digest messages: an :class:`~bot.digest.AppDigest` in, Block Kit and fallback text out (pure).

Everything that came from Dify (app names, error texts, session ids, run ids)
is escaped, so nothing in a digest can mention or link.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from bot.blocks import STATUS_EMOJI, TEXT_LIMIT, Block, context, fields, fit, header, section
from bot.records import AppDigest, Counts
from bot.text import duration, error_summary, escape, escape_cut, plural, truncate

SPARK = "▁▂▃▄▅▆▇█"
ZERO = "·"
EXAMPLE_LIMIT = 180
WHO_LIMIT = 60


def delta(current: int, previous: int | None) -> str:
    """``+56``, ``−4`` or ``±0`` against the previous window (empty without one)."""
    if previous is None:
        return ""
    diff = current - previous
    if diff == 0:
        return "±0"
    return f"+{diff:,}" if diff > 0 else f"−{-diff:,}"


def rate(counts: Counts | None) -> str:
    """The failure rate as ``14.0%``, or ``–`` without runs."""
    value = counts.failure_rate if counts else None
    return "–" if value is None else f"{value}%"


def rate_delta(current: Counts | None, previous: Counts | None) -> str:
    """The change of the failure rate in percentage points, from the shown (rounded) rates."""
    now = current.failure_rate if current else None
    then = previous.failure_rate if previous else None
    if now is None:
        return ""
    if then is None:
        return "no runs the day before"
    diff: Decimal = now - then
    if diff == 0:
        return "±0.0 pts"
    return f"+{diff} pts" if diff > 0 else f"−{-diff} pts"


def sparkline(values: list[int]) -> str:
    """One character per value, ``·`` for zero, eight heights scaled to the largest."""
    top = max(values, default=0)
    if top <= 0:
        return ZERO * len(values)
    out = []
    for value in values:
        if value <= 0:
            out.append(ZERO)
        else:
            level = -(-value * len(SPARK) // top) - 1  # ceil, so any failure shows
            out.append(SPARK[min(max(level, 0), len(SPARK) - 1)])
    return "".join(out)


def when(ts: int, tz: ZoneInfo, fmt: str = "%a %d %b %H:%M", *, zone: bool = True) -> str:
    """A local time, with its zone's abbreviation unless ``zone`` is False (``Sun 25 Oct 09:00 CET``)."""
    moment = datetime.fromtimestamp(ts, tz)
    return f"{moment.strftime(fmt)} {moment.tzname()}" if zone else moment.strftime(fmt)


def _figure(value: int, previous: int | None) -> str:
    change = delta(value, previous)
    return f"{value:,}" + (f" ({change})" if change else "")


def _code(text: str, limit: int) -> str:
    # Escaped inside too: Slack parses <...> even in code.
    return "`" + escape_cut(text.replace("`", "ʼ"), limit) + "`"


def render(d: AppDigest) -> tuple[str, list[Block]]:
    """The Slack message of one app's digest: (fallback text, blocks within Slack's limits)."""
    tz = ZoneInfo(d.tz)
    name = d.app_name
    title = f"📊 {name}: daily digest" if d.kind == "scheduled" else f"📊 {name}: digest of the last 24 hours"
    span = f"{when(d.window.start, tz)} → {when(d.window.end + 1, tz)}, compared with the 24 hours before"
    notes = [escape(span)]
    if d.late:
        notes.append(
            f"⏰ Late: due {when(d.scheduled_at, tz, '%H:%M')}, posted {when(d.posted_at, tz)} "
            "(wflogs was not running at digest time)"
        )
    blocks: list[Block] = [header(title), context(*notes)]
    lines: list[str] = [f"*{escape(title)}*", escape(span)]
    if d.late:
        lines.append(notes[-1])

    if d.error is not None or d.current is None:
        problem = (
            f"⚠️ *Could not read this app from Dify*: {escape_cut(d.error or 'no answer', 600)}\n"
            "No figures for this app today; the other apps' digests are not affected."
        )
        blocks.append(section(problem))
        lines.append(problem)
        return _finish(lines, blocks)

    cur, prev = d.current, d.before
    if cur.total == 0:
        if d.silent:
            quiet = (
                f"🔕 *No runs at all* in the last 24 hours, though this app usually has about "
                f"{plural(d.usual_runs or 0, 'run')} a day. Is whatever calls it still working?"
            )
        else:
            quiet = "No runs in the last 24 hours (none the day before either)."
        blocks.append(section(quiet))
        lines.append(quiet)
        return _finish(lines, blocks)

    figures = [
        ("Runs", _figure(cur.total, prev.total if prev else None)),
        ("Failure rate", rate(cur) + (f" ({rate_delta(cur, prev)})" if rate_delta(cur, prev) else "")),
        ("Succeeded", "🟢 " + _figure(cur.succeeded, prev.succeeded if prev else None)),
        ("Failed", "🔴 " + _figure(cur.failed, prev.failed if prev else None)),
        ("Stopped", "🟠 " + _figure(cur.stopped, prev.stopped if prev else None)),
    ]
    if cur.other:
        if d.runs_sampled:
            other = f"{cur.other:,} partial successes or still running"
        else:
            parts = []
            if d.partial:
                parts.append(f"🟡 {d.partial:,} partial")
            if d.running:
                parts.append(f"🔵 {d.running:,} running")
            other = " · ".join(parts) or f"{cur.other:,}"
        figures.append(("Other", other))
    blocks.append(fields(figures))
    lines.append(", ".join(f"{label.lower()} {value}" for label, value in figures if label != "Other"))

    if cur.failed and d.hourly:
        peak = max(range(len(d.hourly)), key=lambda i: (d.hourly[i], -i))
        peak_at = d.window.start + peak * 3600
        chart = (
            f"*Failed runs per hour*{'' if d.hourly_exact else ' (sampled)'}\n"
            f"`{sparkline(d.hourly)}`  one bar per hour, {plural(len(d.hourly), 'hour')} from "
            f"{when(d.window.start, tz, '%a %H:%M', zone=False)} to "
            f"{when(d.window.end + 1, tz, '%a %H:%M', zone=False)}, peak {d.hourly[peak]:,} in the hour from "
            f"{when(peak_at, tz, '%H:%M', zone=False)}"
        )
        blocks.append(section(chart))
        lines.append(chart.replace("*", ""))

    if d.errors:
        rows = [f"*Top errors* ({plural(d.error_shapes, 'kind')} of failure)"]
        for err in d.errors:
            new = " 🆕 *new*" if err.new else ""
            run = f" · newest {_code(err.newest_run_id, 40)}" if err.newest_run_id else ""
            at = when(err.newest_at, tz, "%H:%M", zone=False)
            rows.append(
                f"{STATUS_EMOJI.get(err.status, '•')} *{'≈' if err.approx else ''}×{err.count:,}* "
                f"{_code(error_summary(err.example), EXAMPLE_LIMIT)}{new}{run} at {at}"
            )
        blocks.append(section("\n".join(rows)))
        lines.extend(rows)

    extras: list[str] = []
    incidents = incidents_line(d.incidents)
    if incidents:
        extras.append(incidents)
    if d.sessions:
        approx = "≈" if d.failures_sampled else ""
        extras.append(
            "*Most affected*: "
            + ", ".join(f"{_code(who, WHO_LIMIT)} ({approx}{n:,} failed or stopped)" for who, n in d.sessions)
        )
    if d.slowest:
        slow = ", ".join(
            f"{_code(r.run_id or '?', 40)} {duration(r.elapsed)} {STATUS_EMOJI.get(r.status, '')}".rstrip()
            for r in d.slowest
        )
        extras.append(f"*Slowest runs*{' (sampled)' if d.runs_sampled else ''}: {slow}")
    if d.tokens is not None:
        approx = "≈" if d.runs_sampled else ""
        average = d.tokens // cur.total if cur.total else 0
        extras.append(f"*Tokens*: {approx}{d.tokens:,} ({approx}{average:,} per run)")
    if d.partial:
        approx = "≈" if d.runs_sampled else ""
        extras.append(
            f"🟡 *{approx}{plural(d.partial, 'partial success', 'partial successes')}*: "
            "errors handled by a fail branch"
        )
    if extras:
        blocks.append(section("\n".join(extras)))
        lines.extend(extras)

    sampled = []
    if d.failures_sampled:
        sampled.append(
            f"errors and sessions ranked from {d.failures_read:,} of "
            f"{cur.failed + cur.stopped:,} failed and stopped runs"
        )
    if d.runs_sampled:
        sampled.append(
            f"slowest runs, tokens and partial successes from {d.runs_read:,} of {cur.total:,} runs"
        )
    if sampled:
        note = "Sampled to keep a busy day cheap: " + "; ".join(sampled) + "."
        blocks.append(context(note))
        lines.append(note)
    return _finish(lines, blocks)


def incidents_line(stats: dict[str, Any] | None) -> str | None:
    """``*Incidents*: 2 opened, 1 resolved (median 42m 00s to resolve), 1 still open``; None when none."""
    if not stats or not (stats.get("opened") or stats.get("resolved") or stats.get("open")):
        return None
    parts = [f"{stats.get('opened', 0):,} opened", f"{stats.get('resolved', 0):,} resolved"]
    if stats.get("median_resolve") is not None:
        parts[-1] += f" (median {duration(stats['median_resolve'])} to resolve)"
    parts.append(f"{stats.get('open', 0):,} still open")
    return "*Incidents*: " + ", ".join(parts)


def _finish(lines: list[str], blocks: list[Block]) -> tuple[str, list[Block]]:
    # Whole lines only, so no escape sequence is cut in half.
    kept = list(lines)
    while len(kept) > 1 and len("\n".join(kept)) > TEXT_LIMIT:
        kept.pop()
    return truncate("\n".join(kept), TEXT_LIMIT), fit(blocks)
