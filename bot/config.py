"""Configuration: the only module that reads the environment.

One app comes from environment variables; many apps come from a TOML file
(``WFLOGS_CONFIG``, or ``wflogs.toml`` when present). Everything else in wflogs
is handed a :class:`Settings` and never looks at ``os.environ`` itself.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import ConfigError
from bot.text import URL_CREDENTIALS, hide_url_credentials

DEFAULT_DIFY_API_URL = "https://api.dify.ai/v1"
DEFAULT_SLACK_API_URL = "https://slack.com/api/"
# Dify's WORKFLOW_MAX_EXECUTION_TIME defaults to 1200 s; half as much again is margin
# for slow commits, clock skew and rows that become visible after the second they carry.
DEFAULT_LOOKBACK = 1800
DEFAULT_BACKFILL = 3600
DEFAULT_POLL_INTERVAL = 60
# An incident resolves after this many seconds without a failure of its kind.
DEFAULT_RESOLVE_AFTER = 1800
# Dify's default WORKFLOW_MAX_EXECUTION_TIME: a run logged at its start can fail this long after.
MIN_SAFE_LOOKBACK = 1200
LOG_FORMATS = ("text", "json")

_APP_FIELDS = {
    "name",
    "api_key",
    "api_key_env",
    "api_url",
    "channel",
    "console_url",
    "digest_channel",
    "digest",
    "digest_chart",
    "channels",
    "alert_partial",
    "resolve_after",
    "app_id",
}
# Who is told and when (mentions, escalation, failure rate, stuck runs): see _watch_app_fields.
_WATCH_APP_FIELDS = {"mention", "escalate_after", "escalate_to", "rate_threshold", "stuck_after"}
_APP_FIELDS |= _WATCH_APP_FIELDS
_SLACK_FIELDS = {"allowed_users", "allowed_channels"}
_TOP_FIELDS = {"apps", "slack", "digest_chart", "workspace"}
_WORKSPACE_FIELDS = {"console_url", "workspace_id", "email", "admin_api_key_env", "password_env", "apps"}
DEFAULT_DISCOVER_INTERVAL = 300
DEFAULT_CONSOLE_CONCURRENCY = 3
_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class AppConfig:
    """One Dify workflow app the bot watches."""

    api_key: str = field(repr=False)
    api_url: str = DEFAULT_DIFY_API_URL
    name: str | None = None
    channel: str | None = None
    console_url: str | None = None
    digest_channel: str | None = None
    digest: bool = True
    # The digest's chart of the last 14 days (off when this, the file's or the environment's is false).
    digest_chart: bool = True
    channels: tuple[str, ...] | None = None
    alert_partial: bool = False
    resolve_after: int | None = None
    source: str = "environment"
    # None: the environment's default applies.
    mention: tuple[str, ...] | None = None
    escalate_after: int | None = None
    escalate_to: tuple[str, ...] | None = None
    rate_threshold: float | None = None
    stuck_after: int | None = None
    # Workspace mode: the Dify app id (a discovered app, or [[apps]] settings for one), its mode.
    app_id: str | None = None
    mode: str | None = None

    @property
    def via_console(self) -> bool:
        """Read through the console API (discovered), not with an ``app-`` key."""
        return self.api_key.startswith("console:")

    @property
    def id(self) -> str:
        """A stable identifier for state, derived from URL and key without revealing the key."""
        digest = hashlib.sha256(f"{self.api_url}\n{self.api_key}".encode()).hexdigest()
        return digest[:16]

    @property
    def label(self) -> str:
        """What to call the app before its name is known, never containing the key."""
        return self.name or f"app {self.key_hint}"

    @property
    def key_hint(self) -> str:
        """The key's last four characters, enough to tell keys apart in messages."""
        return f"…{self.api_key[-4:]}" if len(self.api_key) >= 8 else "…"


