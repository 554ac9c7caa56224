"""Workspace mode against the console fake: every app found and watched, no restart needed."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.console import FakeConsole, Node

ADMIN = {
    "DIFY_ADMIN_API_KEY": "wflogs-admin-key",
    "DIFY_WORKSPACE_ID": "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11",
}
LOGIN = {"DIFY_CONSOLE_EMAIL": "bot@example.com", "DIFY_CONSOLE_PASSWORD": "Secret-pass1"}


@pytest.fixture
def console(dify, clock) -> FakeConsole:
    fake = FakeConsole(dify, clock=clock)
    fake.add_account("bot@example.com", "Secret-pass1", role="editor")
    return fake


def _runtime(tmp_path, console, clock, slack, env=None, toml=None):
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack), **(env or {})}, toml)
    return build_runtime(settings, console, clock)


def test_every_workflow_app_is_watched_without_a_key_and_each_failure_alerted_once(
    tmp_path, console, clock, slack
):
    now = int(clock.now)
    one = console.add_app("support-bot")
    two = console.add_app("billing")
    console.add_app("faq", mode="chat")
    console.add_app("draft", published=False)
    runs = [
        console.dify.add_log(one, status="failed", at=now - 300, error="boom"),
        console.dify.add_log(two, status="stopped", at=now - 200),
    ]
    ok = console.dify.add_log(two, status="succeeded", at=now - 100)
    rt = _runtime(tmp_path, console, clock, slack)
    report = rt.cycle()
    assert report.ok, report.problems
    assert sorted(r.name for r in report.apps) == ["billing", "support-bot"]
    clock.advance(60)
    rt.cycle()
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1
    assert messages_mentioning(slack, ok.run_id) == 0
    assert not [r for r in console.dify.requests if "/v1/" in r.url.path]  # no app- key used
    assert all(m["channel"] == "C0ALERTS" for m in slack.messages)


def test_a_new_app_is_watched_without_a_restart_from_the_moment_found_and_a_deleted_one_dropped(
    tmp_path, console, clock, slack, caplog
):
    now = int(clock.now)
    first = console.add_app("support-bot")
    rt = _runtime(tmp_path, console, clock, slack, {"WFLOGS_DISCOVER_INTERVAL": "300"})
    assert rt.cycle().ok
    later = console.add_app("new-flow")
    history = console.dify.add_log(later, status="failed", at=now - 100, error="old news")
    clock.advance(60)
    assert [r.name for r in rt.cycle().apps] == ["support-bot"]  # not due yet
    clock.advance(300)
    with caplog.at_level(logging.INFO):
        report = rt.cycle()
    assert sorted(r.name for r in report.apps) == ["new-flow", "support-bot"]
    assert "new Dify app found: new-flow" in caplog.text
    fresh = console.dify.add_log(later, status="failed", at=int(clock.now) + 10, error="new failure")
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, fresh.run_id) == 1
    assert messages_mentioning(slack, history.run_id) == 0
    console.delete_app(first)
    clock.advance(300)
    with caplog.at_level(logging.INFO):
        report = rt.cycle()
    assert [r.name for r in report.apps] == ["new-flow"]
    assert "support-bot is deleted: no longer watched" in caplog.text


def test_name_globs_and_apps_settings_by_name(tmp_path, console, clock, slack):
    now = int(clock.now)
    keep = console.add_app("support-bot")
    console.add_app("support-bot-test")
    console.add_app("billing")
    run = console.dify.add_log(keep, status="failed", at=now - 100)
    toml = '[[apps]]\nname = "support-bot"\nchannel = "C0SUPPORT"\n'
    rt = _runtime(tmp_path, console, clock, slack, {"WFLOGS_APPS": "support-*,!*-test"}, toml)
    report = rt.cycle()
    assert [r.name for r in report.apps] == ["support-bot"]
    assert [m["channel"] for m in slack.messages if run.run_id in str(m)] == ["C0SUPPORT"]


def test_a_rejected_password_is_tried_once_and_told_once_in_the_channel(
    tmp_path, console, clock, slack, caplog
):
    console.add_app("support-bot")
    env = {
        **LOGIN,
        "DIFY_CONSOLE_PASSWORD": "stale-password",
        "DIFY_ADMIN_API_KEY": "",
        "DIFY_WORKSPACE_ID": "",
    }
    rt = _runtime(tmp_path, console, clock, slack, env)
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            rt.cycle()
            clock.advance(400)
    assert console.login_attempts == 1
    told = [m for m in slack.messages if "rejected the password" in (m.get("text") or "")]
    assert len(told) == 1
    assert caplog.text.count("rejected the password") == 1
    assert "stale-password" not in caplog.text and "stale-password" not in str(slack.messages)


def test_an_expired_session_is_renewed_without_a_missed_run(tmp_path, console, clock, slack):
    app = console.add_app("support-bot")
    env = {**LOGIN, "DIFY_ADMIN_API_KEY": "", "DIFY_WORKSPACE_ID": ""}
    rt = _runtime(tmp_path, console, clock, slack, env)
    assert rt.cycle().ok
    run = console.dify.add_log(app, status="failed", at=int(clock.now) + 5)
    console.expire_sessions()
    clock.advance(60)
    assert rt.cycle().ok
    assert messages_mentioning(slack, run.run_id) == 1
    assert console.login_attempts == 1 and console.refresh_calls == 1
    clock.advance(3600)  # past the access token's life: refreshed ahead of time, not after a 401
    run2 = console.dify.add_log(app, status="failed", at=int(clock.now) - 5)
    assert rt.cycle().ok
    assert messages_mentioning(slack, run2.run_id) == 1
    assert console.login_attempts == 1 and console.refresh_reuse == 0


_ = Node


def test_every_failed_and_stopped_chatflow_run_is_alerted_once_ties_at_page_ends_included(
    tmp_path, console, clock, slack
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    runs = []
    # 250 failures, many sharing a second (the cursor skips ties), plus stopped ones.
    for n in range(250):
        runs.append(console.add_chat_run(app, at=now - 600 + n // 7, error=f"boom {n % 3}", session=f"u{n}"))
    runs += [console.add_chat_run(app, status="stopped", at=now - 100, error="stopped by user")]
    debug = console.add_chat_run(app, at=now - 50, triggered_from="debugging")
    ok = console.add_chat_run(app, status="succeeded", at=now - 40)
    rt = _runtime(tmp_path, console, clock, slack, {"WFLOGS_BACKFILL": "3600"})
    report = rt.cycle()
    assert report.ok, report.problems
    for _ in range(2):
        clock.advance(60)
        late = console.add_chat_run(app, at=int(clock.now) - 30, error="late one")
        runs.append(late)
        assert rt.cycle().ok
    counts = {r.run_id: 0 for r in runs}
    for alert in rt.store.query("select entry from alerts"):
        for run_id in counts:
            if run_id in alert["entry"]:
                counts[run_id] += 1
    assert set(counts.values()) == {1}
    texts = str(slack.messages)
    assert debug.run_id not in texts and ok.run_id not in texts


def test_a_chatflow_alert_names_the_error_session_and_conversation(tmp_path, console, clock, slack):
    app = console.add_app("support-chat", mode="advanced-chat")
    run = console.add_chat_run(
        app,
        at=int(clock.now) - 60,
        error="[Errno 111] Connection refused",
        session="user-77",
        nodes=[
            Node("start", "start", "Start", "succeeded"),
            Node("n2", "http-request", "Call billing API", "failed", "[Errno 111] Connection refused"),
        ],
    )
    rt = _runtime(tmp_path, console, clock, slack)
    assert rt.cycle().ok
    message = next(m for m in slack.messages if run.run_id in str(m))
    text = str(message)
    assert "Connection refused" in text and "user-77" in text and "Conversation" in text
    assert "Failed node: *Call billing API* (http-request)" in text
    assert len(console.console_requests("/node-executions")) == 1


def test_the_failed_node_costs_one_request_per_new_incident_not_per_run(tmp_path, console, clock, slack):
    app = console.add_app("support-bot")
    now = int(clock.now)
    nodes = [
        Node("start", "start", "Start", "succeeded"),
        Node("llm", "llm", "Call LLM", "failed", "Timeout"),
    ]
    for n in range(30):
        run = console.dify.add_log(
            app, status="failed", at=now - 300 + n, error="Timeout calling LLM provider"
        )
        console.set_nodes(run, nodes)
    rt = _runtime(tmp_path, console, clock, slack)
    assert rt.cycle().ok
    assert "Failed node: *Call LLM* (llm): Timeout" in str(slack.messages)
    assert len(console.console_requests("/node-executions")) == 1
    run = console.dify.add_log(
        app, status="failed", at=int(clock.now) + 5, error="Timeout calling LLM provider"
    )
    console.set_nodes(run, nodes)
    clock.advance(60)
    assert rt.cycle().ok  # the same incident is still open: no node request
    assert len(console.console_requests("/node-executions")) == 1


def test_check_prints_the_version_the_way_in_the_role_and_apps_by_mode(
    tmp_path, console, clock, slack, monkeypatch
):
    import io

    import httpx

    from bot import cli

    console.add_app("support-bot")
    console.add_app("support-chat", mode="advanced-chat")
    console.add_app("faq", mode="chat")
    console.add_app("draft", published=False)
    settings = make_settings(tmp_path, {**LOGIN})
    real_build = cli.Runtime.build

    def build(settings, **kw):
        return real_build(settings, transport=httpx.MockTransport(console.handler), **kw)

    monkeypatch.setattr(cli.Runtime, "build", build)
    out = io.StringIO()
    assert cli.cmd_check(settings, None, out, io.StringIO()) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert "Dify 1.13.3" in text and "account bot@example.com, role editor" in text
    assert "chatflow apps (1):\n  ✓ support-chat" in text
    assert "faq: not watched, plain chat apps" in text
    assert "draft: not watched, never published" in text
    assert "2 of 4 apps watched" in text
    assert "Secret-pass1" not in text


def test_check_names_an_app_read_with_its_own_key_as_such(tmp_path, console, clock, monkeypatch):
    import io

    import httpx

    from bot import cli

    app = console.add_app("support-bot")
    console.add_app("billing-flow")
    settings = make_settings(tmp_path, {**LOGIN, "DIFY_API_KEY": app.key})  # no name set for it
    real_build = cli.Runtime.build

    def build(settings, **kw):
        return real_build(settings, transport=httpx.MockTransport(console.handler), **kw)

    monkeypatch.setattr(cli.Runtime, "build", build)
    out = io.StringIO()
    cli.cmd_check(settings, None, out, io.StringIO())  # type: ignore[arg-type]
    text = out.getvalue()
    assert "support-bot: not watched, read with its own API key" in text, text
    assert "✓ billing-flow" in text and "1 of 2 apps watched" in text


def test_wflogs_search_run_lists_the_runs_nodes_in_order(tmp_path, console, clock, monkeypatch):
    import io

    import httpx

    from bot import cli

    app = console.add_app("support-chat", mode="advanced-chat")
    run = console.add_chat_run(
        app,
        at=int(clock.now) - 60,
        error="[Errno 111] Connection refused",
        nodes=[
            Node("start", "start", "Start", "succeeded"),
            Node("n2", "http-request", "Call billing API", "failed", "[Errno 111] Connection refused"),
        ],
    )
    settings = make_settings(tmp_path, {**ADMIN})
    real_build = cli.Runtime.build
    monkeypatch.setattr(
        cli.Runtime,
        "build",
        lambda settings, **kw: real_build(settings, transport=httpx.MockTransport(console.handler), **kw),
    )
    out = io.StringIO()
    import argparse

    err = io.StringIO()
    args = argparse.Namespace(words=[f"run:{run.run_id}"])
    assert cli.cmd_search(settings, args, out, err) == 0, err.getvalue()
    text = out.getvalue()
    assert "1. Start (start) succeeded" in text
    assert "2. Call billing API (http-request) failed" in text and "Connection refused" in text


def test_runs_waiting_from_the_last_process_page_the_mention_list_even_before_the_first_discovery(
    tmp_path, console, clock, slack
):
    # `wflogs run` delivers in its own thread from the start: a run the last process read but
    # could not post is posted with the mention list, not only once the app list was read again.
    app = console.add_app("support-bot")
    run = console.dify.add_log(app, status="failed", at=int(clock.now) - 60, error="boom")
    env = {"WFLOGS_MENTION": "U0ONCALL1"}
    rt = _runtime(tmp_path, console, clock, slack, env)
    rt.poll()  # read and stored; the process stops before delivering
    rt.close()
    rt = _runtime(tmp_path, console, clock, slack, env)
    rt.deliver()  # the delivery thread's first pass, before the poll thread's first discovery
    rt.cycle()  # the poll's first cycle reads the app list, then delivers
    assert messages_mentioning(slack, run.run_id) == 1
    assert messages_mentioning(slack, "<@U0ONCALL1>") == 1
    rt.close()


def test_wflogs_searches_the_apps_discovered_after_the_slack_app_was_built(
    tmp_path, console, clock, slack, web
):
    # `wflogs run` builds the Slack app at start, before the first read of the app list.
    from bot.ops_http import EVENTS_PATH, OpsServer
    from bot.slack_app import build_app, events_handler
    from tests.test_incident_controls import SECRET, Bench

    app = console.add_app("support-bot")
    run = console.dify.add_log(app, status="failed", at=int(clock.now) - 60, error="quota exceeded")
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack), "SLACK_SIGNING_SECRET": SECRET})
    rt = build_runtime(settings, console, clock, web=web)
    server = OpsServer(events_handler(build_app(rt, now=clock)), "127.0.0.1", 0)
    try:
        rt.cycle()
        bench = Bench(rt, slack, console.dify, app, clock, f"http://127.0.0.1:{server.port}{EVENTS_PATH}")
        answer = bench.command("failed since:1h")
        assert answer.status_code == 200
        assert "no Dify app can be searched" not in answer.text
        assert run.run_id[:8] in str(bench.answers(1)[-1])
    finally:
        server.close()
        rt.close()


def test_a_standby_serves_wflogs_over_the_discovered_apps_too(tmp_path, console, clock, slack, web):
    # Two instances on one database: Slack sends a slash command to either one.
    from bot.ops_http import EVENTS_PATH, OpsServer
    from bot.service import Operations
    from bot.slack_app import build_app, events_handler
    from tests.test_incident_controls import SECRET, Bench

    app = console.add_app("support-bot")
    run = console.dify.add_log(app, status="failed", at=int(clock.now) - 60, error="quota exceeded")
    keyed = console.dify.add_app("keyed-bot")  # and one app read with its own key
    toml = f'[[apps]]\napi_key = "{keyed.key}"\napi_url = "http://dify.test/v1"\n'
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack), "SLACK_SIGNING_SECRET": SECRET}, toml)
    active = build_runtime(settings, console, clock, web=web)
    standby = build_runtime(settings, console, clock, web=web)
    server = OpsServer(events_handler(build_app(standby, now=clock)), "127.0.0.1", 0)
    try:
        assert Operations(active, now=clock).tick()
        ops = Operations(standby, now=clock)
        assert not ops.tick()
        assert ops.cycle() is None  # the poll job on a standby: no poll, the app list only
        bench = Bench(
            standby, slack, console.dify, app, clock, f"http://127.0.0.1:{server.port}{EVENTS_PATH}"
        )
        answer = bench.command("failed since:1h")
        assert "no Dify app can be searched" not in answer.text
        assert run.run_id[:8] in str(bench.answers(1)[-1])
        assert not slack.messages  # the standby posts nothing
        assert not ops.tick()
        assert ops.health.unwatched_apps == []  # discovered apps are in no lease: not "unwatched"
    finally:
        server.close()
        active.close()
        standby.close()


def test_an_app_read_with_its_own_key_and_no_name_set_is_not_watched_twice(tmp_path, console, clock, slack):
    # DIFY_API_KEY kept from before workspace mode: its app's name comes from Dify, not the config.
    app = console.add_app("support-bot")
    now = int(clock.now)
    for i in range(10):
        console.dify.add_log(app, status="succeeded", at=now - 600 + i, error="")
        console.dify.add_log(app, status="failed", at=now - 300 + i, error=f"node llm timed out after {i}s")
    rt = _runtime(tmp_path, console, clock, slack, {"DIFY_API_KEY": app.key, "WFLOGS_RATE_THRESHOLD": "0.2"})
    rt.cycle()
    assert [a.source for a in rt.settings.apps] == ["environment"]
    (found,) = rt.workspace.last.apps
    assert not found.watched and found.reason == "read with its own API key ([[apps]])"
    kinds = [r["kind"] for r in rt.store.query("select kind from incidents order by id")]
    assert kinds.count("failure_rate") == 1, kinds
