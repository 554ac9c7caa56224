"""The search grammar of ``/wflogs`` and ``wflogs search`` (pure: text in, :class:`Query` out).

::

    /wflogs [STATUS ...] [since:WHEN] [before:WHEN] [app:NAME] [session:ID] [account:EMAIL]
            [search text | error:TEXT | similar:RUN_ID] [page:N] [limit:N]
    /wflogs session ID [filters ...]
    /wflogs run RUN_ID [app:NAME]        (a bare run id works too)
    /wflogs help

STATUS is ``failed``, ``stopped``, ``succeeded``, ``partial`` (partial-succeeded),
``running`` or ``paused``. WHEN is a duration back from now (``30m``, ``2h``,
``1h30m``, ``3d``, ``1w``), ``today``, ``yesterday``, or a date/time
(``2026-11-17``, ``2026-11-17T09:30``, ``2026-11-17T09:30:00Z``) in the bot's
time zone unless it says otherwise. Words that are neither a status nor a
filter are the search text (quotes, straight or curly, keep spaces and make a
status word text); a word that looks like a mistyped status or command gets a
"did you mean" note. Search text matches a run's inputs, outputs and session
(through Dify) and its error (here); ``error:TEXT`` matches errors only;
``similar:RUN_ID`` finds runs whose error has the same shape as that run's (over
the last ``SIMILAR_DAYS`` days unless ``since:`` says otherwise). Control
characters are dropped. A malformed filter is an error that names it and shows
the usage line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.errors import QueryError
from bot.text import strip_controls

USAGE = (
    "Usage: /wflogs [failed|stopped|succeeded|partial|running|paused] [since:2h] [before:WHEN] "
    '[app:NAME] [session:ID] [account:EMAIL] ["search text" | error:TEXT | similar:RUN_ID] '
    "[page:N] [limit:N]  ·  /wflogs run RUN_ID  ·  /wflogs help"
)
RUN_ID_EXAMPLE = "3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b"
SIMILAR_DAYS = 7  # similar: looks this far back unless since: is given
KEYWORD_CHARS = 30  # Dify compares this many characters of a keyword
MAX_LIMIT = 100
MAX_QUERY_CHARS = 500
MAX_PAGE = 99999

STATUS_WORDS = {
    "failed": "failed",
    "stopped": "stopped",
    "succeeded": "succeeded",
    "partial": "partial-succeeded",
    "partial-succeeded": "partial-succeeded",
    "running": "running",
    "paused": "paused",
}
STATUS_ORDER = ("failed", "stopped", "partial-succeeded", "succeeded", "running", "paused")
_KEYS = {
    "since": "since",
    "after": "since",
    "from": "since",
    "until": "until",
    "before": "until",
    "to": "until",
    "app": "app",
    "session": "session",
    "user": "session",
    "account": "account",
    "by": "account",
    "status": "status",
    "page": "page",
    "limit": "limit",
    "text": "keyword",
    "keyword": "keyword",
    "run": "run",
    "error": "error",
    "similar": "similar",
    "like": "similar",
}
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u201d": "\u201d", "\u2018": "\u2019", "\u2019": "\u2019"}
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION = re.compile(r"^(?:\d+(?:s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?(?:Z|[+-]\d{2}:?\d{2})?$")
_UTC = ZoneInfo("UTC")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True)
class Query:
    """One parsed search, with time bounds resolved to epoch seconds (inclusive)."""

    kind: str = "search"  # "search", "run" or "help"
    statuses: tuple[str, ...] = ()
    since: int | None = None
    until: int | None = None
    app: str | None = None
    session: str | None = None
    account: str | None = None
    keyword: str | None = None
    error: str | None = None  # error:TEXT, matched against errors only
    similar: str | None = None  # similar:RUN_ID, runs whose error has that run's shape
    page: int = 1
    limit: int | None = None
    run_id: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def with_page(self, page: int) -> Query:
        """The same query on another page."""
        return replace(self, page=page)

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready form (for button values): only the fields that are set."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "notes" or value in (None, (), []) or (key == "kind" and value == "search"):
                continue
            if key == "page" and value == 1:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Query:
        """The inverse of :meth:`to_dict`; raises :class:`QueryError` on anything malformed."""
        if not isinstance(data, dict):
            raise QueryError("this button's query is damaged; run the search again", usage=USAGE)
        known = cls.__dataclass_fields__
        try:
            clean = {k: v for k, v in data.items() if k in known and k != "notes"}
            if "statuses" in clean:
                clean["statuses"] = tuple(s for s in clean["statuses"] if s in STATUS_ORDER)
            query = cls(**clean)
            if not isinstance(query.page, int) or not 1 <= query.page <= MAX_PAGE:
                raise ValueError(query.page)
            if query.limit is not None and (
                not isinstance(query.limit, int) or not 1 <= query.limit <= MAX_LIMIT
            ):
                raise ValueError(query.limit)
            for name in ("since", "until"):
                if not isinstance(getattr(query, name), int | None):
                    raise TypeError(name)
            for name in ("kind", "app", "session", "account", "keyword", "error", "run_id", "similar"):
                if not isinstance(getattr(query, name), str | None):
                    raise TypeError(name)
            if query.kind not in ("search", "run", "help"):
                raise ValueError(query.kind)
        except (TypeError, ValueError):
            raise QueryError("this button's query is damaged; run the search again", usage=USAGE)
        # Run ids go into Dify URLs: a forged button must not choose the path.
        for run_id in (query.run_id, query.similar):
            if run_id is not None:
                check_run_id(run_id, "this button's run id")
        if query.kind == "run" and query.run_id is None:
            raise QueryError("this button's query is damaged; run the search again", usage=USAGE)
        return query


@dataclass
class _Token:
    text: str
    quoted: bool  # the whole token was one quoted string
    key: str | None = None  # for key:value tokens


def _fail(message: str) -> QueryError:
    return QueryError(message, usage=USAGE)


def is_run_id(value: object) -> bool:
    """Whether ``value`` is a run id (a UUID), the only thing that may go into a Dify run URL."""
    return isinstance(value, str) and bool(_UUID.match(value))


def check_run_id(value: object, what: str = "the run id") -> str:
    """``value`` as a lower-case run id; raises :class:`QueryError` when it is not a UUID."""
    if not is_run_id(value):
        shown = str(value)[:60]
        raise QueryError(f"{what} {shown!r} is not a run id; a run id looks like {RUN_ID_EXAMPLE}")
    return str(value).lower()


def tokenize(text: str) -> list[_Token]:
    """Split on white space, honouring straight and curly quotes (also in ``key:"a b"``)."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        buf: list[str] = []
        whole_quoted = text[i] in _QUOTES
        key: str | None = None
        while i < n and not text[i].isspace():
            ch = text[i]
            # An apostrophe inside a word (don't) is not a quote; double quotes always are.
            if ch in _QUOTES and (ch in ('"', "\u201c", "\u201d") or not buf):
                close = _QUOTES[ch]
                end = text.find(close, i + 1)
                if end < 0:
                    raise _fail(f"a quote is not closed: {text[i:][:40]}")
                buf.append(text[i + 1 : end])
                i = end + 1
                continue
            if ch == ":" and key is None and not whole_quoted:
                key = "".join(buf)
                buf = []
                i += 1
                continue
            buf.append(ch)
            i += 1
        value = "".join(buf)
        if key is not None:
            tokens.append(_Token(value, quoted=False, key=key.lower()))
        else:
            tokens.append(_Token(value, quoted=whole_quoted))
    return tokens


