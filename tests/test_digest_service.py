"""The digest inside ``wflogs run`` (APScheduler jobs) and ``wflogs digest --now``."""

from __future__ import annotations

import argparse
import io
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from slack_sdk import WebClient

from bot.cli import build_parser, cmd_digest
from bot.digest import latest_schedule
from bot.runtime import Runtime
from bot.service import add_digest_jobs
from storage import Store
from tests.conftest import Clock, make_settings
from tests.fakes.dify import DifyServer, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def scheduled(tmp_path: Path, dify: FakeDify, web: WebClient | None, env: dict[str, str], clock: Clock):
    settings = make_settings(tmp_path, env)
    runtime = Runtime.build(
        settings, transport=httpx.MockTransport(dify.handler), web=web, slack_min_interval=0
    )
    scheduler = BackgroundScheduler(timezone=settings.tz)
    add_digest_jobs(scheduler, runtime, runtime.digester, now=clock)
    return runtime, {job.id: job for job in scheduler.get_jobs()}


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2026, 11, 17, 8, 0, 1), utc(2026, 11, 18, 8, 0)),  # CET
        (utc(2026, 10, 24, 7, 0, 1), utc(2026, 10, 25, 8, 0)),  # the night summer time ends
        (utc(2026, 3, 28, 8, 0, 1), utc(2026, 3, 29, 7, 0)),  # the night summer time starts
    ],
)
def test_cron_job_fires_at_the_local_digest_time_across_dst(
    tmp_path: Path, dify: FakeDify, clock: Clock, after: datetime, expected: datetime
) -> None:
    app = dify.add_app()
    env = {"DIFY_API_KEY": app.key, "WFLOGS_TIMEZONE": "Europe/Berlin", "WFLOGS_DIGEST_TIME": "09:00"}
    runtime, jobs = scheduled(tmp_path, dify, None, env, clock)
    cron = jobs["digest"]
    fire = cron.trigger.get_next_fire_time(None, after)
    assert fire == expected
    # The instant the job fires at is the one the digest computes its window from.
    assert latest_schedule(runtime.settings, int(fire.timestamp()))[1] == int(expected.timestamp())
    assert (cron.coalesce, cron.max_instances) == (True, 1)
    assert jobs["digest-catchup"].next_run_time is not None  # runs at start-up: the late digest
    runtime.close()


def test_the_jobs_post_the_due_digest_once(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
) -> None:
    app = dify.add_app("Scheduled")
    instant = int(utc(2026, 11, 18, 8, 0).timestamp())
    dify.add_log(app, status="failed", at=instant - 60)
    env = {
        "DIFY_API_KEY": app.key,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
        "WFLOGS_DIGEST_CHANNEL": "C0DIGEST",
        "WFLOGS_TIMEZONE": "Europe/Berlin",
    }
    clock.now = instant - 3600
    runtime, jobs = scheduled(tmp_path, dify, web, env, clock)
    jobs["digest-catchup"].func()  # start-up at 08:00: nothing due yet
    clock.now = instant
    jobs["digest"].func()
    jobs["digest-catchup"].func()
    runtime.deliver()  # the delivery thread of `wflogs run` posts what the jobs planned
    runtime.deliver()
    runtime.close()
    assert [p["channel"] for p in slack.posts()] == ["C0DIGEST"]


def test_no_digest_jobs_when_every_app_opts_out(tmp_path: Path, dify: FakeDify, clock: Clock) -> None:
    app = dify.add_app()
    (tmp_path / "wflogs.toml").write_text(f'[[apps]]\napi_key = "{app.key}"\ndigest = false\n')
    runtime, jobs = scheduled(tmp_path, dify, None, {"WFLOGS_CONFIG": str(tmp_path / "wflogs.toml")}, clock)
    runtime.close()
    assert jobs == {}


def test_digest_now_prints_to_the_terminal_and_leaves_the_schedule_alone(tmp_path: Path) -> None:
    dify = FakeDify()
    app = dify.add_app("Terminal <!channel> App")
    now = int(time.time())
    for i in range(3):
        dify.add_log(app, status="failed", at=now - 600 - i, error=f"timed out after {i}s")
    dify.add_log(app, status="succeeded", at=now - 700)
    dify.add_log(app, status="succeeded", at=now - 86400 - 700)
    with DifyServer(dify) as server:
        settings = make_settings(tmp_path, {"DIFY_API_KEY": app.key, "DIFY_API_URL": server.url})
        out, err = io.StringIO(), io.StringIO()
        args = build_parser().parse_args(["digest", "--now"])
        assert cmd_digest(settings, args, out, err) == 0
    printed = out.getvalue()
    assert "Terminal <!channel> App: digest of the last 24 hours" in printed
    assert "75.0% (+75.0 pts)" in printed and "×3" in printed
    assert err.getvalue() == ""
    store = Store.open(settings.db_path)
    day, _ = latest_schedule(settings, now)
    assert not store.digest_posted(settings.apps[0].id, day.isoformat())
    assert store.query("select kind from digests") == [{"kind": "manual"}]


def test_digest_now_exits_1_when_an_app_cannot_be_read(tmp_path: Path) -> None:
    with DifyServer(FakeDify()) as server:
        settings = make_settings(
            tmp_path, {"DIFY_API_KEY": "app-rejectedrejected000000", "DIFY_API_URL": server.url}
        )
        out, err = io.StringIO(), io.StringIO()
        assert cmd_digest(settings, argparse.Namespace(now=True), out, err) == 1
    assert "Could not read this app from Dify" in out.getvalue()
    assert "rejected the API key" in err.getvalue() and "rejectedrejected" not in err.getvalue()


def test_digest_needs_now() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["digest"])


def test_check_also_checks_the_digest_channels(tmp_path: Path) -> None:
    from bot.cli import cmd_check

    fake = FakeSlack(channels={"C0ALERTS"})
    with fake, DifyServer(FakeDify()) as server:
        dify_app = server.fake.add_app("Checked")
        settings = make_settings(
            tmp_path,
            {
                "DIFY_API_KEY": dify_app.key,
                "DIFY_API_URL": server.url,
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_API_URL": fake.base_url.rstrip("/"),
                "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
                "WFLOGS_DIGEST_CHANNEL": "C0MISSING",
            },
        )
        out = io.StringIO()
        assert cmd_check(settings, argparse.Namespace(), out, io.StringIO()) == 1
    assert "✓ channel C0ALERTS" in out.getvalue()
    assert "✗ channel C0MISSING" in out.getvalue()
