"""Acknowledge, Mute and Resolve from Slack, and the mute commands: real Bolt over signed HTTP and
Socket Mode envelopes, Slack faked at the wire. A click records intent and is answered at once;
the deliverer edits the message from what was stored."""

from __future__ import annotations

import json
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

from bot.ops_http import EVENTS_PATH, OpsServer
from bot.runtime import Runtime
from bot.slack_app import build_app, events_handler
from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning
from tests.fakes.dify import FakeApp, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack, assert_valid_blocks, signed_post

SECRET = "8f14e45fceea167a5a36dedd4bea2543"
CHANNEL = "C0ALERTS"


@dataclass
class Bench:
    rt: Runtime
    slack: FakeSlack
    dify: FakeDify
    app: FakeApp
    clock: Clock
    url: str
    names: int = 0

    def signed(self, body: str) -> httpx.Response:
        return signed_post(self.url, body, SECRET)

    def response_url(self) -> str:
        self.names += 1
        return self.slack.response_url(f"r{self.names}")

    def click(
        self, action: dict[str, Any], *, user: str = "U0ALICE", channel: str = CHANNEL
    ) -> httpx.Response:
        return self.signed(
            urlencode({"payload": json.dumps(block_actions(action, user, channel, self.response_url()))})
        )

    def command(self, text: str, *, user: str = "U0ALICE", channel: str = CHANNEL) -> httpx.Response:
        form = {
            "command": "/wflogs",
            "text": text,
            "user_id": user,
            "user_name": name_of(user),
            "channel_id": channel,
            "team_id": "T1",
            "api_app_id": "A1",
            "response_url": self.response_url(),
            "trigger_id": "1.2.3",
        }
        return self.signed(urlencode(form))

    def answers(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.slack.lock:
                if len(self.slack.responses) >= count:
                    return list(self.slack.responses)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} answers, got {self.slack.responses!r}")

    def parent(self) -> dict[str, Any]:
        return next(m for m in self.slack.posts() if not m["thread_ts"])

    def control(self, action_id: str) -> dict[str, Any]:
        for block in self.parent()["blocks"]:
            for element in block.get("elements", []):
                if element.get("action_id") == action_id:
                    return element
        raise AssertionError(f"no {action_id} on the parent")

    def incident(self) -> dict[str, Any]:
        return self.rt.store.query("select * from incidents order by id desc limit 1")[0]


def name_of(user: str) -> str:
    """The Slack name that comes with a member ID in a click or a command (U0ALICE -> alice)."""
    return user.removeprefix("U0").lower()


def block_actions(action: dict[str, Any], user: str, channel: str, response_url: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": "T1", "domain": "test"},
        "user": {"id": user, "username": name_of(user), "name": name_of(user), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "container": {"type": "message", "message_ts": "1.1", "channel_id": channel, "is_ephemeral": False},
        "trigger_id": "1.2.3",
        "channel": {"id": channel, "name": "alerts"},
        "response_url": response_url,
        "actions": [{"block_id": "b1", "action_ts": "1", **action}],
    }


def pressed(element: dict[str, Any]) -> dict[str, Any]:
    return {"type": "button", "action_id": element["action_id"], "value": element["value"]}


def chosen(element: dict[str, Any], label: str) -> dict[str, Any]:
    option = next(o for o in element["options"] if o["text"]["text"] == label)
    return {"type": "static_select", "action_id": element["action_id"], "selected_option": option}


@contextmanager
def serving(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock, toml: str = ""
) -> Iterator[Bench]:
    app = dify.add_app("Support Bot")
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.base_url}
    config = f'[[apps]]\napi_key = "{app.key}"\nname = "Support Bot"\nchannel = "{CHANNEL}"\n' + toml
    rt = build_runtime(make_settings(tmp_path, env, toml=config), dify, clock, web=web)
    server = OpsServer(events_handler(build_app(rt, now=clock)), "127.0.0.1", 0)
    try:
        yield Bench(rt, slack, dify, app, clock, f"http://127.0.0.1:{server.port}{EVENTS_PATH}")
    finally:
        server.close()
        rt.close()


@pytest.fixture
def b(tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock) -> Iterator[Bench]:
    with serving(tmp_path, dify, slack, web, clock) as bench:
        bench.dify.add_log(bench.app, at=int(clock.now) - 30, error="model overloaded after 3s")
        bench.dify.add_log(bench.app, at=int(clock.now) - 20, error="model overloaded after 4s")
        bench.rt.cycle()
        yield bench


