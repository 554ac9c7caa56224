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


# The user and password of a URL (``scheme://user:pass@host``): never shown anywhere.
URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/@]*):[^\s/@]+@")


def hide_url_credentials(text: str, mask: str = "***", *, keep_user: bool = False) -> str:
    """``text`` with the password (and unless ``keep_user``, the user) of every URL replaced by ``mask``."""
    return URL_CREDENTIALS.sub(rf"\1\2:{mask}@" if keep_user else rf"\1{mask}@", text)


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


_TRACEBACK = "Traceback (most recent call last):"
_NODE_FAILED = re.compile(r"^(Node (?:'[^'\n]*'|\"[^\"\n]*\"|[^\n:]{1,200}?) run failed:)\s*(.*)$", re.S)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$", re.S)
_EXCEPTION_NAME = r"[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Timeout|Fault|Iteration)"
# An error that starts with an exception's name: "openai.RateLimitError: ...".
_NAMED = re.compile(rf"^({_EXCEPTION_NAME}):\s?(.*)$", re.S)
# A traceback whose new lines were lost: the exception after the last frame.
_LAST_FRAME = re.compile(r'File "[^"]*", line \d+, in \S+')
_FLAT_EXCEPTION = re.compile(rf"(?:^|\s)({_EXCEPTION_NAME})(?=:|\s*$)")


def _exception_line(traceback: str) -> str | None:
    """The exception line of a Python traceback (the last one when exceptions were chained)."""
    body = traceback[traceback.rfind(_TRACEBACK) + len(_TRACEBACK) :]
    lines = body.splitlines()
    if len(lines) > 1:
        for i, line in enumerate(lines):
            if i and line.strip() and not line[:1].isspace():
                return line.strip()  # the first line after the frames (which are indented)
        return None
    frames = list(_LAST_FRAME.finditer(body))
    tail = body[frames[-1].end() :] if frames else body
    match = _FLAT_EXCEPTION.search(tail)
    return one_line(tail[match.start(1) :]) if match else None


def _split_node(text: str) -> tuple[str, str]:
    """Dify's ``Node 'X' run failed: ...`` prefix (kept as it is) and the rest."""
    match = _NODE_FAILED.match(text.strip())
    if match:
        return match.group(1), match.group(2)
    return "", text


def error_summary(text: str | None) -> str:
    """An error as one line to read: a Python traceback becomes its exception line.

    ``Node 'Code' run failed: Traceback (most recent call last): ... KeyError: 'x'`` reads
    ``Node 'Code' run failed: KeyError: 'x'``; any other error is returned on one line.
    """
    if not text:
        return ""
    prefix, rest = _split_node(text)
    if _TRACEBACK in rest:
        line = _exception_line(rest)
        if line:
            rest = line
    return one_line(f"{prefix} {rest}" if prefix else rest)


def _shape_of(text: str) -> str:
    shape = _QUOTED.sub("<v>", text)
    shape = _UUID.sub("<id>", shape)
    shape = _HEX.sub("<id>", shape)
    shape = _TOKENISH.sub("<id>", shape)
    shape = _NUMBER.sub("<n>", shape)
    return one_line(shape)


def normalize_error(text: str | None) -> str:
    """The shape of an error message: quoted values, ids and numbers replaced, spaces collapsed.

    "timed out after 31s" and "timed out after 32s" give the same shape, so
    such failures group together. A Python traceback is shaped by its exception
    line, whose exception name is kept as it is (so two different exceptions
    never share a shape), and Dify's ``Node 'X' run failed:`` keeps the node's name.
    """
    if not text or not text.strip():
        return "(no error message)"
    prefix, rest = _split_node(text)
    kept = [prefix] if prefix else []
    if _TRACEBACK in rest:
        line = _exception_line(rest)
        if line:
            match = _EXCEPTION_LINE.match(line)
            if match:
                kept.append(match.group(1) + (":" if match.group(2) is not None else ""))
                rest = match.group(2) or ""
            else:
                rest = line
    else:
        named = _NAMED.match(rest.strip())
        if named:
            kept.append(named.group(1) + ":")
            rest = named.group(2)
    # The node's name and the exception's name stay whole; only the message is shaped and cut.
    head = " ".join(kept)
    return " ".join(p for p in (head, truncate(_shape_of(rest), 300)) if p) or "(no error message)"


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


def span(seconds: float | None) -> str:
    """How long something lasted, in whole units: ``19s``, ``4m 10s``, ``10m``, ``2h 5m``, ``3d 4h``."""
    if seconds is None:
        return "?"
    whole = max(0, round(seconds))
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    for i, (name, size) in enumerate(units[:-1]):
        if whole >= size:
            major, rest = divmod(whole, size)
            minor_name, minor_size = units[i + 1]
            minor = rest // minor_size
            return f"{major}{name} {minor}{minor_name}" if minor else f"{major}{name}"
    return f"{whole}s"


def clock(ts: int | None, tz: ZoneInfo | None = None) -> str:
    """An epoch second as ``2026-11-28 09:15:02 UTC`` in ``tz`` (default UTC)."""
    if not ts:
        return "?"
    moment = datetime.fromtimestamp(ts, tz or UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S ") + (moment.tzname() or "UTC")


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"