@dataclass(frozen=True)
class WorkspaceSettings:
    """One credential for a whole Dify workspace, through its console API (docs/workspace.md)."""

    console_url: str
    admin_key: str | None = field(default=None, repr=False)
    workspace_id: str | None = None
    email: str | None = None
    password: str | None = field(default=None, repr=False)
    concurrency: int = DEFAULT_CONSOLE_CONCURRENCY
    discover_interval: int = DEFAULT_DISCOVER_INTERVAL
    patterns: tuple[str, ...] = ()

    @property
    def way_in(self) -> str:
        return "admin key" if self.admin_key else f"account {self.email}"

    def wants(self, name: str) -> bool:
        """WFLOGS_APPS: name globs, ``!`` excludes; none given: every app."""
        include = [p for p in self.patterns if not p.startswith("!")]
        exclude = [p[1:] for p in self.patterns if p.startswith("!")]
        low = name.lower()
        if include and not any(fnmatch.fnmatchcase(low, p.lower()) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(low, p.lower()) for p in exclude)


@dataclass(frozen=True)
class Settings:
    """Everything wflogs needs to run, resolved and validated."""

    apps: tuple[AppConfig, ...]
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_api_url: str = DEFAULT_SLACK_API_URL
    slack_app_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    port: int = 3000
    alert_channel: str | None = None
    db_path: str = "wflogs.db"
    poll_interval: int = DEFAULT_POLL_INTERVAL
    backfill: int = DEFAULT_BACKFILL
    lookback: int = DEFAULT_LOOKBACK
    concurrency: int = 16
    resolve_after: int = DEFAULT_RESOLVE_AFTER
    digest_channel: str | None = None
    digest_time: str = "09:00"
    # WFLOGS_DIGEST_CHART and a top-level ``digest_chart`` in wflogs.toml (both must allow it).
    digest_chart: bool = True
    timezone: str = "UTC"
    allowed_users: tuple[str, ...] | None = None
    allowed_channels: tuple[str, ...] | None = None
    config_path: str | None = None
    warnings: tuple[str, ...] = ()
    watch: WatchSettings = field(default_factory=lambda: WatchSettings())
    http_host: str = "0.0.0.0"  # noqa: S104  (health checks and Slack reach it from outside)
    log_format: str = "text"
    notify_socket: str | None = None  # systemd's NOTIFY_SOCKET (Type=notify, WatchdogSec=)
    workspace: WorkspaceSettings | None = None
    # [[apps]] entries that only set options for discovered apps (by app_id or name).
    overrides: tuple[AppConfig, ...] = ()

    @property
    def slack_enabled(self) -> bool:
        """Whether alerts go to Slack (otherwise they are printed)."""
        return bool(self.slack_bot_token)

    @property
    def interactive(self) -> bool:
        """Whether Slack can send clicks to wflogs (Socket Mode or a signing secret)."""
        return bool(self.slack_bot_token and (self.slack_app_token or self.slack_signing_secret))

    @property
    def tz(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)

    @property
    def digest_hour_minute(self) -> tuple[int, int]:
        """The digest time as (hour, minute)."""
        hour, minute = self.digest_time.split(":")
        return int(hour), int(minute)


def _int_env(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
    what: str = "a whole number of seconds",
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}; e.g. {name}={default}")
    if value < minimum:
        raise ConfigError(f"{name}={value} is too small; use {minimum} or more")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is too large; use {maximum} or less")
    return value


def _seconds(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a whole number of seconds, 1 or more (e.g. 1800), not {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"", "0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{where} must be true or false, not {value!r}")


def _channel(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _CHANNEL_RE.match(value.strip()):
        raise ConfigError(
            f"{where}={value!r} is not a Slack channel ID; use the ID (like C0123ABCD) "
            "from the channel's details, not its name"
        )
    return value.strip()


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{where} must be a list of strings, like ["C0123ABCD"]')
    return tuple(v.strip() for v in value)


def _url(value: str, where: str) -> str:
    value = value.strip()
    if URL_CREDENTIALS.search(value) or "@" in value.split("://", 1)[-1].split("/", 1)[0]:
        # httpx would send them as a Basic Authorization header in place of the app key's Bearer
        # header, so such a URL cannot work; and it must never be shown with its password.
        raise ConfigError(
            f"{where}={hide_url_credentials(value)} carries a user and password, which wflogs cannot "
            "use (Dify needs the app key in the Authorization header): remove them from the URL; "
            "for a proxy set HTTPS_PROXY (or HTTP_PROXY) instead"
        )
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{where}={value!r} is not an http(s) URL, e.g. https://api.dify.ai/v1")
    return value.rstrip("/")


def _check_key(key: str, where: str) -> str:
    key = key.strip()
    if not key:
        raise ConfigError(f"{where} is empty; copy the app's API key from Dify (API Access)")
    if any(c.isspace() for c in key):
        raise ConfigError(f"{where} contains white space; copy the key again without it")
    return key


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it or unset WFLOGS_CONFIG")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its permissions")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}")


