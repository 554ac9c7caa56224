"""The one error hierarchy of wflogs.

    WflogsError                 every error the user should read, with what to do next
    ├── ConfigError             the configuration is wrong; fix it and start again
    ├── DatabaseError           WFLOGS_DB cannot be used (no such directory, not SQLite, read-only, full)
    ├── QueryError              a search (``/wflogs ...``) cannot be run as typed; carries the usage line
    ├── DifyError               a Dify request did not give a usable answer
    │   ├── DifyAuthError       401/403: the app's key was rejected or the app is gone
    │   ├── DifyBadRequest      400: Dify refused a query value (e.g. an unknown account)
    │   ├── DifyNotFound        404: no such run
    │   └── DifyUnavailable     5xx, timeouts, connection errors, non-JSON bodies (transient)
    └── SlackError              Slack refused or could not take a message
        └── SlackPermanentError the token, channel or membership must be fixed by a person

Messages never contain API keys or tokens.
"""

from __future__ import annotations


class WflogsError(Exception):
    """Root of every error wflogs reports to a person."""


class ConfigError(WflogsError):
    """The configuration is invalid; the message names the fix."""


class DatabaseError(WflogsError):
    """The database file cannot be used; the message names ``WFLOGS_DB``, the path and the fix."""


class QueryError(WflogsError):
    """A search query is wrong as typed; ``usage`` is the line to show with the message."""

    def __init__(self, message: str, *, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class DifyError(WflogsError):
    """A request to Dify failed."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class DifyAuthError(DifyError):
    """Dify rejected the app's API key (401) or the app is unavailable (403)."""


class DifyBadRequest(DifyError):
    """Dify refused a parameter (400)."""


class DifyNotFound(DifyError):
    """Dify has no such resource (404)."""


class DifyUnavailable(DifyError):
    """Dify is down, slow or answered something that is not its API (transient)."""


class SlackError(WflogsError):
    """Slack did not accept a request."""

    def __init__(self, message: str, *, error: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.error = error
        self.retry_after = retry_after


class SlackPermanentError(SlackError):
    """Slack refused for a reason only a person can fix (auth, channel, membership)."""
