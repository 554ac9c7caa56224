"""A Slack Web API fake: a real HTTP server on 127.0.0.1 for ``WebClient(base_url=...)``.

It records every request body (form or JSON), assigns message ``ts`` values,
checks Block Kit limits as Slack does (including the undocumented ~13,000
characters of blocks), implements the three-step ``files_upload_v2``, and
takes ``response_url`` posts at ``/response/<name>``. Faults are queued per
method: an HTTP status, a Slack error, a 429 with ``Retry-After``, or a hang.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from slack_sdk.signature import SignatureVerifier

BOT_TOKEN = "xoxb-test-token-0000"
APP_TOKEN = "xapp-1-test-token"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked WebSocket frame (server to client)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", n)
    return head + payload


def ws_read(rfile: Any) -> tuple[int, bytes] | None:
    """One WebSocket frame from a client (masked), or None at the end of the stream."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, masked, n = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if masked else b"\0\0\0\0"
    data = rfile.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@dataclass
class Call:
    """One request the fake received."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


def _blocks_chars(node: Any) -> int:
    if isinstance(node, dict):
        return sum(
            len(v) if k == "text" and isinstance(v, str) else _blocks_chars(v) for k, v in node.items()
        )
    if isinstance(node, list):
        return sum(_blocks_chars(n) for n in node)
    return 0


def check_blocks(blocks: list[dict[str, Any]], *, most: int = 50, chars: int | None = 13000) -> str | None:
    """The Slack error a message with these blocks would get, or None (a view: 100 blocks)."""
    if len(blocks) > most:
        return "invalid_blocks"
    if chars is not None and _blocks_chars(blocks) > chars:
        return "msg_blocks_too_long"
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            if len(block.get("text", {}).get("text", "")) > 3000:
                return "invalid_blocks"
            if len(block.get("fields", [])) > 10 or any(
                len(f["text"]) > 2000 for f in block.get("fields", [])
            ):
                return "invalid_blocks"
            if "text" not in block and "fields" not in block:
                return "invalid_blocks"
        elif kind == "header":
            if len(block["text"]["text"]) > 150 or block["text"]["type"] != "plain_text":
                return "invalid_blocks"
        elif kind == "context":
            if not 1 <= len(block.get("elements", [])) <= 10:
                return "invalid_blocks"
        elif kind == "actions":
            ids = [e.get("action_id") for e in block.get("elements", [])]
            if len(ids) != len(set(ids)) or any(
                len(e.get("text", {}).get("text", "")) > 75 for e in block["elements"]
            ):
                return "invalid_blocks"
        elif kind not in ("divider", "image", "rich_text", "input"):
            return "invalid_blocks"
    return None


class FakeSlack:
    """The Slack fake. Use as a context manager; ``base_url`` goes to ``WebClient``."""

    def __init__(
        self,
        *,
        token: str = BOT_TOKEN,
        channels: set[str] | None = None,
        app_token: str = APP_TOKEN,
        more_tokens: set[str] | None = None,
    ) -> None:
        self.token = token
        # Other bot tokens accepted too: several processes of a test can each have their own, so
        # that what each one wrote can be told apart (messages keep the token that posted them).
        self.more_tokens = set(more_tokens or ())
        self.app_token = app_token
        # Channels that exist but the bot was never invited to (posts and uploads get not_in_channel).
        self.not_member: set[str] = set()
        # Socket Mode: the open WebSocket connections and the text frames clients sent on them.
        self.sockets: list[socket.socket] = []
        self.socket_received: list[str] = []
        self.channels = channels  # None: every channel exists
        self.calls: list[Call] = []
        self.messages: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []  # posts to response_url
        # views.publish: each person's Home tab as last published, and every publish in order.
        self.home_views: dict[str, dict[str, Any]] = {}
        self.published: list[dict[str, Any]] = []
        self.faults: dict[str, list[tuple[str, Any]]] = {}
        # Workspace directory for users.info / usergroups.list, and scopes the token lacks.
        self.users: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, dict[str, Any]] = {}
        self.missing_scopes: set[str] = set()
        self.lock = threading.Lock()
        # Called with (method, params) after a call was carried out and before it is answered:
        # a test can freeze or kill its caller there, with the write already in Slack.
        self.on_call: Callable[[str, dict[str, Any]], None] | None = None
        self._ts = 1_700_000_000.000100
        self._uploads: dict[str, dict[str, Any]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                outer._handle(self, raw)

            def do_GET(self) -> None:
                if self.path.startswith("/link") and self.headers.get("upgrade", "").lower() == "websocket":
                    outer._websocket(self)
                    return
                outer._handle(self, b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll interval keeps shutdown (every test's teardown) quick.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def response_url(self, name: str = "r1") -> str:
        return f"{self.root}/response/{name}"

    def __enter__(self) -> FakeSlack:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- faults -------------------------------------------------------------------

    def fail(self, method: str, kind: str, value: Any = None, times: int = 1) -> None:
        """Queue ``times`` faults for ``method``: ("status", 500), ("error", "not_in_channel"),
        ("ratelimit", seconds), ("hang", seconds), ("html", 503)."""
        with self.lock:
            self.faults.setdefault(method, []).extend([(kind, value)] * times)

    # -- Socket Mode ----------------------------------------------------------------

    def drop_sockets(self) -> None:
        """Close every Socket Mode connection from Slack's side (a network cut, a Slack restart)."""
        with self.lock:
            sockets, self.sockets = list(self.sockets), []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def socket_send(self, message: dict[str, Any]) -> None:
        """Push an envelope (a slash command, an interaction) down the newest Socket Mode connection."""
        with self.lock:
            sock = self.sockets[-1]
        sock.sendall(ws_frame(1, json.dumps(message).encode()))

    def _websocket(self, handler: BaseHTTPRequestHandler) -> None:
        key = handler.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()  # noqa: S324
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        handler.end_headers()
        handler.wfile.flush()
        sock = handler.connection
        with self.lock:
            self.sockets.append(sock)
        try:
            while True:
                frame = ws_read(handler.rfile)
                if frame is None:
                    break
                opcode, payload = frame
                if opcode == 1:
                    with self.lock:
                        self.socket_received.append(payload.decode())
                elif opcode == 9:
                    sock.sendall(ws_frame(10, payload))
                elif opcode == 8:
                    sock.sendall(ws_frame(8, payload[:2]))
                    break
        except OSError:
            pass
        handler.close_connection = True

    # -- queries ------------------------------------------------------------------

    def posts(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Messages accepted by chat.postMessage (optionally for one channel)."""
        return [m for m in self.messages if channel is None or m["channel"] == channel]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def all_text(self) -> str:
        """Every text Slack accepted (messages, blocks, files), for 'reached Slack' checks."""
        parts = []
        for m in self.messages:
            parts.append(m.get("text") or "")
            parts.append(json.dumps(m.get("blocks") or []))
        for f in self.files:
            parts.append(f["content"])
            parts.append(f.get("alt_txt") or "")
        return "\n".join(parts)

    # -- the server ---------------------------------------------------------------

    def _reply(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html" if raw is not None else "application/json")
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _params(self, handler: BaseHTTPRequestHandler, raw: bytes) -> dict[str, Any]:
        ctype = handler.headers.get("content-type", "")
        params: dict[str, Any] = {k: v[0] for k, v in parse_qs(urlparse(handler.path).query).items()}
        if "json" in ctype and raw:
            params.update(json.loads(raw))
        elif raw and "form" in ctype:
            params.update({k: v[0] for k, v in parse_qs(raw.decode()).items()})
        for key in ("blocks", "files", "attachments"):
            if isinstance(params.get(key), str):
                try:
                    params[key] = json.loads(params[key])
                except ValueError:
                    pass
        return params

    def _next_ts(self) -> str:
        with self.lock:
            self._ts += 1
            return f"{self._ts:.6f}"

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        path = urlparse(handler.path).path
        if path.startswith("/response/"):
            body = json.loads(raw or b"{}")
            with self.lock:
                self.responses.append({"name": path.rsplit("/", 1)[1], **body})
            self._reply(handler, 200, raw=b"ok", body=None)
            return
        if path.startswith("/upload/"):
            with self.lock:
                upload = self._uploads[path.rsplit("/", 1)[1]]
                upload["content"] = raw.decode("utf-8", "replace")
                upload["data"] = raw
            self._reply(handler, 200, raw=b"OK - 200", body=None)
            return
        method = path.rsplit("/", 1)[-1]
        params = self._params(handler, raw)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            self.calls.append(Call(method, params, headers))
            queue = self.faults.get(method) or []
            fault = queue.pop(0) if queue else None
        if fault is not None and fault[0] != "ok":
            kind, value = fault
            if kind == "accept_hang":
                # Slack took the message, but the answer never comes back in time.
                self._method(method, params)
                time.sleep(value)
                self._reply(handler, 200, {"ok": False, "error": "timeout"})
                return
            if kind == "hang":
                time.sleep(value)
                self._reply(handler, 200, {"ok": False, "error": "timeout"})
                return
            if kind == "status":
                self._reply(handler, value, {"ok": False, "error": "fatal_error"})
                return
            if kind == "html":
                self._reply(handler, value, None, raw=b"<html><body>Service Unavailable</body></html>")
                return
            if kind == "ratelimit":
                self._reply(
                    handler, 429, {"ok": False, "error": "ratelimited"}, headers={"Retry-After": str(value)}
                )
                return
            if kind == "error":
                self._reply(handler, 200, {"ok": False, "error": value})
                return
        tokens = {self.app_token} if method == "apps.connections.open" else {self.token, *self.more_tokens}
        if headers.get("authorization") not in {f"Bearer {t}" for t in tokens}:
            self._reply(handler, 200, {"ok": False, "error": "invalid_auth"})
            return
        params["_by"] = headers.get("authorization", "").removeprefix("Bearer ")
        answer = self._method(method, params)
        hook = self.on_call
        if hook is not None:
            hook(method, params)
        self._reply(handler, 200, answer)

    def _method(self, method: str, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel") or p.get("channel_id")
        if method == "auth.test":
            return {"ok": True, "user": "wflogs", "team": "Test Team", "user_id": "UBOT", "team_id": "T1"}
        if method == "conversations.info":
            if self.channels is not None and channel not in self.channels:
                return {"ok": False, "error": "channel_not_found"}
            member = channel not in self.not_member
            return {"ok": True, "channel": {"id": channel, "name": "alerts", "is_member": member}}
        if method in ("chat.postMessage", "chat.update", "files.completeUploadExternal"):
            if channel in self.not_member:
                return {"ok": False, "error": "not_in_channel"}
        if method in ("chat.postMessage", "chat.update"):
            if self.channels is not None and channel not in self.channels:
                return {"ok": False, "error": "channel_not_found"}
            if not p.get("text") and not p.get("blocks"):
                return {"ok": False, "error": "no_text"}
            if len(p.get("text") or "") > 40000:
                return {"ok": False, "error": "msg_too_long"}
            error = check_blocks(p.get("blocks") or [])
            if error:
                return {"ok": False, "error": error}
            thread = p.get("thread_ts")
            if method == "chat.postMessage" and thread:
                # A reply needs its thread: a parent deleted with no replies leaves none (one deleted
                # after replies leaves "This message was deleted." and its thread).
                if not any(m["ts"] == thread or m["thread_ts"] == thread for m in self.messages):
                    return {"ok": False, "error": "thread_not_found"}
            if method == "chat.update":
                for m in self.messages:
                    if m["ts"] == p.get("ts"):
                        m.update(text=p.get("text"), blocks=p.get("blocks"))
                        return {"ok": True, "channel": channel, "ts": p.get("ts")}
                return {"ok": False, "error": "message_not_found"}
            ts = self._next_ts()
            with self.lock:
                self.messages.append(
                    {
                        "channel": channel,
                        "ts": ts,
                        "thread_ts": p.get("thread_ts"),
                        "reply_broadcast": str(p.get("reply_broadcast", "")).lower() in ("1", "true"),
                        "text": p.get("text"),
                        "blocks": p.get("blocks"),
                        "by": p.get("_by"),  # the token that posted it
                        "at": time.monotonic(),
                    }
                )
            return {"ok": True, "channel": channel, "ts": ts, "message": {"text": p.get("text")}}
        if method == "views.publish":
            view = p.get("view")
            if isinstance(view, str):
                view = json.loads(view)
            if not p.get("user_id") or not isinstance(view, dict) or view.get("type") != "home":
                return {"ok": False, "error": "invalid_arguments"}
            if len(view.get("callback_id") or "") > 255 or len(view.get("private_metadata") or "") > 3000:
                return {"ok": False, "error": "invalid_arguments"}
            error = check_blocks(view.get("blocks") or [], most=100, chars=None)
            if error:
                return {"ok": False, "error": error}
            with self.lock:
                self.home_views[p["user_id"]] = view
                self.published.append({"user": p["user_id"], "view": view, "at": time.monotonic()})
            return {"ok": True, "view": {"id": f"V{len(self.published):05d}", **view}}
        if method == "files.getUploadURLExternal":
            if "files:write" in self.missing_scopes:
                return {"ok": False, "error": "missing_scope", "needed": "files:write"}
            if len(p.get("alt_txt") or "") > 1000:
                return {"ok": False, "error": "alt_txt_too_large"}
            file_id = f"F{len(self._uploads) + 1:05d}"
            with self.lock:
                self._uploads[file_id] = {
                    "filename": p.get("filename"),
                    "content": None,
                    "alt_txt": p.get("alt_txt"),
                    "length": p.get("length"),
                }
            return {"ok": True, "upload_url": f"{self.root}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = p.get("files") or []
            for f in files:
                upload = self._uploads.get(f["id"])
                if upload is None or upload["content"] is None:
                    return {"ok": False, "error": "file_not_found"}
                with self.lock:
                    self.files.append(
                        {
                            "id": f["id"],
                            "channel": channel,
                            "thread_ts": p.get("thread_ts"),
                            "filename": upload["filename"],
                            "content": upload["content"],
                            "data": upload.get("data"),  # the bytes, as sent
                            "alt_txt": upload["alt_txt"],
                            "title": f.get("title"),
                            "comment": p.get("initial_comment"),
                            "by": p.get("_by"),
                            "at": time.monotonic(),
                        }
                    )
            return {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}
        if method == "users.info":
            if "users:read" in self.missing_scopes:
                return {"ok": False, "error": "missing_scope", "needed": "users:read"}
            user = self.users.get(p.get("user") or "")
            if user is None:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": {"id": p.get("user"), "deleted": False, "is_bot": False, **user}}
        if method == "usergroups.list":
            if "usergroups:read" in self.missing_scopes:
                return {"ok": False, "error": "missing_scope", "needed": "usergroups:read"}
            include_disabled = str(p.get("include_disabled", "")).lower() in ("1", "true")
            groups = [
                {"id": gid, "date_delete": 0, **group}
                for gid, group in self.usergroups.items()
                if include_disabled or not group.get("date_delete")
            ]
            return {"ok": True, "usergroups": groups}
        if method == "chat.getPermalink":
            ts = p.get("message_ts")
            if not any(m["ts"] == ts for m in self.messages):
                return {"ok": False, "error": "message_not_found"}
            return {
                "ok": True,
                "channel": channel,
                "permalink": f"https://test.slack.com/archives/{channel}/p{ts}",
            }
        if method == "chat.delete":
            with self.lock:
                before = len(self.messages)
                self.messages[:] = [m for m in self.messages if m["ts"] != p.get("ts")]
            return (
                {"ok": True} if len(self.messages) < before else {"ok": False, "error": "message_not_found"}
            )
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.server.server_address[1]}/link/?ticket=t1"}
        if method == "files.delete":
            with self.lock:
                before = len(self.files)
                self.files[:] = [f for f in self.files if f["id"] != p.get("file")]
            return {"ok": True} if len(self.files) < before else {"ok": False, "error": "file_not_found"}
        if method == "files.info":
            return {"ok": True, "file": {"id": p.get("file")}}
        return {"ok": False, "error": "unknown_method"}


def mrkdwn_texts(blocks: Any) -> list[str]:
    """Every mrkdwn text in blocks: what Slack parses for mentions and links.

    Header text is plain_text, which Slack never parses; button values are never shown.
    """
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks)
    return out


def assert_valid_blocks(blocks: list[dict[str, Any]]) -> None:
    """Blocks Slack would accept: the fake's limits and slack_sdk's own validation."""
    from slack_sdk.models.blocks import Block

    assert check_blocks(blocks) is None
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None
        parsed.validate_json()


def signed_post(url: str, body: str, secret: str, *, ts: int | None = None, **headers: str) -> httpx.Response:
    """POST ``body`` to ``url`` as Slack sends slash commands and clicks: form-encoded and signed
    with ``secret`` at ``ts`` (default now)."""
    stamp = str(ts if ts is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    return httpx.post(
        url,
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
            **headers,
        },
        timeout=10,
    )
