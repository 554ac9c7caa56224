"""Where messages go: Slack's Web API (paced, retried, errors classified) or the terminal."""

from __future__ import annotations

import logging
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.blocks import Block
from bot.errors import SlackError, SlackPermanentError

log = logging.getLogger(__name__)

# Errors only a person can fix, with what to tell them.
PERMANENT = {
    "channel_not_found": "the channel does not exist or the bot cannot see it; check the channel ID",
    "not_in_channel": "the bot is not in the channel; invite it with /invite @wflogs",
    "is_archived": "the channel is archived; unarchive it or choose another channel",
    "invalid_auth": "SLACK_BOT_TOKEN is not valid; copy the Bot User OAuth Token again",
    "not_authed": "no Slack token was sent; set SLACK_BOT_TOKEN",
    "account_inactive": "the Slack app's token belongs to a deactivated user or app; reinstall the app",
    "token_revoked": "the Slack token was revoked; reinstall the app and update SLACK_BOT_TOKEN",
    "token_expired": "the Slack token expired; reinstall the app and update SLACK_BOT_TOKEN",
    "missing_scope": "the Slack app lacks a scope; reinstall it from manifest.yml",
    "restricted_action": "the workspace does not let the bot post there",
}
# The pacing key of chat.update, which Slack limits per workspace rather than per channel.
UPDATES = "chat.update"
# Errors about the message itself: retry once as plain text.
MESSAGE_SHAPE = {"invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long", "msg_too_long"}


class Sink(Protocol):
    """Something that takes messages."""

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[Block] | None,
        *,
        thread_ts: str | None = None,
        broadcast: bool = False,
    ) -> str:
        """Post a message; return its ts. ``broadcast``: a thread reply also shown in the channel."""
        ...

    def upload(
        self,
        channel: str,
        thread_ts: str | None,
        filename: str,
        content: str | bytes,
        comment: str,
        *,
        title: str | None = None,
        alt_text: str | None = None,
    ) -> str | None:
        """Share a file, in a thread when ``thread_ts`` is given; returns its id."""
        ...

    def delete(self, channel: str, ts: str) -> None:
        """Delete a message this app posted."""
        ...

    def delete_file(self, file_id: str) -> None:
        """Delete a file this app shared."""
        ...

    def update(self, channel: str, ts: str, text: str, blocks: list[Block] | None) -> None:
        """Edit a message posted earlier."""
        ...

    def permalink(self, channel: str, ts: str) -> str | None:
        """A link to a message (and its thread), when there is one."""
        ...


class TerminalSink:
    """Prints messages' plain text; used when no Slack token is configured."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._count = 0
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[Block] | None,
        *,
        thread_ts: str | None = None,
        broadcast: bool = False,
    ) -> str:
        with self._lock:
            self._count += 1
            prefix = ("  ↳ (also in the channel) " if broadcast else "  ↳ ") if thread_ts else ""
            body = _plain(blocks) if blocks else terminal_safe(text)
            self.stream.write(f"{prefix}{body}\n\n")
            self.stream.flush()
            return f"terminal.{self._count}"

    def upload(
        self,
        channel: str,
        thread_ts: str | None,
        filename: str,
        content: str | bytes,
        comment: str,
        *,
        title: str | None = None,
        alt_text: str | None = None,
    ) -> str | None:
        with self._lock:
            if isinstance(content, bytes):
                self.stream.write(f"  ↳ {comment} ({filename}, {len(content):,} bytes)\n")
            else:
                self.stream.write(f"  ↳ {comment} ({filename})\n{terminal_safe(content)}\n")
            self.stream.flush()
        return None

    def delete(self, channel: str, ts: str) -> None:
        # A terminal cannot take back what it printed.
        return None

    def delete_file(self, file_id: str) -> None:
        return None

    def update(self, channel: str, ts: str, text: str, blocks: list[Block] | None) -> None:
        # A terminal cannot change what it printed: an edit is one line saying what changed.
        with self._lock:
            self.stream.write(f"{_unescape(text)}\n\n")
            self.stream.flush()

    def permalink(self, channel: str, ts: str) -> str | None:
        return None


def _plain(blocks: list[Block]) -> str:
    """A readable terminal rendering of blocks: plain text, no Slack markup."""
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header" and "text" in block:
            lines.append(_unescape(block["text"]["text"]))
        if kind == "section" and "text" in block:
            lines.append(plain_text(block["text"]["text"]))
        if kind == "section" and "fields" in block:
            for item in block["fields"]:
                lines.append(plain_text(item["text"]).replace("\n", ": ", 1))
        if kind == "context":
            lines.extend(plain_text(el.get("text", "")) for el in block["elements"])
        if kind == "actions":
            for el in block["elements"]:
                if el.get("url"):
                    lines.append(f"{el['text']['text']}: {el['url']}")
    return "\n".join(line for line in lines if line)


_CODE_BLOCK = re.compile(r"```(.*?)```", re.S)
_SLASH = re.compile(r"`/wflogs (session|run) ([^`]+)`")
_LINK = re.compile(r"<(https?://[^|>]+)(?:\|([^>]*))?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_INLINE = re.compile(r"`([^`\n]*)`")


def _slash_to_cli(match: re.Match[str]) -> str:
    """A ``/wflogs session X`` or ``/wflogs run X`` hint as the terminal's own command."""
    value = _unescape(match.group(2))
    return f"wflogs search {match.group(1)}:{shlex.quote(value)}"