def _check_table(raw: object, where: str, allowed: set[str]) -> None:
    """A TOML table with only the fields wflogs knows (a typo is named, with what is allowed)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def _apps_from_toml(
    data: dict[str, Any], path: Path, env: Mapping[str, str], default_url: str, *, workspace: bool = False
) -> list[AppConfig]:
    unknown = set(data) - _TOP_FIELDS
    if unknown:
        raise ConfigError(
            f"{path}: unknown section {sorted(unknown)[0]!r}; allowed: [[apps]], [slack] and [workspace]"
        )
    apps_raw = data.get("apps")
    if workspace and apps_raw is None:
        return []
    if not isinstance(apps_raw, list) or not apps_raw:
        raise ConfigError(f"{path}: no [[apps]] entries; add one with api_key or api_key_env")
    apps: list[AppConfig] = []
    for number, raw in enumerate(apps_raw, start=1):
        where = f"{path}: [[apps]] #{number}"
        _check_table(raw, where, _APP_FIELDS)
        if "api_key" in raw and "api_key_env" in raw:
            raise ConfigError(f"{where}: give api_key or api_key_env, not both")
        if "api_key_env" in raw:
            var = raw["api_key_env"]
            if not isinstance(var, str) or not env.get(var, "").strip():
                raise ConfigError(f"{where}: api_key_env names {var!r}, which is not set; export it")
            key = _check_key(env[var], f"{where}: ${var}")
        elif "api_key" in raw:
            if not isinstance(raw["api_key"], str):
                raise ConfigError(f"{where}: api_key must be a string")
            key = _check_key(raw["api_key"], f"{where}: api_key")
        elif workspace and (raw.get("app_id") or raw.get("name")):
            # Settings for a discovered app, matched by its id or its name.
            key = "override:" + str(raw.get("app_id") or raw.get("name"))
        else:
            raise ConfigError(f"{where}: missing api_key (or api_key_env naming a variable)")
        for text_field in ("name", "console_url", "api_url"):
            if text_field in raw and not isinstance(raw[text_field], str):
                raise ConfigError(f"{where}: {text_field} must be a string")
        apps.append(
            AppConfig(
                api_key=key,
                api_url=_url(raw.get("api_url", default_url), f"{where}: api_url"),
                name=(raw.get("name") or "").strip() or None,
                channel=_channel(raw.get("channel"), f"{where}: channel"),
                console_url=(raw.get("console_url") or "").strip() or None,
                digest_channel=_channel(raw.get("digest_channel"), f"{where}: digest_channel"),
                digest=_bool(raw.get("digest", True), f"{where}: digest"),
                digest_chart=_bool(raw.get("digest_chart", True), f"{where}: digest_chart"),
                channels=_str_list(raw["channels"], f"{where}: channels") if "channels" in raw else None,
                alert_partial=_bool(raw.get("alert_partial", False), f"{where}: alert_partial"),
                resolve_after=_seconds(raw.get("resolve_after"), f"{where}: resolve_after"),
                source=f"{path} #{number}",
                app_id=(str(raw["app_id"]).strip() or None) if "app_id" in raw else None,
                **_watch_app_fields(raw, where),
            )
        )
    ids = [a.id for a in apps]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: the same api_key appears in two [[apps]] entries; keep one")
    return apps


def load_settings(env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
    """Build validated :class:`Settings` from the environment and the optional TOML file."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    warnings: list[str] = []
    default_url = _url(env.get("DIFY_API_URL") or DEFAULT_DIFY_API_URL, "DIFY_API_URL")
    alert_channel = _channel(env.get("WFLOGS_ALERT_CHANNEL"), "WFLOGS_ALERT_CHANNEL")
    digest_channel = _channel(env.get("WFLOGS_DIGEST_CHANNEL"), "WFLOGS_DIGEST_CHANNEL")
    alert_partial = _bool(env.get("WFLOGS_ALERT_PARTIAL", ""), "WFLOGS_ALERT_PARTIAL")
    digest_chart = _bool(env.get("WFLOGS_DIGEST_CHART", "").strip() or True, "WFLOGS_DIGEST_CHART")

    config_path: Path | None = None
    if env.get("WFLOGS_CONFIG", "").strip():
        config_path = Path(env["WFLOGS_CONFIG"].strip())
        if not config_path.is_absolute():
            config_path = cwd / config_path
    elif (cwd / "wflogs.toml").exists():
        config_path = cwd / "wflogs.toml"

    allowed_users: tuple[str, ...] | None = None
    allowed_channels: tuple[str, ...] | None = None
    data = _read_toml(config_path) if config_path is not None else {}
    workspace = _workspace(env, data, config_path, default_url)
    overrides: list[AppConfig] = []
    if config_path is not None:
        apps = _apps_from_toml(data, config_path, env, default_url, workspace=workspace is not None)
        overrides = [a for a in apps if a.api_key.startswith("override:")]
        apps = [a for a in apps if not a.api_key.startswith("override:")]
        if "digest_chart" in data:
            digest_chart = digest_chart and _bool(data["digest_chart"], f"{config_path}: digest_chart")
        if env.get("DIFY_API_KEY", "").strip():
            warnings.append(f"DIFY_API_KEY is set but ignored: the apps come from {config_path}")
        slack = data.get("slack", {})
        if not isinstance(slack, dict):
            raise ConfigError(f"{config_path}: [slack] must be a table")
        unknown = set(slack) - _SLACK_FIELDS
        if unknown:
            raise ConfigError(
                f"{config_path}: [slack] has unknown field {sorted(unknown)[0]!r}; "
                f"allowed: {', '.join(sorted(_SLACK_FIELDS))}"
            )
        if "allowed_users" in slack:
            allowed_users = _str_list(slack["allowed_users"], f"{config_path}: [slack] allowed_users")
        if "allowed_channels" in slack:
            allowed_channels = _str_list(
                slack["allowed_channels"], f"{config_path}: [slack] allowed_channels"
            )
        if alert_partial:
            apps = [replace(a, alert_partial=True) for a in apps]
    elif workspace is not None and not env.get("DIFY_API_KEY", "").strip():
        apps = []
    else:
        key = env.get("DIFY_API_KEY", "")
        if not key.strip():
            raise ConfigError(
                "no Dify app configured: export DIFY_API_KEY=app-... (the app's API key), "
                "or DIFY_ADMIN_API_KEY and DIFY_WORKSPACE_ID to watch every app of the workspace, "
                "or list apps in wflogs.toml (see README)"
            )
        apps = [
            AppConfig(
                api_key=_check_key(key, "DIFY_API_KEY"),
                api_url=default_url,
                alert_partial=alert_partial,
            )
        ]

    token = env.get("SLACK_BOT_TOKEN", "").strip() or None
    if token and not token.startswith("xox"):
        raise ConfigError("SLACK_BOT_TOKEN does not look like a bot token; it starts with xoxb-")
    app_token = env.get("SLACK_APP_TOKEN", "").strip() or None
    if app_token and not app_token.startswith("xapp-"):
        raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with xapp-")
    if token and workspace is not None and not alert_channel:
        raise ConfigError(
            "watching a workspace needs WFLOGS_ALERT_CHANNEL: discovered apps alert there unless "
            "[[apps]] gives them a channel"
        )
    if token:
        for app in apps:
            if not (app.channel or alert_channel):
                raise ConfigError(
                    f"{app.label} ({app.source}) has no alert channel: set WFLOGS_ALERT_CHANNEL "
                    'or channel = "C..." for the app'
                )

    timezone = env.get("WFLOGS_TIMEZONE", "").strip() or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"WFLOGS_TIMEZONE={timezone!r} is not a known time zone; use an IANA name like Europe/Berlin"
        )
    digest_time = env.get("WFLOGS_DIGEST_TIME", "").strip() or "09:00"
    match = _TIME_RE.match(digest_time)
    if not match:
        raise ConfigError(f"WFLOGS_DIGEST_TIME={digest_time!r} is not a time of day; use HH:MM, e.g. 09:00")
    digest_time = f"{int(match.group(1)):02d}:{match.group(2)}"

    operations = _operations(env)
    lookback = _int_env(env, "WFLOGS_LOOKBACK", DEFAULT_LOOKBACK, minimum=60)
    if lookback < MIN_SAFE_LOOKBACK:
        warnings.append(lookback_warning(lookback))
    watch = _watch_settings(env, lookback)
    _check_rate_window(watch, apps, lookback)
    warnings.extend(_watch_warnings(watch, apps))

    return Settings(
        apps=tuple(apps),
        slack_bot_token=token,
        slack_api_url=_url(env.get("SLACK_API_URL") or DEFAULT_SLACK_API_URL, "SLACK_API_URL") + "/",
        slack_app_token=app_token,
        slack_signing_secret=env.get("SLACK_SIGNING_SECRET", "").strip() or None,
        port=_int_env(env, "PORT", 3000, minimum=1, maximum=65535, what="a port number"),
        alert_channel=alert_channel,
        db_path=env.get("WFLOGS_DB", "").strip() or "wflogs.db",
        poll_interval=_int_env(env, "WFLOGS_POLL_INTERVAL", DEFAULT_POLL_INTERVAL, minimum=5),
        backfill=_int_env(env, "WFLOGS_BACKFILL", DEFAULT_BACKFILL, minimum=0),
        lookback=lookback,
        concurrency=_int_env(env, "WFLOGS_CONCURRENCY", 16, minimum=1, what="a whole number"),
        resolve_after=_int_env(env, "WFLOGS_RESOLVE_AFTER", DEFAULT_RESOLVE_AFTER, minimum=1),
        digest_channel=digest_channel,
        digest_time=digest_time,
        digest_chart=digest_chart,
        timezone=timezone,
        allowed_users=allowed_users,
        allowed_channels=allowed_channels,
        config_path=str(config_path) if config_path else None,
        warnings=tuple(warnings),
        watch=watch,
        workspace=workspace,
        overrides=tuple(overrides),
        **operations,
    )


