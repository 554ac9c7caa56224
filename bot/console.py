"""A client for Dify's console API (the back end of its web UI), one credential for a workspace.

Two ways in (shared contract: docs/workspace.md):

- the admin key (``DIFY_ADMIN_API_KEY`` + ``DIFY_WORKSPACE_ID``): ``Authorization: Bearer`` plus
  ``X-WORKSPACE-ID``, no login, no lockout; works from Dify 1.11.0;
- an account (``DIFY_CONSOLE_EMAIL`` + ``DIFY_CONSOLE_PASSWORD``): ``system-features`` is read
  first, then ONE login; the session's cookies and its CSRF header go with every request and it
  is refreshed a few minutes before the access token expires. A refresh token dies once its
  successor is used, so one refresh runs at a time and the newest tokens are kept. A rejected
  password is never tried again (Dify locks the e-mail out for a day after six failures, the
  human's browser included): the client says so once and waits for a restart.

Version differences live in :func:`capabilities`, nowhere else. Secrets (password, admin key,
tokens, cookies) never appear in a message or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bot.errors import DifyAuthError, DifyBadRequest, DifyError, DifyNotFound, DifyUnavailable
from bot.records import LogPage

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 3
# Refresh this many seconds before the access token expires.
REFRESH_EARLY = 300
MAX_LIMIT = 100
CONSOLE_PREFIX = "/console/api"


# -- versions ------------------------------------------------------------------------------


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``1.13.3`` as a tuple; ``2.0.0-beta*`` (older code than 1.9.0) as ``(1, 8, 99)``."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("2.0.0-beta"):
        return (1, 8, 99)
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        return None
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


@dataclass(frozen=True)
class Capabilities:
    """What wflogs can do with one Dify version's console API (the contract's matrix)."""

    version: str | None
    login: bool  # cookie + CSRF session login (1.9.2+)
    admin_key: bool  # the admin key passes the CSRF check (1.11.0+)
    base64_password: bool  # the login takes the password base64-encoded (1.11.2+)
    run_lists: bool  # production (app-run) run lists with status filters (1.9.2+)
    current_by_post: bool  # POST /workspaces/current (1.11.0+); GET before
    tag_ids_indexed: bool  # tag_ids[n]= form (1.14.0+)
    unsupported: str | None = None  # one line: what does not work here, and the fallback


def capabilities(version: str | None) -> Capabilities:
    """The contract's version matrix, in one place."""
    v = parse_version(version)
    if v is None:
        # Unknown: assume the reference version and let requests tell.
        v = (1, 13, 3)
    caps = Capabilities(
        version=version,
        login=v >= (1, 9, 2),
        admin_key=v >= (1, 11, 0),
        base64_password=v >= (1, 11, 2),
        run_lists=v >= (1, 9, 2),
        current_by_post=v >= (1, 11, 0),
        tag_ids_indexed=v >= (1, 14, 0),
    )
    if not caps.login:
        shown = version or "unknown"
        return Capabilities(
            **{
                **caps.__dict__,
                "unsupported": (
                    f"Dify {shown} is older than 1.9.2: its console API (JSON tokens, debugger-only "
                    "run lists) cannot be watched; watch its workflow apps with per-app API keys "
                    "(DIFY_API_KEY or [[apps]] in wflogs.toml) instead"
                ),
            }
        )
    return caps


# -- errors ----------------------------------------------------------------------------------


