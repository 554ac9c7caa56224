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
  that Previous/Next page through the same window.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from bot.config import AppConfig, Settings, alert_channel_for
from bot.dify import MAX_LIMIT, STATUSES_DIFY_FILTERS, DifyClient
from bot.errors import DifyBadRequest, DifyError, DifyNotFound, QueryError
from bot.query import USAGE, Query
from bot.records import AppHits, LogEntry, RunDetail, SearchResult

log = logging.getLogger(__name__)

PAGE_SIZE = 10  # runs per page with one app
MULTI_APP_PAGE_SIZE = 5  # runs per app per page with several (a Slack message has room for ~10k chars)
SCAN_PAGES = 10  # pages of 100 read per app when filtering on our side
DETAIL_CAP = 30  # a session with at most this many runs has its keyword checked against run details


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
) -> list[AppConfig]:
    """The apps a query runs against.

    ``app:NAME`` picks one (exact name, else a unique prefix); without it, the
    apps whose alert channel is ``channel``, else every app visible there.
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
    here = [a for a in apps if channel is not None and alert_channel_for(settings, a) == channel]
    return here or apps


def targets_for(
    settings: Settings,
    clients: Mapping[str, DifyClient],
    name_of: Callable[[AppConfig], str],
    *,
    channel: str | None,
    wanted: str | None,
) -> list[Target]:
    """The apps to search (see :func:`choose_apps`), with their names and clients."""
    apps = visible_apps(settings, channel)
    names = {a.id: name_of(a) for a in apps}
    chosen = choose_apps(settings, names, channel=channel, wanted=wanted)
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


def _search_app(query: Query, target: Target, page_size: int) -> AppHits:
    hits = AppHits(name=target.name, console_url=target.app.console_url)
    client = target.client
    params: dict[str, Any] = {"after": query.since, "before": query.until}
    if query.account:
        params["account"] = query.account
    local_statuses: set[str] | None = None
    if len(query.statuses) == 1 and query.statuses[0] in STATUSES_DIFY_FILTERS:
        params["status"] = query.statuses[0]
    elif query.statuses:
        local_statuses = set(query.statuses)
    local_session: str | None = None

    def status_ok(entry: LogEntry) -> bool:
        return local_statuses is None or entry.status in local_statuses

    start = (query.page - 1) * page_size
    if query.keyword and query.session:
        # Dify answers 500 to keyword + session: never send both.
        first = client.logs(**params, session_id=query.session, page=1, limit=MAX_LIMIT)
        if first.total <= DETAIL_CAP:
            rows = [e for e in first.data if status_ok(e)]
            matches = _order([e for e in rows if _detail_matches(client, e, query.keyword)])
            hits.entries, hits.total = matches[start : start + page_size], len(matches)
            hits.scanned, hits.dify_total = len(first.data), first.total
            return hits
        params["keyword"] = query.keyword
        local_session = query.session
    elif query.keyword:
        params["keyword"] = query.keyword
    elif query.session:
        params["session_id"] = query.session

    if local_statuses is None and local_session is None:
        # Dify filters everything: read the chunk of 100 holding this page; its total is exact.
        chunk = start // MAX_LIMIT + 1
        page = client.logs(**params, page=chunk, limit=MAX_LIMIT)
        offset = start - (chunk - 1) * MAX_LIMIT
        hits.entries = _order(page.data)[offset : offset + page_size]
        hits.total = page.total
        return hits

    def keep(entry: LogEntry) -> bool:
        return status_ok(entry) and (local_session is None or entry.session_id == local_session)

    matches, complete, scanned, dify_total = _scan(client, params, keep)
    matches = _order(matches)
    hits.entries = matches[start : start + page_size]
    hits.total, hits.exact, hits.scanned, hits.dify_total = len(matches), complete, scanned, dify_total
    return hits


def _search_app_safely(query: Query, target: Target, page_size: int) -> AppHits:
    try:
        return _search_app(query, target, page_size)
    except DifyBadRequest as exc:
        return AppHits(name=target.name, error=f"Dify refused the query: {exc}", bad_request=True)
    except DifyError as exc:
        log.warning("search in %s failed: %s", target.name, exc)
        return AppHits(name=target.name, error=str(exc))


def search(query: Query, targets: Sequence[Target], *, now: float, workers: int = 8) -> SearchResult:
    """One page of ``query`` in every target app (in parallel); raises QueryError for a page out of range."""
    if query.until is None:
        # Freeze the window so that later pages read the same runs.
        query = replace(query, until=int(now))
    page_size = query.limit or (PAGE_SIZE if len(targets) == 1 else MULTI_APP_PAGE_SIZE)
    if len(targets) == 1:
        apps = [_search_app_safely(query, targets[0], page_size)]
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
            apps = list(pool.map(lambda t: _search_app_safely(query, t, page_size), targets))
    result = SearchResult(query=query, page_size=page_size, apps=apps)
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
    """The run ``query.run_id`` from whichever target app has it."""
    assert query.run_id is not None
    problems = []
    for target in targets:
        try:
            body = target.client.run(query.run_id)
        except DifyNotFound:
            continue
        except DifyError as exc:
            problems.append(f"{target.name}: {exc}")
            continue
        return RunDetail(
            app_name=target.name,
            run=body,
            inputs=_decode(body.get("inputs")),
            outputs=_decode(body.get("outputs")),
            console_url=target.app.console_url,
        )
    names = ", ".join(t.name for t in targets)
    message = f"no run {query.run_id} in {names}"
    if problems:
        message += "; could not ask " + "; ".join(problems)
    raise QueryError(message, usage=USAGE)
