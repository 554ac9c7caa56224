"""Channels subscribe themselves to apps from Slack: real signed slash commands against the Slack
fake; a subscribed channel gets its own incidents (parent, thread, edits, buttons), kept across a
restart; filters hold; unsubscribing stops it; the configured channel never loses a run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient

from bot.ops_http import EVENTS_PATH, OpsServer
from bot.slack_app import build_app, events_handler
from storage import subscriptions
from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning
from tests.fakes.dify import FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack, assert_valid_blocks
from tests.test_home import home_opened, wait_home
from tests.test_incident_controls import CHANNEL, SECRET, Bench, pressed, serving

TEAM = "C0TEAM"


@pytest.fixture
def b(tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock) -> Iterator[Bench]:
    with serving(tmp_path, dify, slack, web, clock) as bench:
        yield bench


def said(response: Any) -> dict[str, Any]:
    assert response.status_code == 200
    return dict(json.loads(response.text))


def parents(slack: FakeSlack, channel: str) -> list[dict[str, Any]]:
    return [m for m in slack.posts(channel) if not m["thread_ts"]]


def fail(b: Bench, error: str, *, status: str = "failed") -> str:
    b.clock.advance(60)
    run = b.dify.add_log(b.app, at=int(b.clock.now) - 5, error=error, status=status)
    b.rt.cycle()
    return run.run_id


def test_a_subscribed_channel_gets_its_own_incident_and_the_configured_one_keeps_its_own(b: Bench):
    answer = said(b.command("subscribe app:support-bot", user="U0BOB", channel=TEAM))
    assert answer["response_type"] == "in_channel"  # the channel sees who routed what
    assert "bob subscribed this channel to Support Bot" in answer["text"]
    run = fail(b, "model overloaded after 3s")
    assert len(parents(b.slack, TEAM)) == 1 and len(parents(b.slack, CHANNEL)) == 1
    assert messages_mentioning(b.slack, run) == 2  # one in each channel
    incidents = b.rt.store.query("select id, channel from incidents order by id")
    assert {i["channel"] for i in incidents} == {CHANNEL, TEAM}
    team_parent = parents(b.slack, TEAM)[0]
    assert_valid_blocks(team_parent["blocks"])
    # Its buttons act on its own incident: the team's parent is edited, the configured one is not.
    ack = next(
        e
        for blk in team_parent["blocks"]
        for e in blk.get("elements", [])
        if e.get("action_id") == "incident_ack"
    )
    b.click(pressed(ack), user="U0BOB", channel=TEAM)
    b.answers(1)
    b.rt.deliver()
    assert "Acknowledged by bob" in json.dumps(parents(b.slack, TEAM)[0]["blocks"])
    assert "Acknowledged by" not in json.dumps(parents(b.slack, CHANNEL)[0]["blocks"])
    # A second failure goes to both threads.
    again = fail(b, "model overloaded after 9s")
    assert messages_mentioning(b.slack, again) == 2


def test_subscriptions_survive_a_restart(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    with serving(tmp_path, dify, slack, web, clock) as first:
        said(first.command("subscribe app:* failed", channel=TEAM))
        app = first.app
    # A new process on the same database (the fake Dify app is found by its key).
    env = {
        "SLACK_BOT_TOKEN": first.rt.settings.slack_bot_token or "",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
    }
    config = f'[[apps]]\napi_key = "{app.key}"\nname = "Support Bot"\nchannel = "{CHANNEL}"\n'
    rt = build_runtime(make_settings(tmp_path, env, toml=config), dify, clock, web=web)
    server = OpsServer(events_handler(build_app(rt, now=clock)), "127.0.0.1", 0)
    try:
        clock.advance(60)
        run = dify.add_log(app, at=int(clock.now) - 5, error="quota exceeded")
        rt.cycle()
        assert messages_mentioning(slack, run.run_id) == 2
        assert len(parents(slack, TEAM)) == 1
        bench = Bench(rt, slack, dify, app, clock, f"http://127.0.0.1:{server.port}{EVENTS_PATH}")
        listing = said(bench.command("subscriptions", channel=TEAM))
        assert "every app, failed runs only" in listing["text"]
    finally:
        server.close()
        rt.close()


def test_status_and_text_filters_hold(b: Bench):
    said(b.command("subscribe app:support-bot stopped", channel=TEAM))
    said(b.command('subscribe app:support-bot "quota"', channel="C0QUOTA"))
    failed = fail(b, "model overloaded")
    stopped = fail(b, "stopped by user", status="stopped")
    quota = fail(b, "Quota exceeded for model gpt-4")

    def mentions(channel: str, run: str) -> int:
        return sum(
            1 for m in b.slack.posts(channel) if run in (m["text"] or "") + json.dumps(m["blocks"] or [])
        )

    assert mentions(TEAM, stopped) == 1 and mentions(TEAM, failed) == 0 and mentions(TEAM, quota) == 0
    assert mentions("C0QUOTA", quota) == 1 and mentions("C0QUOTA", failed) == 0
    assert all(mentions(CHANNEL, r) == 1 for r in (failed, stopped, quota))  # never taken away


def test_unsubscribing_stops_it(b: Bench):
    said(b.command("subscribe app:support-bot", channel=TEAM))
    fail(b, "model overloaded")
    before = len(b.slack.posts(TEAM))
    answer = said(b.command("unsubscribe app:support-bot", user="U0BOB", channel=TEAM))
    assert answer["response_type"] == "in_channel" and "bob unsubscribed" in answer["text"]
    run = fail(b, "tool search failed: 500")
    assert len(b.slack.posts(TEAM)) == before
    assert messages_mentioning(b.slack, run) == 1
    assert subscriptions.counts(b.rt.store) == {"subscriptions": 0, "channels": 0}


def test_listing_marks_the_configured_route_and_unknown_names_get_the_closest(b: Bench):
    listing = said(b.command("subscriptions", channel=CHANNEL))
    assert "Support Bot: from wflogs.toml (change it there)" in listing["text"]
    assert listing.get("response_type", "ephemeral") == "ephemeral"
    answer = said(b.command("unsubscribe app:support-bot", channel=CHANNEL))
    assert "from wflogs.toml: change it there" in answer["text"]
    unknown = said(b.command("subscribe app:suport-bt", channel=TEAM))
    assert "the apps are (closest first): `Support Bot`" in unknown["text"]
    assert subscriptions.counts(b.rt.store)["subscriptions"] == 0


def test_a_channel_the_bot_is_not_in_is_told_to_invite_it(b: Bench):
    b.slack.not_member.add(TEAM)
    answer = said(b.command("subscribe app:support-bot", channel=TEAM))
    assert "/invite @wflogs" in answer["text"]
    assert subscriptions.counts(b.rt.store)["subscriptions"] == 0


def test_allowed_users_apply(tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock):
    with serving(tmp_path, dify, slack, web, clock, toml='[slack]\nallowed_users = ["U0ALICE"]\n') as b:
        refused = said(b.command("subscribe app:support-bot", user="U0MALLORY", channel=TEAM))
        assert "not on it" in refused["text"]
        assert subscriptions.counts(b.rt.store)["subscriptions"] == 0
        said(b.command("subscribe app:support-bot", user="U0ALICE", channel=TEAM))
        assert subscriptions.counts(b.rt.store) == {"subscriptions": 1, "channels": 1}


def test_escaped_and_parsed():
    from bot.errors import QueryError
    from bot.subscriptions import parse_subscription_command

    cmd = parse_subscription_command('subscribe app:* failed "rate <limit>"')
    assert cmd is not None and (cmd.app, cmd.status, cmd.text) == ("*", "failed", "rate <limit>")
    assert parse_subscription_command("app:x failed") is None
    with pytest.raises(QueryError):
        parse_subscription_command("subscribe failed")


def test_subscriptions_are_counted_in_metrics(b: Bench):
    said(b.command("subscribe app:support-bot", channel=TEAM))
    said(b.command('subscribe app:* "quota"', channel="C0QUOTA"))
    b.rt.cycle()
    assert "wflogs_subscriptions 2.0" in b.rt.metrics.render().decode()


def test_check_reports_subscriptions_and_their_channels(tmp_path: Path):
    from storage import Store
    from tests.fakes.dify import DifyServer
    from tests.test_cli import wflogs

    store = Store.open(str(tmp_path / "wflogs.db"))
    subscriptions.subscribe(
        store, channel=TEAM, app_id="*", app_name="every app", status="", text="", user="U1", now=1
    )
    store.db.conn.close()
    with DifyServer(FakeDify()) as server, FakeSlack() as slack:
        flow = server.fake.add_app("Flow")
        slack.not_member.add(TEAM)
        done = wflogs(
            tmp_path,
            "check",
            DIFY_API_URL=server.url,
            DIFY_API_KEY=flow.key,
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_API_URL=slack.base_url,
            WFLOGS_ALERT_CHANNEL=CHANNEL,
        )
    assert "✓ 1 subscription made from Slack with /wflogs subscribe, in 1 channel" in done.stdout
    assert f"✗ channel {TEAM}" in done.stdout and "/invite @wflogs" in done.stdout


def test_a_subscribed_channel_pages_nobody_twice(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    toml = 'mention = ["U0ONCALL"]\nescalate_after = 600\nescalate_to = ["U0BOSS"]\n'
    with serving(tmp_path, dify, slack, web, clock, toml=toml) as b:
        said(b.command("subscribe app:support-bot", channel=TEAM))
        fail(b, "model overloaded")
        assert "<@U0ONCALL>" in (parents(b.slack, CHANNEL)[0]["text"] or "")
        assert "<@U0ONCALL>" not in json.dumps(parents(b.slack, TEAM)[0])
        b.clock.advance(900)
        b.rt.cycle()
        escalations = [m for m in b.slack.posts() if "<@U0BOSS>" in (m["text"] or "")]
        assert [m["channel"] for m in escalations] == [CHANNEL]


def test_socket_mode_slash_command_subscribes(b: Bench):
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    handler = SocketModeHandler(build_app(b.rt, now=b.clock), "xapp-1-test")
    sent: list[str] = []
    handler.client.send_message = sent.append  # type: ignore[method-assign]  # the WebSocket's send
    payload = {
        "command": "/wflogs",
        "text": 'subscribe app:support-bot failed "overloaded"',
        "user_id": "U0CAROL",
        "channel_id": TEAM,
        "team_id": "T1",
        "api_app_id": "A1",
        "response_url": b.response_url(),
        "trigger_id": "1.2.3",
    }
    envelope = {
        "envelope_id": "env-9",
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": payload,
    }
    try:
        handler.client.enqueue_message(json.dumps(envelope))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not sent:
            time.sleep(0.01)
        answer = json.loads(sent[0])
        assert answer["envelope_id"] == "env-9" and answer["payload"]["response_type"] == "in_channel"
    finally:
        handler.close()
    run = fail(b, "model overloaded")
    assert len(parents(b.slack, TEAM)) == 1 and messages_mentioning(b.slack, run) == 2


def test_a_new_configured_channel_leaves_subscribed_alerts_where_they_are(b: Bench):
    said(b.command("subscribe app:support-bot", channel=TEAM))
    said(b.command("subscribe app:support-bot", channel="C0OTHER"))
    app_id = b.rt.settings.apps[0].id
    # Waiting alerts: one per channel. The configuration now routes the app to TEAM.
    b.rt.store.db["alerts"].insert_all(  # type: ignore[union-attr]
        [
            {
                "app_id": app_id,
                "log_id": "L1",
                "channel": CHANNEL,
                "status": "failed",
                "group_key": "g",
                "entry": "{}",
                "enqueued_at": 1,
                "subscription": 0,
            },
            {
                "app_id": app_id,
                "log_id": "L1",
                "channel": TEAM,
                "status": "failed",
                "group_key": "g",
                "entry": "{}",
                "enqueued_at": 1,
                "subscription": 1,
            },
            {
                "app_id": app_id,
                "log_id": "L1",
                "channel": "C0OTHER",
                "status": "failed",
                "group_key": "g",
                "entry": "{}",
                "enqueued_at": 1,
                "subscription": 1,
            },
        ]
    )
    b.rt.store.rebind_channels({app_id: TEAM})
    rows = b.rt.store.query("select channel from alerts where log_id = 'L1' order by channel")
    assert [r["channel"] for r in rows] == ["C0OTHER", TEAM]  # once in TEAM, C0OTHER kept


def test_an_app_limited_to_its_channels_is_not_routed_elsewhere(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    with serving(tmp_path, dify, slack, web, clock, toml=f'channels = ["{CHANNEL}"]\n') as b:
        answer = said(b.command("subscribe app:support-bot", channel=TEAM))
        assert "limited to its own channels" in answer["text"]
        said(b.command("subscribe app:*", channel=TEAM))  # every other app: this one stays home
        run = fail(b, "salary table unreadable")
        assert messages_mentioning(b.slack, run) == 1 and not parents(b.slack, TEAM)
        b.signed(json.dumps(home_opened("U0ALICE")))
        view = wait_home(b, 1)
        assert "salary table" not in json.dumps(view) and "shown in its channel only" in json.dumps(view)


def test_a_search_without_app_in_a_subscribed_channel_searches_the_apps_routed_there(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    other = dify.add_app("Other Bot")
    toml = f'\n[[apps]]\napi_key = "{other.key}"\nname = "Other Bot"\nchannel = "C0OTHER"\n'
    with serving(tmp_path, dify, slack, web, clock, toml=toml) as b:
        b.dify.add_log(b.app, at=int(clock.now) - 30, error="support failure here")
        b.dify.add_log(other, at=int(clock.now) - 30, error="other failure there")
        said(b.command("subscribe app:support-bot", channel=TEAM))
        b.command("failed since:1h", channel=TEAM)
        answer = json.dumps(b.answers(1)[-1])
        assert "support failure here" in answer and "other failure there" not in answer


def test_a_malformed_subscription_is_answered_with_what_was_typed_escaped_once(b: Bench):
    answer = said(b.command("subscribe app:support-bot <!channel>&co", channel=TEAM))
    text = answer["text"] + json.dumps(answer["blocks"])
    assert "`&lt;!channel&gt;&amp;co` is not understood here" in text
    assert "&amp;lt;" not in text and "<!channel>" not in text
    assert not subscriptions.of_channel(b.rt.store, TEAM)


def test_a_subscription_to_an_app_no_longer_watched_can_still_be_ended(b: Bench):
    # Listed by its stored name; the app left the configuration (or the workspace) since.
    subscriptions.subscribe(
        b.rt.store,
        channel=TEAM,
        app_id="0123456789abcdef",
        app_name="Old Bot",
        status="",
        text="",
        user="bob",
        now=0,
    )
    assert "Old Bot" in said(b.command("subscriptions", channel=TEAM))["text"]
    answer = said(b.command("unsubscribe app:old-bot", user="U0BOB", channel=TEAM))
    assert "bob unsubscribed this channel from Old Bot" in answer["text"], answer["text"]
    assert not subscriptions.of_channel(b.rt.store, TEAM)


def test_curly_quotes_from_slack_clients_are_quotes_here_too(b: Bench):
    # macOS turns "..." into “...” as people type; searches already take both.
    answer = said(b.command("subscribe app:“Support Bot” failed “quota”", channel=TEAM))
    assert (
        "subscribed this channel to Support Bot, failed runs only, errors containing “quota”"
        in answer["text"]
    )
    (row,) = subscriptions.of_channel(b.rt.store, TEAM)
    assert (row["status"], row["text"]) == ("failed", "quota")