class ConsoleLoginError(DifyAuthError):
    """The account cannot log in (rejected password, locked e-mail, password login off).

    ``final`` means wflogs will not try again until it is restarted with new settings."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, final: bool = True
    ):
        super().__init__(message, status=status, code=code)
        self.final = final


def console_base(url: str) -> str:
    """``https://dify.example.com`` or ``.../console/api`` (or a Service API ``.../v1``) -> the
    console API base ending in ``/console/api``."""
    url = url.strip().rstrip("/")
    if url.endswith(CONSOLE_PREFIX):
        return url
    parsed = httpx.URL(url)
    origin = f"{parsed.scheme}://{parsed.netloc.decode()}"
    return origin + CONSOLE_PREFIX


def _jwt_exp(token: str) -> int | None:
    """The ``exp`` of a JWT, read without verifying it (only to refresh in time)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return int(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


@dataclass
class _Session:
    """The three cookies of a console session, by the names the server gave them."""

    cookies: dict[str, str]
    generation: int

    def _by_suffix(self, suffix: str) -> tuple[str, str] | None:
        for name, value in self.cookies.items():
            if name == suffix or name.endswith("-" + suffix):
                return name, value
        return None

    @property
    def access(self) -> tuple[str, str] | None:
        return self._by_suffix("access_token")

    @property
    def csrf(self) -> tuple[str, str] | None:
        return self._by_suffix("csrf_token")

    @property
    def refresh(self) -> tuple[str, str] | None:
        return self._by_suffix("refresh_token")


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        first = header.split(";", 1)[0]
        name, _, value = first.partition("=")
        name = name.strip()
        if name.endswith(("access_token", "refresh_token", "csrf_token")) and value:
            found[name] = value.strip()
    return found


class RejectionMemory:
    """Remembers, across restarts, that Dify rejected one e-mail and password (only a hash of them
    is kept), so the same password is never tried twice; a new password is tried once."""

    def __init__(self, load: Callable[[str], str | None], save: Callable[[str, str], None]) -> None:
        self._load = load
        self._save = save

    @staticmethod
    def key(email: str, password: str) -> str:
        # A slow, salted hash: the database never holds anything that gives the password back cheaply.
        salt = f"wflogs-console-login:{email.lower()}".encode()
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 200_000).hex()[:24]
        return f"console-login:{digest}"

    def rejected(self, email: str, password: str) -> str | None:
        return self._load(self.key(email, password))

    def remember(self, email: str, password: str, message: str) -> None:
        self._save(self.key(email, password), message)


