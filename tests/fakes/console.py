"""A Dify console API fake that follows docs/workspace.md's contract (shared/dify-console-api.md).

Play it through ``httpx.MockTransport(fake.handler)``. It wraps a :class:`FakeDify` (whose apps
and runs it serves) and adds: ``/ping``, ``system-features``, cookie + CSRF login (password
base64 from 1.11.2), single-use refresh tokens, the admin key with ``X-WORKSPACE-ID`` (refused by
the CSRF check before 1.11.0), the 6-failure lockout (429), roles (403), ``/apps`` with offset
paging, ``workflow-app-logs`` (workflow apps only), production run lists with the cursor that
skips ties and breaks when its run no longer matches, run counts over a ``time_range`` before
the fake's clock, run detail (unknown: 200 nulls, 404 in
1.14.1), node executions. ``X-Version`` on every response.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fakes.dify import FakeApp, FakeDify, FakeRun, _version_tuple

FORBIDDEN = (
    "You don't have the permission to access the requested resource. It is either read-protected "
    "or not readable by the server."
)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _jwt(payload: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(payload)}.{secrets.token_hex(8)}"


def _jwt_payload(token: str) -> dict[str, Any] | None:
    try:
        part = token.split(".")[1]
        part += "=" * (-len(part) % 4)
        value = json.loads(base64.urlsafe_b64decode(part))
        return value if isinstance(value, dict) else None
    except (IndexError, ValueError):
        return None


@dataclass
class Account:
    email: str
    password: str
    role: str = "editor"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Node:
    node_id: str
    node_type: str
    title: str
    status: str
    error: str | None = None
    elapsed_time: float = 0.1


class FakeConsole:
    """The console's state (accounts, sessions) over a :class:`FakeDify`'s apps and runs."""

    def __init__(
        self,
        dify: FakeDify | None = None,
        *,
        version: str | None = None,
        admin_key: str | None = "wflogs-admin-key",
        workspace_id: str = "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11",
        password_login: bool = True,
        https_names: bool = False,
        access_minutes: int = 60,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.dify = dify or FakeDify(version=version or "1.13.3", clock=clock)
        if version:
            self.dify.version = version
        self.clock = clock or self.dify.clock
        self.admin_key = admin_key
        self.workspace_id = workspace_id
        self.password_login = password_login
        self.prefix = "__Host-" if https_names else ""
        self.access_minutes = access_minutes
        self.accounts: dict[str, Account] = {}
        self.failures: dict[str, int] = {}
        self.refresh_tokens: dict[str, str] = {}  # token -> account id
        self.app_ids: dict[str, FakeApp] = {}
        self.created: dict[str, int] = {}
        self.nodes: dict[str, list[Node]] = {}
        self.requests: list[httpx.Request] = []
        self.lock = threading.RLock()
        self.login_attempts = 0
        self.refresh_calls = 0
        self.refresh_reuse = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.faults: list[Callable[[httpx.Request], httpx.Response | None]] = []
        self._issued = 0
        self.latency = 0.0
        self._expired_up_to = 0

    @property
    def version(self) -> str:
        return self.dify.version

    # -- state -------------------------------------------------------------------------------

    def add_account(
        self, email: str = "bot@example.com", password: str = "Secret-pass1", role: str = "editor"
    ) -> Account:
        account = Account(email, password, role)
        self.accounts[email.lower()] = account
        return account

    def add_app(
        self, name: str, *, mode: str = "workflow", published: bool = True, created_at: int | None = None
    ) -> FakeApp:
        app = self.dify.add_app(name, mode=mode)
        app_id = str(uuid.UUID(int=self.dify.rng.getrandbits(128), version=4))
        app.app_id = app_id  # type: ignore[attr-defined]
        app.published = published  # type: ignore[attr-defined]
        with self.lock:
            self.app_ids[app_id] = app
            self.created[app_id] = created_at if created_at is not None else int(self.clock())
        return app

    def delete_app(self, app: FakeApp) -> None:
        with self.lock:
            del self.app_ids[app.app_id]  # type: ignore[attr-defined]

    def add_chat_run(
        self,
        app: FakeApp,
        *,
        status: str = "failed",
        at: int,
        error: str | None = None,
        session: str = "user-42",
        triggered_from: str = "app-run",
        nodes: list[Node] | None = None,
        **extra: Any,
    ) -> FakeRun:
        """A chatflow run (no log row): listed by the run lists only. ``extra``: ``elapsed``,
        ``inputs``, ``outputs``, ``account_email``, ... as :meth:`FakeDify.add_log` takes them."""
        run = self.dify.add_log(
            app, status=status, at=at, error=error, session=session, triggered_from=triggered_from, **extra
        )
        run.created_at = at
        if nodes is not None:
            self.nodes[run.run_id] = nodes
        return run

    def set_nodes(self, run: FakeRun, nodes: list[Node]) -> None:
        self.nodes[run.run_id] = nodes

    def expire_sessions(self) -> None:
        """Every access token issued so far is now expired (the clock moved past it)."""
        with self.lock:
            self._expired_up_to = self._issued

    # -- responses -----------------------------------------------------------------------------

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        response = httpx.Response(status, json=body, headers={"X-Version": self.version, **(headers or {})})
        return response

    def _error(self, status: int, code: str, message: str) -> httpx.Response:
        return self._json(status, {"code": code, "message": message, "status": status})

    def _unauthorized(self, message: str) -> httpx.Response:
        return self._json(
            401,
            {"code": "unauthorized", "message": message, "status": 401},
            {"WWW-Authenticate": 'Bearer realm="api"'},
        )

    def _v(self) -> tuple[int, ...]:
        if self.version.startswith("2.0.0-beta"):
            return (1, 8, 99)
        return _version_tuple(self.version)

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            for fault in list(self.faults):
                response = fault(request)
                if response is not None:
                    return response
            if "/console/api" not in request.url.path:
                return self.dify.handler(request)
            return self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _cookies(self, request: httpx.Request) -> dict[str, str]:
        jar: dict[str, str] = {}
        for part in request.headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name:
                jar[name] = value
        return jar

    def _issue(self, account: Account, body: dict[str, Any]) -> httpx.Response:
        now = int(self.clock())
        exp = now + self.access_minutes * 60
        self._issued += 1
        access = _jwt(
            {
                "n": self._issued,
                "user_id": account.id,
                "exp": exp,
                "iss": "SELF_HOSTED",
                "sub": "Console API Passport",
            }
        )
        csrf = _jwt({"exp": exp, "sub": account.id})
        refresh = secrets.token_hex(64)
        self.refresh_tokens[refresh] = account.id
        p = self.prefix
        headers = [
            ("X-Version", self.version),
            (
                "Set-Cookie",
                f"{p}access_token={access}; HttpOnly; Max-Age={self.access_minutes * 60}; "
                "Path=/; SameSite=Lax",
            ),
            ("Set-Cookie", f"{p}refresh_token={refresh}; HttpOnly; Max-Age=2592000; Path=/; SameSite=Lax"),
            ("Set-Cookie", f"{p}csrf_token={csrf}; Max-Age={self.access_minutes * 60}; Path=/; SameSite=Lax"),
        ]
        return httpx.Response(200, json=body, headers=headers)

    def _account_by_id(self, account_id: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.id == account_id), None)

    def _authenticate(self, request: httpx.Request) -> tuple[str, Account | None] | httpx.Response:
        """("owner", None) for the admin key, (role, account) for a session, else a 401."""
        auth = request.headers.get("authorization", "")
        jar = self._cookies(request)
        if self.admin_key and auth == f"Bearer {self.admin_key}":
            ws = request.headers.get("x-workspace-id")
            if ws != self.workspace_id:
                return self._unauthorized("Invalid token.")
            if self._v() < (1, 11, 0) and self._v() >= (1, 9, 2):
                return self._unauthorized("CSRF token is missing or invalid.")
            return ("owner", None)
        token = jar.get(f"{self.prefix}access_token")
        if token is None and auth.startswith("Bearer "):
            token = auth[7:]
        if token is None:
            return self._unauthorized("Invalid Authorization token.")
        payload = _jwt_payload(token)
        if payload is None or "user_id" not in payload:
            return self._unauthorized("Invalid token.")
        if payload["exp"] <= self.clock() or payload.get("n", 0) <= self._expired_up_to:
            return self._unauthorized("Token has expired.")
        account = self._account_by_id(payload["user_id"])
        if account is None:
            return self._json(401, {"code": "unauthorized", "message": "Unauthorized."})
        csrf_cookie = jar.get(f"{self.prefix}csrf_token")
        header = request.headers.get("x-csrf-token")
        if not csrf_cookie or header != csrf_cookie:
            return self._unauthorized("CSRF token is missing or invalid.")
        csrf = _jwt_payload(csrf_cookie)
        if csrf is None or csrf.get("sub") != account.id or csrf.get("exp", 0) <= self.clock():
            return self._unauthorized("CSRF token is missing or invalid.")
        return (account.role, account)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.split("/console/api", 1)[1]
        method = request.method
        if path == "/ping":
            return self._json(200, {"result": "pong"})
        if path == "/system-features":
            return self._json(
                200,
                {
                    "enable_email_password_login": self.password_login,
                    "enable_email_code_login": False,
                    "enable_social_oauth_login": False,
                    "sso_enforced_for_signin": False,
                    "is_email_setup": False,
                    "license": {"status": "none"},
                },
            )
        if path == "/login" and method == "POST":
            return self._login(request)
        if path == "/refresh-token" and method == "POST":
            return self._refresh(request)
        auth = self._authenticate(request)
        if isinstance(auth, httpx.Response):
            return auth
        role, _account = auth
        if path == "/workspaces/current":
            wanted = "POST" if self._v() >= (1, 11, 0) else "GET"
            if method != wanted:
                return self._error(
                    405, "method_not_allowed", "The method is not allowed for the requested URL."
                )
            return self._json(200, {"id": self.workspace_id, "name": "Acme", "plan": "sandbox", "role": role})
        if method != "GET":
            return self._error(405, "method_not_allowed", "The method is not allowed for the requested URL.")
        if path == "/apps":
            return self._apps(request)
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "apps":
            return self._error(404, "not_found", "The requested URL was not found on the server.")
        app = self.app_ids.get(parts[1])
        if app is None:
            return self._error(404, "app_not_found", "App not found.")
        rest = "/".join(parts[2:])
        if rest == "workflow-app-logs":
            if app.mode != "workflow":
                return self._error(
                    404, "app_not_found", "App mode is not in the supported list: {'workflow'}."
                )
            return self.dify._logs(app, request)
        if rest in ("workflow-runs/count", "advanced-chat/workflow-runs/count"):
            if rest.startswith("advanced-chat") and app.mode != "advanced-chat":
                return self._error(
                    404, "app_not_found", "App mode is not in the supported list: {'advanced-chat'}."
                )
            return self._count(app, request)
        if rest in ("workflow-runs", "advanced-chat/workflow-runs"):
            if rest.startswith("advanced-chat") and app.mode != "advanced-chat":
                return self._error(
                    404, "app_not_found", "App mode is not in the supported list: {'advanced-chat'}."
                )
            if app.mode not in ("workflow", "advanced-chat"):
                return self._error(404, "app_not_found", "App mode is not in the supported list.")
            return self._runs(app, request, chat=rest.startswith("advanced-chat"))
        if len(parts) == 4 and parts[2] == "workflow-runs":
            return self._run_detail(app, parts[3])
        if len(parts) == 5 and parts[2] == "workflow-runs" and parts[4] == "node-executions":
            return self._nodes(app, parts[3])
        if rest in ("chat-conversations",) and role in ("normal", "dataset_operator"):
            return self._error(403, "forbidden", FORBIDDEN)
        if rest == "chat-conversations":
            if app.mode not in ("chat", "agent-chat", "advanced-chat"):
                return self._error(404, "app_not_found", "App mode is not in the supported list.")
            return self._conversations(app, request)
        return self._error(404, "not_found", "The requested URL was not found on the server.")

    def _login(self, request: httpx.Request) -> httpx.Response:
        self.login_attempts += 1
        if not self.password_login:
            return self._error(403, "forbidden", FORBIDDEN)
        try:
            body = json.loads(request.content)
        except ValueError:
            return self._error(400, "invalid_param", "bad json")
        email = str(body.get("email") or "")
        raw = str(body.get("password") or "")
        key = email.lower()
        if self.failures.get(key, 0) >= 6:
            return self._error(
                429, "email_code_login_limit", "Too many incorrect password attempts. Please try again later."
            )
        password = raw
        if self._v() >= (1, 11, 2):
            try:
                password = base64.b64decode(raw, validate=True).decode()
            except ValueError:
                return self._error(401, "authentication_failed", "Invalid encrypted data")
        account = self.accounts.get(key)
        if account is None or account.password != password:
            self.failures[key] = self.failures.get(key, 0) + 1
            return self._error(401, "authentication_failed", "Invalid email or password.")
        self.failures.pop(key, None)
        return self._issue(account, {"result": "success"})

    def _refresh(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.refresh_calls += 1
            token = self._cookies(request).get(f"{self.prefix}refresh_token")
            if not token:
                return self._json(401, {"result": "fail", "message": "No refresh token provided"})
            account_id = self.refresh_tokens.pop(token, None)
            if account_id is None:
                self.refresh_reuse += 1
                return self._json(401, {"result": "fail", "message": "Invalid refresh token"})
            account = self._account_by_id(account_id)
            assert account is not None
            return self._issue(account, {"result": "success"})

    def _app_item(self, app_id: str, app: FakeApp) -> dict[str, Any]:
        published = getattr(app, "published", True)
        created = self.created[app_id]
        return {
            "id": app_id,
            "name": app.name,
            "description": "",
            "mode": app.mode,
            "icon_type": "emoji",
            "icon": "🤖",
            "workflow": {"id": str(uuid.uuid4()), "created_at": created, "updated_at": created}
            if published and app.mode in ("workflow", "advanced-chat")
            else None,
            "created_at": created,
            "updated_at": created,
            "tags": [],
            "author_name": "ops",
        }

    def _apps(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        page, limit = int(q.get("page", "1")), int(q.get("limit", "20"))
        if not (1 <= limit <= 100 and 1 <= page <= 99999):
            return self._error(400, "invalid_param", "page or limit out of range")
        with self.lock:
            items = sorted(self.app_ids.items(), key=lambda kv: -self.created[kv[0]])
        return self._offset_page([self._app_item(i, a) for i, a in items], page, limit)

    def _offset_page(self, rows: list[Any], page: int, limit: int) -> httpx.Response:
        """One page of ``rows`` as the console's offset-paged lists answer it."""
        chunk = rows[(page - 1) * limit : page * limit]
        body = {"page": page, "limit": limit, "total": len(rows), "has_more": len(rows) > page * limit}
        return self._json(200, {**body, "data": chunk})

    def _runs(self, app: FakeApp, request: httpx.Request, *, chat: bool) -> httpx.Response:
        q = request.url.params
        triggered = q.get("triggered_from", "debugging")
        if triggered not in ("debugging", "app-run"):
            return self._error(400, "invalid_param", "triggered_from")
        status = q.get("status")
        if status is not None and status not in (
            "running",
            "succeeded",
            "failed",
            "stopped",
            "partial-succeeded",
        ):
            return self._error(400, "invalid_param", "status")
        limit = int(q.get("limit", "20"))
        if not 1 <= limit <= 100:
            return self._error(400, "invalid_param", "limit")
        with self.dify.lock:
            rows = [
                r
                for r in app.runs
                if r.triggered_from == triggered and (status is None or r.status == status)
            ]
            self.dify.rng.shuffle(rows)  # no tie-breaker: ties come in any order
            rows.sort(key=lambda r: -r.created_at)
            last_id = q.get("last_id")
            if last_id:
                cursor = next((r for r in rows if r.run_id == last_id), None)
                if cursor is None:
                    return self._error(400, "invalid_param", "Last workflow run not exists")
                rows = [r for r in rows if r.created_at < cursor.created_at]
            page = rows[: limit + 1]
        data = []
        for r in page[:limit]:
            item: dict[str, Any] = {"id": r.run_id}
            if chat:
                item["conversation_id"] = self.conversation_id(r)
                item["message_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "msg" + r.run_id))
            item.update(
                {
                    "version": r.version,
                    "status": r.status,
                    "elapsed_time": r.elapsed_time,
                    "total_tokens": r.total_tokens,
                    "total_steps": r.total_steps,
                    "created_by_account": (
                        {
                            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, r.account_email)),
                            "name": r.account_email.split("@")[0],
                            "email": r.account_email,
                        }
                        if r.account_email
                        else None
                    ),
                    "created_at": r.created_at,
                    "finished_at": r.finished_at,
                    "exceptions_count": r.exceptions_count,
                    "retry_index": None,
                }
            )
            data.append(item)
        return self._json(200, {"limit": limit, "has_more": len(page) > limit, "data": data})

    def _count(self, app: FakeApp, request: httpx.Request) -> httpx.Response:
        """Runs by status started within ``time_range`` of the server's now (all runs without it)."""
        q = request.url.params
        triggered = q.get("triggered_from", "debugging")
        if triggered not in ("debugging", "app-run"):
            return self._error(400, "invalid_param", "triggered_from")
        status = q.get("status")
        floor: float | None = None
        time_range = q.get("time_range")
        if time_range is not None:
            units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
            number, unit = time_range[:-1], time_range[-1:]
            if not number.isdigit() or unit not in units:
                return self._error(400, "invalid_param", "Invalid time_range format")
            floor = self.clock() - int(number) * units[unit]
        counts = {"total": 0, "running": 0, "succeeded": 0, "failed": 0, "stopped": 0, "partial_succeeded": 0}
        with self.dify.lock:
            for r in app.runs:
                if r.triggered_from != triggered or (status is not None and r.status != status):
                    continue
                if floor is not None and r.created_at < floor:
                    continue
                counts["total"] += 1
                key = r.status.replace("-", "_")
                if key in counts:
                    counts[key] += 1
        return self._json(200, counts)

    @staticmethod
    def conversation_id(run: FakeRun) -> str:
        """Each production chatflow run is one message of its own conversation here."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "conv" + run.run_id))

    def _conversations(self, app: FakeApp, request: httpx.Request) -> httpx.Response:
        """``chat-conversations``: ``keyword`` matches the message (``sys.query``), the answer or the
        end user's session (case-insensitive substring), newest updated first, offset paging."""
        q = request.url.params
        page, limit = int(q.get("page", "1")), int(q.get("limit", "20"))
        if not 1 <= limit <= 100 or page < 1:
            return self._error(400, "invalid_param", "limit")
        keyword = (q.get("keyword") or "").lower()
        with self.dify.lock:
            runs = [r for r in app.runs if r.triggered_from == "app-run"]
        rows = []
        for r in sorted(runs, key=lambda r: (-r.created_at, r.run_id)):
            message = str(r.inputs.get("sys.query") or "")
            answer = json.dumps(r.outputs)
            if keyword and not any(keyword in text.lower() for text in (message, answer, r.session_id or "")):
                continue
            rows.append(
                {
                    "id": self.conversation_id(r),
                    "status": "normal",
                    "from_source": "api",
                    "from_end_user_session_id": r.session_id,
                    "name": message[:20] or "New conversation",
                    "created_at": r.created_at,
                    "updated_at": r.finished_at or r.created_at,
                    "message_count": 1,
                }
            )
        return self._offset_page(rows, page, limit)

    def _find_run(self, app: FakeApp, run_id: str) -> FakeRun | None:
        return next((r for r in app.runs if r.run_id == run_id), None)

    def _run_detail(self, app: FakeApp, run_id: str) -> httpx.Response:
        run = self._find_run(app, run_id)
        if run is None:
            if self._v() >= (1, 14, 1):
                return self._error(404, "not_found", "Workflow run not found")
            return self._json(
                200, {k: None for k in ("id", "version", "status", "error", "inputs", "outputs")}
            )
        return self._json(
            200,
            {
                "id": run.run_id,
                "version": run.version,
                "graph": {},
                "inputs": dict(run.inputs),
                "status": run.status,
                "outputs": dict(run.outputs),
                "error": run.error,
                "elapsed_time": run.elapsed_time,
                "total_tokens": run.total_tokens,
                "total_steps": run.total_steps,
                "created_by_role": "end_user",
                "created_by_account": None,
                "created_by_end_user": {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, run.session_id or "anon")),
                    "type": "service_api",
                    "is_anonymous": False,
                    "session_id": run.session_id,
                },
                "created_at": run.created_at,
                "finished_at": run.finished_at,
                "exceptions_count": run.exceptions_count,
            },
        )

    def _nodes(self, app: FakeApp, run_id: str) -> httpx.Response:
        run = self._find_run(app, run_id)
        nodes = self.nodes.get(run_id, []) if run is not None else []
        data = []
        for index, node in enumerate(nodes, start=1):
            data.append(
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}-{index}")),
                    "index": index,
                    "predecessor_node_id": None,
                    "node_id": node.node_id,
                    "node_type": node.node_type,
                    "title": node.title,
                    "inputs": {},
                    "process_data": {},
                    "outputs": {},
                    "status": node.status,
                    "error": node.error,
                    "elapsed_time": node.elapsed_time,
                    "execution_metadata": {},
                    "extras": {},
                    "created_at": (run.created_at if run else 0) + index - 1,
                    "finished_at": (run.created_at if run else 0) + index,
                }
            )
        return self._json(200, {"data": data})

    def console_requests(self, fragment: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if "/console/api" in r.url.path and fragment in r.url.path]
