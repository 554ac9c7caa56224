"""Who is told: a new incident's first message mentions the mention list (replies, edits,
resolutions and digests never do), and an incident nobody acknowledged is escalated ONE time,
across restarts, unless someone acknowledged, muted or resolved it first."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.ops_http import EVENTS_PATH, OpsServer
from bot.runtime import Runtime
from bot.slack_app import build_app, events_handler
from tests.conftest import Clock, build_runtime, make_settings, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack, assert_valid_blocks, mrkdwn_texts
from tests.test_slack_app import SECRET, Harness

ESCALATE = {
    "WFLOGS_MENTION": "U0ONCALL1,here",
    "WFLOGS_ESCALATE_AFTER": "900",
    "WFLOGS_ESCALATE_TO": "U0LEAD001,S0SRE0001",
}
CALLED = ("<@U0ONCALL1>", "<!here>", "<@U0LEAD001>", "<!subteam^S0SRE0001>")


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **env: str) -> Runtime:
    return build_runtime(
        make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack), **env}), dify, clock
    )


def texts(message: dict) -> str:
    return "\n".join([message.get("text") or "", *mrkdwn_texts(message.get("blocks") or [])])


def calls(message: dict) -> list[str]:
    return [c for c in CALLED if c in texts(message)]


def fail(dify: FakeDify, app, clock: Clock, n: int = 2, error: str = "model overloaded after {i}s") -> None:
    for i in range(n):
        dify.add_log(app, at=int(clock.now) - 30 + i, error=error.format(i=i))


def escalations(slack: FakeSlack) -> list[dict]:
    return [m for m in slack.posts() if m["reply_broadcast"]]


def run_for(rt: Runtime, clock: Clock, seconds: int, *, dify: FakeDify | None = None, app=None) -> None:
    """Cycles every minute for ``seconds``, with a new failure each cycle when ``dify`` is given."""
    for _ in range(seconds // 60):
        clock.advance(60)
        if dify is not None:
            fail(dify, app, clock, 1, error="model overloaded after {i}9s")
        rt.cycle()


# -- mentions -----------------------------------------------------------------------------


def test_only_a_new_incidents_first_message_mentions(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(
        tmp_path,
        dify,
        clock,
        slack,
        app.key,
        WFLOGS_MENTION="U0ONCALL1,S0SUPPORT,here",
        WFLOGS_RESOLVE_AFTER="300",
    )
    fail(dify, app, clock)
    rt.cycle()
    first = slack.calls_to("chat.postMessage")[0].params
    assert "<@U0ONCALL1> <!subteam^S0SUPPORT> <!here>" in first["text"]
    assert "<@U0ONCALL1> <!subteam^S0SUPPORT> <!here>" in "\n".join(mrkdwn_texts(first["blocks"]))
    assert_valid_blocks(first["blocks"])
    run_for(rt, clock, 180, dify=dify, app=app)  # replies in the thread, the parent edited
    run_for(rt, clock, 600)  # quiet: resolved (edit and reply)
    posts = [c.params for c in slack.calls_to("chat.postMessage")]
    updates = [c.params for c in slack.calls_to("chat.update")]
    assert len(posts) >= 4 and len(updates) >= 3
    assert any("Resolved" in texts(p) for p in posts[1:])
    mentioning = [p for p in posts if "<@U0ONCALL1>" in texts(p) or "<!here>" in texts(p)]
    assert mentioning == [first]
    assert not any("<@U0ONCALL1>" in texts(u) or "<!here>" in texts(u) for u in updates)
    # The same error back after it resolved is a new incident: its first message mentions again.
    fail(dify, app, clock)
    clock.advance(60)
    rt.cycle()
    assert "<@U0ONCALL1>" in slack.calls_to("chat.postMessage")[-1].params["text"]


def test_a_storm_summary_of_new_incidents_mentions_once(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_MENTION="S0SUPPORT")
    for shape in range(8):
        dify.add_log(app, at=int(clock.now) - 30, error=f"node {'abcdefgh'[shape] * 3} broke")
    rt.cycle()
    top = [m for m in slack.posts() if not m["thread_ts"]]
    assert len(top) == 5
    assert all("<!subteam^S0SUPPORT>" in texts(m) for m in top)
    assert not any("<!subteam^S0SUPPORT>" in texts(m) for m in slack.posts() if m["thread_ts"])


def test_the_digest_never_mentions(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_MENTION="U0ONCALL1,here")
    fail(dify, app, clock, 5)
    rt.cycle()
    before = len(slack.posts())
    assert rt.digester.post_now(clock.now).ok
    rt.deliverer.deliver_planned()
    digests = slack.posts()[before:]
    assert digests and not any(calls(m) for m in digests)


# -- escalation --------------------------------------------------------------------------------


def test_an_unacknowledged_incident_is_escalated_once_to_the_escalation_list(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    fail(dify, app, clock)
    rt.cycle()
    (parent,) = [m for m in slack.posts() if not m["thread_ts"]]
    run_for(rt, clock, 840, dify=dify, app=app)
    assert not escalations(slack)
    run_for(rt, clock, 60, dify=dify, app=app)  # 900 s after it opened
    (reply,) = escalations(slack)
    assert reply["thread_ts"] == parent["ts"]
    assert reply["text"].startswith("<@U0LEAD001> <!subteam^S0SRE0001> 🚨 Nobody has acknowledged this")
    assert "going on for 15m 29s" in reply["text"] and "(17 runs)" in reply["text"]
    assert "model overloaded" in reply["text"]
    run_for(rt, clock, 1800, dify=dify, app=app)
    assert len(escalations(slack)) == 1
    # Every other reply in the thread stays quiet.
    assert not any(calls(m) for m in slack.posts() if m["thread_ts"] and not m["reply_broadcast"])


def test_escalation_calls_the_mention_list_when_no_escalation_list_is_set(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_MENTION="S0SUPPORT", WFLOGS_ESCALATE_AFTER="300"
    )
    fail(dify, app, clock)
    rt.cycle()
    run_for(rt, clock, 300)
    (reply,) = escalations(slack)
    assert reply["text"].startswith("<!subteam^S0SUPPORT> 🚨")


@pytest.mark.parametrize("action", ["acknowledge", "mute", "resolve"])
def test_acknowledging_muting_or_resolving_first_cancels_the_escalation(tmp_path, dify, clock, slack, action):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    fail(dify, app, clock)
    rt.cycle()
    run_for(rt, clock, 600, dify=dify, app=app)
    (incident,) = rt.store.query("select id from incidents")
    at = int(clock.now)
    if action == "acknowledge":
        rt.actions.acknowledge(int(incident["id"]), "U0ALICE", at)
    elif action == "mute":
        rt.actions.mute(int(incident["id"]), "3600", "U0ALICE", at)
    else:
        rt.actions.resolve(int(incident["id"]), "U0ALICE", at)
    # Failures go on (after a resolution they would open a new incident, with its own clock).
    keep_failing = {"dify": dify, "app": app} if action != "resolve" else {}
    run_for(rt, clock, 4200, **keep_failing)  # type: ignore[arg-type]  # even after the mute ran out
    assert not escalations(slack)


def test_an_acknowledgement_clicked_in_slack_cancels_the_escalation(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    web = WebClient(token=slack_env(slack)["SLACK_BOT_TOKEN"], base_url=slack.base_url, timeout=2)
    settings = make_settings(
        tmp_path, {"DIFY_API_KEY": app.key, **slack_env(slack), "SLACK_SIGNING_SECRET": SECRET, **ESCALATE}
    )
    rt = build_runtime(settings, dify, clock, web=web)
    server = OpsServer(events_handler(build_app(rt, now=clock)), "127.0.0.1", 0)
    try:
        fail(dify, app, clock)
        rt.cycle()
        (parent,) = [m for m in slack.posts() if not m["thread_ts"]]
        (ack,) = [
            e
            for b in parent["blocks"]
            if b["type"] == "actions"
            for e in b["elements"]
            if e["action_id"] == "incident_ack"
        ]
        harness = Harness(dify, slack, f"http://127.0.0.1:{server.port}{EVENTS_PATH}", app)
        assert harness.click("incident_ack", ack["value"], user="U0ALICE").status_code == 200
        harness.responses(1)
        run_for(rt, clock, 1800, dify=dify, app=app)
    finally:
        server.close()
        rt.close()
    assert not escalations(slack)
    assert "Acknowledged by alice" in json.dumps(parent["blocks"])  # a name: no ping


def test_restarts_between_opening_and_escalation_neither_repeat_nor_forget_it(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    fail(dify, app, clock)
    rt.cycle()
    for _ in range(3):  # restarts at 300 s, 600 s and 900 s after the opening
        run_for(rt, clock, 300, dify=dify, app=app)
        rt.close()
        rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    rt.cycle()
    assert len(escalations(slack)) == 1
    for _ in range(3):  # and after it
        run_for(rt, clock, 300, dify=dify, app=app)
        rt.close()
        rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
        rt.cycle()
    assert len(escalations(slack)) == 1


def test_an_escalation_slack_did_not_take_goes_out_once_after_a_restart(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    fail(dify, app, clock)
    rt.cycle()
    run_for(rt, clock, 840)
    slack.fail("chat.postMessage", "status", 503, times=100)
    run_for(rt, clock, 120)  # due now, but Slack is down
    assert not escalations(slack)
    rt.close()
    slack.faults.clear()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    run_for(rt, clock, 180)
    assert len(escalations(slack)) == 1


def test_failure_rate_incidents_escalate_too(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    for i in range(10):
        dify.add_log(app, at=int(clock.now) - 100 + i, error="boom")
        dify.add_log(app, status="succeeded", at=int(clock.now) - 100 + i, error="")
    rt = _runtime(
        tmp_path,
        dify,
        clock,
        slack,
        app.key,
        WFLOGS_RATE_THRESHOLD="0.2",
        WFLOGS_ESCALATE_AFTER="120",
        WFLOGS_ESCALATE_TO="U0LEAD001",
        WFLOGS_RESOLVE_AFTER="60",
    )
    rt.cycle()
    (incident,) = rt.store.query("select id from incidents where kind is null")
    rt.actions.acknowledge(int(incident["id"]), "U0ALICE", int(clock.now))  # the error shape is handled
    run_for(rt, clock, 120)
    (reply,) = escalations(slack)
    assert "a failure rate above its threshold" in reply["text"] and "<@U0LEAD001>" in reply["text"]


def test_terminal_mode_prints_the_escalation(tmp_path, dify, clock):
    app = dify.add_app("Support Bot")
    out = io.StringIO()
    settings = make_settings(
        tmp_path, {"DIFY_API_KEY": app.key, "WFLOGS_ESCALATE_AFTER": "120", "WFLOGS_ESCALATE_TO": "U0LEAD001"}
    )
    rt = build_runtime(settings, dify, clock, stream=out)
    fail(dify, app, clock)
    rt.cycle()
    run_for(rt, clock, 180)
    assert out.getvalue().count("(also in the channel) <@U0LEAD001> 🚨 Nobody has acknowledged this") == 1


def test_an_app_muted_for_maintenance_is_not_escalated(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    fail(dify, app, clock)
    rt.cycle()
    rt.actions.mute_app(
        app_id=rt.settings.apps[0].id,
        app_name="Support Bot",
        channel="C0ALERTS",
        seconds=3600,
        reason="upgrade",
        user="U0ALICE",
        now=int(clock.now),
    )
    run_for(rt, clock, 1800)
    assert not escalations(slack)


def test_a_storm_of_new_incidents_escalates_without_flooding_the_channel(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **ESCALATE)
    for shape in range(12):
        dify.add_log(app, at=int(clock.now) - 30, error=f"node {'abcdefghijkl'[shape] * 3} broke")
    rt.cycle()
    run_for(rt, clock, 960)
    broadcast = escalations(slack)
    # Four shapes with their own message, eight in the storm summary's thread: at most one
    # escalation per thread, never one per shape in the summary's thread.
    assert len({m["thread_ts"] for m in broadcast}) == len(broadcast) <= 5
    summary = next(m for m in slack.posts() if not m["thread_ts"] and "kinds of error" in texts(m))
    (storm,) = [m for m in broadcast if m["thread_ts"] == summary["ts"]]
    assert storm["text"].count("<@U0LEAD001>") == 1 and "8 incidents" in storm["text"]
    assert rt.store.query("select count(*) n from incidents where escalated_at is null")[0]["n"] == 0
