"""Socket Mode against the Slack fake's WebSocket: a refused first connect is retried with backoff."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import httpx
from slack_sdk import WebClient

from bot.service import Operations, start_serving
from bot.slack_app import build_app
from bot.socket_mode import SocketModeConnector
from tests.conftest import T0, Clock, build_runtime, make_settings, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import APP_TOKEN, FakeSlack


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def command(slack: FakeSlack, text: str) -> dict:
    return {
        "envelope_id": "env-1",
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": {
            "command": "/wflogs",
            "text": text,
            "user_id": "U0ALICE",
            "channel_id": "C0ALERTS",
            "team_id": "T1",
            "api_app_id": "A1",
            "response_url": slack.response_url("socket"),
            "trigger_id": "1.2.3",
        },
    }


def test_a_refused_first_connect_is_retried_with_backoff_and_then_serves(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock, caplog
):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=T0 - 60)
    slack.fail("apps.connections.open", "error", "internal_error", times=2)
    slack.fail("apps.connections.open", "status", 503)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"DIFY_API_KEY": app.key, "SLACK_APP_TOKEN": APP_TOKEN, "PORT": str(port), **slack_env(slack)}
    settings = make_settings(tmp_path, env={**env, "WFLOGS_HTTP_HOST": "127.0.0.1"})
    runtime = build_runtime(settings, dify, clock)
    caplog.set_level(logging.INFO, logger="bot.socket_mode")
    stop = start_serving(runtime, Operations(runtime, now=clock), socket_first_delay=0.01)
    try:
        assert wait_for(lambda: slack.sockets), "never connected after the refusals"
        assert len(slack.calls_to("apps.connections.open")) == 4
        retries = [r.getMessage() for r in caplog.records if "cannot open Socket Mode" in r.getMessage()]
        assert len(retries) == 3
        assert "(Slack answered internal_error); retrying in 0s (attempt 1)" in retries[0]
        assert "attempt 3" in retries[2]
        assert wait_for(lambda: any("after 4 attempts" in r.getMessage() for r in caplog.records))
        assert b"wflogs_slack_socket_mode_connected 1.0" in runtime.metrics.render()
        # Socket Mode needs no inbound port, but health and metrics are served all the same.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/slack/events", content=b"{}").status_code == 404

        slack.socket_send(command(slack, "failed"))  # /wflogs works over the connection
        assert wait_for(lambda: slack.socket_received and slack.responses)
        ack = json.loads(slack.socket_received[0])
        assert ack["envelope_id"] == "env-1"
        assert slack.responses[0]["text"].startswith("1 run: failed runs")
    finally:
        stop()
        runtime.close()


def test_a_rejected_app_token_is_named_and_retried_until_stopped(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock, caplog
):
    app = dify.add_app("Support Bot")
    settings = make_settings(
        tmp_path, env={"DIFY_API_KEY": app.key, "SLACK_APP_TOKEN": "xapp-1-wrong", **slack_env(slack)}
    )
    runtime = build_runtime(settings, dify, clock, web=web)
    caplog.set_level(logging.WARNING, logger="bot.socket_mode")
    connector = SocketModeConnector(build_app(runtime, now=clock), "xapp-1-wrong", first_delay=0.01).start()
    try:
        assert wait_for(lambda: len(slack.calls_to("apps.connections.open")) >= 3)
        ours = [r.getMessage() for r in caplog.records if r.name == "bot.socket_mode"]
        assert "invalid_auth: check SLACK_APP_TOKEN" in ours[0]
        assert "xapp-1-wrong" not in caplog.text
        assert not connector.connected.is_set()
    finally:
        connector.close()
        runtime.close()
    calls = len(slack.calls_to("apps.connections.open"))
    time.sleep(0.1)
    assert len(slack.calls_to("apps.connections.open")) == calls  # stopped trying once closed


def test_the_connected_gauge_follows_a_dropped_and_restored_connection(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock, caplog
):
    app = dify.add_app("Support Bot")
    settings = make_settings(
        tmp_path, env={"DIFY_API_KEY": app.key, "SLACK_APP_TOKEN": APP_TOKEN, **slack_env(slack)}
    )
    runtime = build_runtime(settings, dify, clock, web=web)
    gauge: list[bool] = []
    caplog.set_level(logging.INFO, logger="bot.socket_mode")
    connector = SocketModeConnector(
        build_app(runtime, now=clock),
        APP_TOKEN,
        first_delay=0.01,
        on_connected=gauge.append,
        check_every=0.05,
        ping_interval=0.25,
    ).start()
    try:
        assert wait_for(lambda: gauge == [True])
        slack.fail("apps.connections.open", "status", 503, times=1000)  # Slack stays away for now
        slack.drop_sockets()
        assert wait_for(lambda: gauge == [True, False]), gauge
        assert "connection dropped" in caplog.text
        slack.faults.clear()  # Slack is back: its client reconnects by itself
        assert wait_for(lambda: gauge == [True, False, True], timeout=30), gauge
        assert "connection is back" in caplog.text
    finally:
        connector.close()
        runtime.close()
    assert gauge[-1] is False  # closing says so too