def plain_text(mrkdwn: str) -> str:
    """Slack mrkdwn as plain terminal text: code blocks become indented lines (their text kept as it
    is), bold and inline-code marks go, links show their address, and ``/wflogs`` hints become
    ``wflogs search`` commands."""
    out: list[str] = []
    last = 0
    for block in _CODE_BLOCK.finditer(mrkdwn):
        out.append(_plain_inline(mrkdwn[last : block.start()]))
        code = _unescape(block.group(1).replace("ʼʼʼ", "```")).strip("\n")
        indented = "\n".join("    " + line for line in code.splitlines() or [""])
        before = "".join(out)
        out.append(("\n" if before and not before.endswith("\n") else "") + indented)
        last = block.end()
    out.append(_plain_inline(mrkdwn[last:]))
    return "".join(out)


def _plain_inline(text: str) -> str:
    text = _SLASH.sub(lambda m: "\0" + _slash_to_cli(m) + "\0", text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = _BOLD.sub(r"\1", text)
    parts = text.split("\0")  # the commands made above keep their quotes and backticks
    parts[::2] = [_INLINE.sub(r"\1", part) for part in parts[::2]]
    return _unescape("".join(parts))


def _unescape(text: str) -> str:
    return terminal_safe(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


# Escape sequences a terminal would act on: CSI (colours, cursor, screen clears), OSC (window
# titles, hyperlinks), other ESC sequences and their 8-bit forms; then every control character.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Untrusted text as plain text for a terminal: escape sequences and control characters removed
    (newlines and tabs kept), as ``wflogs search`` prints."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


class SlackSink:
    """Posts through ``chat.postMessage`` at most about once a second per channel.

    A 429 waits the ``Retry-After`` Slack gives (never less) when it is at most
    ``max_wait`` seconds, then carries on; a longer one raises :class:`SlackError`
    with ``retry_after`` so the caller leaves the rest for a later cycle.
    """

    def __init__(
        self,
        client: WebClient,
        *,
        min_interval: float = 1.0,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        update_interval: float | None = None,
    ) -> None:
        self.client = client
        self._min_interval = min_interval
        # chat.update is limited per workspace (Tier 3, about 50 a minute): one edit every 1.2 s.
        self._update_interval = 1.2 * min_interval if update_interval is None else update_interval
        self._max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self.posts = 0
        self.updates = 0

    def _pace(self, channel: str) -> None:
        with self._lock:
            now = self._clock()
            at = max(self._next.get(channel, 0.0), self._blocked_until.get(channel, 0.0))
            wait = at - now
            interval = self._update_interval if channel == UPDATES else self._min_interval
            self._next[channel] = max(now, at) + interval
        if wait > 0:
            self._sleep(wait)

    def _call(self, channel: str, fn: Callable[[], Any]) -> Any:
        for _attempt in range(5):
            with self._lock:
                blocked = self._blocked_until.get(channel, 0.0) - self._clock()
            if blocked > self._max_wait:
                raise SlackError(
                    f"Slack asked to wait {blocked:.0f}s before posting to {channel}",
                    error="ratelimited",
                    retry_after=blocked,
                )
            self._pace(channel)
            try:
                return fn()
            except SlackApiError as exc:
                response = exc.response
                error = str(response.get("error") or "") if response is not None else ""
                status = response.status_code if response is not None else 0
                if status == 429 or error == "ratelimited":
                    retry_after = _retry_after(response.headers if response is not None else {})
                    with self._lock:
                        self._blocked_until[channel] = self._clock() + retry_after
                    log.warning("Slack rate-limited %s; waiting %.0fs as asked", channel, retry_after)
                    continue
                if error in PERMANENT:
                    raise SlackPermanentError(
                        f"Slack refused to post to {channel}: {error} ({PERMANENT[error]})",
                        error=error,
                    )
                if error in MESSAGE_SHAPE:
                    raise SlackError(f"Slack refused the message: {error}", error=error)
                raise SlackError(
                    f"Slack answered {error or f'HTTP {status}'} for {channel}; will retry",
                    error=error or f"http_{status}",
                )
            except (SlackClientError, OSError, ValueError) as exc:
                # Connection refused, timeouts, HTML 5xx pages that are not JSON.
                raise SlackError(
                    f"cannot reach Slack ({type(exc).__name__}); alerts wait and are retried",
                    error="unreachable",
                )
        raise SlackError(f"Slack kept rate-limiting {channel}", error="ratelimited")

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[Block] | None,
        *,
        thread_ts: str | None = None,
        broadcast: bool = False,
    ) -> str:
        def send(with_blocks: bool) -> Any:
            return self.client.chat_postMessage(
                channel=channel,
                text=text,
                blocks=blocks if with_blocks else None,
                thread_ts=thread_ts,
                reply_broadcast=True if broadcast and thread_ts else None,
                unfurl_links=False,
                unfurl_media=False,
            )

        try:
            response = self._call(channel, lambda: send(bool(blocks)))
        except SlackError as exc:
            if exc.error not in MESSAGE_SHAPE or not blocks:
                raise
            log.warning("Slack refused the blocks (%s); posting the plain text instead", exc.error)
            response = self._call(channel, lambda: send(False))
        self.posts += 1
        return str(response["ts"])

    def upload(
        self,
        channel: str,
        thread_ts: str | None,
        filename: str,
        content: str | bytes,
        comment: str,
        *,
        title: str | None = None,
        alt_text: str | None = None,
    ) -> str | None:
        extra: dict[str, Any] = {"alt_txt": alt_text} if alt_text else {}
        as_file: dict[str, Any] = {"file": content} if isinstance(content, bytes) else {"content": content}
        response = self._call(
            channel,
            lambda: self.client.files_upload_v2(
                channel=channel,
                thread_ts=thread_ts,
                filename=filename,
                title=title or filename,
                initial_comment=comment,
                **as_file,
                **extra,
            ),
        )
        self.posts += 1
        files = response.get("files") or ([response.get("file")] if response.get("file") else [])
        return str(files[0]["id"]) if files and files[0].get("id") else None

    def delete(self, channel: str, ts: str) -> None:
        """``chat.delete`` of this app's own message; one already gone is fine."""
        try:
            self._call(channel, lambda: self.client.chat_delete(channel=channel, ts=ts))
        except SlackError as exc:
            if exc.error != "message_not_found":
                raise

    def delete_file(self, file_id: str) -> None:
        """``files.delete`` of a file this app shared; one already gone is fine."""
        try:
            self._call("files", lambda: self.client.files_delete(file=file_id))
        except SlackError as exc:
            if exc.error != "file_not_found":
                raise

    def update(self, channel: str, ts: str, text: str, blocks: list[Block] | None) -> None:
        """``chat.update``, paced and 429-aware like posts (workspace-wide pacing)."""
        self._call(
            UPDATES,
            lambda: self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks),
        )
        self.updates += 1

    def permalink(self, channel: str, ts: str) -> str | None:
        """``chat.getPermalink``; None when Slack gives none."""
        response = self._call(channel, lambda: self.client.chat_getPermalink(channel=channel, message_ts=ts))
        link = response.get("permalink")
        return str(link) if link else None


def _retry_after(headers: Any) -> float:
    raw = None
    if headers is not None:
        for key in ("Retry-After", "retry-after"):
            value = headers.get(key) if hasattr(headers, "get") else None
            if value:
                raw = value[0] if isinstance(value, list) else value
                break
    try:
        return max(1.0, float(raw)) if raw is not None else 30.0
    except (TypeError, ValueError):
        return 30.0