def parse_when(value: str, *, now: float, tz: ZoneInfo, end: bool = False) -> int:
    """A WHEN value as epoch seconds; ``end`` makes a bare date mean the end of that day."""
    raw = value.strip().lower()
    if _DURATION.match(raw):
        seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION_PART.findall(raw))
        if seconds > 400 * 86400:
            raise _fail(f"{value} is too far back; use at most 400 days (57w)")
        return int(now) - seconds
    if raw in ("today", "yesterday"):
        day = datetime.fromtimestamp(now, tz).date()
        if raw == "yesterday":
            day -= timedelta(days=1)
        start = datetime(day.year, day.month, day.day, tzinfo=tz)
        return int((start + timedelta(days=1)).timestamp()) - 1 if end else int(start.timestamp())
    if _DATE.match(value.strip()):
        text = value.strip().replace(" ", "T")
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _fail(f"{value} is not a real date or time")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
        if end and "T" not in text:
            return int((moment + timedelta(days=1)).timestamp()) - 1
        return int(moment.timestamp())
    raise _fail(
        f"cannot read the time {value!r}: use a duration like 30m, 2h or 3d, today, yesterday, "
        "or a date like 2026-11-17 or 2026-11-17T09:30"
    )


def _suggest(word: str) -> str:
    choices = [*STATUS_WORDS, "session", "run", "help"]
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def parse(text: str, *, now: float, tz: ZoneInfo = _UTC) -> Query:
    """Parse what followed ``/wflogs``; raises :class:`QueryError` (with the usage line) on any mistake."""
    text = strip_controls(text).strip()
    if len(text) > MAX_QUERY_CHARS:
        raise _fail(f"the query is {len(text):,} characters long; keep it under {MAX_QUERY_CHARS}")
    tokens = tokenize(text)
    if tokens and not tokens[0].quoted and tokens[0].key is None and tokens[0].text.lower() == "help":
        if len(tokens) > 1:
            raise _fail("help takes nothing after it")
        return Query(kind="help")

    fields: dict[str, Any] = {}
    statuses: list[str] = []
    notes: list[str] = []
    words: list[str] = []
    kind = "search"

    def put(name: str, value: Any, shown: str) -> None:
        if name in fields:
            raise _fail(f"{shown} is given twice; give it once")
        fields[name] = value

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok.quoted:
            if not tok.text.strip():
                raise _fail("the search text in quotes is empty")
            words.append(tok.text.strip())
            continue
        if tok.key is not None:
            name = _KEYS.get(tok.key)
            if name is None:
                close = difflib.get_close_matches(tok.key, list(_KEYS), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]}:?)" if close else ""
                raise _fail(
                    f"unknown filter {tok.key}:{hint} — the filters are since:, before:, app:, session:, "
                    "account:, status:, error:, similar:, page:, limit: (text with a colon goes in quotes)"
                )
            value = tok.text.strip()
            if not value:
                raise _fail(f"{tok.key}: needs a value, e.g. {_example(name)}")
            if name == "status":
                for part in value.split(","):
                    status = STATUS_WORDS.get(part.lower())
                    if status is None:
                        raise _fail(
                            f"unknown status {part!r}{_suggest(part)}; use failed, stopped, succeeded, "
                            "partial, running or paused"
                        )
                    statuses.append(status)
            elif name in ("since", "until"):
                put(name, (value, tok.key), f"{tok.key}:")
            elif name == "page":
                if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
                    raise _fail(f"page:{value} is not a page number; use page:2, page:3, …")
                put("page", int(value), "page:")
            elif name == "limit":
                if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
                    raise _fail(f"limit:{value} is not a number of runs; use 1 to {MAX_LIMIT}, e.g. limit:10")
                put("limit", int(value), "limit:")
            elif name == "keyword":
                words.append(value)
            elif name == "account":
                if not _EMAIL.match(value):
                    raise _fail(f"account: takes the console account's e-mail, not {value!r}")
                put("account", value, "account:")
            elif name == "run":
                put("run_id", value, "run:")
                kind = "run"
            elif name == "error":
                put("error", value, "error:")
            elif name == "similar":
                if not _UUID.match(value):
                    raise _fail(f"similar: takes a run id, like similar:{RUN_ID_EXAMPLE}, not {value!r}")
                put("similar", value.lower(), "similar:")
            else:
                put(name, value, f"{tok.key}:")
            continue
        word = tok.text
        lower = word.lower()
        if lower in STATUS_WORDS:
            statuses.append(STATUS_WORDS[lower])
        elif lower in ("session", "run") and i < len(tokens) and tokens[i].key is None:
            value = tokens[i].text.strip()
            i += 1
            if not value:
                raise _fail(f"{lower} needs an id after it")
            if lower == "session":
                put("session", value, "the session")
            else:
                put("run_id", value, "the run id")
                kind = "run"
        elif lower in ("session", "run"):
            raise _fail(f"{lower} needs an id after it, e.g. /wflogs {_example(lower)}")
        elif _UUID.match(word):
            put("run_id", word, "the run id")
            kind = "run"
        else:
            words.append(word)
            hint = _suggest(word)
            if hint:
                notes.append(f"Searched for the text “{word}”{hint}")

    if kind == "run":
        run_id = fields["run_id"]
        extra = sorted(set(fields) - {"run_id", "app"})
        if extra or statuses or words:
            raise _fail("run RUN_ID takes only app:NAME after it")
        if not _UUID.match(run_id):
            raise _fail(
                f"{run_id!r} is not a run id; a run id looks like 3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b"
            )
        return Query(kind="run", run_id=run_id.lower(), app=fields.get("app"))

    since = until = None
    if "since" in fields:
        since = parse_when(fields["since"][0], now=now, tz=tz)
        if since > now:
            raise _fail(f"{fields['since'][1]}:{fields['since'][0]} is in the future")
    if "until" in fields:
        value, key = fields["until"]
        if key == "before":
            # Bounds are inclusive: before a moment (or a day) ends one second earlier.
            until = parse_when(value, now=now, tz=tz) - 1
        else:
            until = parse_when(value, now=now, tz=tz, end=True)
    if since is not None and until is not None and since > until:
        raise _fail(f"since: is later than {fields['until'][1]}:; swap them")
    keyword = " ".join(words) or None
    if "similar" in fields and (keyword or "error" in fields):
        raise _fail(
            "similar:RUN_ID finds runs by that run's error; it takes no search text or error: "
            "(use one or the other)"
        )
    if keyword and "error" in fields:
        raise _fail(
            f"error: searches errors only and search text searches everywhere; give one of them, "
            f'e.g. error:"{keyword}"'
        )
    if "similar" in fields and since is None:
        since = int(now) - SIMILAR_DAYS * 86400
        if until is not None and since > until:
            since = until - SIMILAR_DAYS * 86400
    if keyword and len(keyword) > KEYWORD_CHARS:
        notes.append(
            f"Dify compares only the first {KEYWORD_CHARS} characters of the search text with inputs, "
            "outputs and sessions; errors are compared in full."
        )
    unique = tuple(s for s in STATUS_ORDER if s in statuses)
    return Query(
        statuses=unique,
        since=since,
        until=until,
        app=fields.get("app"),
        session=fields.get("session"),
        account=fields.get("account"),
        keyword=keyword,
        error=fields.get("error"),
        similar=fields.get("similar"),
        page=fields.get("page", 1),
        limit=fields.get("limit"),
        notes=tuple(notes),
    )