def shown(message: dict[str, Any]) -> str:
    return (message.get("text") or "") + json.dumps(message.get("blocks") or [], ensure_ascii=False)


def test_acknowledge_is_answered_at_once_recorded_and_shown_through_later_edits(b: Bench):
    started = time.monotonic()
    answer = b.click(pressed(b.control("incident_ack")))
    assert answer.status_code == 200 and time.monotonic() - started < 3
    assert b.incident()["ack_by"] == "alice"
    assert "Acknowledged" in b.answers(1)[0]["text"]
    assert b.answers(1)[0].get("response_type", "ephemeral") == "ephemeral"
    b.rt.deliver()  # the deliverer edits from the stored state
    parent = b.parent()
    assert "Acknowledged by alice" in shown(parent)
    assert "incident_ack" not in shown(parent)  # nothing left to acknowledge
    thread = [m for m in b.slack.posts() if m["thread_ts"] == parent["ts"]]
    assert any("Acknowledged by alice" in m["text"] for m in thread)
    # The reply names the clicker without pinging them (nor anyone: the README says so).
    assert not any("<@" in shown(m) for m in thread) and "<@" not in shown(parent)
    b.clock.advance(60)
    b.dify.add_log(b.app, at=int(b.clock.now) - 5, error="model overloaded after 9s")
    b.rt.cycle()
    assert "3 runs failed" in shown(b.parent()) and "Acknowledged by alice" in shown(b.parent())
    assert_valid_blocks(b.parent()["blocks"])


def test_mute_records_runs_but_posts_nothing_while_other_errors_still_alert(b: Bench):
    b.click(chosen(b.control("incident_mute"), "4 hours"))
    b.answers(1)
    b.rt.deliver()
    posts_before = len(b.slack.posts())
    b.clock.advance(60)
    muted = [
        b.dify.add_log(b.app, at=int(b.clock.now) - 9 + i, error=f"model overloaded after {i}s")
        for i in range(3)
    ]
    other = b.dify.add_log(b.app, at=int(b.clock.now) - 2, error="tool search failed: 500")
    b.rt.cycle()
    for run in muted:
        assert messages_mentioning(b.slack, run.run_id) == 0
    assert messages_mentioning(b.slack, other.run_id) == 1
    assert len(b.slack.posts()) == posts_before + 1  # only the other error's message
    assert "5 runs failed" in shown(b.parent()) and "Muted by alice" in shown(b.parent())
    assert b.rt.store.outbox_size() == 0  # recorded as handled, counted
    # After four hours the mute ends and the thread says so; new failures are posted again.
    b.clock.advance(4 * 3600)
    again = b.dify.add_log(b.app, at=int(b.clock.now) - 2, error="model overloaded after 77s")
    b.rt.cycle()
    assert messages_mentioning(b.slack, again.run_id) == 1


def test_muted_runs_are_still_in_the_digest_and_found_by_wflogs(b: Bench):
    b.click(chosen(b.control("incident_mute"), "24 hours"))
    b.answers(1)
    b.clock.advance(60)
    muted = [
        b.dify.add_log(b.app, at=int(b.clock.now) - 9 + i, error=f"model overloaded after {i}s")
        for i in range(3)
    ]
    b.rt.cycle()
    assert all(messages_mentioning(b.slack, run.run_id) == 0 for run in muted)
    assert b.rt.digester.post_now(b.clock.now).ok
    b.rt.deliverer.deliver_planned()
    digest = next(m for m in b.slack.posts() if "digest" in m["text"].lower())
    assert "*Failed*\\n🔴 5 " in shown(digest) and "🔴 *×5* `model overloaded" in shown(digest)
    b.command("failed since:1h")
    found = b.answers(2)[1]
    assert all(run.run_id in shown(found) for run in muted)


def test_mute_until_resolved_ends_with_the_incident(b: Bench):
    b.click(chosen(b.control("incident_mute"), "until resolved"))
    b.answers(1)
    b.click(pressed(b.control("incident_resolve")))
    b.answers(2)
    assert b.incident()["state"] == "resolved" and b.incident()["resolved_by"] == "alice"
    b.rt.deliver()
    assert "✅ Resolved" in shown(b.parent()) and "incident_mute" not in shown(b.parent())
    b.clock.advance(60)
    run = b.dify.add_log(b.app, at=int(b.clock.now) - 2, error="model overloaded after 5s")
    b.rt.cycle()
    tops = [m for m in b.slack.posts() if not m["thread_ts"]]
    assert len(tops) == 2 and run.run_id in shown(tops[-1])  # a new incident, not muted


