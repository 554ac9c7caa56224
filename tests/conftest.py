"""Shared fixtures: the Dify fake (MockTransport), the Slack fake (local HTTP), settings."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slack_sdk import WebClient

from bot.config import Settings, load_settings
from bot.runtime import Runtime
from tests.fakes.dify import FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack

T0 = 1_795_000_000  # 2026-11-17T..Z, a fixed "now" for tests


class Clock:
    """A settable clock for the code under test and the fakes."""

    def __init__(self, now: float = T0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dify(clock: Clock) -> FakeDify:
    return FakeDify(clock=clock)


@pytest.fixture
def transport(dify: FakeDify) -> httpx.MockTransport:
    return httpx.MockTransport(dify.handler)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def web(slack: FakeSlack) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=slack.base_url, timeout=2)


def make_settings(tmp_path: Path, env: dict[str, str] | None = None, toml: str | None = None) -> Settings:
    """Settings as ``load_settings`` builds them from an environment (and a TOML file)."""
    base = {"WFLOGS_DB": str(tmp_path / "wflogs.db"), "DIFY_API_URL": "http://dify.test/v1"}
    if toml is not None:
        (tmp_path / "wflogs.toml").write_text(toml)
        base["WFLOGS_CONFIG"] = str(tmp_path / "wflogs.toml")
    base.update(env or {})
    return load_settings(base, cwd=tmp_path)


def build_runtime(settings: Settings, dify: FakeDify, clock: Clock, **kwargs: object) -> Runtime:
    """A Runtime on the Dify fake, with no real waiting (no pacing, no backoff)."""
    kwargs.setdefault("slack_min_interval", 0.0)
    kwargs.setdefault("dify_backoff", 0.0)
    kwargs.setdefault("stream", io.StringIO())
    return Runtime.build(settings, transport=httpx.MockTransport(dify.handler), now=clock, **kwargs)  # type: ignore[arg-type]


def slack_env(slack: FakeSlack, **extra: str) -> dict[str, str]:
    """Environment for an app alerting into C0ALERTS on the Slack fake."""
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": slack.base_url, "WFLOGS_ALERT_CHANNEL": "C0ALERTS"}
    env.update(extra)
    return env


def messages_mentioning(slack: FakeSlack, needle: str) -> int:
    """How many Slack messages and files carry ``needle`` (once per message at most)."""
    count = 0
    for m in slack.messages:
        if needle in (m.get("text") or "") or needle in json.dumps(m.get("blocks") or []):
            count += 1
    count += sum(1 for f in slack.files if needle in f["content"])
    return count


def isolate_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> None:
    """For ``bot.cli.main`` run in this process: none of the caller's DIFY_/SLACK_/WFLOGS_ settings,
    ``tmp_path`` as the working directory, and ``env`` set."""
    for name in list(os.environ):
        if name.startswith(("DIFY_", "SLACK_", "WFLOGS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
