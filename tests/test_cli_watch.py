"""The CLI and the watch settings: `wflogs check` resolves mentions; start-up warnings are logged."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import cmd_check
from tests.conftest import make_settings
from tests.fakes.dify import DifyServer, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack


@pytest.fixture
def server():
    with DifyServer(FakeDify()) as srv:
        yield srv


def _check(tmp_path, server, slack: FakeSlack, **env: str) -> tuple[int, str]:
    app = server.fake.add_app("Flow")
    settings = make_settings(
        tmp_path,
        {
            "DIFY_API_KEY": app.key,
            "DIFY_API_URL": server.url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_API_URL": slack.base_url,
            "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
            **env,
        },
    )
    out = io.StringIO()
    code = cmd_check(settings, argparse.Namespace(), out, io.StringIO())
    return code, out.getvalue()


def test_check_names_each_mentioned_member_and_group(tmp_path, server):
    with FakeSlack() as slack:
        slack.users["U0ONCALL1"] = {"name": "alice", "real_name": "Alice Ops"}
        slack.users["U0LEAD001"] = {"name": "bob", "real_name": "Bob Lead"}
        slack.usergroups["S0SUPPORT"] = {"handle": "support-oncall", "name": "Support on-call"}
        code, out = _check(
            tmp_path,
            server,
            slack,
            WFLOGS_MENTION="U0ONCALL1,S0SUPPORT,here",
            WFLOGS_ESCALATE_TO="U0LEAD001",
        )
        assert len(slack.calls_to("users.info")) == 2 and len(slack.calls_to("usergroups.list")) == 1
    assert code == 0, out
    assert "✓ mention U0ONCALL1 (@alice, Alice Ops)" in out
    assert "✓ mention U0LEAD001 (@bob, Bob Lead)" in out
    assert "✓ mention S0SUPPORT (@support-oncall, user group)" in out


def test_check_fails_on_unknown_deactivated_or_disabled_mentions(tmp_path, server):
    with FakeSlack() as slack:
        slack.users["U0GONE001"] = {"name": "carol", "deleted": True}
        slack.usergroups["S0OLD0001"] = {"handle": "old-team", "date_delete": 1_700_000_000}
        code, out = _check(tmp_path, server, slack, WFLOGS_MENTION="U0NOBODY1,U0GONE001,S0OLD0001,S0NONE001")
    assert code == 1
    assert "✗ mention U0NOBODY1: user_not_found" in out
    assert "✗ mention U0GONE001 (carol) is a deactivated account" in out
    assert "✗ mention S0OLD0001 (@old-team) is disabled" in out
    assert "✗ mention S0NONE001: no such user group" in out


def test_check_says_when_the_token_lacks_the_scopes_and_does_not_fail(tmp_path, server):
    with FakeSlack() as slack:
        slack.missing_scopes = {"users:read", "usergroups:read"}
        code, out = _check(tmp_path, server, slack, WFLOGS_MENTION="U0ONCALL1,U0OTHER01,S0SUPPORT")
        assert len(slack.calls_to("users.info")) == 1  # it stops asking after the first refusal
    assert code == 0, out
    assert "without the users:read scope (U0ONCALL1, U0OTHER01 not checked)" in out
    assert "without the usergroups:read scope (S0SUPPORT not checked)" in out


def test_check_asks_nothing_about_here_and_channel(tmp_path, server):
    with FakeSlack() as slack:
        code, out = _check(tmp_path, server, slack, WFLOGS_MENTION="here,channel")
        assert not slack.calls_to("users.info") and not slack.calls_to("usergroups.list")
    assert code == 0 and "mention" not in out


def test_poll_logs_the_start_up_warning_for_a_short_stuck_limit(tmp_path, server):
    app = server.fake.add_app("Flow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFY_", "SLACK_", "WFLOGS_"))}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        WFLOGS_DB=str(tmp_path / "wflogs.db"),
        DIFY_API_KEY=app.key,
        DIFY_API_URL=server.url,
        WFLOGS_STUCK_AFTER="600",
    )
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "poll", "--once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "below Dify's WORKFLOW_MAX_EXECUTION_TIME" in done.stderr
