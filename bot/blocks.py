"""Tiny Block Kit builders and Slack's limits, shared by every formatter (pure)."""

from __future__ import annotations

from typing import Any

from bot.query import is_run_id
from bot.records import LogEntry
from bot.text import escape_cut, truncate

MAX_BLOCKS = 50
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
FIELD_LIMIT = 2000
MAX_FIELDS = 10
CONTEXT_ELEMENTS = 10
BUTTON_TEXT_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
# Slack refuses messages whose blocks hold about 13,000 characters in total
# (undocumented; see slack-notes.md). Stay well below.
BLOCKS_BUDGET = 11000
TEXT_LIMIT = 3000
# An error text shown in full is cut here (a section holds 3000 with its code fences).
ERROR_LIMIT = 2500

STATUS_EMOJI = {
    "failed": "🔴",
    "stopped": "🟠",
    "partial-succeeded": "🟡",
    "succeeded": "🟢",
    "running": "🔵",
    "paused": "⏸️",
}

Block = dict[str, Any]


def header(text: str) -> Block:
    """A header block (plain text, never parsed for mentions)."""
    return {"type": "header", "text": {"type": "plain_text", "text": truncate(text, HEADER_LIMIT)}}


def section(mrkdwn: str) -> Block:
    """A mrkdwn section; the caller escapes untrusted parts."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(mrkdwn, SECTION_LIMIT)}}


def fields(pairs: list[tuple[str, str]]) -> Block:
    """A section of up to ten ``*label*\\nvalue`` fields (values already escaped)."""
    return {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": truncate(f"*{label}*\n{value}", FIELD_LIMIT)}
            for label, value in pairs[:MAX_FIELDS]
        ],
    }


def context(*parts: str) -> Block:
    """A context block of mrkdwn elements."""
    return {
        "type": "context",
        "elements": [
            {"type": "mrkdwn", "text": truncate(p, SECTION_LIMIT)} for p in parts[:CONTEXT_ELEMENTS]
        ],
    }


def divider() -> Block:
    """A divider."""
    return {"type": "divider"}


def button(
    text: str,
    action_id: str,
    *,
    value: str | None = None,
    url: str | None = None,
    style: str | None = None,
) -> dict[str, Any]:
    """A button element."""
    out: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": truncate(text, BUTTON_TEXT_LIMIT), "emoji": True},
        "action_id": action_id[:255],
    }
    if value is not None:
        out["value"] = value[:BUTTON_VALUE_LIMIT]
    if url is not None:
        out["url"] = url[:3000]
    if style is not None:
        out["style"] = style
    return out


ACTION_SIMILAR = "wflogs_similar"  # its value is a run id; buttons on messages add a suffix


def similar_button(run_id: str | None, action_id: str = ACTION_SIMILAR) -> dict[str, Any] | None:
    """The "Similar runs" button for a run (on its detail, an alert or an incident); None without a
    run id. Here because search answers and incident messages both draw it."""
    if not is_run_id(run_id):
        return None
    return button("Similar runs", action_id, value=str(run_id))


def actions(*elements: dict[str, Any]) -> Block:
    """An actions block."""
    return {"type": "actions", "elements": list(elements[:25])}


def blocks_size(blocks: list[Block]) -> int:
    """Characters of text the blocks carry, as Slack counts them towards its total."""
    total = 0

    def walk(node: Any) -> None:
        nonlocal total
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    total += len(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks)
    return total


def fit(blocks: list[Block], budget: int = BLOCKS_BUDGET) -> list[Block]:
    """Drop trailing blocks until the message fits Slack's block count and size."""
    out = list(blocks[:MAX_BLOCKS])
    while len(out) > 1 and blocks_size(out) > budget:
        out.pop(-2 if out[-1].get("type") in {"actions", "context"} and len(out) > 2 else -1)
    return out


# -- mrkdwn pieces every formatter uses -------------------------------------------


def code_block(text: str, limit: int = ERROR_LIMIT) -> str:
    """Untrusted text in a code block, escaped (Slack parses <...> even there) and cut."""
    # A ``` inside would close the block early; it only changes formatting, but keep it tidy.
    return "```" + escape_cut(text.replace("```", "ʼʼʼ"), limit) + "```"


def who_text(entry: LogEntry) -> str:
    """The end user's session, else the console account, escaped for mrkdwn."""
    if entry.session_id:
        return f"`{escape_cut(entry.session_id, 200)}`"
    if entry.account_email or entry.account_name:
        return escape_cut(entry.account_email or entry.account_name or "", 200) + " (console account)"
    return "unknown"


def mention_text(mentions: tuple[str, ...] | list[str]) -> str:
    """Slack's mention syntax for validated IDs: ``<@U…>``, ``<!subteam^S…>``, ``<!here>``, ``<!channel>``.

    Only configured IDs come here (never text from Dify), so these are the one
    place wflogs writes ``<...>`` that Slack acts on.
    """
    parts: list[str] = []
    for mention in mentions:
        if mention in ("here", "channel"):
            parts.append(f"<!{mention}>")
        elif mention.startswith("S"):
            parts.append(f"<!subteam^{mention}>")
        else:
            parts.append(f"<@{mention}>")
    return " ".join(parts)
