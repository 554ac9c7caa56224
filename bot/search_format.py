"""Search answers for Slack: data in, Block Kit and fallback text out (pure).

Everything that came from outside (the user's own query, session ids, error
texts, run inputs and outputs, Dify's error messages) is escaped, inside
backticks and code blocks too, so nothing here can mention or link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.blocks import ACTION_SIMILAR as ACTION_SIMILAR  # re-exported: slack_app answers it
from bot.blocks import (
    BLOCKS_BUDGET,
    BUTTON_VALUE_LIMIT,
    MAX_BLOCKS,
    STATUS_EMOJI,
    Block,
    actions,
    blocks_size,
    button,
    code_block,
    context,
    fields,
    fit,
    header,
    section,
    who_text,
)
from bot.blocks import similar_button as similar_button
from bot.errors import QueryError
from bot.query import MUTE_USAGE, SIMILAR_DAYS, USAGE, Query, describe
from bot.records import LogEntry, RunDetail, SearchResult
from bot.text import (
    URL_CREDENTIALS,
    clock,
    duration,
    error_summary,
    escape,
    escape_cut,
    one_line,
    plural,
    strip_controls,
    truncate,
)

ACTION_PREV = "wflogs_prev"
ACTION_NEXT = "wflogs_next"
ACTION_SHARE = "wflogs_share"
MASK = "••••••"
_SECRET_KEY = re.compile(
    r"(?i)(pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|auth|credential|cookie|private"
    r"|signature|(^|[_.-])key$)"
)
_SECRET_VALUE = re.compile(
    r"^(Bearer\s+\S+|xox[a-z]-\S+|xapp-\S+|sk-[A-Za-z0-9_-]{16,}|app-[A-Za-z0-9]{24}|gh[pousr]_\S{20,}"
    r"|AKIA[0-9A-Z]{16})$"
)
# Secrets inside longer text: auth headers, passwords in URLs, known token formats, key=value pairs.
_TEXT_SECRETS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"(?i)\b(authorization\s*[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)[^\s\"',;]+"
        ),
        rf"\1{MASK}",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MASK}"),
    (URL_CREDENTIALS, rf"\1\2:{MASK}@"),
    (
        re.compile(
            r"\b(?:xox[a-z]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|sk-[A-Za-z0-9_-]{16,}|app-[A-Za-z0-9]{24}"
            r"|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})"
        ),
        MASK,
    ),
    (
        re.compile(
            r"(?i)((?<![a-z])(?:pass(?:word|wd|phrase)?|secret|api[_-]?key|apikey|access[_-]?token|auth[_-]?token"
            r"|client[_-]?secret|private[_-]?key)[\"']?\s*[:=]\s*[\"']?)(?!\s*[\[{])([^\s\"'&,;}]+)"
        ),
        rf"\1{MASK}",
    ),
]
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
DAYS_SHOWN = 31  # similar: shows at most this many days, one line each
INPUTS_LIMIT = 2500
OUTPUTS_LIMIT = 2500


# -- button values -----------------------------------------------------------------


def button_value(query: Query) -> str:
    """What a Previous/Next/Share button carries: the query, with its page."""
    return json.dumps(query.to_dict(), separators=(",", ":"), ensure_ascii=False)


def read_button_value(value: str | None) -> Query:
    """The inverse of :func:`button_value`; raises :class:`QueryError` when it is damaged."""
    try:
        data = json.loads(value or "")
    except ValueError:
        raise QueryError("this button's query is damaged; run the search again", usage=USAGE)
    return Query.from_dict(data)


# -- searches ----------------------------------------------------------------------


def _line(entry: LogEntry, tz: ZoneInfo | None, found: str | None = None) -> str:
    status = entry.status or "?"
    parts = [
        f"{STATUS_EMOJI.get(status, '⚪')} `{escape(entry.run_id or entry.log_id)}`",
        who_text(entry),
        clock(entry.run_created_at or entry.created_at, tz),
        duration(entry.elapsed_time),
    ]
    if status not in ("succeeded", "failed"):
        parts.append(escape(status))
    if entry.error:
        parts.append(escape_cut(mask_text(error_summary(entry.error)), 100))
    if found:
        parts.append(f"_found in {escape(found)}_")
    return " · ".join(parts)


def _similar_blocks(result: SearchResult, tz: ZoneInfo | None) -> list[Block]:
    source = result.similar_to
    if source is None:
        return []
    blocks = [
        section(
            f"Runs whose error has the shape of run `{escape(source.run_id)}` in {escape(source.app_name)}:\n"
            + code_block(mask_text(error_summary(source.error)), 600)
        )
    ]
    days = result.per_day[-DAYS_SHOWN:]
    if days:
        top = max(n for _, n in days) or 1
        lines = [
            f"`{_day(start, tz)}` {'▇' * max(1, round(n * 12 / top)) if n else '·'} {n:,}"
            for start, n in days
        ]
        earlier = sum(n for _, n in result.per_day[:-DAYS_SHOWN])
        if earlier:
            lines.insert(0, f"earlier: {earlier:,}")
        blocks.append(section("*Per day*\n" + "\n".join(lines)))
    return blocks


def _day(ts: int, tz: ZoneInfo | None) -> str:
    return datetime.fromtimestamp(ts, tz or UTC).strftime("%a %d %b")


def _count(total: int, exact: bool) -> str:
    return ("at least " if not exact else "") + plural(total, "run")


def results(
    result: SearchResult,
    *,
    tz: ZoneInfo | None = None,
    shared_by: str | None = None,
) -> tuple[str, list[Block]]:
    """One page of a search: a section per app, notes, and Previous/Next/Share buttons.

    ``shared_by`` (a Slack user id) marks the copy posted to the channel: no buttons, and who shared it.
    """
    query, page, pages = result.query, result.query.page, result.pages
    exact = all(a.exact for a in result.apps)
    what = describe(query, tz)
    failed = all(a.error for a in result.apps)
    title = f"⚠️ Search failed: {what}" if failed else f"🔎 {_count(result.total, exact)}: {what}"
    blocks: list[Block] = [header(title), *_similar_blocks(result, tz)]
    several = len(result.apps) > 1
    notes: list[str] = [escape(n) for n in query.notes]
    bad_request = False
    for hits in result.apps:
        if hits.error:
            bad_request = bad_request or hits.bad_request
            blocks.append(section(f"⚠️ *{escape(hits.name)}*: {escape_cut(hits.error, 1500)}"))
            continue
        app_pages = hits.pages(result.page_size)
        if several:
            blocks.append(
                section(f"*{escape(hits.name)}* · {_count(hits.total, hits.exact)}")
                if hits.total
                else section(f"*{escape(hits.name)}* · no matching runs")
            )
        if hits.entries:
            blocks.append(section("\n".join(_line(e, tz, hits.found.get(e.log_id)) for e in hits.entries)))
        elif hits.total and page > app_pages:
            blocks.append(context(f"No more runs here: {plural(app_pages, 'page')}."))
        elif not several:
            blocks.append(section("_No matching runs._"))
        if not hits.exact and hits.note:
            notes.append(escape(f"{hits.name}: {hits.note}"))
        elif not hits.exact:
            notes.append(
                f"{escape(hits.name)}: Dify cannot filter this by itself, so the newest "
                f"{hits.scanned:,} of {hits.dify_total or 0:,} runs were read; narrow with since: "
                "to search the rest."
            )
    footer = f"Page {page} of {pages}" if pages > 1 else ""
    tail: list[Block] = []
    if shared_by is None:
        buttons = []
        for label, action_id, target in (
            ("◀ Previous", ACTION_PREV, page - 1),
            ("Next ▶", ACTION_NEXT, page + 1),
            ("Share to channel", ACTION_SHARE, page),
        ):
            value = button_value(query.with_page(target))
            if 1 <= target <= pages and len(value) <= BUTTON_VALUE_LIMIT:
                buttons.append(button(label, action_id, value=value))
        if buttons:
            tail.append(actions(*buttons))
        hint = "Details: `/wflogs run RUN_ID`"
        tail.append(context(" · ".join(p for p in (footer, hint) if p)))
    else:
        who = f"<@{shared_by}>" if _USER_ID.match(shared_by) else "someone"
        tail.append(context(" · ".join(p for p in (f"Shared by {who}", footer) if p)))
    # The buttons and notes must survive: cut the runs, not them.
    room = BLOCKS_BUDGET - blocks_size(tail) - 2000
    kept = fit(blocks[: MAX_BLOCKS - len(tail) - 1], room)
    if len(kept) < len(blocks):
        notes.insert(0, "Some runs were left out to fit one Slack message; narrow the search with app:.")
    if bad_request:
        notes.append(escape(USAGE))
    if notes:
        kept.append(context(*(truncate(n, 600) for n in notes[:9])))
    blocks = kept + tail
    if failed:
        return f"⚠️ {escape_cut(result.apps[0].error or '', 500)}", blocks
    text = f"{_count(result.total, exact)}: {escape_cut(what, 500)}" + (
        f" (page {page} of {pages})" if footer else ""
    )
    return text, blocks


# -- one run -------------------------------------------------------------------------


def mask_text(text: str) -> str:
    """``text`` with secrets inside it masked: ``Authorization: Bearer ...``, passwords in URLs
    (``scheme://user:pass@host``), known token formats and ``password=...``-like pairs."""
    for pattern, replacement in _TEXT_SECRETS:
        text = pattern.sub(replacement, text)
    return text


def mask_secrets(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-looking fields (password, token, api_key, ...) and values masked.

    Strings holding JSON (a common way to pass structured inputs) are masked inside
    and given back as JSON; other strings have the secrets inside them masked."""
    if isinstance(value, dict):
        return {
            k: (MASK if _SECRET_KEY.search(str(k)) and v not in (None, "") else mask_secrets(v, _depth))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v, _depth) for v in value]
    if isinstance(value, str):
        stripped = value.strip()
        if _SECRET_VALUE.match(stripped):
            return MASK
        if stripped[:1] in ("{", "[") and _depth < 5:
            try:
                inner = json.loads(stripped)
            except ValueError:
                inner = None
            if isinstance(inner, dict | list):
                masked = mask_secrets(inner, _depth + 1)
                return value if masked == inner else json.dumps(masked, ensure_ascii=False)
        return mask_text(value)
    return value


def _pretty(value: Any) -> str:
    if value is None or value == {} or value == "":
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, ensure_ascii=False, default=str)


def run_detail(detail: RunDetail, *, tz: ZoneInfo | None = None) -> tuple[str, list[Block]]:
    """One run in full: status, times, error, inputs and outputs (secrets masked, cut to fit)."""
    run = detail.run
    status = str(run.get("status") or "?")
    run_id = str(run.get("id") or "?")
    emoji = STATUS_EMOJI.get(status, "⚪")
    blocks: list[Block] = [
        header(f"{emoji} {detail.app_name}: run {status}"),
        fields(
            [
                ("Run ID", f"`{escape(run_id)}`"),
                ("Status", escape(status)),
                ("Started", clock(_int(run.get("created_at")), tz)),
                (
                    "Finished",
                    clock(_int(run.get("finished_at")), tz) if run.get("finished_at") else "not yet",
                ),
                ("Ran for", duration(_float(run.get("elapsed_time")))),
                ("Usage", f"{run.get('total_tokens') or 0} tokens · {run.get('total_steps') or 0} steps"),
            ]
        ),
    ]
    error = mask_text(str(run.get("error") or ""))
    if error:
        blocks.append(section("*Error*\n" + code_block(error, 1500)))
    if detail.nodes:
        blocks.append(section("*Nodes*\n" + "\n".join(node_lines(detail.nodes, markup=True))[:2900]))
    blocks.append(section("*Inputs*\n" + code_block(_pretty(mask_secrets(detail.inputs)), INPUTS_LIMIT)))
    blocks.append(section("*Outputs*\n" + code_block(_pretty(mask_secrets(detail.outputs)), OUTPUTS_LIMIT)))
    buttons = []
    similar = similar_button(run_id) if error else None
    if similar:
        buttons.append(similar)
    if detail.console_url:
        buttons.append(button("Open in Dify", "open_dify_run", url=detail.console_url))
    if buttons:
        blocks.append(actions(*buttons))
    text = f"{emoji} {escape(detail.app_name)}: run {escape(run_id)} {escape(status)}"
    if error:
        text += ": " + escape_cut(one_line(error_summary(error)), 300)
    return text, fit(blocks)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# -- errors, help, refusals -----------------------------------------------------------


def error(message: str, usage: str = USAGE) -> tuple[str, list[Block]]:
    """What was wrong, and the usage line (both escaped)."""
    text = f"⚠️ {escape_cut(message, 2500)}"
    blocks: list[Block] = [section(text)]
    if usage:
        blocks.append(context(escape(usage)))
    return truncate(text, 3000), blocks


def help_message() -> tuple[str, list[Block]]:
    """How to use /wflogs, with examples."""
    usage = f"{USAGE}  ·  {MUTE_USAGE.removeprefix('Usage: ')}"
    examples = "\n".join(
        [
            "`/wflogs failed since:2h` failed runs of the last two hours",
            "`/wflogs session:user_workflow_123` one end user's runs",
            '`/wflogs "rate limit" since:1d` runs whose error, inputs, outputs or session mention it',
            '`/wflogs error:"timed out" stopped since:yesterday` stopped runs whose error says so',
            "`/wflogs similar:3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b` runs failing the same way, per day",
            "`/wflogs partial app:support-bot since:1d` partially succeeded runs of one app",
            "`/wflogs account:ops@example.com until:2026-11-17` runs started from the Dify console",
            "`/wflogs run 3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b` one run with its inputs and outputs",
        ]
    )
    blocks: list[Block] = [
        header("/wflogs: search Dify workflow runs"),
        section(examples),
        context(
            "Statuses: failed, stopped, succeeded, partial, running, paused · Times: 30m, 2h, 3d, 1w, "
            "today, yesterday, 2026-11-17, 2026-11-17T09:30 · Search text in quotes · "
            f"similar: looks {SIMILAR_DAYS} days back unless since: says otherwise · page:N"
        ),
        section(
            "*Mutes* (incidents' alerts)\n"
            "`/wflogs mutes` the mutes in force, numbered\n"
            "`/wflogs unmute N` end mute N\n"
            "`/wflogs mute app:NAME 2h [reason]` mute a whole app (maintenance), 1m to 30d; "
            "its channel is told when it starts and ends"
        ),
        section(
            "*Subscriptions* (typed in a channel; the channel sees them)\n"
            '`/wflogs subscribe app:NAME [failed|stopped] ["text"]` this channel gets the app\'s alerts too '
            "(`app:*` every app; a quoted text: only errors containing it)\n"
            "`/wflogs unsubscribe app:NAME` end it · `/wflogs subscriptions` what this channel receives"
        ),
        context(escape(usage)),
    ]
    return f"How to use /wflogs: {usage}", blocks


CLI_USAGE = (
    "Usage: wflogs search [failed|stopped|succeeded|partial|running|paused] [since:WHEN] [before:WHEN]\n"
    "                     [app:NAME] [session:ID] [account:EMAIL]\n"
    '                     ["search text" | error:TEXT | similar:RUN_ID] [page:N] [limit:N]\n'
    "       wflogs search run RUN_ID\n"
    "       wflogs search help"
)


def cli_help() -> str:
    """``wflogs search help``: the grammar, examples and exit codes, as plain text."""
    return "\n".join(
        [
            CLI_USAGE,
            "",
            "Searches every configured app's workflow runs, newest first, as Slack's slash command does.",
            "",
            "Statuses: failed, stopped, succeeded, partial (partial-succeeded), running, paused.",
            "WHEN: 30m, 2h, 1h30m, 3d, 1w, today, yesterday, 2026-11-17, 2026-11-17T09:30",
            "  (WFLOGS_TIMEZONE unless it says otherwise).",
            "Search text matches inputs, outputs and session (through Dify) and the error;",
            "  error:TEXT matches errors only; quote text with spaces: '\"timed out\"'.",
            f"similar:RUN_ID runs whose error has that run's shape (the last {SIMILAR_DAYS} days",
            "  unless since: says otherwise), with a count per day.",
            "page:N and limit:N page through many runs.",
            "",
            "Examples:",
            "  wflogs search failed since:2h",
            "  wflogs search session:user_workflow_123",
            "  wflogs search '\"rate limit\"' since:1d",
            "  wflogs search error:'\"timed out\"' stopped since:yesterday",
            "  wflogs search similar:3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b",
            "  wflogs search partial app:support-bot since:1d",
            "  wflogs search run 3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b",
            "",
            "Exit status: 0 answered; 1 an app could not be searched or the run was not found",
            "(why on stderr); 2 the query is wrong (the error, then the usage).",
        ]
    )


def refusal(message: str, channels: Sequence[str] = ()) -> tuple[str, list[Block]]:
    """A polite no (access control), pointing to up to five ``channels`` where the command works."""
    text = f"🔒 {escape(message)}"
    links = [f"<#{c}>" for c in channels if _CHANNEL_ID.match(c)][:5]
    if links:
        text += f" Try it in {', '.join(links)}."
    return text, [section(text)]


def searching(query: Query, tz: ZoneInfo | None = None) -> str:
    """The immediate acknowledgement while Dify is asked."""
    return f"🔎 Searching {escape_cut(describe(query, tz), 300)}…"


# -- the terminal (wflogs search) -------------------------------------------------------


def _plain(value: object, limit: int) -> str:
    return truncate(strip_controls(str(value)), limit)


def table(result: SearchResult, *, tz: ZoneInfo | None = None) -> str:
    """One page of a search as a plain table for the terminal (control characters removed).

    Apps that could not be searched are left to the caller (it reports them on stderr); when
    none could be, this says nothing at all rather than "0 runs"."""
    answered = [a for a in result.apps if not a.error]
    if not answered:
        return ""
    query, pages = result.query, result.pages
    exact = all(a.exact for a in answered)
    what = _plain(describe(query, tz), 300)
    lines: list[str] = []
    source = result.similar_to
    if source is not None:
        lines.append(
            f"error of run {_plain(source.run_id, 40)} in {_plain(source.app_name, 60)}: "
            f"{_plain(mask_text(error_summary(source.error)), 300)}"
        )
        days = result.per_day[-DAYS_SHOWN:]
        if days:
            lines.append("per day: " + ", ".join(f"{_day(start, tz)} {n:,}" for start, n in days))
    found = any(a.entries for a in answered)
    if found:
        show_found = any(a.found for a in answered)
        head = [
            "APP",
            "STATUS",
            "RUN ID",
            "STARTED",
            "RAN FOR",
            "WHO",
            *(["FOUND IN"] if show_found else []),
            "ERROR",
        ]
        rows = [tuple(head)]
        for hits in answered:
            for e in hits.entries:
                where = [_plain(hits.found.get(e.log_id, ""), 30)] if show_found else []
                rows.append(
                    (
                        _plain(hits.name, 24),
                        _plain(e.status or "?", 17),
                        _plain(e.run_id or e.log_id, 36),
                        clock(e.run_created_at or e.created_at, tz),
                        duration(e.elapsed_time),
                        _plain(e.who or "?", 30),
                        *where,
                        _plain(mask_text(error_summary(e.error)), 80),
                    )
                )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        summary = f"{_count(result.total, exact)}: {what}"
    elif result.total:
        summary = f"No more runs on page {query.page}: {_count(result.total, exact)}: {what}"
    else:
        # ``what`` reads "failed runs since ..." or "runs matching ...": "No failed runs since ...".
        summary = f"No {what}" + ("" if exact else " among the runs read")
    if pages > 1 and found:
        summary += f" (page {query.page} of {pages}"
        summary += f"; add page:{query.page + 1} for more)" if query.page < pages else ")"
    lines.append(summary)
    for hits in answered:
        if not hits.exact and hits.note:
            lines.append(f"note: {_plain(hits.name, 60)}: {_plain(hits.note, 300)}")
        elif not hits.exact:
            lines.append(
                f"note: {_plain(hits.name, 60)}: only the newest {hits.scanned:,} "
                f"of {hits.dify_total or 0:,} "
                "runs were read (Dify cannot filter this itself); narrow with since:"
            )
    failed = [a for a in result.apps if a.error]
    if failed:
        lines.append(
            "note: could not search (the errors are on stderr): "
            + ", ".join(_plain(a.name, 60) for a in failed)
        )
    lines.extend(f"note: {_plain(n, 300)}" for n in query.notes)
    return "\n".join(lines) + "\n"


NODE_EMOJI = {"succeeded": "✅", "failed": "🔴", "exception": "🟠", "stopped": "⏹", "running": "⏳"}


def node_lines(nodes: list[dict[str, Any]], *, markup: bool) -> list[str]:
    """The run's nodes in order: title, type, status, time, and the error of a failed one."""
    lines = []
    for number, node in enumerate(nodes[:40], start=1):
        status = str(node.get("status") or "?")
        title, kind = str(node.get("title") or node.get("node_id") or "?"), str(node.get("node_type") or "?")
        took = duration(_float(node.get("elapsed_time")))
        error = mask_text(str(node.get("error") or "")) if status in ("failed", "exception") else ""
        if markup:
            emoji = NODE_EMOJI.get(status, "⚪")
            line = f"{emoji} {number}. *{escape_cut(title, 80)}* ({escape_cut(kind, 30)}) "
            line += f"{escape(status)} · {took}" + (
                f": `{escape_cut(one_line(error), 200)}`" if error else ""
            )
        else:
            line = f"  {number}. {_plain(title, 80)} ({_plain(kind, 30)}) {_plain(status, 20)}, {took}"
            line += f": {_plain(one_line(error), 300)}" if error else ""
        lines.append(line)
    if len(nodes) > 40:
        lines.append(f"… and {len(nodes) - 40} more")
    return lines


def run_text(detail: RunDetail, *, tz: ZoneInfo | None = None) -> str:
    """One run for the terminal: fields, error, inputs and outputs (secrets masked)."""
    run = detail.run
    lines = [
        f"app:       {_plain(detail.app_name, 100)}",
        f"run:       {_plain(run.get('id') or '?', 100)}",
        f"status:    {_plain(run.get('status') or '?', 40)}",
        f"started:   {clock(_int(run.get('created_at')), tz)}",
        f"finished:  {clock(_int(run.get('finished_at')), tz) if run.get('finished_at') else 'not yet'}",
        f"ran for:   {duration(_float(run.get('elapsed_time')))}",
        f"usage:     {run.get('total_tokens') or 0} tokens, {run.get('total_steps') or 0} steps",
    ]
    if run.get("error"):
        lines.append(f"error:     {_plain(one_line(mask_text(str(run['error']))), 2000)}")
    if detail.nodes:
        lines.append("nodes:")
        lines.extend(node_lines(detail.nodes, markup=False))
    for label, value in (("inputs", detail.inputs), ("outputs", detail.outputs)):
        pretty = _pretty(mask_secrets(value))
        lines.append(f"{label}:")
        lines.extend("  " + strip_controls(line) for line in truncate(pretty, 4000).splitlines())
    return "\n".join(lines) + "\n"
