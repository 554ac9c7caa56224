"""Plain records shared by producers (Dify client, poller, search, digest) and the pure formatters.

No I/O and no behaviour beyond small derived properties: a module that imports
only this one (and ``blocks`` / ``text``) shows by its imports that it is pure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from bot.query import Query

DAY = 86400


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _opt_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class AppInfo:
    """What ``/info`` says about an app, plus Dify's version from ``X-Version``."""

    name: str
    mode: str
    description: str = ""
    author_name: str = ""
    dify_version: str | None = None


@dataclass(frozen=True)
class LogEntry:
    """One row of ``/workflows/logs``, flattened, with every field optional but the ids."""

    log_id: str
    created_at: int
    run_id: str | None = None
    status: str | None = None
    error: str | None = None
    elapsed_time: float | None = None
    total_tokens: int | None = None
    total_steps: int | None = None
    exceptions_count: int | None = None
    run_created_at: int | None = None
    finished_at: int | None = None
    version: str | None = None
    triggered_from: str | None = None
    created_from: str | None = None
    created_by_role: str | None = None
    account_email: str | None = None
    account_name: str | None = None
    session_id: str | None = None
    end_user_type: str | None = None
    # Chatflow runs (workspace mode): the conversation; and for a new incident, the failed node.
    conversation_id: str | None = None
    node_title: str | None = None
    node_type: str | None = None
    node_error: str | None = None

    @classmethod
    def from_run(cls, item: dict[str, Any], detail: dict[str, Any] | None = None) -> LogEntry:
        """A chatflow run from the console's run list (and its detail, for the error and user)."""
        detail = detail or {}
        end_user = detail.get("created_by_end_user") or {}
        account = detail.get("created_by_account") or item.get("created_by_account") or {}
        return cls(
            log_id=str(item["id"]),
            created_at=int(item.get("created_at") or 0),
            run_id=str(item["id"]),
            status=_opt_str(item.get("status")),
            error=_opt_str(detail.get("error")),
            elapsed_time=_opt_float(item.get("elapsed_time")),
            total_tokens=_opt_int(item.get("total_tokens")),
            total_steps=_opt_int(item.get("total_steps")),
            exceptions_count=_opt_int(item.get("exceptions_count")),
            run_created_at=_opt_int(item.get("created_at")),
            finished_at=_opt_int(item.get("finished_at")),
            version=_opt_str(item.get("version")),
            triggered_from="app-run",
            created_by_role=_opt_str(detail.get("created_by_role")),
            account_email=_opt_str(account.get("email")),
            account_name=_opt_str(account.get("name")),
            session_id=_opt_str(end_user.get("session_id")),
            end_user_type=_opt_str(end_user.get("type")),
            conversation_id=_opt_str(item.get("conversation_id")),
        )

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> LogEntry:
        """Parse one log item as Dify returns it."""
        run = item.get("workflow_run") or {}
        account = item.get("created_by_account") or {}
        end_user = item.get("created_by_end_user") or {}
        return cls(
            log_id=str(item["id"]),
            created_at=int(item.get("created_at") or 0),
            run_id=_opt_str(run.get("id")),
            status=_opt_str(run.get("status")),
            error=_opt_str(run.get("error")),
            elapsed_time=_opt_float(run.get("elapsed_time")),
            total_tokens=_opt_int(run.get("total_tokens")),
            total_steps=_opt_int(run.get("total_steps")),
            exceptions_count=_opt_int(run.get("exceptions_count")),
            run_created_at=_opt_int(run.get("created_at")),
            finished_at=_opt_int(run.get("finished_at")),
            version=_opt_str(run.get("version")),
            triggered_from=_opt_str(run.get("triggered_from")),
            created_from=_opt_str(item.get("created_from")),
            created_by_role=_opt_str(item.get("created_by_role")),
            account_email=_opt_str(account.get("email")),
            account_name=_opt_str(account.get("name")),
            session_id=_opt_str(end_user.get("session_id")),
            end_user_type=_opt_str(end_user.get("type")),
        )

    @property
    def ended_at(self) -> int:
        """When the run ended, or the log's time when Dify does not say."""
        return self.finished_at or self.run_created_at or self.created_at

    @property
    def who(self) -> str | None:
        """The end user's session id, else the console account's e-mail."""
        return self.session_id or self.account_email or self.account_name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for storage)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogEntry:
        """The inverse of :meth:`to_dict`, ignoring unknown keys."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class LogPage:
    """One page of ``/workflows/logs``."""

    page: int
    limit: int
    total: int
    has_more: bool
    data: list[LogEntry]


@dataclass(frozen=True)
class Alert:
    """One run to tell Slack about, with what the formatter needs of its app."""

    id: int
    app_name: str
    status: str
    entry: LogEntry
    group_key: str
    console_url: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alert:
        """Build from an outbox row (see storage)."""
        return cls(
            id=int(row["id"]),
            app_name=row.get("app_name") or "Dify app",
            status=row.get("status") or "failed",
            entry=LogEntry.from_dict(row["entry"]),
            group_key=row.get("group_key") or "",
            console_url=row.get("console_url") or None,
        )


@dataclass
class AppHits:
    """One app's share of a search result."""

    name: str
    entries: list[LogEntry] = field(default_factory=list)
    total: int = 0  # matching runs
    exact: bool = True  # False: the scan stopped at its cap, more may match
    scanned: int = 0  # rows read when filtering on our side (0: Dify filtered)
    dify_total: int | None = None  # rows Dify had for the part of the query it could take
    error: str | None = None
    bad_request: bool = False  # Dify refused a value the user typed (e.g. an unknown account)
    console_url: str | None = None
    found: dict[str, str] = field(default_factory=dict)  # log id -> where the text was found
    note: str | None = None  # why the search is not exact, when the generic note does not fit

    def pages(self, page_size: int) -> int:
        """How many pages this app's matches fill."""
        return math.ceil(self.total / page_size) if self.total else 0


