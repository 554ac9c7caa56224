"""Logging set-up: one format, quiet libraries, and secrets scrubbed from every record."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_TOKENISH = re.compile(r"\b(xox[a-z]-[0-9A-Za-z-]{6,}|xapp-[0-9A-Za-z-]{6,}|app-[A-Za-z0-9]{12,})")


class SecretFilter(logging.Filter):
    """Replaces configured secrets and anything shaped like a key or token with ``***``."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _TOKENISH.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def setup_logging(secrets: Iterable[str | None], *, level: int = logging.INFO) -> None:
    """Log to stderr with secrets scrubbed; keep HTTP libraries at WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "slack_sdk", "slack_bolt", "apscheduler", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
