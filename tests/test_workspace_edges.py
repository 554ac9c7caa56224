"""Workspace mode's edges: old versions, roles, settings by app id, secrets kept out of logs."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.console import FakeConsole

WORKSPACE = "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11"
ADMIN = {"DIFY_ADMIN_API_KEY": "wflogs-admin-key", "DIFY_WORKSPACE_ID": WORKSPACE}
LOGIN = {"DIFY_CONSOLE_EMAIL": "bot@example.com", "DIFY_CONSOLE_PASSWORD": "Secret-pass1"}


@pytest.mark.parametrize("version", ["1.9.0", "2.0.0-beta2"])
def test_an_unsupported_version_gets_one_clear_line_and_no_login(
    tmp_path, dify, clock, slack, caplog, version
):
    console = FakeConsole(dify, version=version, clock=clock)
    console.add_account("bot@example.com", "Secret-pass1")
    console.add_app("support-bot")
    rt = build_runtime(make_settings(tmp_path, {**LOGIN, **slack_env(slack)}), console, clock)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            rt.cycle()
            clock.advance(400)
    assert console.login_attempts == 0
    assert caplog.text.count("per-app API keys") == 1
    assert len([m for m in slack.messages if "per-app API keys" in (m.get("text") or "")]) == 1


def test_the_normal_role_is_enough_to_watch(tmp_path, dify, clock, slack):
    console = FakeConsole(dify, clock=clock)
    console.add_account("bot@example.com", "Secret-pass1", role="normal")
    app = console.add_app("support-chat", mode="advanced-chat")
    run = console.add_chat_run(app, at=int(clock.now) - 30)
    rt = build_runtime(make_settings(tmp_path, {**LOGIN, **slack_env(slack)}), console, clock)
    assert rt.cycle().ok
    assert messages_mentioning(slack, run.run_id) == 1


def test_apps_settings_by_app_id_and_secrets_stay_out_of_logs(tmp_path, dify, clock, slack, caplog):
    console = FakeConsole(dify, clock=clock)
    console.add_account("bot@example.com", "Secret-pass1")
    app = console.add_app("billing")
    run = console.dify.add_log(app, status="failed", at=int(clock.now) - 30)
    toml = f'[[apps]]\napp_id = "{app.app_id}"\nchannel = "C0BILLING"\n'  # type: ignore[attr-defined]
    settings = make_settings(tmp_path, {**LOGIN, **slack_env(slack)}, toml)
    rt = build_runtime(settings, console, clock)
    with caplog.at_level(logging.DEBUG):
        assert rt.cycle().ok
        clock.advance(3500)  # the session is refreshed
        assert rt.cycle().ok
    assert [m["channel"] for m in slack.messages if run.run_id in str(m)] == ["C0BILLING"]
    assert console.refresh_calls == 1
    cookies = [r.headers.get("cookie", "") for r in console.requests if r.headers.get("cookie")]
    assert cookies
    secrets = ["Secret-pass1", *(c.split("=", 1)[1].split(";")[0][:40] for c in cookies)]
    everything = caplog.text + str(slack.messages)
    assert not [s for s in secrets if s and s in everything]


def test_a_chatflows_history_costs_no_run_details(tmp_path, dify, clock, slack):
    console = FakeConsole(dify, clock=clock)
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    old = [console.add_chat_run(app, at=now - 3600 - 600 + n) for n in range(50)]  # before the backfill
    new = console.add_chat_run(app, at=now - 60)
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack), "WFLOGS_BACKFILL": "3600"})
    rt = build_runtime(settings, console, clock)
    assert rt.cycle().ok
    assert messages_mentioning(slack, new.run_id) == 1
    assert not [r for r in old if messages_mentioning(slack, r.run_id)]
    details = [r for r in console.requests if "/workflow-runs/" in r.url.path and "node" not in r.url.path]
    assert len(details) == 1


def test_a_rejected_password_is_not_tried_again_after_a_restart_but_a_new_one_is(
    tmp_path, dify, clock, slack
):
    console = FakeConsole(dify, clock=clock)
    console.add_account("bot@example.com", "Secret-pass1")
    console.add_app("support-bot")
    stale = {**LOGIN, "DIFY_CONSOLE_PASSWORD": "stale-password", **slack_env(slack)}
    for _ in range(3):  # three restarts (or cron'd `wflogs poll --once`) with the same password
        rt = build_runtime(make_settings(tmp_path, stale), console, clock)
        assert not rt.cycle().ok
        rt.close()
        clock.advance(60)
    assert console.login_attempts == 1 and console.failures["bot@example.com"] == 1
    rt = build_runtime(make_settings(tmp_path, {**LOGIN, **slack_env(slack)}), console, clock)
    assert rt.cycle().ok
    assert console.login_attempts == 2
    assert "stale-password" not in str(rt.store.query("select * from app_state"))


class _Wire:
    """The console fake behind a hook that can change its app list's answer (at the wire)."""

    def __init__(self, console: FakeConsole) -> None:
        self.console = console
        self.apps_down = False
        self.ghost = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/console/api/apps"):
            if self.apps_down:
                return httpx.Response(500, json={"code": "internal_server_error", "message": "boom"})
            if self.ghost:
                answer = self.console.handler(request)
                body = answer.json()
                body["data"].insert(0, {"name": "ghost", "mode": "workflow"})  # no id
                return httpx.Response(answer.status_code, json=body)
        return self.console.handler(request)


def test_an_app_list_item_without_an_id_is_left_out_and_the_others_watched(
    tmp_path, dify, clock, slack, caplog
):
    console = FakeConsole(dify, clock=clock)
    app = console.add_app("support-flow")
    run = console.dify.add_log(app, at=int(clock.now) - 5, error="model overloaded")
    wire = _Wire(console)
    wire.ghost = True
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack)})
    rt = build_runtime(settings, wire, clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        rt.cycle()
    assert [a.name for a in rt.settings.apps] == ["support-flow"]
    assert messages_mentioning(slack, run.run_id) == 1
    assert "listed an app without an id" in caplog.text


def test_an_app_list_that_keeps_failing_is_logged_once_then_as_a_reminder(
    tmp_path, dify, clock, slack, caplog
):
    console = FakeConsole(dify, clock=clock)
    console.add_app("support-flow")
    wire = _Wire(console)
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack), "WFLOGS_DISCOVER_INTERVAL": "60"})
    rt = build_runtime(settings, wire, clock)  # type: ignore[arg-type]
    rt.cycle()
    wire.apps_down = True
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            clock.advance(61)
            rt.cycle()
        said = [r for r in caplog.records if "cannot read the Dify workspace's apps" in r.getMessage()]
        assert len(said) == 1 and "said again every" in said[0].getMessage()
        wire.apps_down = False
        clock.advance(61)
        rt.cycle()
    assert "the Dify workspace's apps can be read again" in caplog.text