@dataclass
class SearchResult:
    """Everything the formatter shows for one page of a search."""

    query: Query
    page_size: int
    apps: list[AppHits]
    similar_to: SimilarSource | None = None  # similar:RUN_ID: the run compared with
    per_day: list[tuple[int, int]] = field(default_factory=list)  # (day start, matching runs), oldest first

    @property
    def pages(self) -> int:
        """The number of pages (at least 1): the most any app needs."""
        return max([1, *(a.pages(self.page_size) for a in self.apps)])

    @property
    def total(self) -> int:
        """Matching runs across apps (a lower bound where a scan was capped)."""
        return sum(a.total for a in self.apps)


@dataclass(frozen=True)
class SimilarSource:
    """The run a ``similar:`` search compares with: where it is, its error and that error's shape."""

    run_id: str
    app_name: str
    status: str
    error: str
    shape: str


@dataclass(frozen=True)
class RunDetail:
    """One run in full, with ``inputs`` and ``outputs`` decoded where they are JSON."""

    app_name: str
    run: dict[str, Any]
    inputs: Any
    outputs: Any
    console_url: str | None = None
    # Workspace mode: the run's node executions in order (None: not known for this app).
    nodes: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Window:
    """A time range in whole epoch seconds, both ends inclusive (as Dify compares)."""

    start: int
    end: int

    @classmethod
    def ending_at(cls, instant: int, days_back: int = 0) -> Window:
        """The 24 hours before ``instant`` (exclusive), ``days_back`` days earlier."""
        end = instant - days_back * DAY
        return cls(end - DAY, end - 1)

    def slices(self, count: int) -> list[Window]:
        """``count`` consecutive non-overlapping windows covering this one."""
        length = self.end - self.start + 1
        edges = [self.start + length * i // count for i in range(count + 1)]
        return [Window(edges[i], edges[i + 1] - 1) for i in range(count) if edges[i + 1] > edges[i]]


@dataclass(frozen=True)
class Counts:
    """Runs of one window by status, from Dify's ``total``."""

    total: int
    succeeded: int
    failed: int
    stopped: int

    @property
    def other(self) -> int:
        """Runs Dify cannot filter: partial-succeeded, running, paused."""
        return max(self.total - self.succeeded - self.failed - self.stopped, 0)

    @property
    def failure_rate(self) -> Decimal | None:
        """Failed runs per 100 runs, one decimal (half up), or None without runs."""
        if not self.total:
            return None
        return (Decimal(self.failed * 100) / Decimal(self.total)).quantize(Decimal("0.1"), ROUND_HALF_UP)


@dataclass(frozen=True)
class ErrorLine:
    """One error shape among the window's failures."""

    shape: str
    count: int
    example: str
    newest_run_id: str | None
    newest_at: int
    status: str
    new: bool = False
    approx: bool = False


@dataclass(frozen=True)
class RunLine:
    """One run worth naming (the slowest)."""

    run_id: str | None
    status: str
    elapsed: float
    who: str | None
    created_at: int


@dataclass
class AppDigest:
    """Everything one app's digest says; the formatter turns it into a message."""

    app_id: str
    app_name: str
    scheduled_at: int
    window: Window
    previous: Window
    tz: str
    posted_at: int
    kind: str = "scheduled"
    late: bool = False
    error: str | None = None
    current: Counts | None = None
    before: Counts | None = None
    hourly: list[int] = field(default_factory=list)
    hourly_exact: bool = True
    errors: list[ErrorLine] = field(default_factory=list)
    error_shapes: int = 0
    failures_read: int = 0
    failures_sampled: bool = False
    sessions: list[tuple[str, int]] = field(default_factory=list)
    slowest: list[RunLine] = field(default_factory=list)
    runs_read: int = 0
    runs_sampled: bool = False
    tokens: int | None = None
    partial: int | None = None
    running: int | None = None
    usual_runs: int | None = None
    first_digest: bool = True
    shapes: list[str] = field(default_factory=list)
    # Incidents in the window: opened, resolved, median_resolve (seconds or None), open (at its end).
    incidents: dict[str, Any] | None = None

    @property
    def silent(self) -> bool:
        """No runs at all although the app usually has some."""
        return self.current is not None and self.current.total == 0 and bool(self.usual_runs)
