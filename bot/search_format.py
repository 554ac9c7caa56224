"""Search answers for Slack: data in, Block Kit and fallback text out (pure).

Everything that came from outside (the user's own query, session ids, error
texts, run inputs and outputs, Dify's error messages) is escaped, inside
backticks and code blocks too, so nothing here can mention or link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

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
from bot.errors import QueryError
from bot.query import USAGE, Query, describe
from bot.records import LogEntry, RunDetail, SearchResult
from bot.text import clock, duration, escape, escape_cut, one_line, plural, strip_controls, truncate

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
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
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


def _line(entry: LogEntry, tz: ZoneInfo | None) -> str:
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
        parts.append(escape_cut(one_line(entry.error), 100))
    return " · ".join(parts)


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
    blocks: list[Block] = [header(title)]
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
            blocks.append(section("\n".join(_line(e, tz) for e in hits.entries)))
        elif hits.total and page > app_pages:
            blocks.append(context(f"No more runs here: {plural(app_pages, 'page')}."))
        elif not several:
            blocks.append(section("_No matching runs._"))
        if not hits.exact:
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


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` with secret-looking fields (password, token, api_key, ...) and values masked."""
    if isinstance(value, dict):
        return {
            k: (MASK if _SECRET_KEY.search(str(k)) and v not in (None, "") else mask_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.match(value.strip()):
        return MASK
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
    if run.get("error"):
        blocks.append(section("*Error*\n" + code_block(str(run["error"]), 1500)))
    blocks.append(section("*Inputs*\n" + code_block(_pretty(mask_secrets(detail.inputs)), INPUTS_LIMIT)))
    blocks.append(section("*Outputs*\n" + code_block(_pretty(mask_secrets(detail.outputs)), OUTPUTS_LIMIT)))
    if detail.console_url:
        blocks.append(actions(button("Open in Dify", "open_dify_run", url=detail.console_url)))
    text = f"{emoji} {escape(detail.app_name)}: run {escape(run_id)} {escape(status)}"
    if run.get("error"):
        text += ": " + escape_cut(one_line(str(run["error"])), 300)
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
    examples = "\n".join(
        [
            "`/wflogs failed since:2h` failed runs of the last two hours",
            "`/wflogs session user_workflow_123` one end user's runs",
            '`/wflogs "timed out" stopped since:yesterday` runs whose inputs/outputs mention it',
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
            "today, yesterday, 2026-11-17, 2026-11-17T09:30 · Search text in quotes · page:N"
        ),
        context(escape(USAGE)),
    ]
    return "How to use /wflogs: " + USAGE, blocks


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
    """One page of a search as a plain table for the terminal (control characters removed)."""
    rows = [("APP", "STATUS", "RUN ID", "STARTED", "RAN FOR", "WHO", "ERROR")]
    for hits in result.apps:
        for e in hits.entries:
            rows.append(
                (
                    _plain(hits.name, 24),
                    _plain(e.status or "?", 17),
                    _plain(e.run_id or e.log_id, 36),
                    clock(e.run_created_at or e.created_at, tz),
                    duration(e.elapsed_time),
                    _plain(e.who or "?", 30),
                    _plain(one_line(e.error or ""), 60),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    query, pages = result.query, result.pages
    exact = all(a.exact for a in result.apps)
    summary = f"{_count(result.total, exact)}: {_plain(describe(query, tz), 300)}"
    if pages > 1:
        summary += f" (page {query.page} of {pages}"
        summary += f"; add page:{query.page + 1} for more)" if query.page < pages else ")"
    lines.append(summary)
    for hits in result.apps:
        if not hits.exact:
            lines.append(
                f"note: {_plain(hits.name, 60)}: only the newest {hits.scanned:,} "
                f"of {hits.dify_total or 0:,} "
                "runs were read (Dify cannot filter this itself); narrow with since:"
            )
    lines.extend(f"note: {_plain(n, 300)}" for n in query.notes)
    return "\n".join(lines) + "\n"


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
        lines.append(f"error:     {_plain(one_line(str(run['error'])), 2000)}")
    for label, value in (("inputs", detail.inputs), ("outputs", detail.outputs)):
        pretty = _pretty(mask_secrets(value))
        lines.append(f"{label}:")
        lines.extend("  " + strip_controls(line) for line in truncate(pretty, 4000).splitlines())
    return "\n".join(lines) + "\n"
