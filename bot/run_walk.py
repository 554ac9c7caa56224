"""Reading a chatflow's production runs from the console's run list, for searches and digests.

The run list (docs/workspace.md) is newest first by start time, pages with a cursor, has no time
filter and no error or end user in its items. :func:`walk` reads it from the newest run down to
the start of a window; :func:`details` fetches run details (the error, the end user's session, the
inputs) for the few runs that need them, in parallel, the console client bounding how many
requests are in flight (``WFLOGS_CONSOLE_CONCURRENCY``).

The cursor skips the runs that share its start time: each page after the first starts from the
last run of an EARLIER second than the page's oldest, so that second is read again whole (runs
already read are recognised by id), as the poller does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.errors import DifyBadRequest, DifyNotFound

MAX_PAGES = 10  # pages of 100 run list items read per walk at most


class RunSource(Protocol):
    """What a walk needs of an app (a :class:`bot.console.ConsoleAppSource`)."""

    def runs(self, *, status: str | None, last_id: str | None = None) -> dict[str, Any]: ...

    def run(self, run_id: str) -> dict[str, Any]: ...


@dataclass
class Walk:
    """Run list items of a window, newest first, and how complete the read was."""

    items: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True  # False: stopped at the page cap (or the list changed while read)
    pages: int = 0
    read: int = 0  # items read, inside the window or not


def walk(
    source: RunSource,
    *,
    status: str | None,
    since: int | None,
    until: int | None,
    max_pages: int = MAX_PAGES,
    enough: int | None = None,
) -> Walk:
    """The runs (of ``status``, None: all) started in ``[since, until]``, newest first.

    Reads at most ``max_pages`` pages; stops as well once ``enough`` runs of the window are found
    (the walk is then incomplete). Both cases leave ``complete`` False."""
    out = Walk()
    seen: set[str] = set()
    last_id: str | None = None
    while True:
        if out.pages >= max_pages:
            out.complete = False
            return out
        try:
            page = source.runs(status=status, last_id=last_id)
        except DifyBadRequest:
            if last_id is None:
                raise
            out.complete = False  # the cursor's run changed status or was cleaned up meanwhile
            return out
        out.pages += 1
        rows = [item for item in page.get("data") or [] if item.get("id")]
        out.read += len(rows)
        for item in rows:
            at = int(item.get("created_at") or 0)
            run_id = str(item["id"])
            if run_id in seen or (until is not None and at > until) or (since is not None and at < since):
                continue
            seen.add(run_id)
            out.items.append(item)
        if enough is not None and len(out.items) >= enough:
            out.complete = False
            break
        oldest = int(rows[-1].get("created_at") or 0) if rows else 0
        if not rows or not page.get("has_more") or (since is not None and oldest < since):
            break
        earlier = [item for item in rows if int(item.get("created_at") or 0) > oldest]
        if earlier:
            last_id = str(earlier[-1]["id"])
        else:
            # A whole page in one second: the cursor skips that second's other runs.
            out.complete = False
            last_id = str(rows[-1]["id"])
    out.items.sort(key=lambda item: (-int(item.get("created_at") or 0), str(item["id"])))
    return out


def merge(walks: Iterable[Walk]) -> Walk:
    """Several walks (one per status) as one, newest first, each run once."""
    out = Walk()
    found: dict[str, dict[str, Any]] = {}
    for one in walks:
        out.complete = out.complete and one.complete
        out.pages += one.pages
        out.read += one.read
        for item in one.items:
            found.setdefault(str(item["id"]), item)
    out.items = sorted(found.values(), key=lambda item: (-int(item.get("created_at") or 0), str(item["id"])))
    return out


def details(source: RunSource, run_ids: Sequence[str], workers: int) -> dict[str, dict[str, Any]]:
    """Each run's detail (``{}`` for one that is gone), fetched in parallel."""
    if not run_ids:
        return {}

    def one(run_id: str) -> dict[str, Any]:
        try:
            return source.run(run_id)
        except DifyNotFound:
            return {}

    if len(run_ids) == 1:
        return {run_ids[0]: one(run_ids[0])}
    with ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(run_ids))), thread_name_prefix="detail"
    ) as pool:
        return dict(zip(run_ids, pool.map(one, run_ids), strict=True))
