"""Logs that do not mislead (issue 18 item 9): no Bolt warning about a token wflogs never gave."""

from __future__ import annotations

import logging

from bot.slack_app import build_app
from tests.conftest import build_runtime, make_settings, slack_env


def test_building_the_bolt_app_logs_no_token_will_be_unused_warning(
    tmp_path, dify, clock, slack, monkeypatch, caplog
):
    env = {"DIFY_API_KEY": dify.add_app().key, **slack_env(slack), "SLACK_SIGNING_SECRET": "s" * 32}
    # As in production: the bot token is in the environment, where Bolt looks for one by itself.
    monkeypatch.setenv("SLACK_BOT_TOKEN", env["SLACK_BOT_TOKEN"])
    rt = build_runtime(make_settings(tmp_path, env), dify, clock)
    with caplog.at_level(logging.DEBUG):
        build_app(rt)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if "will be unused" in m], said
