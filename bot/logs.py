"""Logging set-up: one format, quiet libraries, and secrets scrubbed from every record."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from bot.text import hide_url_credentials

_TOKENISH = re.compile(r"\b(xox[a-z]-[0-9A-Za-z-]{6,}|xapp-[0-9A-Za-z-]{6,}|app-[A-Za-z0-9]{12,})")


class Reminder:
    """Says a lasting problem once, then at most every ``every`` seconds while it lasts."""

    def __init__(self, every: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._now = now
        self._said: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> bool:
        """Whether to say ``key`` now (the first time, or ``every`` seconds after the last)."""
        now = self._now()
        with self._lock:
            last = self._said.get(key)
            if last is not None and now - last < self.every:
                return False
            self._said[key] = now
            return True

    def clear(self, key: str) -> bool:
        """The problem is over; True when it had been said."""
        with self._lock:
            return self._said.pop(key, None) is not None


class SecretFilter(logging.Filter):
    """Replaces configured secrets and anything shaped like a key or token with ``***``."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return hide_url_credentials(_TOKENISH.sub("***", text))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``time``, ``level``, ``logger``, ``message``, ``error``), for log shippers.

    Runs after :class:`SecretFilter`, so what it prints is already scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["error"] = record.exc_text
        if record.threadName and record.threadName != "MainThread":
            data["thread"] = record.threadName
        return json.dumps(data, ensure_ascii=False)


def setup_logging(
    secrets: Iterable[str | None], *, level: int = logging.INFO, json_lines: bool = False
) -> None:
    """Log to stderr with secrets scrubbed (as text, or one JSON object per line); keep HTTP
    libraries at WARNING."""
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "slack_sdk", "slack_bolt", "apscheduler", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
