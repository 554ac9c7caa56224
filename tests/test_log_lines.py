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


def test_a_rejected_dify_key_logs_an_error_once_then_a_reminder_at_most_every_few_minutes(
    tmp_path, dify, clock, caplog
):
    rt = build_runtime(make_settings(tmp_path, {"DIFY_API_KEY": "app-wrongwrongwrong"}), dify, clock)
    with caplog.at_level(logging.INFO):
        for _ in range(10):  # ten cycles, a minute apart
            rt.cycle()
            clock.advance(60)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 3, errors  # once, then at most every 5 minutes (not every cycle)
    assert all("rejected the API key" in m for m in errors)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 3, warnings  # "cannot read the name" is not repeated every cycle either


def test_a_bot_token_slack_rejects_logs_an_error_once_then_a_reminder_at_most_every_few_minutes(
    tmp_path, dify, clock, caplog
):
    from tests.fakes.slack import FakeSlack

    app = dify.add_app("Support Bot")
    with FakeSlack(token="xoxb-the-right-one") as slack:
        env = {"DIFY_API_KEY": app.key, **slack_env(slack), "SLACK_BOT_TOKEN": "xoxb-wrong-token-9999"}
        rt = build_runtime(make_settings(tmp_path, env), dify, clock)
        with caplog.at_level(logging.INFO):
            for i in range(10):  # ten cycles a minute apart, each with a new failure waiting
                dify.add_log(app, at=int(clock.now) - 5, error=f"error {i}")
                rt.cycle()
                clock.advance(60)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 3, errors
    assert any("SLACK_BOT_TOKEN" in m for m in errors), errors