def test_similar_runs_on_the_parent_answers_a_signed_click_and_stays_through_edits(b: Bench):
    element = b.control(f"wflogs_similar_i{b.incident()['id']}")
    assert element["text"]["text"] == "Similar runs"
    older = b.dify.add_log(b.app, at=int(b.clock.now) - 86400, error="model overloaded after 31s")
    b.dify.add_log(b.app, at=int(b.clock.now) - 3600, error="tool search failed: 500")
    answer = b.click(pressed(element))
    assert answer.status_code == 200
    (found,) = b.answers(1)
    assert found["text"].startswith("3 runs") and found.get("replace_original") is False
    assert older.run_id in shown(found) and "tool search failed" not in shown(found)
    # Every control keeps a unique action id, and the button survives the edits of the parent.
    b.click(pressed(b.control("incident_ack")))
    b.answers(2)
    b.rt.deliver()
    rows = [block["elements"] for block in b.parent()["blocks"] if block["type"] == "actions"]
    ids = [e["action_id"] for elements in rows for e in elements]
    assert element["action_id"] in ids and len(ids) == len(set(ids))
    assert "Acknowledged by alice" in shown(b.parent())


def test_a_resolve_click_is_answered_before_dify_is_asked_anything(b: Bench):
    # Counting the successful runs since the last failure asks Dify, which may be slow or down:
    # the click is recorded and answered first, the count comes afterwards.
    b.dify.add_log(b.app, status="succeeded", at=int(b.clock.now) - 5)
    release, finished = threading.Event(), threading.Event()

    def slow_dify(request: httpx.Request) -> None:
        if request.url.params.get("status") == "succeeded":
            release.wait(5)
            finished.set()

    b.dify.faults.append(slow_dify)
    try:
        answer = b.click(pressed(b.control("incident_resolve")))
        assert answer.status_code == 200
        assert not finished.is_set()  # Slack was answered while Dify still kept wflogs waiting
        assert b.incident()["state"] == "resolved" and b.incident()["resolved_by"] == "alice"
        assert "Resolved" in b.answers(1)[0]["text"]
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while b.incident()["successes"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.incident()["successes"] == 1
    b.rt.deliver()
    assert "1 successful run since the last failure" in shown(b.parent())


def test_a_click_from_someone_not_allowed_is_refused_and_changes_nothing(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    with serving(tmp_path, dify, slack, web, clock, toml='[slack]\nallowed_users = ["U0BOSS"]\n') as bench:
        dify.add_log(bench.app, at=int(clock.now) - 30, error="boom")
        bench.rt.cycle()
        bench.click(pressed(bench.control("incident_resolve")), user="U0MALLORY")
        (answer,) = bench.answers(1)
        assert "nothing was changed" in answer["text"] and answer.get("replace_original") is False
        assert bench.incident()["state"] == "open"
        bench.click(pressed(bench.control("incident_resolve")), user="U0BOSS")
        bench.answers(2)
        assert bench.incident()["state"] == "resolved"


def test_a_click_from_another_channel_changes_nothing_and_names_the_incidents_channel(b: Bench):
    element = b.control("incident_resolve")
    b.click(pressed(element), channel="C0ELSEWHERE")  # a copy shared there, or a forged id
    assert b.answers(1)[0]["text"] == "That incident belongs to <#C0ALERTS>: act on it there."
    b.click({"type": "button", "action_id": "incident_resolve", "value": "x'; drop table"})
    assert "damaged" in b.answers(2)[1]["text"]
    assert b.incident()["state"] == "open"


def test_mute_commands_list_end_and_mute_a_whole_app_telling_its_channel_once(b: Bench):
    answer = b.command("mute app:support-bot 2h deploying v2")
    assert answer.status_code == 200 and "Muted Support Bot for 2h" in answer.text
    b.click(chosen(b.control("incident_mute"), "1 hour"))
    b.answers(1)
    listing = b.command("mutes")
    assert (
        "2 mutes in force" in listing.text
        and "deploying v2" in listing.text
        and "the whole app" in listing.text
    )
    b.rt.deliver()
    notices = [m for m in b.slack.posts() if "is muted" in m["text"]]
    assert len(notices) == 1 and notices[0]["thread_ts"] is None and "by alice" in notices[0]["text"]
    b.clock.advance(60)
    hidden = b.dify.add_log(b.app, at=int(b.clock.now) - 3, error="a different error entirely")
    b.rt.cycle()
    assert messages_mentioning(b.slack, hidden.run_id) == 0  # the whole app is muted
    number = int(b.rt.store.query("select id from mutes where incident_id is null")[0]["id"])
    assert "ended" in b.command(f"unmute {number}").text
    b.rt.deliver()
    b.rt.deliver()
    assert len([m for m in b.slack.posts() if "no longer muted" in m["text"] and not m["thread_ts"]]) == 1
    assert "No single app" in b.command("mute app:nope 1h").text
    assert "for how long" in b.command("mute app:support-bot").text
    assert "no mute number 999" in b.command("unmute 999").text


def test_an_app_name_in_quotes_curly_ones_too_is_muted(b: Bench):
    # Slack clients on macOS turn "..." into curly quotes; an app's name may have spaces.
    answer = b.command("mute app:\u201cSupport Bot\u201d 2h planned work")
    assert answer.status_code == 200 and "Muted Support Bot for 2h" in answer.text
    assert "planned work" in b.command("mutes").text
    assert "Muted Support Bot for 1h" in b.command('mute 1h app:"support bot"').text


def test_mutes_of_an_app_limited_to_other_channels_are_neither_listed_nor_ended_elsewhere(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    hr = dify.add_app("HR Bot")
    toml = f'[[apps]]\napi_key = "{hr.key}"\nname = "HR Bot"\nchannel = "C0HR"\nchannels = ["C0HR"]\n'
    with serving(tmp_path, dify, slack, web, clock, toml=toml) as bench:
        assert "Muted HR Bot" in bench.command("mute app:hr-bot 1h payroll migration", channel="C0HR").text
        number = int(bench.rt.store.query("select id from mutes")[0]["id"])
        elsewhere = bench.command("mutes")
        assert "No mutes are in force" in elsewhere.text and "payroll" not in elsewhere.text
        assert "no mute number" in bench.command(f"unmute {number}").text
        assert bench.rt.store.query("select ended_at from mutes")[0]["ended_at"] is None
        assert "payroll migration" in bench.command("mutes", channel="C0HR").text
        assert "ended" in bench.command(f"unmute {number}", channel="C0HR").text


def test_socket_mode_block_actions_are_acknowledged_and_recorded(b: Bench):
    handler = SocketModeHandler(build_app(b.rt, now=b.clock), "xapp-1-test")
    sent: list[str] = []
    handler.client.send_message = sent.append  # type: ignore[method-assign]  # the WebSocket's send
    envelope = {
        "envelope_id": "env-7",
        "type": "interactive",
        "accepts_response_payload": False,
        "payload": block_actions(pressed(b.control("incident_ack")), "U0CAROL", CHANNEL, b.response_url()),
    }
    try:
        handler.client.enqueue_message(json.dumps(envelope))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (sent and b.slack.responses):
            time.sleep(0.01)
        assert json.loads(sent[0])["envelope_id"] == "env-7"
        assert b.incident()["ack_by"] == "carol"
    finally:
        handler.close()
    b.rt.deliver()
    assert "Acknowledged by carol" in shown(b.parent())


def test_an_app_muted_for_maintenance_hears_nothing_of_its_outage_until_the_mute_ends(b: Bench):
    assert "Muted Support Bot for 1h" in b.command("mute app:support-bot 1h planned maintenance").text
    b.rt.deliver()
    for _ in range(15):  # Dify is down for the maintenance, past the 5-minute grace
        b.clock.advance(60)
        b.dify.fail_next(3, "502")
        b.rt.cycle()
    assert not any("cannot read" in m["text"] for m in b.slack.posts())
    for _ in range(50):  # the mute ends while Dify is still down: now the channel hears it, once
        b.clock.advance(60)
        b.dify.fail_next(3, "502")
        b.rt.cycle()
    assert len([m for m in b.slack.posts() if "cannot read Support Bot" in m["text"]]) == 1
    b.clock.advance(60)
    b.rt.cycle()
    assert len([m for m in b.slack.posts() if "can read Support Bot again" in m["text"]]) == 1


def test_maintenance_that_ends_before_the_mute_leaves_no_trace(b: Bench):
    b.command("mute app:support-bot 1h planned maintenance")
    for _ in range(15):
        b.clock.advance(60)
        b.dify.fail_next(3, "502")
        b.rt.cycle()
    b.clock.advance(60)
    b.rt.cycle()  # Dify is back, still within the mute
    assert not any("read Support Bot" in m["text"] for m in b.slack.posts())
