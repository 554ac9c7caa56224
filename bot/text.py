"""Pure text helpers shared by every formatter: escaping, cutting, normalizing."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

ELLIPSIS = "…"

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,}\b")
_TOKENISH = re.compile(r"\b(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{16,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def escape(text: object) -> str:
    """Escape untrusted text for Slack mrkdwn so it can neither mention nor link."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + ELLIPSIS


def escape_cut(text: object, limit: int) -> str:
    """Escape, then cut to ``limit`` without splitting an escape sequence."""
    raw = str(text)
    out = escape(raw)
    if len(out) <= limit:
        return out
    # Cut the raw text until its escaped form fits, so no "&am" is left dangling.
    cut = raw[: max(limit - 1, 0)]
    while cut and len(escape(cut)) > limit - 1:
        excess = len(escape(cut)) - (limit - 1)
        cut = cut[: len(cut) - max(1, (excess + 4) // 5)]
    return escape(cut) + ELLIPSIS


def strip_controls(text: str) -> str:
    """Drop control characters (tabs and newlines become spaces)."""
    return _CONTROL.sub("", text.replace("\t", " ").replace("\n", " ").replace("\r", " "))


def one_line(text: str) -> str:
    """Collapse all white space to single spaces."""
    return _SPACE.sub(" ", text).strip()


def normalize_error(text: str | None) -> str:
    """The shape of an error message: quoted values, ids and numbers replaced, spaces collapsed.

    "timed out after 31s" and "timed out after 32s" give the same shape, so
    such failures group together.
    """
    if not text:
        return "(no error message)"
    shape = _QUOTED.sub("<v>", text)
    shape = _UUID.sub("<id>", shape)
    shape = _HEX.sub("<id>", shape)
    shape = _TOKENISH.sub("<id>", shape)
    shape = _NUMBER.sub("<n>", shape)
    return truncate(one_line(shape), 300)


def duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``12.3s``, ``4m 05s``, ``2h 01m``."""
    if seconds is None:
        return "?"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def clock(ts: int | None, tz: ZoneInfo | None = None) -> str:
    """An epoch second as ``2026-11-28 09:15:02 UTC`` in ``tz`` (default UTC)."""
    if not ts:
        return "?"
    moment = datetime.fromtimestamp(ts, tz or UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S ") + (moment.tzname() or "UTC")


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"