def _workspace(
    env: Mapping[str, str], data: dict[str, Any], path: Path | None, default_url: str
) -> WorkspaceSettings | None:
    """DIFY_ADMIN_API_KEY + DIFY_WORKSPACE_ID, or DIFY_CONSOLE_EMAIL + DIFY_CONSOLE_PASSWORD
    (or the same in a [workspace] table, secrets from *_env variables); None when neither."""
    table = data.get("workspace") or {}
    where = f"{path}: [workspace]"
    _check_table(table, where, _WORKSPACE_FIELDS)

    def secret(env_name: str, key_field: str) -> str | None:
        if key_field in table:
            var = table[key_field]
            if not isinstance(var, str) or not env.get(var, "").strip():
                raise ConfigError(f"{where}: {key_field} names {var!r}, which is not set; export it")
            return env[var].strip()
        return env.get(env_name, "").strip() or None

    admin_key = secret("DIFY_ADMIN_API_KEY", "admin_api_key_env")
    password = secret("DIFY_CONSOLE_PASSWORD", "password_env")
    workspace_id = (
        env.get("DIFY_WORKSPACE_ID", "").strip() or str(table.get("workspace_id") or "").strip() or None
    )
    email = env.get("DIFY_CONSOLE_EMAIL", "").strip() or str(table.get("email") or "").strip() or None
    if not (admin_key or email or password or table):
        return None
    if admin_key and not workspace_id:
        raise ConfigError(
            "DIFY_ADMIN_API_KEY needs DIFY_WORKSPACE_ID (the workspace's id: Dify's tenants table, "
            "or the id in GET /console/api/workspaces)"
        )
    if not admin_key and not (email and password):
        raise ConfigError(
            "watching a workspace needs DIFY_ADMIN_API_KEY and DIFY_WORKSPACE_ID, or "
            "DIFY_CONSOLE_EMAIL and DIFY_CONSOLE_PASSWORD"
        )
    url = (
        env.get("DIFY_CONSOLE_URL", "").strip() or str(table.get("console_url") or "").strip() or default_url
    )
    url = _url(url, "DIFY_CONSOLE_URL")
    raw_patterns = env.get("WFLOGS_APPS", "").strip()
    if raw_patterns:
        patterns = tuple(p.strip() for p in raw_patterns.split(",") if p.strip())
    else:
        patterns = _str_list(table["apps"], f"{where}: apps") if "apps" in table else ()
    return WorkspaceSettings(
        console_url=url,
        admin_key=admin_key,
        workspace_id=workspace_id,
        email=email if not admin_key else None,
        password=password if not admin_key else None,
        concurrency=_int_env(
            env, "WFLOGS_CONSOLE_CONCURRENCY", DEFAULT_CONSOLE_CONCURRENCY, minimum=1, maximum=10
        ),
        discover_interval=_int_env(env, "WFLOGS_DISCOVER_INTERVAL", DEFAULT_DISCOVER_INTERVAL, minimum=30),
        patterns=patterns,
    )


