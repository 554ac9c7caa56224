"""A small client for Dify's Service API (``/info``, ``/workflows/logs``, ``/workflows/run/{id}``).

It knows the contract in detail: second-precision ISO bounds sent with ``Z``,
the two shapes of 400 bodies, HTML error pages from proxies, and which
failures are worth retrying. The API key is sent, never shown.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from bot.errors import (
    DifyAuthError,
    DifyBadRequest,
    DifyError,
    DifyNotFound,
    DifyUnavailable,
)
from bot.records import AppInfo, LogEntry, LogPage

log = logging.getLogger(__name__)

MAX_LIMIT = 100
STATUSES_DIFY_FILTERS = ("succeeded", "failed", "stopped")


def iso(ts: int) -> str:
    """Epoch seconds as the ISO 8601 UTC form Dify's bounds take (``...Z``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_params(
    *,
    status: str | None,
    keyword: str | None,
    after: int | None,
    before: int | None,
    session_id: str | None,
    account: str | None,
) -> dict[str, Any]:
    """The workflow log endpoint's filters (the Service API's and the console's are the same)."""
    params: dict[str, Any] = {}
    if status:
        params["status"] = status
    if keyword:
        params["keyword"] = keyword
    if after is not None:
        params["created_at__after"] = iso(after)
    if before is not None:
        params["created_at__before"] = iso(before)
    if session_id:
        params["created_by_end_user_session_id"] = session_id
    if account:
        params["created_by_account"] = account
    return params