class ConsoleClient:
    """Talks to one workspace through Dify's console API; thread-safe.

    At most ``concurrency`` requests are in flight at once (the console shares its worker
    with the humans' UI). ``notify`` is called once with a line for the channel when the
    account cannot log in."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        url: str,
        admin_key: str | None = None,
        workspace_id: str | None = None,
        email: str | None = None,
        password: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        now: Callable[[], float] = time.time,
        notify: Callable[[str], None] | None = None,
        rejections: RejectionMemory | None = None,
    ) -> None:
        if not admin_key and not (email and password):
            raise ValueError("a console client needs the admin key or an e-mail and password")
        self._http = http
        self.base = console_base(url)
        self._admin_key = admin_key
        self._workspace_id = workspace_id
        self._email = email
        self._password = password
        self._now = now
        self._notify = notify
        self._rejections = rejections
        self.concurrency = max(1, concurrency)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._session: _Session | None = None
        self._session_lock = threading.Lock()  # one login or refresh at a time
        self._generation = 0
        self._stopped: ConsoleLoginError | None = None
        self._count_lock = threading.Lock()
        self.requests = 0
        self.logins = 0
        self.refreshes = 0
        self.version: str | None = None
        self._caps: Capabilities | None = None
        self.label = "workspace"

    def __repr__(self) -> str:
        return f"ConsoleClient({self.base!r}, {self.way_in!r})"

    @property
    def way_in(self) -> str:
        if self._admin_key:
            return "admin key"
        return f"account {self._email}"

    # -- version -----------------------------------------------------------------------------

    def caps(self) -> Capabilities:
        """The version's capabilities, asking ``/ping`` (no auth) once."""
        if self._caps is None:
            response = self._send("GET", "/ping", auth=False)
            self.version = response.headers.get("x-version") or self.version
            self._caps = capabilities(self.version)
            if self._caps.unsupported is None and self._admin_key and not self._caps.admin_key:
                self._caps = Capabilities(
                    **{
                        **self._caps.__dict__,
                        "unsupported": (
                            f"Dify {self.version} rejects the admin key on console reads (its CSRF check; "
                            "fixed in 1.11.0): use DIFY_CONSOLE_EMAIL and DIFY_CONSOLE_PASSWORD instead"
                        ),
                    }
                )
        return self._caps

    # -- auth --------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self._admin_key:
            headers = {"Authorization": f"Bearer {self._admin_key}"}
            if self._workspace_id:
                headers["X-WORKSPACE-ID"] = self._workspace_id
            return headers
        session = self._ensure_session()
        access, csrf = session.access, session.csrf
        cookie = "; ".join(f"{n}={v}" for n, v in (access, csrf) if n)  # type: ignore[misc]
        headers = {"Cookie": cookie}
        if csrf:
            headers["X-CSRF-Token"] = csrf[1]
        return headers

    def _ensure_session(self) -> _Session:
        if self._stopped is not None:
            raise self._stopped
        session = self._session
        if session is not None and not self._expiring(session):
            return session
        seen = session.generation if session else None
        with self._session_lock:
            if self._stopped is not None:
                raise self._stopped
            current = self._session
            if current is not None and current.generation != seen and not self._expiring(current):
                return current  # another thread renewed it meanwhile: keep the newest
            if current is not None and current.refresh:
                try:
                    return self._refresh(current)
                except DifyAuthError as exc:
                    log.warning("the console session could not be refreshed (%s); logging in again", exc)
            return self._login()

    def _expiring(self, session: _Session) -> bool:
        access = session.access
        exp = _jwt_exp(access[1]) if access else None
        return exp is not None and exp - self._now() < REFRESH_EARLY

    def _stop(self, error: ConsoleLoginError) -> ConsoleLoginError:
        self._stopped = error
        log.error("%s", error)
        if self._notify is not None:
            try:
                self._notify(str(error))
            except Exception:
                log.exception("cannot tell the channel that the console login stopped")
        return error

    def _login(self) -> _Session:
        caps = self.caps()
        if caps.unsupported:
            raise self._stop(ConsoleLoginError(caps.unsupported))
        features = self._send("GET", "/system-features", auth=False)
        body = _json_or_none(features)
        if isinstance(body, dict) and body.get("enable_email_password_login") is False:
            raise self._stop(
                ConsoleLoginError(
                    "Dify has password login turned off (or SSO enforced): wflogs cannot log in with "
                    "DIFY_CONSOLE_EMAIL; use DIFY_ADMIN_API_KEY and DIFY_WORKSPACE_ID (self-hosted) "
                    "or per-app API keys"
                )
            )
        if self._rejections is not None:
            known = self._rejections.rejected(self._email or "", self._password or "")
            if known:
                # Rejected before (a cron'd `wflogs poll --once`, a restart with the same password):
                # not tried again until the password changes.
                raise self._stop(ConsoleLoginError(known))
        password = self._password or ""
        if caps.base64_password:
            password = base64.b64encode(password.encode()).decode()
        self.logins += 1
        response = self._send(
            "POST",
            "/login",
            auth=False,
            json={"email": self._email, "password": password, "remember_me": True},
        )
        status = response.status_code
        body = _json_or_none(response)
        code = body.get("code") if isinstance(body, dict) else None
        if status == 429:
            raise self._stop(
                ConsoleLoginError(
                    f"Dify has locked out {self._email} after too many failed logins (for up to 24 hours "
                    "after the last failure); wflogs will not try again: wait, then restart wflogs",
                    status=status,
                    code=code,
                )
            )
        if status == 401 and code == "not_setup":
            raise self._stop(
                ConsoleLoginError("Dify is not set up yet: finish its set-up, then restart wflogs")
            )
        if status == 401:
            error = ConsoleLoginError(
                f"Dify rejected the password of {self._email}; wflogs will not try it again (six "
                "failures lock the e-mail out for a day): fix DIFY_CONSOLE_PASSWORD and restart wflogs",
                status=status,
                code=code,
            )
            if self._rejections is not None:
                self._rejections.remember(self._email or "", self._password or "", str(error))
            raise self._stop(error)
        if status == 403:
            raise self._stop(
                ConsoleLoginError(
                    "Dify refuses password logins (403): use DIFY_ADMIN_API_KEY and DIFY_WORKSPACE_ID",
                    status=status,
                    code=code,
                )
            )
        if status == 400:
            raise self._stop(
                ConsoleLoginError(
                    f"Dify refused the login of {self._email} (HTTP 400, {code or 'bad request'}); "
                    "check DIFY_CONSOLE_EMAIL",
                    status=status,
                    code=code,
                )
            )
        if status >= 300:
            raise DifyUnavailable(f"Dify at {self.base} answered the login with HTTP {status}", status=status)
        if isinstance(body, dict) and body.get("result") == "fail":
            raise self._stop(
                ConsoleLoginError(
                    f"{self._email} belongs to no Dify workspace; add it to one and restart wflogs"
                )
            )
        cookies = _set_cookies(response)
        if not any(n.endswith("access_token") for n in cookies):
            raise self._stop(
                ConsoleLoginError(
                    f"Dify {self.version or ''} answered the login without session cookies; this "
                    "version's console login is not supported: use per-app API keys"
                )
            )
        self._generation += 1
        self._session = _Session(cookies, self._generation)
        log.info("logged in to the Dify console as %s", self._email)
        return self._session

    def _refresh(self, session: _Session) -> _Session:
        refresh = session.refresh
        assert refresh is not None
        self.refreshes += 1
        response = self._send("POST", "/refresh-token", auth=False, cookies={refresh[0]: refresh[1]})
        if response.status_code >= 300:
            raise DifyAuthError(f"refresh answered HTTP {response.status_code}", status=response.status_code)
        cookies = _set_cookies(response)
        if not any(n.endswith("access_token") for n in cookies):
            raise DifyAuthError("refresh answered without new cookies")
        merged = {**session.cookies, **cookies}
        self._generation += 1
        self._session = _Session(merged, self._generation)
        log.info("the Dify console session was renewed")
        return self._session

    # -- requests ----------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        params: dict[str, Any] | None = None,
        json: Any = None,
        cookies: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = f"{self.base}{path}"
        headers = {"Accept": "application/json"}
        if cookies:
            headers["Cookie"] = "; ".join(f"{n}={v}" for n, v in cookies.items())
        if auth:
            headers.update(self._auth_headers())
        with self._count_lock:
            self.requests += 1
        with self._slots:
            try:
                response = self._http.request(method, url, params=params, json=json, headers=headers)
            except httpx.TimeoutException:
                raise DifyUnavailable(f"the Dify console at {self.base} did not answer in time")
            except httpx.TransportError as exc:
                raise DifyUnavailable(
                    f"cannot reach the Dify console at {self.base} ({type(exc).__name__}); "
                    "check DIFY_CONSOLE_URL"
                )
        self.version = response.headers.get("x-version") or self.version
        return response

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """A console GET as JSON; a session whose token expired early is renewed once."""
        if self._stopped is not None:
            raise self._stopped
        if self.caps().unsupported:
            raise self._stop(ConsoleLoginError(self.caps().unsupported or ""))
        seen = self._session.generation if self._session else None
        response = self._send("GET", path, params=params)
        if response.status_code == 401 and not self._admin_key:
            body = _json_or_none(response)
            message = str(body.get("message") if isinstance(body, dict) else "")
            if "expired" in message.lower() or "csrf" in message.lower():
                # Renewed once, by one thread: a session already renewed by another is kept.
                with self._session_lock:
                    current = self._session
                    if current is not None and current.generation == seen and current.refresh:
                        try:
                            self._refresh(current)
                        except DifyAuthError:
                            self._session = None
                response = self._send("GET", path, params=params)
        return self._check(path, response)

    def post(self, path: str, body: Any = None) -> Any:
        response = self._send("POST", path, json=body)
        return self._check(path, response)

    def _check(self, path: str, response: httpx.Response) -> Any:
        body = _json_or_none(response)
        status = response.status_code
        if status < 300:
            if body is None:
                raise DifyUnavailable(f"the Dify console answered {path} with something that is not JSON")
            return body
        message = str(body.get("message") or "no details") if isinstance(body, dict) else "no details"
        code = str(body.get("code")) if isinstance(body, dict) and body.get("code") else None
        if status == 401:
            raise DifyAuthError(
                f"the Dify console rejected wflogs ({self.way_in}): {message}", status=status, code=code
            )
        if status == 403:
            raise DifyAuthError(
                f"the Dify console refused {path} to wflogs ({self.way_in}): its role lacks the permission",
                status=status,
                code=code,
            )
        if status == 400:
            raise DifyBadRequest(message, status=status, code=code)
        if status == 404:
            raise DifyNotFound(message, status=status, code=code)
        raise DifyUnavailable(
            f"the Dify console answered {path} with HTTP {status}", status=status, code=code
        )

    # -- endpoints ---------------------------------------------------------------------------

    def role(self) -> str | None:
        """The workspace role wflogs acts with (the admin key acts as the owner)."""
        caps = self.caps()
        if caps.current_by_post:
            body = self.post("/workspaces/current")
        else:
            body = self.get("/workspaces/current")
        return str(body.get("role") or "") or None if isinstance(body, dict) else None

    def apps(self) -> list[dict[str, Any]]:
        """Every app of the workspace (offset paging, ties deduplicated by id)."""
        found: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            body = self.get("/apps", {"page": page, "limit": MAX_LIMIT})
            for item in body.get("data") or []:
                if not isinstance(item, dict) or not item.get("id"):
                    # Not an app as the contract has it: leave it out rather than watch nothing.
                    log.warning("the Dify console listed an app without an id; left out")
                    continue
                found.setdefault(str(item["id"]), item)
            if not body.get("has_more") or page >= 99999:
                break
            page += 1
        return list(found.values())

    def workflow_logs(self, app_id: str, params: dict[str, Any]) -> Any:
        return self.get(f"/apps/{app_id}/workflow-app-logs", params)

    def runs(
        self,
        app_id: str,
        *,
        status: str | None,
        last_id: str | None = None,
        limit: int = MAX_LIMIT,
        chat: bool = True,
    ) -> dict[str, Any]:
        """A page of production runs (``triggered_from=app-run``), newest first."""
        params: dict[str, Any] = {"triggered_from": "app-run", "limit": limit}
        if status:
            params["status"] = status
        if last_id:
            params["last_id"] = last_id
        path = f"/apps/{app_id}/advanced-chat/workflow-runs" if chat else f"/apps/{app_id}/workflow-runs"
        body = self.get(path, params)
        return body if isinstance(body, dict) else {"data": [], "has_more": False}

    def run_counts(self, app_id: str, *, seconds: int | None, chat: bool = True) -> dict[str, int]:
        """Production runs by status started within the last ``seconds`` of the server's clock
        (None: ever), one request: ``{"total", "running", "succeeded", "failed", "stopped",
        "partial_succeeded"}``."""
        params: dict[str, Any] = {"triggered_from": "app-run"}
        if seconds is not None:
            params["time_range"] = f"{max(int(seconds), 0)}s"
        prefix = f"/apps/{app_id}/advanced-chat" if chat else f"/apps/{app_id}"
        body = self.get(f"{prefix}/workflow-runs/count", params)
        if not isinstance(body, dict):
            raise DifyUnavailable("the Dify console answered workflow-runs/count with an unexpected body")
        out: dict[str, int] = {}
        for key, value in body.items():
            try:
                out[str(key).replace("-", "_")] = int(value or 0)
            except (TypeError, ValueError):
                continue
        return out

    def conversations(self, app_id: str, *, keyword: str | None, page: int = 1) -> dict[str, Any]:
        """A page of a chat app's conversations, newest updated first (editor role and up; 403
        below). ``keyword`` matches messages, answers, names and the end user's session."""
        params: dict[str, Any] = {"page": page, "limit": MAX_LIMIT}
        if keyword:
            params["keyword"] = keyword
        body = self.get(f"/apps/{app_id}/chat-conversations", params)
        return body if isinstance(body, dict) else {"data": [], "has_more": False}

    def run_detail(self, app_id: str, run_id: str) -> dict[str, Any]:
        body = self.get(f"/apps/{app_id}/workflow-runs/{run_id}")
        if not isinstance(body, dict) or body.get("id") is None:
            raise DifyNotFound(f"no run {run_id}", status=404)
        return body

    def node_executions(self, app_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.get(f"/apps/{app_id}/workflow-runs/{run_id}/node-executions")
        return list(body.get("data") or []) if isinstance(body, dict) else []


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None


def failed_node(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The node that failed a run: the last ``failed`` execution (an ``exception`` was handled)."""
    for node in reversed(nodes):
        if node.get("status") == "failed":
            return node
    return None


class ConsoleAppSource:
    """One workflow app read through the console's log endpoint: the poller's ``DifyClient``
    interface (``logs``, ``info``, ``run``, ``requests``), with no ``app-`` key."""

    def __init__(self, console: ConsoleClient, app_id: str, name: str, mode: str = "workflow") -> None:
        self.console = console
        self.app_id = app_id
        self.name = name
        self.mode = mode
        self.label = name
        self.requests = 0
        self._lock = threading.Lock()

    @property
    def last_version(self) -> str | None:
        return self.console.version

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def info(self) -> Any:
        from bot.records import AppInfo

        return AppInfo(
            name=self.name, mode=self.mode, description="", author_name="", dify_version=self.console.version
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
        from bot.dify import log_page, log_params

        if self.mode != "workflow":
            # A chatflow writes no log rows: its runs are read from the run list (the poller,
            # bot/run_walk.py for searches and digests).
            return LogPage(page=page, limit=limit, total=0, has_more=False, data=[])
        params = log_params(
            status=status, keyword=keyword, after=after, before=before, session_id=session_id, account=account
        )
        self._count()
        body = self.console.workflow_logs(self.app_id, {"page": page, "limit": limit, **params})
        return log_page(body, page, limit, "the Dify console answered workflow-app-logs")

    def run(self, run_id: str) -> dict[str, Any]:
        self._count()
        body = self.console.run_detail(self.app_id, run_id)
        if isinstance(body.get("inputs"), dict):
            body = {**body, "inputs": json.dumps(body["inputs"])}
        return body

    def runs(self, *, status: str | None, last_id: str | None = None) -> dict[str, Any]:
        """A page of the chatflow's production runs (newest first, cursor paging)."""
        self._count()
        return self.console.runs(
            self.app_id, status=status, last_id=last_id, chat=self.mode == "advanced-chat"
        )

    def counts(self, seconds: int | None) -> dict[str, int]:
        """Runs by status started within the last ``seconds`` (relative to Dify's clock)."""
        self._count()
        return self.console.run_counts(self.app_id, seconds=seconds, chat=self.mode == "advanced-chat")

    def conversations(self, *, keyword: str | None, page: int = 1) -> dict[str, Any]:
        """A page of the chatflow's conversations (see :meth:`ConsoleClient.conversations`)."""
        self._count()
        return self.console.conversations(self.app_id, keyword=keyword, page=page)

    def nodes(self, run_id: str) -> list[dict[str, Any]]:
        self._count()
        return self.console.node_executions(self.app_id, run_id)


__all__ = [
    "Capabilities",
    "ConsoleAppSource",
    "ConsoleClient",
    "ConsoleLoginError",
    "DifyError",
    "capabilities",
    "console_base",
    "failed_node",
    "parse_version",
]
