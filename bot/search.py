"""Runs a :class:`~bot.query.Query` against one or more Dify apps.

What Dify cannot do is done here, and said in the result:

- ``status`` takes one of succeeded/failed/stopped; other statuses, or several
  at once, are filtered on our side by reading pages of 100 (at most
  ``SCAN_PAGES`` of them), so counts are exact only when the scan reached the end;
- ``keyword`` together with a session id makes Dify answer 500: the session goes
  to Dify and, when it has few runs, the keyword is checked against each run's
  inputs and outputs; for a busy session the keyword goes to Dify and the
  session is matched on our side;
- the list has no tie-breaker inside one second, so each page is cut from a
  chunk of 100 rows sorted here, and ``until`` is frozen at the first search so
  that Previous/Next page through the same window;
- ``keyword`` never matches a run's error: search text is also looked for in the
  errors of the window's failed, stopped and partial-succeeded runs, read from
  Dify (failed and stopped through its status filter) and compared here, then
  merged with Dify's keyword matches (each run once, newest first, each saying
  where the text was found); ``error:`` reads only errors, and ``similar:``
  compares each error's shape with one run's and counts the matches per day;
- a chatflow writes no log rows: its run list is walked newest first down to
  ``since`` and filtered here, run details read only for the rows shown, or for
  session, text and error filters for the newest CHAT_DETAIL_CAP runs at most
  (the answer then says how many were searched).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot import run_walk
from bot.config import AppConfig, Settings, alert_channel_for
from bot.dify import MAX_LIMIT, STATUSES_DIFY_FILTERS, DifyClient
from bot.errors import DifyAuthError, DifyBadRequest, DifyError, DifyNotFound, DifyUnavailable, QueryError
from bot.query import KEYWORD_CHARS, USAGE, Query, check_run_id
from bot.records import AppHits, LogEntry, RunDetail, SearchResult, SimilarSource
from bot.text import normalize_error, one_line

log = logging.getLogger(__name__)

UTC_ZONE = ZoneInfo("UTC")
PAGE_SIZE = 10  # runs per page with one app
MULTI_APP_PAGE_SIZE = 5  # runs per app per page with several (a Slack message has room for ~10k chars)
SCAN_PAGES = 10  # pages of 100 read per app when filtering on our side
DETAIL_CAP = 30  # a session with at most this many runs has its keyword checked against run details
CHAT_DETAIL_CAP = 200  # chatflow run details read per app and search (session, text and error filters)
CONVERSATION_PAGES = 10  # pages of a session's conversations read (more: its runs' details are read)


class RunNotFound(QueryError):
    """No app searched has the run (the query was right: no usage line)."""


@dataclass(frozen=True)
class Target:
    """One app to search, with the name to show and its client."""

    app: AppConfig
    name: str
    client: DifyClient


# -- which apps ----------------------------------------------------------------------


def visible_apps(settings: Settings, channel: str | None) -> list[AppConfig]:
    """The apps that may be searched from ``channel`` (an app's ``channels`` list limits it)."""
    if channel is None:
        return list(settings.apps)
    return [a for a in settings.apps if a.channels is None or channel in a.channels]


def choose_apps(
    settings: Settings,
    names: dict[str, str],
    *,
    channel: str | None,
    wanted: str | None,
    routed: Collection[str] = (),
) -> list[AppConfig]:
    """The apps a query runs against.

    ``app:NAME`` picks one (exact name, else a unique prefix); without it, the
    apps whose alert channel is ``channel`` or that ``channel`` subscribed to (``routed``:
    app ids, ``*`` for every app), else every app visible there.
    ``names`` maps app ids to the names users know them by.
    """
    apps = visible_apps(settings, channel)
    if not apps:
        raise QueryError("no Dify app can be searched from this channel; ask in the app's channel")
    if wanted:
        key = wanted.strip().lower()
        exact = [a for a in apps if key in (names[a.id].lower(), a.label.lower())]
        if exact:
            return exact[:1]
        prefix = [a for a in apps if names[a.id].lower().startswith(key)]
        if len(prefix) == 1:
            return prefix
        known = ", ".join(sorted(names[a.id] for a in apps))
        if prefix:
            raise QueryError(f"app:{wanted} matches several apps; say which: {known}", usage=USAGE)
        raise QueryError(f"no app called {wanted!r}; the apps are: {known}", usage=USAGE)
    here = [
        a
        for a in apps
        if channel is not None
        and (alert_channel_for(settings, a) == channel or a.id in routed or "*" in routed)
    ]
    return here or apps


def targets_for(
    settings: Settings,
    clients: Mapping[str, DifyClient],
    name_of: Callable[[AppConfig], str],
    *,
    channel: str | None,
    wanted: str | None,
    routed: Collection[str] = (),
) -> list[Target]:
    """The apps to search (see :func:`choose_apps`), with their names and clients."""
    apps = visible_apps(settings, channel)
    names = {a.id: name_of(a) for a in apps}
    chosen = choose_apps(settings, names, channel=channel, wanted=wanted, routed=routed)
    return [Target(app=a, name=names[a.id], client=clients[a.id]) for a in chosen]


# -- searching -------------------------------------------------------------------------


def _order(entries: list[LogEntry]) -> list[LogEntry]:
    # Dify has no tie-breaker inside one second; the log id makes our order stable.
    return sorted(entries, key=lambda e: (-e.created_at, e.log_id))


def _detail_matches(client: DifyClient, entry: LogEntry, keyword: str) -> bool:
    """Dify's keyword rule, applied to one run's detail: inputs, outputs, session, or the run id."""
    if not entry.run_id:
        return False
    if entry.run_id == keyword:
        return True
    word = keyword[:30].lower()
    if entry.session_id and word in entry.session_id.lower():
        return True
    try:
        body = client.run(entry.run_id)
    except DifyNotFound:
        return False
    for key in ("inputs", "outputs"):
        value = body.get(key)
        text = value if isinstance(value, str) else json.dumps(value)
        if word in text.lower():
            return True
    return False


def _scan(
    client: DifyClient, params: dict[str, Any], keep: Callable[[LogEntry], bool]
) -> tuple[list[LogEntry], bool, int, int]:
    """Read pages of 100 (at most SCAN_PAGES), keeping what ``keep`` accepts.

    Returns (matches, reached the end, rows read, Dify's total)."""
    seen: set[str] = set()
    matches: list[LogEntry] = []
    total = 0
    for number in range(1, SCAN_PAGES + 1):
        page = client.logs(**params, page=number, limit=MAX_LIMIT)
        total = page.total
        for entry in page.data:
            if entry.log_id in seen:  # rows inserted while paging shift later pages
                continue
            seen.add(entry.log_id)
            if keep(entry):
                matches.append(entry)
        if not page.has_more or not page.data:
            return matches, True, len(seen), total
    return matches, False, len(seen), total


ERROR_STATUSES = ("failed", "stopped", "partial-succeeded")  # the runs that carry an error


@dataclass
class _Found:
    """Matches from one or more reads of Dify, with how complete the reads were."""

    entries: list[LogEntry]
    complete: bool = True
    scanned: int = 0
    dify_total: int = 0

    def add(self, other: _Found) -> None:
        """Take in another read's matches; only reads that stopped at their cap count for the note."""
        self.entries += other.entries
        if not other.complete:
            self.scanned += other.scanned
            self.dify_total += other.dify_total
            self.complete = False


def _scan_found(client: DifyClient, params: dict[str, Any], keep: Callable[[LogEntry], bool]) -> _Found:
    matches, complete, scanned, total = _scan(client, params, keep)
    return _Found(matches, complete, scanned, total)


def _base_params(query: Query) -> dict[str, Any]:
    params: dict[str, Any] = {"after": query.since, "before": query.until}
    if query.account:
        params["account"] = query.account
    return params


def error_statuses(query: Query) -> tuple[str, ...]:
    """The statuses whose errors a query reads: its own among failed/stopped/partial, else all three."""
    if not query.statuses:
        return ERROR_STATUSES
    return tuple(s for s in query.statuses if s in ERROR_STATUSES)


def _contains(text: str) -> Callable[[str | None], bool]:
    needle = one_line(text).casefold()
    return lambda error: bool(error) and needle in one_line(error or "").casefold()


def _error_scan(query: Query, client: DifyClient, keep: Callable[[str | None], bool]) -> _Found:
    """Runs of the window whose error ``keep`` accepts, read from Dify and filtered here.

    Dify filters failed and stopped itself (one scan each); partial-succeeded runs
    can only be found among all runs (one more scan, when the query wants them)."""
    params = _base_params(query)
    if query.session:
        params["session_id"] = query.session
    found = _Found([])
    for status in error_statuses(query):
        if status in STATUSES_DIFY_FILTERS:
            scan_params = {**params, "status": status}
        else:
            scan_params = params

        def accept(entry: LogEntry, status: str = status) -> bool:
            return entry.status == status and keep(entry.error)

        found.add(_scan_found(client, scan_params, accept))
    return found


def _keyword_where(entry: LogEntry, keyword: str) -> str:
    word = keyword[:KEYWORD_CHARS].lower()
    if entry.session_id and word in entry.session_id.lower():
        return "session"
    if entry.run_id and entry.run_id == keyword:
        return "run id"
    return "inputs/outputs"


def _status_filter(query: Query, params: dict[str, Any]) -> set[str] | None:
    """Send Dify the one status it can filter (into ``params``); return the statuses to filter on
    our side instead (None: no local status filter)."""
    if len(query.statuses) == 1 and query.statuses[0] in STATUSES_DIFY_FILTERS:
        params["status"] = query.statuses[0]
        return None
    return set(query.statuses) if query.statuses else None


def _keyword_found(query: Query, client: DifyClient) -> _Found:
    """Dify's keyword matches (inputs, outputs, session) under the query's other filters."""
    assert query.keyword is not None
    params = _base_params(query)
    local_statuses = _status_filter(query, params)

    def status_ok(entry: LogEntry) -> bool:
        return local_statuses is None or entry.status in local_statuses

    if query.session:
        # Dify answers 500 to keyword + session: never send both.
        first = client.logs(**params, session_id=query.session, page=1, limit=MAX_LIMIT)
        if first.total <= DETAIL_CAP:
            rows = [e for e in first.data if status_ok(e)]
            matches = [e for e in rows if _detail_matches(client, e, query.keyword)]
            return _Found(matches, True, len(first.data), first.total)
        session = query.session

        def keep(entry: LogEntry) -> bool:
            return status_ok(entry) and entry.session_id == session

        return _scan_found(client, {**params, "keyword": query.keyword}, keep)
    return _scan_found(client, {**params, "keyword": query.keyword}, status_ok)


def _chunk(
    client: DifyClient, params: dict[str, Any], start: int, page_size: int
) -> tuple[list[LogEntry], int]:
    """The page at ``start`` when Dify filters everything: read the chunk of 100 holding it."""
    chunk = start // MAX_LIMIT + 1
    page = client.logs(**params, page=chunk, limit=MAX_LIMIT)
    offset = start - (chunk - 1) * MAX_LIMIT
    return _order(page.data)[offset : offset + page_size], page.total


def _fill(hits: AppHits, found: _Found, start: int, page_size: int) -> AppHits:
    matches = _order(list({e.log_id: e for e in found.entries}.values()))  # each run once, newest first
    hits.entries = matches[start : start + page_size]
    hits.total, hits.exact = len(matches), found.complete
    hits.scanned, hits.dify_total = found.scanned, found.dify_total
    return hits


def _text_search(query: Query, target: Target, page_size: int) -> AppHits:
    """Search text: Dify's keyword matches merged with the runs whose error holds the text."""
    assert query.keyword is not None
    hits = AppHits(name=target.name, console_url=target.app.console_url)
    client = target.client
    start = (query.page - 1) * page_size
    errors = _error_scan(query, client, _contains(query.keyword)) if error_statuses(query) else _Found([])
    one_status = len(query.statuses) == 1 and query.statuses[0] in STATUSES_DIFY_FILTERS
    if not errors.entries and not query.session and (one_status or not query.statuses):
        # No error holds the text and Dify filters everything: its own page and exact total.
        params = {**_base_params(query), "keyword": query.keyword}
        if one_status:
            params["status"] = query.statuses[0]
        hits.entries, hits.total = _chunk(client, params, start, page_size)
        if not errors.complete:  # more errors than were read: more runs may match
            hits.exact, hits.scanned, hits.dify_total = False, errors.scanned, errors.dify_total
        hits.found = {e.log_id: _keyword_where(e, query.keyword) for e in hits.entries}
        return hits
    keyword = _keyword_found(query, client)
    merged = _Found([])
    merged.add(errors)
    merged.add(keyword)
    _fill(hits, merged, start, page_size)
    in_error = {e.log_id for e in errors.entries}
    by_keyword = {e.log_id: _keyword_where(e, query.keyword) for e in keyword.entries}
    for entry in hits.entries:
        places = (["error"] if entry.log_id in in_error else []) + (
            [by_keyword[entry.log_id]] if entry.log_id in by_keyword else []
        )
        hits.found[entry.log_id] = ", ".join(places)
    return hits


def _error_search(
    query: Query, target: Target, page_size: int, keep: Callable[[str | None], bool]
) -> tuple[AppHits, list[LogEntry]]:
    """error:TEXT and similar:RUN_ID: runs whose error ``keep`` accepts (and every match, for counts)."""
    if _is_chatflow(target):
        found_runs, where, detailed, note = _chatflow_found(query, target, keep)
        hits = _chatflow_hits(query, target, page_size, found_runs, where, detailed, note)
        if not query.similar:
            hits.found = dict.fromkeys((e.log_id for e in hits.entries), "error")
        return hits, found_runs.entries
    hits = AppHits(name=target.name, console_url=target.app.console_url)
    found = _error_scan(query, target.client, keep) if error_statuses(query) else _Found([])
    _fill(hits, found, (query.page - 1) * page_size, page_size)
    if not query.similar:  # similar: matches shapes, not text: there is nothing to say "found in"
        hits.found = dict.fromkeys((e.log_id for e in hits.entries), "error")
    return hits, found.entries


# -- chatflows: the console's run list ---------------------------------------------------


def _is_chatflow(target: Target) -> bool:
    return target.app.mode == "advanced-chat" and hasattr(target.client, "runs")


RUN_LIST_STATUSES = ("running", "succeeded", "failed", "stopped", "partial-succeeded")  # no paused


def _chat_statuses(query: Query) -> tuple[list[str | None], set[str] | None]:
    """The run list walks a chatflow search needs: one per status when Dify filters each, else
    one of every run; and the statuses then kept on our side (None: all)."""
    wanted = error_statuses(query) if query.error or query.similar else query.statuses
    if not wanted:
        return [None], None
    if all(status in RUN_LIST_STATUSES for status in wanted):
        return list(wanted), None
    return [None], set(wanted)


def _inputs_text(value: Any) -> str:
    value = _decode(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _chat_keyword_where(run_id: str, detail: dict[str, Any], session: str | None, keyword: str) -> list[str]:
    """Where a chatflow run holds the search text: Dify's keyword rule (the first 30 characters in
    inputs, which hold the user's message as ``sys.query``, outputs or the session; or the run id),
    and the whole text in the error."""
    places = []
    if _contains(keyword)(_opt_text(detail.get("error"))):
        places.append("error")
    word = keyword[:KEYWORD_CHARS].casefold()
    if session and word in session.casefold():
        places.append("session")
    elif run_id == keyword:
        places.append("run id")
    elif any(word in _inputs_text(detail.get(key)).casefold() for key in ("inputs", "outputs")):
        places.append("inputs/outputs")
    return places


def _opt_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _chat_note(walked: run_walk.Walk, details: int | None) -> str:
    """Why a chatflow search is not exact: the detail cap (``details``: how many were read), or
    the walk's page cap."""
    if details is not None:
        return (
            f"this filter needs each chatflow run's details, so only the newest {details:,} "
            f"runs were searched (at most {CHAT_DETAIL_CAP} per search); narrow with since: "
            "to search the rest."
        )
    return (
        "a chatflow's runs can only be read newest first (Dify's run list has no time filter): "
        f"the newest {walked.read:,} were read and older ones not searched."
    )


def _session_conversations(source: Any, session: str) -> set[str] | None:
    """The conversations of end user ``session`` (exactly), found with the conversation list's
    keyword (it matches end users' sessions): one request for most users. None when they cannot be
    listed this way: the bot's role is below editor (403), or more than CONVERSATION_PAGES pages."""
    if not hasattr(source, "conversations"):
        return None
    found: set[str] = set()
    for page in range(1, CONVERSATION_PAGES + 1):
        try:
            body = source.conversations(keyword=session, page=page)
        except (DifyAuthError, DifyBadRequest, DifyNotFound) as exc:
            log.info("conversations of a session not listed (%s): reading run details instead", exc)
            return None
        for item in body.get("data") or []:
            if item.get("id") and item.get("from_end_user_session_id") == session:
                found.add(str(item["id"]))
        if not body.get("has_more") or not body.get("data"):
            return found
    return None


def _chatflow_found(
    query: Query, target: Target, keep_error: Callable[[str | None], bool] | None = None
) -> tuple[_Found, dict[str, str], bool, str | None]:
    """The chatflow runs matching ``query`` (or, with ``keep_error``, whose error it accepts):
    the run list walked down to ``since`` (status filters sent to Dify), details fetched only for
    the filters that need them (session, text, error), at most CHAT_DETAIL_CAP per search.

    Returns (matches, run id -> where the text was found, whether details were read, why the
    matches may be incomplete)."""
    source: Any = target.client
    workers = getattr(getattr(source, "console", None), "concurrency", 3)
    # A session's runs are those of its conversations (the list item has the conversation): no
    # detail per run when its conversations can be listed.
    conversations = _session_conversations(source, query.session) if query.session else None
    if conversations is not None and not conversations:
        return _Found([]), {}, False, None  # the session has no conversation: no run
    needs_detail = bool(query.keyword or query.error or query.similar or keep_error)
    detailed = needs_detail or bool(query.session and conversations is None)
    enough = CHAT_DETAIL_CAP + 1 if detailed else None
    statuses, keep_statuses = _chat_statuses(query)
    walked = run_walk.merge(
        run_walk.walk(source, status=status, since=query.since, until=query.until, enough=enough)
        for status in statuses
    )
    items = walked.items
    if conversations is not None:
        items = [
            i for i in items if not i.get("conversation_id") or str(i["conversation_id"]) in conversations
        ]
        # A run without a conversation (no message row) is checked against its detail.
        detailed = detailed or any(not i.get("conversation_id") for i in items)
    if keep_statuses is not None:
        items = [i for i in items if i.get("status") in keep_statuses]
    if query.account:
        account = query.account.casefold()
        items = [
            i
            for i in items
            if account
            in {str(v).casefold() for v in (i.get("created_by_account") or {}).values() if v is not None}
        ]
    found = _Found([], complete=walked.complete, scanned=walked.read)
    note = None if walked.complete else _chat_note(walked, None)
    where: dict[str, str] = {}
    if not detailed:
        found.entries = [LogEntry.from_run(item) for item in items]
        return found, where, False, note
    if len(items) > CHAT_DETAIL_CAP or (enough is not None and len(walked.items) >= enough):
        items, found.complete = items[:CHAT_DETAIL_CAP], False
        note = _chat_note(walked, len(items))
    found.scanned = len(items)
    read = run_walk.details(source, [str(i["id"]) for i in items], workers)
    for item in items:
        detail = read.get(str(item["id"])) or {}
        entry = LogEntry.from_run(item, detail)
        if query.session and entry.session_id != query.session:
            continue
        if keep_error is not None:
            if not keep_error(entry.error):
                continue
        elif query.error:
            if not _contains(query.error)(entry.error):
                continue
            where[entry.log_id] = "error"
        elif query.keyword:
            places = _chat_keyword_where(entry.log_id, detail, entry.session_id, query.keyword)
            if not places:
                continue
            where[entry.log_id] = ", ".join(places)
        found.entries.append(entry)
    return found, where, True, note


def _chatflow_hits(
    query: Query,
    target: Target,
    page_size: int,
    found: _Found,
    where: dict[str, str],
    detailed: bool,
    note: str | None,
) -> AppHits:
    hits = AppHits(name=target.name, console_url=target.app.console_url)
    _fill(hits, found, (query.page - 1) * page_size, page_size)
    hits.dify_total = None
    if not found.complete:
        hits.note = note or _chat_note(run_walk.Walk(read=found.scanned), None)
    if not detailed and hits.entries:
        # The list has no error and no end user: the runs shown are completed from their details.
        source: Any = target.client
        workers = getattr(getattr(source, "console", None), "concurrency", 3)
        read = run_walk.details(source, [e.log_id for e in hits.entries], workers)
        hits.entries = [
            replace(
                e,
                error=_opt_text(read[e.log_id].get("error")),
                session_id=_opt_text((read[e.log_id].get("created_by_end_user") or {}).get("session_id")),
                end_user_type=_opt_text((read[e.log_id].get("created_by_end_user") or {}).get("type")),
                created_by_role=_opt_text(read[e.log_id].get("created_by_role")),
            )
            if read.get(e.log_id)
            else e
            for e in hits.entries
        ]
    hits.found = {k: v for k, v in where.items() if any(e.log_id == k for e in hits.entries)}
    return hits


def _chatflow_search(query: Query, target: Target, page_size: int) -> AppHits:
    return _chatflow_hits(query, target, page_size, *_chatflow_found(query, target))


def _search_app(query: Query, target: Target, page_size: int) -> AppHits:
    if _is_chatflow(target):
        return _chatflow_search(query, target, page_size)
    if query.keyword:
        return _text_search(query, target, page_size)
    if query.error:
        return _error_search(query, target, page_size, _contains(query.error))[0]
    hits = AppHits(name=target.name, console_url=target.app.console_url)
    client = target.client
    params = _base_params(query)
    local_statuses = _status_filter(query, params)
    if query.session:
        params["session_id"] = query.session
    start = (query.page - 1) * page_size
    if local_statuses is None:
        # Dify filters everything: read the chunk of 100 holding this page; its total is exact.
        hits.entries, hits.total = _chunk(client, params, start, page_size)
        return hits
    statuses = local_statuses
    return _fill(hits, _scan_found(client, params, lambda e: e.status in statuses), start, page_size)


def _safely(target: Target, work: Callable[[], AppHits]) -> AppHits:
    try:
        return work()
    except DifyBadRequest as exc:
        return AppHits(name=target.name, error=f"Dify refused the query: {exc}", bad_request=True)
    except DifyError as exc:
        log.warning("search in %s failed: %s", target.name, exc)
        return AppHits(name=target.name, error=str(exc))


def _each(targets: Sequence[Target], workers: int, work: Callable[[Target], AppHits]) -> list[AppHits]:
    if len(targets) == 1:
        return [_safely(targets[0], lambda: work(targets[0]))]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        return list(pool.map(lambda t: _safely(t, lambda: work(t)), targets))


def _days(times: Sequence[int], since: int, until: int, tz: ZoneInfo) -> list[tuple[int, int]]:
    """Runs per local day from the day of ``since`` to the day of ``until`` (day start, count)."""
    first = datetime.fromtimestamp(since, tz).date()
    last = datetime.fromtimestamp(until, tz).date()
    counts: dict[date, int] = {}
    for ts in times:
        day = datetime.fromtimestamp(ts, tz).date()
        counts[day] = counts.get(day, 0) + 1
    out = []
    day = first
    while day <= last:
        out.append((int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()), counts.get(day, 0)))
        day += timedelta(days=1)
    return out


def similar_source(run_id: str, targets: Sequence[Target]) -> SimilarSource:
    """The run ``similar:`` compares with; a QueryError when no app has it or it has no error."""
    detail = find_run(Query(kind="run", run_id=run_id), targets)
    error = detail.run.get("error")
    status = str(detail.run.get("status") or "?")
    if not error or not str(error).strip():
        raise QueryError(
            f"run {run_id} in {detail.app_name} has no error ({status}), so there is nothing to compare; "
            "similar: takes a failed or stopped run"
        )
    return SimilarSource(
        run_id=run_id,
        app_name=detail.app_name,
        status=status,
        error=str(error),
        shape=normalize_error(str(error)),
    )


def search(
    query: Query,
    targets: Sequence[Target],
    *,
    now: float,
    workers: int = 8,
    tz: ZoneInfo | None = None,
) -> SearchResult:
    """One page of ``query`` in every target app (in parallel); raises QueryError for a page out of range."""
    if query.until is None:
        # Freeze the window so that later pages read the same runs.
        query = replace(query, until=int(now))
    page_size = query.limit or (PAGE_SIZE if len(targets) == 1 else MULTI_APP_PAGE_SIZE)
    source: SimilarSource | None = None
    per_day: list[tuple[int, int]] = []
    if query.similar:
        source = similar_source(query.similar, targets)
        shape = source.shape
        times: list[int] = []
        lock = threading.Lock()

        def same_shape(target: Target) -> AppHits:
            hits, everything = _error_search(query, target, page_size, lambda e: normalize_error(e) == shape)
            with lock:
                times.extend(e.created_at for e in everything)
            return hits

        apps = _each(targets, workers, same_shape)
        assert query.until is not None
        per_day = _days(
            times,
            query.since if query.since is not None else min(times, default=query.until),
            query.until,
            tz or UTC_ZONE,
        )
    else:
        apps = _each(targets, workers, lambda t: _search_app(query, t, page_size))
    result = SearchResult(query=query, page_size=page_size, apps=apps, similar_to=source, per_day=per_day)
    if query.page > result.pages and not any(a.error for a in apps):
        found = result.total
        where = "" if all(a.exact for a in apps) else " among the runs searched"
        raise QueryError(
            f"page {query.page} is out of range: {found:,} matching run{'s' if found != 1 else ''}{where} "
            f"fill{'s' if result.pages == 1 else ''} {result.pages} page{'s' if result.pages != 1 else ''}",
            usage=USAGE,
        )
    return result


# -- one run ---------------------------------------------------------------------------


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def find_run(query: Query, targets: Sequence[Target]) -> RunDetail:
    """The run ``query.run_id`` from whichever target app has it.

    The id must be a UUID (it goes into Dify's URL); no app having it is a
    :class:`QueryError` without the usage line (the query itself was right)."""
    run_id = check_run_id(query.run_id)
    problems: list[str] = []
    failed: set[str] = set()
    for target in targets:
        try:
            body = target.client.run(run_id)
        except DifyNotFound:
            continue
        except DifyError as exc:
            problems.append(f"{target.name}: {exc}")
            failed.add(target.name)
            continue
        nodes = None
        nodes_of = getattr(target.client, "nodes", None)
        if nodes_of is not None:
            try:
                nodes = nodes_of(run_id)
            except DifyError:
                nodes = None  # the run is shown without them
        return RunDetail(
            app_name=target.name,
            run=body,
            inputs=_decode(body.get("inputs")),
            outputs=_decode(body.get("outputs")),
            console_url=target.app.console_url,
            nodes=nodes,
        )
    asked = ", ".join(t.name for t in targets if t.name not in failed)
    if problems:
        told = f"no run {run_id} in {asked}; " if asked else ""
        raise DifyUnavailable(f"{told}could not look for run {run_id} in " + "; ".join(problems))
    raise RunNotFound(f"no run {run_id} in {asked}")