def log_page(body: Any, page: int, limit: int, who: str) -> LogPage:
    """A page of workflow logs from the endpoint's body; ``who`` names the answer if it is not one."""
    try:
        return LogPage(
            page=int(body.get("page", page)),
            limit=int(body.get("limit", limit)),
            total=int(body["total"]),
            has_more=bool(body.get("has_more")),
            data=[LogEntry.from_api(item) for item in body.get("data") or []],
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DifyUnavailable(f"{who} with an unexpected body") from None


class DifyClient:
    """Talks to one Dify app through its API key.

    ``http`` is shared between apps (one connection pool); ``retries`` transient
    failures (5xx, timeouts, bodies that are not JSON) are retried with
    exponential backoff starting at ``backoff`` seconds.
    """

    def __init__(
        self,
        *,
        http: httpx.Client,
        base_url: str,
        api_key: str,
        label: str,
        retries: int = 2,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._key_hint = f"…{api_key[-4:]}" if len(api_key) >= 8 else "…"
        self.label = label
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self.requests = 0  # every request made, retries included (for cost figures)
        self._count_lock = threading.Lock()
        self.last_version: str | None = None

    def __repr__(self) -> str:
        return f"DifyClient({self._base!r}, {self.label!r})"

    # -- requests -------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return self._get_once(path, params)
            except DifyUnavailable as exc:
                if attempt >= self._retries:
                    raise
                delay = self._backoff * (2**attempt)
                log.warning("Dify %s for %s: %s; retrying in %.1fs", path, self.label, exc, delay)
                attempt += 1
                self._sleep(delay)

    def _get_once(self, path: str, params: dict[str, Any] | None) -> Any:
        url = f"{self._base}{path}"
        with self._count_lock:  # requests of one app run in parallel
            self.requests += 1
        try:
            response = self._http.get(url, params=params, headers=self._headers)
        except httpx.DecodingError as exc:
            raise DifyUnavailable(
                f"Dify at {self._base} answered {path} with a body that cannot be decoded "
                f"({type(exc).__name__}: {exc}); a proxy between wflogs and Dify may be altering responses"
            )
        except httpx.TimeoutException:
            raise DifyUnavailable(f"Dify at {self._base} did not answer in time")
        except httpx.TransportError as exc:
            raise DifyUnavailable(
                f"cannot reach Dify at {self._base} ({type(exc).__name__}); check DIFY_API_URL "
                "and that the server is up"
            )
        self.last_version = response.headers.get("x-version") or self.last_version
        body = self._json(response)
        status = response.status_code
        if status < 300:
            if body is _NOT_JSON:
                raise DifyUnavailable(
                    f"Dify at {self._base} answered {path} with something that is not JSON; "
                    "is DIFY_API_URL the Service API base (ending in /v1)?"
                )
            return body
        message, code = _error_text(body)
        if status == 401:
            raise DifyAuthError(
                f"Dify rejected the API key{self._of()}: {message}. "
                "Copy the key again from the app's API Access page",
                status=status,
                code=code,
            )
        if status == 403:
            raise DifyAuthError(
                f"Dify refused access to the app: {message} "
                "(the app may be deleted, its API disabled, or the workspace archived)",
                status=status,
                code=code,
            )
        if status == 400:
            raise DifyBadRequest(message, status=status, code=code)
        if status == 404:
            if body is _NOT_JSON or not path.startswith("/workflows/run/"):
                # Only a run can be missing; any other 404 means the URL is not the Service API.
                hint = (
                    "check that DIFY_API_URL is the Service API base (API Access shows it)"
                    if self._base.endswith("/v1")
                    else "check that DIFY_API_URL ends in /v1"
                )
                raise DifyError(f"Dify at {self._base} has no {path} (HTTP 404); {hint}", status=status)
            raise DifyNotFound(message, status=status, code=code)
        if status >= 500 or body is _NOT_JSON or status == 429:
            raise DifyUnavailable(
                f"Dify at {self._base} answered HTTP {status}"
                + (f": {message}" if body is not _NOT_JSON else ""),
                status=status,
                code=code,
            )
        raise DifyError(f"Dify answered HTTP {status}: {message}", status=status, code=code)

    def _of(self) -> str:
        """`` (…key)``, or nothing when the label is the key's hint: whoever shows the error puts
        the app's label before it, so neither the app nor the key should appear twice."""
        return "" if self._key_hint in self.label else f" ({self._key_hint})"

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return _NOT_JSON

    # -- endpoints ------------------------------------------------------------

    def info(self) -> AppInfo:
        """The app's name and mode from ``/info``; Dify's version from ``X-Version``."""
        body = self._get("/info")
        if not isinstance(body, dict):
            raise DifyUnavailable(f"Dify at {self._base} answered /info with an unexpected body")
        return AppInfo(
            name=str(body.get("name") or ""),
            mode=str(body.get("mode") or ""),
            description=str(body.get("description") or ""),
            author_name=str(body.get("author_name") or ""),
            dify_version=self.last_version,
        )

    def logs(
        self,
        *,
        status: str | None = None,
        keyword: str | None = None,
        after: int | None = None,
        before: int | None = None,
        session_id: str | None = None,
        account: str | None = None,
        page: int = 1,
        limit: int = MAX_LIMIT,
    ) -> LogPage:
        """One page of ``/workflows/logs``; bounds are epoch seconds, inclusive."""
        params = log_params(
            status=status, keyword=keyword, after=after, before=before, session_id=session_id, account=account
        )
        body = self._get("/workflows/logs", {"page": page, "limit": limit, **params})
        return log_page(body, page, limit, f"Dify at {self._base} answered /workflows/logs")

    def run(self, run_id: str) -> dict[str, Any]:
        """One run in full from ``/workflows/run/{id}``; raises :class:`DifyNotFound`."""
        body = self._get(f"/workflows/run/{run_id}")
        if not isinstance(body, dict) or body.get("id") is None:
            # Before 1.13.1 an unknown id is a 200 with every field null.
            raise DifyNotFound(f"no run {run_id} in {self.label}", status=404)
        return body


class _NotJson:
    def __repr__(self) -> str:
        return "<not json>"


_NOT_JSON: Any = _NotJson()


def _error_text(body: Any) -> tuple[str, str | None]:
    """The human part of a Dify error body, in both the old and the new 400 shape."""
    if not isinstance(body, dict):
        return "no details", None
    message = str(body.get("message") or "no details")
    errors = body.get("errors")
    if isinstance(errors, dict) and errors:
        message = "; ".join(f"{k}: {v}" for k, v in errors.items())
    code = body.get("code")
    return message, str(code) if code else None
