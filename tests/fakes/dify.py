"""A Dify Service API fake that follows shared/dify-api.md to the letter.

Play it through ``httpx.MockTransport(fake.handler)``, or over real HTTP with
:class:`DifyServer` for tests that run the CLI as a user does.

What it reproduces: bearer auth and Dify's error bodies; inclusive
second-precision ISO bounds (epoch numbers and a raw ``+`` are 400s); newest
first with the order inside one second shuffled on every call; OFFSET paging
with a fresh COUNT each call; the 400 shapes before and after 1.11; keyword
plus session is a 500; unknown account e-mail is a 400; rows written at run
START from 1.11 (status changes later, ``created_at`` never does) and at run
END before; ``X-Version`` on every response; the run detail endpoint with
``inputs`` as a JSON string and ``outputs`` by version.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3])


@dataclass
class FakeRun:
    """A workflow run and its log row."""

    run_id: str
    log_id: str
    status: str
    created_at: int  # the run's own start (truncated)
    log_created_at: int  # the log row's time
    finished_at: int | None = None
    error: str | None = None
    elapsed_time: float = 0.0
    total_tokens: int = 0
    total_steps: int = 0
    exceptions_count: int = 0
    session_id: str | None = None
    account_email: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    version: str = "2026-11-01 10:00:00.000000"
    triggered_from: str = "app-run"
    created_from: str = "service-api"
    visible: bool = True

    def log_item(self) -> dict[str, Any]:
        end_user = None
        account = None
        if self.account_email:
            account = {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.account_email)),
                "name": self.account_email.split("@")[0],
                "email": self.account_email,
            }
        else:
            end_user = {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.session_id or "anon")),
                "type": "service-api",
                "is_anonymous": self.session_id is None,
                "session_id": self.session_id or "anonymous",
            }
        return {
            "id": self.log_id,
            "workflow_run": {
                "id": self.run_id,
                "version": self.version,
                "status": self.status,
                "error": self.error,
                "elapsed_time": self.elapsed_time,
                "total_tokens": self.total_tokens,
                "total_steps": self.total_steps,
                "exceptions_count": self.exceptions_count,
                "created_at": self.created_at,
                "finished_at": self.finished_at,
                "triggered_from": self.triggered_from,
            },
            "created_from": self.created_from,
            "created_by_role": "account" if account else "end_user",
            "created_by_account": account,
            "created_by_end_user": end_user,
            "created_at": self.log_created_at,
            "details": None,
        }


@dataclass
class FakeApp:
    """One Dify app behind one API key."""

    key: str
    name: str
    mode: str = "workflow"
    runs: list[FakeRun] = field(default_factory=list)
    accounts: set[str] = field(default_factory=lambda: {"ops@example.com"})


class FakeDify:
    """The fake server's state and its ``httpx`` handler."""

    def __init__(self, *, version: str = "1.13.3", seed: int = 7, clock: Callable[[], float] | None = None):
        self.version = version
        self.apps: dict[str, FakeApp] = {}
        self.requests: list[httpx.Request] = []
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.clock = clock or (lambda: datetime.now(UTC).timestamp())
        self.faults: list[Callable[[httpx.Request], httpx.Response | None]] = []
        self.after_logs: Callable[[httpx.Request], None] | None = None
        # Dify counts (``total``) and selects the page's rows in two statements: whatever this
        # hook changes lands between them, so ``total`` and the rows can disagree.
        self.between_count_and_rows: Callable[[httpx.Request], None] | None = None
        # The order of the rows sharing one second (any order is allowed by the contract):
        # given them and the request, return them in the order this call answers.
        self.order_within_second: Callable[[list[FakeRun], httpx.Request], list[FakeRun]] | None = None
        self.latency = 0.0
        # A real Dify serves about ten requests at once (one gevent worker, 10 connections);
        # the others queue. None: no limit.
        self.connections: int | None = None
        self._slots: threading.BoundedSemaphore | None = None
        self.max_in_flight = 0
        self._in_flight = 0
        # Dify sorts by created_at alone; by default the order within a second changes per call.
        self.stable_within_second = False
        self._seq = 0

    # -- building state -------------------------------------------------------

    @property
    def log_at_start(self) -> bool:
        return _version_tuple(self.version) >= (1, 11)

    def add_app(
        self, name: str = "Support Bot", *, key: str | None = None, mode: str = "workflow"
    ) -> FakeApp:
        key = key or "app-" + uuid.uuid4().hex[:24]
        app = FakeApp(key=key, name=name, mode=mode)
        self.apps[key] = app
        return app

    def _ids(self) -> tuple[str, str]:
        self._seq += 1
        rid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        lid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        return str(rid), str(lid)

    def add_log(
        self,
        app: FakeApp,
        *,
        status: str = "failed",
        at: int,
        error: str | None = None,
        session: str | None = "user_workflow_123",
        elapsed: float = 1.5,
        **extra: Any,
    ) -> FakeRun:
        """A finished run whose log row carries ``at``."""
        run_id, log_id = self._ids()
        if error is None and status == "failed":
            error = "[Errno 111] Connection refused"
        if error is None and status == "stopped":
            error = "Workflow execution aborted by user command"
        run = FakeRun(
            run_id=run_id,
            log_id=log_id,
            status=status,
            created_at=int(at - elapsed) if not self.log_at_start else at,
            log_created_at=at,
            finished_at=int(at + (elapsed if self.log_at_start else 0)) if status != "running" else None,
            error=error,
            elapsed_time=elapsed,
            session_id=session,
            **extra,
        )
        with self.lock:
            app.runs.append(run)
        return run

    def start_run(
        self, app: FakeApp, *, at: int, session: str | None = "user_workflow_123", **extra: Any
    ) -> FakeRun:
        """A run that starts at ``at``: from 1.11 its row appears now, as running."""
        run_id, log_id = self._ids()
        run = FakeRun(
            run_id=run_id,
            log_id=log_id,
            status="running",
            created_at=at,
            log_created_at=at + 1 if extra.pop("round_up", False) else at,
            session_id=session,
            visible=self.log_at_start,
            **extra,
        )
        with self.lock:
            app.runs.append(run)
        return run

    def finish_run(
        self, run: FakeRun, *, status: str, at: int, error: str | None = None, tokens: int = 0
    ) -> None:
        """The run ends at ``at``; before 1.11 its log row is written only now."""
        with self.lock:
            run.status = status
            run.finished_at = at
            run.elapsed_time = float(at - run.created_at)
            run.error = error
            run.total_tokens = tokens
            if not run.visible:
                run.log_created_at = at
                run.visible = True

    def add_key(self, app: FakeApp, key: str | None = None) -> str:
        """A second API key for the same app (Dify lets an app have several)."""
        key = key or "app-" + uuid.uuid4().hex[:24]
        self.apps[key] = app
        return key

    def revoke_key(self, key: str) -> None:
        """The key is deleted in Dify: it now gets 401 "Access token is invalid"."""
        del self.apps[key]

    def delete_log(self, app: FakeApp, run: FakeRun) -> None:
        """Dify's log clean-up (or an operator) removes a log row."""
        with self.lock:
            app.runs.remove(run)

    # -- faults -----------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        kind: str = "500",
        path: str = "/workflows/logs",
        key: str | None = None,
        after: int = 0,
    ) -> None:
        """The next ``count`` requests to ``path`` (with ``key`` when given), once ``after`` more
        were answered, fail: 500, 502 (HTML), badjson, timeout, connect, gzip (a body that cannot
        be decoded, as from a broken proxy), or bug (the HTTP stack raises something unexpected)."""
        remaining = [count]
        spared = [after]

        def fault(request: httpx.Request) -> httpx.Response | None:
            if not request.url.path.endswith(path) or remaining[0] <= 0:
                return None
            if key is not None and request.headers.get("authorization") != f"Bearer {key}":
                return None
            if spared[0] > 0:
                spared[0] -= 1
                return None
            remaining[0] -= 1
            if kind == "bug":
                raise RuntimeError("something nobody expected")
            if kind == "gzip":
                return httpx.Response(
                    200,
                    content=b'{"page": 1, "data": []}',
                    headers={"content-type": "application/json", "content-encoding": "gzip"},
                )
            if kind == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            if kind == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if kind == "502":
                return httpx.Response(
                    502,
                    text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                    headers={"content-type": "text/html"},
                )
            if kind == "badjson":
                return httpx.Response(
                    200, text='{"page": 1, "data": [', headers={"content-type": "application/json"}
                )
            return self._error(500, "unknown", "Internal Server Error")

        self.faults.append(fault)

    # -- the handler --------------------------------------------------------------

    def _json(self, status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"X-Version": self.version})

    def _error(self, status: int, code: str, message: str) -> httpx.Response:
        return self._json(status, {"code": code, "message": message, "status": status})

    def _bad_param(self, name: str, value: str, detail: str) -> httpx.Response:
        if _version_tuple(self.version) >= (1, 11):
            return self._json(
                400,
                {
                    "code": "invalid_param",
                    "message": f"1 validation error for WorkflowLogQuery\n{name}\n  {detail} "
                    f"[input_value='{value}']",
                    "status": 400,
                },
            )
        return self._json(
            400,
            {
                "errors": {name: f"Invalid argument: {value}. {detail}"},
                "message": "Input payload validation failed",
            },
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        """The ``httpx.MockTransport`` handler."""
        with self.lock:
            self.requests.append(request)
            if self.connections and self._slots is None:
                self._slots = threading.BoundedSemaphore(self.connections)
            slots = self._slots
        if slots is not None:
            with slots:
                return self._serve(request)
        return self._serve(request)

    def _serve(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._answer(request)
        finally:
            with self.lock:
                self._in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        for fault in list(self.faults):
            response = fault(request)
            if response is not None:
                response.headers["X-Version"] = self.version
                return response
        path = request.url.path
        if "/v1" not in path:
            # Dify's API server routes the Service API under /v1 only; anything else is its JSON 404.
            return self._error(404, "not_found", "The requested URL was not found on the server.")
        base = path.split("/v1", 1)[1]
        if base in ("", "/"):
            return httpx.Response(
                404,
                text="<!doctype html><title>404 Not Found</title>",
                headers={"X-Version": self.version, "content-type": "text/html"},
            )
        auth = request.headers.get("authorization")
        if not auth or " " not in auth:
            return self._error(
                401, "unauthorized", "Authorization header must be provided and start with 'Bearer'"
            )
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer":
            return self._error(401, "unauthorized", "Authorization scheme must be 'Bearer'")
        app = self.apps.get(key)
        if app is None:
            return self._error(401, "unauthorized", "Access token is invalid")
        if app.mode == "deleted":
            return self._error(403, "forbidden", "The app no longer exists.")
        if request.method != "GET":
            return self._error(405, "method_not_allowed", "Method not allowed")
        if base == "/info":
            return self._json(
                200, {"name": app.name, "description": "", "tags": [], "mode": app.mode, "author_name": "ops"}
            )
        if base == "/workflows/logs":
            response = self._logs(app, request)
            if self.after_logs is not None:
                self.after_logs(request)
            return response
        if base.startswith("/workflows/run/"):
            return self._run_detail(app, base.rsplit("/", 1)[1])
        return self._error(404, "not_found", "The requested URL was not found on the server.")

    def _parse_time(self, name: str, raw: str) -> int | httpx.Response:
        if not ISO_RE.match(raw):
            return self._bad_param(name, raw, "Input should be a valid datetime")
        text = raw.replace("Z", "+00:00")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return self._bad_param(name, raw, "Input should be a valid datetime")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp())

    def _logs(self, app: FakeApp, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        status = q.get("status")
        if status is not None and status not in ("succeeded", "failed", "stopped"):
            return self._bad_param("status", status, "Input should be 'succeeded', 'failed' or 'stopped'")
        try:
            page = int(q.get("page", "1"))
            limit = int(q.get("limit", "20"))
        except ValueError:
            return self._bad_param("page", q.get("page", ""), "Input should be a valid integer")
        if not 1 <= limit <= 100:
            return self._bad_param("limit", str(limit), "Input should be less than or equal to 100")
        if not 1 <= page <= 99999:
            return self._bad_param("page", str(page), "Input should be less than or equal to 99999")
        after = before = None
        if "created_at__after" in q:
            after = self._parse_time("created_at__after", q["created_at__after"])
            if isinstance(after, httpx.Response):
                return after
        if "created_at__before" in q:
            before = self._parse_time("created_at__before", q["created_at__before"])
            if isinstance(before, httpx.Response):
                return before
        keyword = q.get("keyword")
        session = q.get("created_by_end_user_session_id")
        account = q.get("created_by_account")
        if keyword and session:
            return self._error(500, "unknown", "Internal Server Error")
        if account and account not in app.accounts:
            return self._json(
                400, {"code": "invalid_param", "message": f"Account not found: {account}", "status": 400}
            )
        rows = self._select(app, status, after, before, keyword, session, account)
        total = len(rows)  # the COUNT statement
        if self.between_count_and_rows is not None:
            self.between_count_and_rows(request)
            rows = self._select(app, status, after, before, keyword, session, account)
        # Newest first, NO tie-breaker: the order within one second changes per call.
        rows.sort(key=lambda r: -r.log_created_at)
        start, end = (page - 1) * limit, page * limit
        chunk: list[FakeRun] = []
        position = 0
        for _second, group in itertools.groupby(rows, key=lambda r: r.log_created_at):
            same = list(group)
            if position + len(same) > start and position < end:
                if self.order_within_second is not None:
                    same = self.order_within_second(same, request)
                elif not self.stable_within_second:
                    self.rng.shuffle(same)
                chunk.extend(same[max(0, start - position) : end - position])
            position += len(same)
            if position >= end:
                break
        return self._json(
            200,
            {
                "page": page,
                "limit": limit,
                "total": total,
                "has_more": total > page * limit,
                "data": [r.log_item() for r in chunk],
            },
        )

    def _select(
        self,
        app: FakeApp,
        status: str | None,
        after: int | None,
        before: int | None,
        keyword: str | None,
        session: str | None,
        account: str | None,
    ) -> list[FakeRun]:
        """The rows matching a query (one SQL statement: a consistent snapshot)."""
        low = after if after is not None else -(2**63)
        high = before if before is not None else 2**63
        with self.lock:
            rows = [
                r
                for r in app.runs
                if r.visible and low <= r.log_created_at <= high and (not status or r.status == status)
            ]
        if session:
            rows = [r for r in rows if r.session_id == session and not r.account_email]
        if account:
            rows = [r for r in rows if r.account_email == account]
        if keyword:
            word = keyword[:30].lower()
            rows = [
                r
                for r in rows
                if r.run_id == keyword
                or word in json.dumps(r.inputs).lower()
                or word in json.dumps(r.outputs).lower()
                or (r.session_id and word in r.session_id.lower())
            ]
        return rows

    def _run_detail(self, app: FakeApp, run_id: str) -> httpx.Response:
        if not UUID_RE.match(run_id):
            return self._error(500, "unknown", "Internal Server Error")
        with self.lock:
            run = next((r for r in app.runs if r.run_id == run_id), None)
        if run is None:
            if _version_tuple(self.version) >= (1, 13, 1):
                return self._error(404, "not_found", "Workflow run not found")
            return self._json(
                200,
                {
                    k: None
                    for k in (
                        "id",
                        "workflow_id",
                        "status",
                        "inputs",
                        "outputs",
                        "error",
                        "total_steps",
                        "total_tokens",
                        "created_at",
                        "finished_at",
                        "elapsed_time",
                    )
                },
            )
        outputs: Any = run.outputs if _version_tuple(self.version) >= (1, 13) else json.dumps(run.outputs)
        return self._json(
            200,
            {
                "id": run.run_id,
                "workflow_id": "wf-1",
                "status": run.status,
                "inputs": json.dumps(run.inputs),
                "outputs": outputs,
                "error": run.error,
                "total_steps": run.total_steps,
                "total_tokens": run.total_tokens,
                "created_at": run.created_at,
                "finished_at": run.finished_at,
                "elapsed_time": run.elapsed_time,
            },
        )

    def log_requests(self, key: str | None = None) -> list[httpx.Request]:
        """The ``/workflows/logs`` requests made so far (for one key when given)."""
        return [
            r
            for r in self.requests
            if r.url.path.endswith("/workflows/logs")
            and (key is None or r.headers.get("authorization") == f"Bearer {key}")
        ]


class DifyServer:
    """Serves a :class:`FakeDify` over real HTTP on 127.0.0.1 (port chosen by the OS unless given)."""

    def __init__(self, fake: FakeDify, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                request = httpx.Request(
                    "GET", f"http://{self.headers.get('host')}{self.path}", headers=dict(self.headers.items())
                )
                try:
                    response = outer.fake.handler(request)
                except httpx.TimeoutException:
                    time.sleep(3)
                    self.close_connection = True
                    return
                except httpx.TransportError:
                    self.close_connection = True
                    return
                body = response.content
                self.send_response(response.status_code)
                for k, v in response.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.host = host
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        # A short poll interval keeps shutdown (every test's teardown) quick.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/v1"

    def __enter__(self) -> DifyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