def _example(name: str) -> str:
    return {
        "since": "since:2h",
        "until": "until:30m",
        "app": "app:support-bot",
        "session": "session user_workflow_123",
        "account": "account:ops@example.com",
        "status": "status:failed",
        "page": "page:2",
        "limit": "limit:10",
        "keyword": 'keyword:"timed out"',
        "run": f"run {RUN_ID_EXAMPLE}",
        "error": 'error:"rate limit"',
        "similar": f"similar:{RUN_ID_EXAMPLE}",
    }.get(name, name)


def describe(query: Query, tz: ZoneInfo | None = None) -> str:
    """The query in words, for headers and fallback text (NOT escaped: escape before mrkdwn)."""
    if query.kind == "run":
        return f"run {query.run_id}"
    parts = []
    if query.statuses:
        parts.append(" or ".join(query.statuses) + " runs")
    else:
        parts.append("runs")
    if query.app:
        parts.append(f"in {query.app}")
    if query.session:
        parts.append(f"of session {query.session}")
    if query.account:
        parts.append(f"by {query.account}")
    if query.keyword:
        parts.append(f"matching “{query.keyword}”")
    if query.error:
        parts.append(f"with an error matching “{query.error}”")
    if query.similar:
        parts.append(f"with an error like run {query.similar}’s")
    if query.since is not None:
        parts.append(f"since {_short_time(query.since, tz)}")
    if query.until is not None:
        parts.append(f"until {_short_time(query.until, tz)}")
    return " ".join(parts)


