"""/wflogs end to end: real signed HTTP requests to the running endpoint, Dify faked at the wire,
answers read from the Slack fake's response_url, and the Socket Mode path fed an envelope."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from bot import search_format as fmt
from bot.ops_http import EVENTS_PATH, OpsServer
from bot.runtime import Runtime
from bot.slack_app import build_app, events_handler
from tests.conftest import T0, Clock, make_settings
from tests.fakes.dify import DifyServer, FakeApp, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack, assert_valid_blocks, signed_post

SECRET = "8f14e45fceea167a5a36dedd4bea2543"
CHANNEL = "C0ALERTS"


@dataclass
class Harness:
    dify: FakeDify
    slack: FakeSlack
    url: str
    app: FakeApp
    secret: str = SECRET
    names: int = 0

    def post(
        self, body: str, *, ts: int | None = None, secret: str | None = None, **headers: str
    ) -> httpx.Response:
        return signed_post(self.url, body, secret or self.secret, ts=ts, **headers)

    def response_url(self) -> str:
        self.names += 1
        return self.slack.response_url(f"r{self.names}")

    def command(
        self, text: str, *, user: str = "U0ALICE", channel: str = CHANNEL, **kw: Any
    ) -> httpx.Response:
        form = {
            "token": "legacy",
            "team_id": "T1",
            "team_domain": "test",
            "channel_id": channel,
            "channel_name": "alerts",
            "user_id": user,
            "user_name": "alice",
            "command": "/wflogs",
            "text": text,
            "api_app_id": "A1",
            "response_url": self.response_url(),
            "trigger_id": "1.2.3",
        }
        return self.post(urlencode(form), **kw)

    def click(
        self, action_id: str, value: str | None, *, user: str = "U0ALICE", channel: str = CHANNEL
    ) -> httpx.Response:
        action: dict[str, Any] = {
            "type": "button",
            "action_id": action_id,
            "block_id": "b1",
            "action_ts": "1",
        }
        if value is not None:
            action["value"] = value
        payload = {
            "type": "block_actions",
            "team": {"id": "T1", "domain": "test"},
            "user": {"id": user, "username": "alice", "team_id": "T1"},
            "api_app_id": "A1",
            "token": "legacy",
            "container": {
                "type": "message",
                "message_ts": "1.1",
                "channel_id": channel,
                "is_ephemeral": True,
            },
            "trigger_id": "1.2.3",
            "channel": {"id": channel, "name": "alerts"},
            "response_url": self.response_url(),
            "actions": [action],
        }
        return self.post(urlencode({"payload": json.dumps(payload)}))

    def responses(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.slack.lock:
                if len(self.slack.responses) >= count:
                    return list(self.slack.responses)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} response_url posts, got {self.slack.responses!r}")


@contextmanager
def serving(
    tmp_path: Path,
    dify: FakeDify,
    slack: FakeSlack,
    web: WebClient,
    clock: Clock,
    *,
    toml: str | None = None,
    app: FakeApp | None = None,
) -> Iterator[Harness]:
    app = app or dify.add_app("Support Bot")
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
        "WFLOGS_ALERT_CHANNEL": CHANNEL,
    }
    if toml is None:
        env["DIFY_API_KEY"] = app.key
    settings = make_settings(tmp_path, env=env, toml=toml)
    runtime = Runtime.build(settings, transport=httpx.MockTransport(dify.handler), web=web, dify_backoff=0)
    server = OpsServer(events_handler(build_app(runtime, now=clock)), "127.0.0.1", 0)
    try:
        yield Harness(dify, slack, f"http://127.0.0.1:{server.port}{EVENTS_PATH}", app)
    finally:
        server.close()
        runtime.close()


@pytest.fixture
def h(tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock) -> Iterator[Harness]:
    with serving(tmp_path, dify, slack, web, clock) as harness:
        yield harness


def valid(blocks: list[dict[str, Any]]) -> None:
    assert_valid_blocks(blocks)


def mrkdwn(blocks: list[dict[str, Any]]) -> str:
    from tests.test_search_format import mrkdwn as texts

    return texts(blocks)


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]}


# -- the command --------------------------------------------------------------------------------


def test_the_command_is_acknowledged_at_once_even_when_dify_is_slow(h: Harness):
    for i in range(3):
        h.dify.add_log(h.app, at=T0 - 60 - i)
    h.dify.latency = 1.0  # every Dify request takes a second (the app's name and the logs: two)
    started = time.monotonic()
    response = h.command("failed since:1h")
    ack_seconds = time.monotonic() - started
    assert response.status_code == 200
    assert ack_seconds < 1.0, ack_seconds  # well under Slack's 3 s, and not waiting for Dify
    assert "Searching failed runs" in response.json()["text"]
    (answer,) = h.responses(1)
    assert answer["text"].startswith("3 runs: failed runs")
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is True


def test_the_answer_lists_the_runs_in_valid_blocks(h: Harness):
    runs = [h.dify.add_log(h.app, at=T0 - 60 - i, session=f"user_{i}") for i in range(3)]
    h.dify.add_log(h.app, status="succeeded", at=T0 - 30)
    h.command("failed")
    (answer,) = h.responses(1)
    valid(answer["blocks"])
    text = mrkdwn(answer["blocks"])
    for run in runs:
        assert f"`{run.run_id}`" in text and f"`{run.session_id}`" in text
    assert "Connection refused" in text
    assert set(buttons(answer)) == {fmt.ACTION_SHARE}


def test_untrusted_text_cannot_ping_or_link_anywhere_in_the_answer(h: Harness):
    evil = "<!channel> <@U0BOSS> <https://evil.example|login>"
    h.dify.add_log(h.app, at=T0 - 60, error=evil, session=evil)
    response = h.command(f'"{evil}"')  # the user's own query is echoed too
    h.dify.add_log(h.app, at=T0 - 50, error=evil, session="s")
    assert "<!channel>" not in response.text
    h.command("failed")
    for answer in h.responses(2):
        for live in ("<!channel>", "<@U0BOSS>", "<https://evil"):
            assert live not in answer["text"] and live not in mrkdwn(answer["blocks"])
    assert "&lt;!channel&gt;" in mrkdwn(h.slack.responses[1]["blocks"])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("failed limit:500", "limit:500 is not a number of runs"),
        ("color:red", "unknown filter color:"),
        ("since:2hrs", "cannot read the time"),
        ("page:0", "page:0 is not a page number"),
        ('"<!channel>', "a quote is not closed: &quot;&lt;!channel&gt;"),
    ],
)
def test_typos_are_answered_in_the_ack_with_the_usage_line(h: Harness, text: str, says: str):
    response = h.command(text)
    body = response.json()
    assert response.status_code == 200
    valid(body["blocks"])
    shown = mrkdwn(body["blocks"])
    assert says.replace("&quot;", '"') in shown
    assert "Usage: /wflogs" in shown
    assert "<!channel>" not in shown
    assert not h.dify.requests  # nothing was asked of Dify


def test_help(h: Harness):
    body = h.command("help").json()
    valid(body["blocks"])
    assert "/wflogs failed since:2h" in mrkdwn(body["blocks"])


def _bad(h: Harness, kind: str) -> str:
    if kind == "unknown app":
        return "app:nope"
    if kind == "unknown account":
        return "account:nobody@example.com"
    if kind == "dify down":
        h.dify.fail_next(10, "500")
        return "failed"
    if kind == "dify unreachable":
        h.dify.fail_next(10, "connect")
        return "failed"
    if kind == "rejected key":
        del h.dify.apps[h.app.key]
        return "failed"
    if kind == "page out of range":
        h.dify.add_log(h.app, at=T0 - 60)
        return "failed page:5"
    if kind == "unknown run":
        return "run 00000000-0000-4000-8000-000000000000"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "says", "usage"),
    [
        ("unknown app", "no app called 'nope'; the apps are: Support Bot", True),
        ("unknown account", "Account not found: nobody@example.com", True),
        ("dify down", "answered HTTP 500", False),
        ("dify unreachable", "cannot reach Dify", False),
        ("rejected key", "Dify rejected the API key", False),
        ("page out of range", "page 5 is out of range: 1 matching run fills 1 page", True),
        ("unknown run", "no run 00000000-0000-4000-8000-000000000000 in Support Bot", False),
    ],
)
def test_every_failure_gets_a_clear_answer_and_the_bot_keeps_serving(
    h: Harness, kind: str, says: str, usage: bool
):
    response = h.command(_bad(h, kind))
    assert response.status_code == 200
    (answer,) = h.responses(1)
    valid(answer["blocks"])
    shown = answer["text"] + mrkdwn(answer["blocks"])
    assert says in shown
    assert ("Usage: /wflogs" in shown) is usage
    assert h.app.key[4:] not in shown  # the key never appears, only its last four characters may
    assert h.command("help").status_code == 200  # still serving


def test_run_detail_shows_inputs_and_outputs_with_secrets_masked(h: Harness):
    run = h.dify.add_log(
        h.app,
        at=T0 - 60,
        inputs={"question": "why?", "api_key": "sk-abcdefghijklmnopqrstu"},
        outputs={"a": "ok"},
    )
    h.command(f"run {run.run_id}")
    (answer,) = h.responses(1)
    valid(answer["blocks"])
    shown = mrkdwn(answer["blocks"])
    assert "why?" in shown and '"a": "ok"' in shown
    assert "sk-abcdefghijklmnopqrstu" not in json.dumps(answer)


# -- buttons ---------------------------------------------------------------------------------------


def test_next_previous_and_share(h: Harness):
    runs = [h.dify.add_log(h.app, at=T0 - 60 - i) for i in range(25)]
    h.command("failed")
    (first,) = h.responses(1)
    assert set(buttons(first)) == {fmt.ACTION_NEXT, fmt.ACTION_SHARE}

    assert h.click(fmt.ACTION_NEXT, buttons(first)[fmt.ACTION_NEXT]["value"]).status_code == 200
    second = h.responses(2)[1]
    assert second["replace_original"] is True and second["text"].endswith("(page 2 of 3)")
    assert set(buttons(second)) == {fmt.ACTION_PREV, fmt.ACTION_NEXT, fmt.ACTION_SHARE}
    shown_1, shown_2 = mrkdwn(first["blocks"]), mrkdwn(second["blocks"])
    on_2 = [r for r in runs if r.run_id in shown_2]
    assert len(on_2) == 10 and not [r for r in on_2 if r.run_id in shown_1]

    h.click(fmt.ACTION_PREV, buttons(second)[fmt.ACTION_PREV]["value"])
    back = h.responses(3)[2]
    assert mrkdwn(back["blocks"]).split("Details")[0] == shown_1.split("Details")[0]

    h.click(fmt.ACTION_SHARE, buttons(second)[fmt.ACTION_SHARE]["value"])
    shared = h.responses(4)[3]
    assert shared["response_type"] == "in_channel" and shared["replace_original"] is False
    assert not buttons(shared)
    assert "Shared by <@U0ALICE>" in mrkdwn(shared["blocks"])
    assert [r.run_id for r in on_2 if r.run_id in mrkdwn(shared["blocks"])] == [r.run_id for r in on_2]


def test_pages_stay_the_same_when_new_runs_arrive(h: Harness, clock: Clock):
    for i in range(15):
        h.dify.add_log(h.app, at=T0 - 60 - i)
    h.command("failed")
    (first,) = h.responses(1)
    clock.advance(30)
    for i in range(5):  # new failures after the search: page 2 must not repeat page 1's runs
        h.dify.add_log(h.app, at=T0 + 10 + i)
    h.click(fmt.ACTION_NEXT, buttons(first)[fmt.ACTION_NEXT]["value"])
    second = h.responses(2)[1]
    assert second["text"].startswith("15 runs")
    ids_1 = {w for w in mrkdwn(first["blocks"]).split("`") if len(w) == 36}
    ids_2 = {w for w in mrkdwn(second["blocks"]).split("`") if len(w) == 36}
    assert len(ids_2) == 5 and not ids_1 & ids_2


def test_a_damaged_button_value_gets_an_answer(h: Harness):
    h.click(fmt.ACTION_NEXT, "{not json")
    (answer,) = h.responses(1)
    assert "damaged" in answer["text"]


@pytest.mark.parametrize(
    ("action_id", "value"),
    [
        (fmt.ACTION_SHARE, json.dumps({"kind": "run", "run_id": "../../info"})),
        (fmt.ACTION_NEXT, json.dumps({"similar": "../logs?keyword=x", "page": 2})),
        (fmt.ACTION_SIMILAR, "../../info"),
        (fmt.ACTION_SIMILAR + "_42", "00000000-0000-4000-8000-000000000000/../../info"),
        (fmt.ACTION_SIMILAR, None),
    ],
)
def test_a_forged_run_id_in_a_button_gets_a_clear_answer_and_dify_is_not_asked(
    h: Harness, action_id: str, value: str | None
):
    h.click(action_id, value)
    (answer,) = h.responses(1)
    assert "is not a run id" in answer["text"] or "damaged" in answer["text"]
    assert answer["replace_original"] is False
    assert not [r for r in h.dify.requests if "/workflows/" in r.url.path]


def test_similar_runs_from_a_run_detail_and_from_an_alert_button(h: Harness):
    error = "Node 'Fetch' run failed: HTTP 429 Too Many Requests for url https://api.example.com/v1/items/{n}"
    runs = [h.dify.add_log(h.app, at=T0 - 3600 * (i + 1), error=error.format(n=i)) for i in range(3)]
    h.dify.add_log(h.app, at=T0 - 60, error="Node 'Other' run failed: HTTP 429 Too Many Requests")
    h.command(f"run {runs[0].run_id}")
    (detail,) = h.responses(1)
    similar = buttons(detail)[fmt.ACTION_SIMILAR]
    h.click(fmt.ACTION_SIMILAR, similar["value"])
    answer = h.responses(2)[1]
    valid(answer["blocks"])
    assert answer["text"].startswith("3 runs") and answer["response_type"] == "ephemeral"
    assert answer["replace_original"] is False  # the run's detail stays
    shown = mrkdwn(answer["blocks"])
    assert all(r.run_id in shown for r in runs) and "*Per day*" in shown
    # An alert's button (the builder gives it its own action id) is answered the same way.
    alert_button = fmt.similar_button(runs[1].run_id, f"{fmt.ACTION_SIMILAR}_17")
    assert alert_button is not None
    h.click(alert_button["action_id"], alert_button["value"])
    assert h.responses(3)[2]["text"].startswith("3 runs")


def test_text_finds_errors_from_slack(h: Harness):
    hit = h.dify.add_log(h.app, at=T0 - 60, error="openai.RateLimitError: Rate limit reached for gpt-4o")
    h.command('"rate limit"')
    (answer,) = h.responses(1)
    assert answer["text"].startswith("1 run") and hit.run_id in mrkdwn(answer["blocks"])
    assert "found in error" in mrkdwn(answer["blocks"])


def test_alert_link_buttons_are_acknowledged_silently(h: Harness):
    response = h.click("open_dify_42", None)
    assert response.status_code == 200
    time.sleep(0.1)
    assert not h.slack.responses and not h.dify.requests


# -- signatures ----------------------------------------------------------------------------------------


def test_forged_or_stale_requests_are_refused_with_401(h: Harness):
    assert h.command("failed", secret="not-the-secret").status_code == 401
    assert h.command("failed", ts=int(time.time()) - 600).status_code == 401
    unsigned = httpx.post(h.url, content="command=%2Fwflogs&text=failed", timeout=5)
    assert unsigned.status_code == 401
    time.sleep(0.1)
    assert not h.dify.requests and not h.slack.responses


def test_other_paths_are_404(h: Harness):
    assert httpx.get(h.url.replace(EVENTS_PATH, "/"), timeout=5).status_code == 404


# -- access control -----------------------------------------------------------------------------------

ACCESS_TOML = """
[[apps]]
name = "support-bot"
api_key = "{support}"
channel = "C0ALERTS"
[[apps]]
name = "hr-bot"
api_key = "{hr}"
channel = "C0HR"
channels = ["C0HR"]
[slack]
allowed_users = ["U0ALICE", "U0BOB"]
allowed_channels = ["C0ALERTS", "C0HR", "C0OPS"]
"""


@pytest.fixture
def two(tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock) -> Iterator[Harness]:
    support, hr = dify.add_app("support"), dify.add_app("hr")
    dify.add_log(support, at=T0 - 60, session="support-user")
    dify.add_log(hr, at=T0 - 60, session="hr-user")
    toml = ACCESS_TOML.format(support=support.key, hr=hr.key)
    with serving(tmp_path, dify, slack, web, clock, toml=toml, app=support) as harness:
        yield harness


def test_people_not_allowed_are_refused_politely(two: Harness):
    body = two.command("failed", user="U0MALLORY").json()
    assert body["text"].startswith("🔒 Sorry, /wflogs is limited to a list of people")
    two.click(fmt.ACTION_SHARE, fmt.button_value(fmt.read_button_value("{}")), user="U0MALLORY")
    (answer,) = two.responses(1)
    assert "Sorry" in answer["text"] and answer["replace_original"] is False
    assert not two.dify.requests


def test_channels_not_allowed_are_refused_politely(two: Harness):
    body = two.command("failed", channel="C0RANDOM").json()
    assert "not enabled in this conversation" in body["text"]
    assert "<#C0ALERTS>" in mrkdwn(body["blocks"])
    assert not two.dify.requests


def test_the_channel_picks_the_app_and_app_channels_hide_the_rest(two: Harness):
    two.command("failed", channel="C0HR")
    two.command("failed", channel="C0ALERTS")
    two.command("failed", channel="C0OPS")  # no app alerts here: every app visible here
    two.command("failed app:hr-bot", channel="C0OPS")  # hr-bot is searchable only in C0HR
    hr, support, ops, hidden = two.responses(4)
    assert "hr-user" in mrkdwn(hr["blocks"]) and "support-user" not in mrkdwn(hr["blocks"])
    assert "support-user" in mrkdwn(support["blocks"]) and "hr-user" not in mrkdwn(support["blocks"])
    assert "support-user" in mrkdwn(ops["blocks"]) and "hr-user" not in mrkdwn(ops["blocks"])
    assert "no app called 'hr-bot'; the apps are: support-bot" in hidden["text"]


# -- Socket Mode ----------------------------------------------------------------------------------------


def test_socket_mode_envelopes_are_acknowledged_and_answered(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=T0 - 60)
    settings = make_settings(
        tmp_path,
        env={
            "DIFY_API_KEY": app.key,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": "xapp-1-test",
            "WFLOGS_ALERT_CHANNEL": CHANNEL,
        },
    )
    runtime = Runtime.build(settings, transport=httpx.MockTransport(dify.handler), web=web, dify_backoff=0)
    handler = SocketModeHandler(build_app(runtime, now=clock), "xapp-1-test")
    sent: list[str] = []
    handler.client.send_message = sent.append  # type: ignore[method-assign]  # the WebSocket's send
    envelope = {
        "envelope_id": "env-1",
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": {
            "command": "/wflogs",
            "text": "failed",
            "user_id": "U0ALICE",
            "channel_id": CHANNEL,
            "team_id": "T1",
            "api_app_id": "A1",
            "response_url": slack.response_url("socket"),
            "trigger_id": "1.2.3",
        },
    }
    try:
        handler.client.enqueue_message(json.dumps(envelope))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (sent and slack.responses):
            time.sleep(0.01)
        ack = json.loads(sent[0])
        assert ack["envelope_id"] == "env-1" and "Searching" in ack["payload"]["text"]
        assert slack.responses[0]["name"] == "socket"
        assert slack.responses[0]["text"].startswith("1 run: failed runs")
    finally:
        handler.close()
        runtime.close()


# -- wflogs run ------------------------------------------------------------------------------------------


def test_without_an_app_token_or_a_signing_secret_only_health_and_metrics_are_served(
    tmp_path: Path, web: WebClient
):
    from bot.service import Operations, start_serving

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(
        tmp_path, env={"DIFY_API_KEY": "app-" + "a" * 24, "PORT": str(port), "WFLOGS_HTTP_HOST": "127.0.0.1"}
    )
    runtime = Runtime.build(settings, web=web)
    stop = start_serving(runtime, Operations(runtime))
    try:
        assert httpx.post(f"http://127.0.0.1:{port}{EVENTS_PATH}", content=b"{}").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    finally:
        stop()
        runtime.close()


def test_wflogs_run_serves_signed_http_on_port_and_stops(tmp_path: Path, dify: FakeDify, slack: FakeSlack):
    from bot.service import serve

    app = dify.add_app("Support Bot")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with DifyServer(dify) as server:
        settings = make_settings(
            tmp_path,
            env={
                "DIFY_API_URL": server.url,
                "DIFY_API_KEY": app.key,
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_API_URL": slack.base_url,
                "WFLOGS_ALERT_CHANNEL": CHANNEL,
                "SLACK_SIGNING_SECRET": SECRET,
                "PORT": str(port),
            },
        )
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(settings,), kwargs={"out": None, "stop": stop})
        thread.start()
        try:
            h = Harness(dify, slack, f"http://127.0.0.1:{port}{EVENTS_PATH}", app)
            deadline = time.monotonic() + 5
            while True:
                try:
                    response = h.command("help")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            assert response.status_code == 200 and "How to use /wflogs" in response.json()["text"]
            assert h.command("help", secret="forged").status_code == 401
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.post(h.url, content="", timeout=2)