def alert_channel_for(settings: Settings, app: AppConfig) -> str | None:
    """The channel an app's alerts go to."""
    return app.channel or settings.alert_channel


def resolve_after_for(settings: Settings, app: AppConfig) -> int:
    """Seconds without a failure after which an incident of ``app`` resolves."""
    return app.resolve_after or settings.resolve_after


def digest_channel_for(settings: Settings, app: AppConfig) -> str | None:
    """The channel an app's digest goes to."""
    return app.digest_channel or settings.digest_channel or alert_channel_for(settings, app)


def digest_chart_for(settings: Settings, app: AppConfig) -> bool:
    """Whether an app's digest comes with the chart of the last 14 days."""
    return settings.digest_chart and app.digest_chart


def lookback_warning(lookback: int) -> str:
    """The warning for a look-back window shorter than Dify's longest run."""
    return (
        f"WFLOGS_LOOKBACK={lookback} is below {MIN_SAFE_LOOKBACK} s: Dify 1.11+ logs a run when it "
        "starts, so a run that fails more than that long after starting can be missed; "
        f"use {MIN_SAFE_LOOKBACK} or more (default {DEFAULT_LOOKBACK})"
    )


def _operations(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings of the process itself: where health and metrics listen, how logs look."""
    host = env.get("WFLOGS_HTTP_HOST", "").strip() or "0.0.0.0"  # noqa: S104
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(
            f"WFLOGS_HTTP_HOST={host!r} is not a host; use an address like 0.0.0.0 or 127.0.0.1"
        )
    log_format = env.get("WFLOGS_LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"WFLOGS_LOG_FORMAT={log_format!r} is not known; use text or json")
    notify_socket = env.get("NOTIFY_SOCKET", "").strip() or None
    return {"http_host": host, "log_format": log_format, "notify_socket": notify_socket}


# -- who is told, and when: mentions, escalation, failure rate, stuck runs ----------

DEFAULT_RATE_WINDOW = 900
DEFAULT_RATE_MIN_RUNS = 10
# Dify's WORKFLOW_MAX_EXECUTION_TIME default: a run still going past it is not merely slow.
DIFY_MAX_EXECUTION_TIME = MIN_SAFE_LOOKBACK
SPECIAL_MENTIONS = ("here", "channel")
_MEMBER_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
_GROUP_RE = re.compile(r"^S[A-Z0-9]{2,}$")
_MENTION_HELP = (
    "mentions take Slack IDs: a member ID like U0123ABCD (profile > ⋮ > Copy member ID), "
    "a user-group ID like S0123ABCD, or here / channel"
)


@dataclass(frozen=True)
class WatchSettings:
    """Defaults (from the environment) for mentions, escalation, failure-rate and stuck-run alerts."""

    mention: tuple[str, ...] = ()
    escalate_after: int = 0
    escalate_to: tuple[str, ...] | None = None
    rate_threshold: float = 0.0
    rate_window: int = DEFAULT_RATE_WINDOW
    rate_min_runs: int = DEFAULT_RATE_MIN_RUNS
    stuck_after: int = 0


def mention_id(value: str, where: str) -> str:
    """One validated mention: a member (U…/W…) or user-group (S…) ID, ``here`` or ``channel``."""
    text = value.strip()
    bare = text.lstrip("@!").lower()
    if bare in SPECIAL_MENTIONS and text.lstrip("@!") == bare:
        return bare
    if _MEMBER_RE.match(text) or _GROUP_RE.match(text):
        return text
    if bare == "everyone":
        raise ConfigError(f"{where}: {value!r} is not allowed; use channel (or here) instead")
    if _CHANNEL_RE.match(text):
        raise ConfigError(f"{where}: {value!r} is a channel ID, not a person or group; {_MENTION_HELP}")
    if text.upper() != text or text.startswith(("@", "#")) or not text:
        raise ConfigError(f"{where}: {value!r} looks like a name, not an ID; {_MENTION_HELP}")
    raise ConfigError(f"{where}: {value!r} is not a Slack member or user-group ID; {_MENTION_HELP}")


def _mentions(value: Any, where: str) -> tuple[str, ...]:
    """A mention list from TOML (a list of strings) or the environment (comma separated)."""
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigError(f'{where} must be a list of Slack IDs, like ["U0123ABCD", "S0456EFGH", "here"]')
    out: list[str] = []
    for item in items:
        mention = mention_id(item, where)
        if mention not in out:
            out.append(mention)
    return tuple(out)


def _watch_seconds(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be a whole number of seconds, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}={value} is too small; use {minimum} or more (0 turns it off)")
    return value


def _fraction(value: Any, where: str) -> float:
    """A share of runs: 0 (off) or a number between 0 and 1, exclusive of 1."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(f"{where}={text!r} is not a number; use a fraction like 0.2 (20% of runs)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a fraction like 0.2 (20% of runs), not {value!r}")
    if not 0 <= value < 1:
        raise ConfigError(
            f"{where}={value} is not a fraction between 0 and 1; "
            "use e.g. 0.2 for 20% of runs (0 turns it off)"
        )
    return float(value)


def _watch_app_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The per-app overrides of :class:`WatchSettings` in a ``[[apps]]`` entry."""
    out: dict[str, Any] = {}
    if "mention" in raw:
        out["mention"] = _mentions(raw["mention"], f"{where}: mention")
    if "escalate_to" in raw:
        out["escalate_to"] = _mentions(raw["escalate_to"], f"{where}: escalate_to")
    if "escalate_after" in raw:
        out["escalate_after"] = _watch_seconds(raw["escalate_after"], f"{where}: escalate_after")
    if "rate_threshold" in raw:
        out["rate_threshold"] = _fraction(raw["rate_threshold"], f"{where}: rate_threshold")
    if "stuck_after" in raw:
        out["stuck_after"] = _watch_seconds(raw["stuck_after"], f"{where}: stuck_after", minimum=0)
        if 0 < out["stuck_after"] < 60:
            raise ConfigError(f"{where}: stuck_after={out['stuck_after']} is too small; use 60 or more")
    return out


def _watch_settings(env: Mapping[str, str], lookback: int) -> WatchSettings:
    """The environment's defaults for mentions, escalation, failure rate and stuck runs."""
    escalate_to = None
    if env.get("WFLOGS_ESCALATE_TO", "").strip():
        escalate_to = _mentions(env["WFLOGS_ESCALATE_TO"], "WFLOGS_ESCALATE_TO")
    rate_window = _int_env(env, "WFLOGS_RATE_WINDOW", DEFAULT_RATE_WINDOW, minimum=60)
    stuck_after = _int_env(env, "WFLOGS_STUCK_AFTER", 0, minimum=0)
    if 0 < stuck_after < 60:
        raise ConfigError(f"WFLOGS_STUCK_AFTER={stuck_after} is too small; use 60 or more (0 turns it off)")
    return WatchSettings(
        mention=_mentions(env.get("WFLOGS_MENTION", ""), "WFLOGS_MENTION"),
        escalate_after=_int_env(env, "WFLOGS_ESCALATE_AFTER", 0, minimum=0),
        escalate_to=escalate_to,
        rate_threshold=_fraction(env.get("WFLOGS_RATE_THRESHOLD", "").strip() or 0, "WFLOGS_RATE_THRESHOLD"),
        rate_window=rate_window,
        rate_min_runs=_int_env(
            env, "WFLOGS_RATE_MIN_RUNS", DEFAULT_RATE_MIN_RUNS, minimum=1, what="a whole number of runs"
        ),
        stuck_after=stuck_after,
    )


def _check_rate_window(watch: WatchSettings, apps: list[AppConfig], lookback: int) -> None:
    """The failed and stopped runs of the rate window are counted from what the poller remembers
    of its look-back window (which costs no request): a longer window would undercount."""
    thresholds = [a.rate_threshold if a.rate_threshold is not None else watch.rate_threshold for a in apps]
    if any(thresholds) and watch.rate_window > lookback:
        raise ConfigError(
            f"WFLOGS_RATE_WINDOW={watch.rate_window} is longer than WFLOGS_LOOKBACK={lookback}; "
            f"set WFLOGS_LOOKBACK={watch.rate_window} (or more), or shorten the window"
        )


def _watch_warnings(watch: WatchSettings, apps: list[AppConfig]) -> list[str]:
    out: list[str] = []
    for app in apps:
        stuck = app.stuck_after if app.stuck_after is not None else watch.stuck_after
        if 0 < stuck < DIFY_MAX_EXECUTION_TIME:
            out.append(
                f"{app.label}: stuck runs are reported after {stuck}s, below Dify's "
                f"WORKFLOW_MAX_EXECUTION_TIME ({DIFY_MAX_EXECUTION_TIME}s by default): runs that are only "
                "slow will be called stuck"
            )
        after = app.escalate_after if app.escalate_after is not None else watch.escalate_after
        if after and not escalation_targets(watch, app):
            out.append(
                f"{app.label}: escalation is on but names nobody; set WFLOGS_ESCALATE_TO or WFLOGS_MENTION "
                "(or escalate_to / mention for the app)"
            )
    return out


def escalation_targets(watch: WatchSettings, app: AppConfig) -> tuple[str, ...]:
    """Who an escalation mentions: the app's escalate_to, else WFLOGS_ESCALATE_TO, else the mention list."""
    if app.escalate_to is not None:
        return app.escalate_to
    if watch.escalate_to is not None:
        return watch.escalate_to
    return app.mention if app.mention is not None else watch.mention


def mentions_for(settings: Settings, app: AppConfig) -> tuple[str, ...]:
    """Who a new incident of ``app`` mentions (possibly nobody)."""
    return app.mention if app.mention is not None else settings.watch.mention


def escalation_for(settings: Settings, app: AppConfig) -> tuple[int, tuple[str, ...]]:
    """Seconds without acknowledgement before escalating (0: never), and who to mention then."""
    after = app.escalate_after if app.escalate_after is not None else settings.watch.escalate_after
    return after, escalation_targets(settings.watch, app)


def rate_threshold_for(settings: Settings, app: AppConfig) -> float:
    """The failure-rate threshold of ``app`` (0: no failure-rate alerts)."""
    return app.rate_threshold if app.rate_threshold is not None else settings.watch.rate_threshold


def stuck_after_for(settings: Settings, app: AppConfig) -> int:
    """Seconds after which a run still running is stuck, for ``app`` (0: not watched)."""
    return app.stuck_after if app.stuck_after is not None else settings.watch.stuck_after