def _short_time(ts: int, tz: ZoneInfo | None) -> str:
    moment = datetime.fromtimestamp(ts, tz or UTC)
    return moment.strftime("%Y-%m-%d %H:%M ") + (moment.tzname() or "UTC")


# -- mutes: /wflogs mutes, /wflogs unmute N, /wflogs mute app:NAME 2h [reason] -----------------------

MUTE_USAGE = "Usage: /wflogs mutes · /wflogs unmute N · /wflogs mute app:NAME 2h [reason]"
MUTE_WORDS = ("mutes", "unmute", "mute")
MAX_MUTE_SECONDS = 30 * 86400


@dataclass(frozen=True)
class MuteCommand:
    """A parsed mute command: ``list``, ``unmute`` (``number``) or ``mute`` (``app``, ``seconds``)."""

    kind: str
    number: int | None = None
    app: str | None = None
    seconds: int | None = None
    reason: str | None = None


_MUTE_APP = re.compile(r'(?i)(?:^|(?<=\s))app:(?:"([^"]*)"|\u201c([^\u201d]*)\u201d|(\S+))')


def parse_mute_command(text: str) -> MuteCommand | None:
    """The mute command in ``text``, or None when it is not one (then it is a search)."""
    words = text.strip().split()
    if not words or words[0].lower() not in MUTE_WORDS:
        return None
    verb, rest = words[0].lower(), words[1:]
    if verb == "mutes":
        if rest:
            raise QueryError("`mutes` takes nothing after it", usage=MUTE_USAGE)
        return MuteCommand("list")
    if verb == "unmute":
        if len(rest) != 1 or not rest[0].isdigit():
            raise QueryError("say which mute to end by its number, e.g. `unmute 3`", usage=MUTE_USAGE)
        return MuteCommand("unmute", number=int(rest[0]))
    # app:NAME, or app:"Two words" (straight or curly quotes, as Slack clients type them).
    found = _MUTE_APP.search(" ".join(rest))
    app = next((g for g in found.groups() if g is not None), "") if found else ""
    if not app.strip():
        raise QueryError(
            "say which app to mute with app:NAME, e.g. `mute app:support-bot 2h`", usage=MUTE_USAGE
        )
    assert found is not None
    joined = " ".join(rest)
    others = (joined[: found.start()] + " " + joined[found.end() :]).split()
    if not others or not _DURATION.match(others[0].lower()):
        raise QueryError("say for how long, e.g. `2h`, `30m` or `1d`", usage=MUTE_USAGE)
    seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION_PART.findall(others[0].lower()))
    if not 60 <= seconds <= MAX_MUTE_SECONDS:
        raise QueryError("a mute lasts from 1m to 30d", usage=MUTE_USAGE)
    reason = " ".join(others[1:]).strip() or None
    return MuteCommand("mute", app=app.strip(), seconds=seconds, reason=reason[:300] if reason else None)
