"""Incidents: one channel message per ongoing error, kept current in place, its later runs in its
thread; resolved when quiet, back again with a link; storms capped; parents deleted in Slack;
outages and crashes in the middle of an incident. Slack is the fake at the wire."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack, assert_valid_blocks

CHANNEL = "C0ALERTS"


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **env: str):
    return build_runtime(
        make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack), **env}), dify, clock
    )


def top(slack: FakeSlack) -> list[dict]:
    return [m for m in slack.posts() if not m["thread_ts"]]


def replies(slack: FakeSlack, ts: str) -> list[dict]:
    return [m for m in slack.posts() if m["thread_ts"] == ts]


def shown(message: dict) -> str:
    return (message.get("text") or "") + json.dumps(message.get("blocks") or [], ensure_ascii=False)


def fail_some(dify: FakeDify, app, clock: Clock, n: int, error: str = "model overloaded after {i}s", **kw):
    return [dify.add_log(app, at=int(clock.now) - 30 + i, error=error.format(i=i), **kw) for i in range(n)]


def test_an_error_that_keeps_failing_is_one_message_with_its_runs_in_the_thread(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    runs = []
    for cycle in range(3):
        runs += fail_some(dify, app, clock, 3, session=f"user_{cycle}")
        assert rt.cycle().ok
        clock.advance(60)
    (parent,) = top(slack)
    thread = replies(slack, parent["ts"])
    assert len(thread) == 2  # one reply per later cycle
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1
    # The parent was edited in place to show the running total, sessions and the state.
    assert len(slack.calls_to("chat.update")) == 2
    assert "9 runs failed" in shown(parent) and "3 sessions" in shown(parent) and "*Open*" in shown(parent)
    assert "Runs 7–9 of 9" in thread[-1]["text"]
    assert_valid_blocks(parent["blocks"])


def test_at_most_one_edit_per_parent_per_pass(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, SLACK_SIGNING_SECRET="s" * 32)
    fail_some(dify, app, clock, 2)
    rt.cycle()
    (parent,) = top(slack)
    incident_id = int(rt.store.query("select id from incidents")[0]["id"])
    clock.advance(60)
    fail_some(dify, app, clock, 2)
    rt.actions.acknowledge(incident_id, "U0ALICE", int(clock.now))
    rt.actions.mute(incident_id, "3600", "U0BOB", int(clock.now))
    before = len(slack.calls_to("chat.update"))
    rt.cycle()
    assert len(slack.calls_to("chat.update")) - before == 1
    assert "Acknowledged by U0ALICE" in shown(parent) and "Muted by U0BOB" in shown(parent)


def test_an_incident_resolves_when_quiet_and_a_new_failure_is_back_with_a_link(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RESOLVE_AFTER="600")
    fail_some(dify, app, clock, 2)
    rt.cycle()
    (parent,) = top(slack)
    for i in range(4):
        dify.add_log(app, status="succeeded", at=int(clock.now) + 60 + i)
    for _ in range(9):  # 9 minutes: not yet
        clock.advance(60)
        rt.cycle()
    assert "Resolved" not in shown(parent)
    clock.advance(120)
    rt.cycle()
    assert "✅ Resolved" in shown(parent) and "after " in shown(parent)
    assert "4 successful runs" in shown(parent)
    said = replies(slack, parent["ts"])[-1]["text"]
    assert "Resolved: failed for 1s, then quiet for 11m" in said and "2 runs" in said
    back = dify.add_log(app, at=int(clock.now) + 5, error="model overloaded after 99s")
    clock.advance(60)
    rt.cycle()
    new = top(slack)[-1]
    assert new["ts"] != parent["ts"] and messages_mentioning(slack, back.run_id) == 1
    assert "back" in shown(new) and f"p{parent['ts']}" in shown(new)  # links the previous thread


def test_resolve_after_can_be_set_per_app(tmp_path, dify, clock, slack):
    quick, slow = dify.add_app("Quick"), dify.add_app("Slow")
    toml = (
        f'[[apps]]\napi_key = "{quick.key}"\nname = "Quick"\nresolve_after = 120\n'
        f'[[apps]]\napi_key = "{slow.key}"\nname = "Slow"\n'
    )
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    fail_some(dify, quick, clock, 1)
    fail_some(dify, slow, clock, 1)
    rt.cycle()
    for _ in range(4):
        clock.advance(60)
        rt.cycle()
    states = {r["app_name"]: r["state"] for r in rt.store.query("select app_name, state from incidents")}
    assert states == {"Quick": "resolved", "Slow": "open"}


def test_a_storm_of_new_shapes_is_capped_and_each_shape_keeps_its_thread(tmp_path, dify, clock, slack):
    app = dify.add_app()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i, word in enumerate(words):
        dify.add_log(app, at=int(clock.now) - 60 + i, error=f"node {word} exploded")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    first = top(slack)
    assert len(first) == 5 and "8 failed or stopped runs" not in first[-1]["text"]
    summary = next(m for m in first if "failed or stopped runs" in m["text"])
    assert "node theta exploded" in shown(summary)  # the last shapes are summarised
    assert any("node theta exploded" in shown(m) for m in replies(slack, summary["ts"]))
    later = dify.add_log(app, at=int(clock.now) + 5, error="node theta exploded")
    clock.advance(60)
    rt.cycle()
    # Room again: the summarised shape gets its own parent, and its next runs go to that thread.
    own = top(slack)[-1]
    assert len(top(slack)) == 6 and later.run_id in shown(own)
    last = dify.add_log(app, at=int(clock.now) + 5, error="node theta exploded")
    clock.advance(60)
    rt.cycle()
    assert len(top(slack)) == 6
    assert any(last.run_id in shown(m) for m in replies(slack, own["ts"]))
    assert rt.store.query("select count(*) as n from incidents")[0]["n"] == 8


def test_a_parent_deleted_in_slack_gets_a_new_one_and_no_run_is_lost(tmp_path, dify, clock, slack, web):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    first = fail_some(dify, app, clock, 3)
    rt.cycle()
    (parent,) = top(slack)
    web.chat_delete(channel=CHANNEL, ts=parent["ts"])
    clock.advance(60)
    more = fail_some(dify, app, clock, 2, error="model overloaded after {i}0s")
    rt.cycle()
    assert slack.calls_to("chat.update")[-1].params["ts"] == parent["ts"]
    (new,) = top(slack)
    assert new["ts"] != parent["ts"] and "5 runs failed" in shown(new)
    for run in first:  # the runs the deleted parent listed are shown again
        assert run.run_id in shown(new)
    clock.advance(60)
    again = fail_some(dify, app, clock, 1, error="model overloaded after {i}00s")
    rt.cycle()
    assert messages_mentioning(slack, again[0].run_id) == 1
    assert any(again[0].run_id in shown(m) for m in replies(slack, new["ts"]))
    for run in more:
        assert any(run.run_id in shown(m) for m in slack.posts())


def test_runs_of_an_incident_whose_message_was_deleted_reach_its_new_thread_in_the_same_cycle(
    tmp_path, dify, clock, slack, web
):
    # A message deleted before anyone replied leaves no thread: Slack answers a reply with
    # thread_not_found. That is no refusal of the runs: they follow the incident's new message.
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    fail_some(dify, app, clock, 3)
    rt.cycle()
    (parent,) = top(slack)
    web.chat_delete(channel=CHANNEL, ts=parent["ts"])
    clock.advance(60)
    more = fail_some(dify, app, clock, 2, error="model overloaded after {i}0s")
    report = rt.cycle()
    (new,) = top(slack)
    assert new["ts"] != parent["ts"] and "5 runs failed" in shown(new)
    for run in more:
        assert [m["thread_ts"] for m in slack.posts() if run.run_id in shown(m)] == [new["ts"]]
    assert report.delivery.ok and not report.delivery.refused
    assert rt.store.outbox_size() == 0


def test_an_acknowledgement_of_a_deleted_message_is_told_in_the_new_thread(tmp_path, dify, clock, slack, web):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    fail_some(dify, app, clock, 1)
    rt.cycle()
    (parent,) = top(slack)
    web.chat_delete(channel=CHANNEL, ts=parent["ts"])
    incident_id = int(rt.store.query("select id from incidents")[0]["id"])
    rt.actions.acknowledge(incident_id, "U0ALICE", int(clock.now))
    results = [rt.deliver(), rt.deliver()]
    assert all(r.ok and not r.refused for r in results)
    (new,) = top(slack)
    assert "Acknowledged by U0ALICE" in shown(new)
    assert [m["thread_ts"] for m in slack.posts() if "👀 Acknowledged" in m["text"]] == [new["ts"]]


def test_a_slack_outage_mid_incident_loses_nothing_and_sends_one_reply(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    runs = fail_some(dify, app, clock, 2)
    rt.cycle()
    (parent,) = top(slack)
    slack.fail("chat.postMessage", "status", 503, times=5)
    for _ in range(5):
        clock.advance(60)
        runs += fail_some(dify, app, clock, 1, error="model overloaded after {i}9s")
        assert not rt.cycle().ok
    slack.fail("chat.update", "status", 503)  # the first edit after the outage fails too
    clock.advance(60)
    assert not rt.cycle().ok
    assert "2 runs failed" in shown(parent)
    clock.advance(60)
    assert rt.cycle().ok  # the edit is retried; it never posts
    assert len(top(slack)) == 1
    assert len(replies(slack, parent["ts"])) == 1  # the backlog regrouped into one reply
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1
    assert "7 runs failed" in shown(parent)


def test_a_reply_slack_took_but_did_not_confirm_is_doubled_at_most_once(tmp_path, dify, clock, slack, web):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    fail_some(dify, app, clock, 1)
    rt.cycle()
    web.timeout = 1
    web.retry_handlers = []
    slack.fail("chat.postMessage", "accept_hang", 1.5)
    clock.advance(60)
    run = fail_some(dify, app, clock, 1, error="model overloaded after {i}1s")[0]
    rt.web.timeout = 1  # type: ignore[union-attr]
    rt.web.retry_handlers = []  # type: ignore[union-attr]
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert 1 <= messages_mentioning(slack, run.run_id) <= 2
    assert rt.store.outbox_size() == 0


def test_terminal_mode_prints_incident_lines(tmp_path, dify, clock):
    app = dify.add_app("Support Bot")
    out = io.StringIO()
    settings = make_settings(tmp_path, {"DIFY_API_KEY": app.key, "WFLOGS_RESOLVE_AFTER": "300"})
    rt = build_runtime(settings, dify, clock, stream=out)
    fail_some(dify, app, clock, 2)
    rt.cycle()
    incident_id = int(rt.store.query("select id from incidents")[0]["id"])
    for _ in range(2):
        clock.advance(60)
        fail_some(dify, app, clock, 1, error="model overloaded after {i}7s")
        rt.cycle()
    rt.actions.acknowledge(incident_id, "U0ALICE", int(clock.now))
    rt.cycle()
    clock.advance(60)
    rt.actions.mute(incident_id, "3600", "U0BOB", int(clock.now))
    rt.cycle()
    clock.advance(400)
    rt.cycle()
    text = out.getvalue()
    assert "Support Bot: 2 runs failed" in text  # opened
    assert "still failing: 4 runs" in text
    assert "acknowledged by U0ALICE" in text
    assert "muted until" in text
    assert "resolved: failed for 2m, then quiet for 8m 9s (4 runs)" in text
    assert "Similar runs" not in text and "wflogs_similar" not in text  # no controls in a terminal


def test_controls_are_drawn_only_when_slack_can_send_clicks(tmp_path, dify, clock, slack):
    app = dify.add_app()
    fail_some(dify, app, clock, 2)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    assert "incident_ack" not in shown(top(slack)[0])  # no app token, no signing secret
    assert "wflogs_similar" not in shown(top(slack)[0]) and "Similar runs" not in shown(top(slack)[0])
    other = dify.add_app()
    fail_some(dify, other, clock, 2)
    (tmp_path / "b").mkdir()
    rt2 = _runtime(tmp_path / "b", dify, clock, slack, other.key, SLACK_APP_TOKEN="xapp-1-test")
    rt2.cycle()
    parent = top(slack)[-1]
    for needle in ("incident_ack", "incident_mute", "incident_resolve", "Acknowledge", "Resolve", "7 days"):
        assert needle in shown(parent)
    assert "until resolved" in shown(parent)
    assert "Similar runs" in shown(parent)
    assert_valid_blocks(parent["blocks"])


def test_the_digest_counts_incidents_opened_resolved_and_still_open(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RESOLVE_AFTER="600")
    fail_some(dify, app, clock, 2)
    rt.cycle()
    for _ in range(11):  # quiet: the first incident resolves after 11 minutes
        clock.advance(60)
        rt.cycle()
    fail_some(dify, app, clock, 1, error="tool search failed: 500")
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    rt.digester.post_now(clock.now)
    rt.deliverer.deliver_planned()
    digest = next(m for m in slack.posts() if "digest" in m["text"])
    assert "*Incidents*: 2 opened, 1 resolved (median 10m 00s to resolve), 1 still open" in shown(digest)


def test_a_click_recorded_before_a_crash_is_shown_after_the_restart(tmp_path, dify, clock, slack):
    app = dify.add_app()
    env = {"SLACK_SIGNING_SECRET": "s" * 32}
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    fail_some(dify, app, clock, 2)
    rt.cycle()
    (parent,) = top(slack)
    incident_id = int(rt.store.query("select id from incidents")[0]["id"])
    rt.actions.acknowledge(incident_id, "U0ALICE", int(clock.now))
    rt.close()  # the process dies before the deliverer edits
    again = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    clock.advance(60)
    assert again.cycle().ok
    assert "Acknowledged by U0ALICE" in shown(parent)
    assert len(top(slack)) == 1


def test_waiting_runs_of_an_incident_follow_a_channel_change_into_a_new_incident(tmp_path, dify, clock):
    app = dify.add_app()
    with FakeSlack(channels={"C0NEW", "C0OLD"}) as slack:
        env = {k: v for k, v in slack_env(slack).items() if k != "WFLOGS_ALERT_CHANNEL"}
        toml = f'[[apps]]\napi_key = "{app.key}"\nchannel = "C0OLD"\n'
        rt = build_runtime(make_settings(tmp_path, env, toml=toml), dify, clock)
        fail_some(dify, app, clock, 2)
        rt.cycle()
        slack.fail("chat.postMessage", "error", "is_archived")
        clock.advance(60)
        late = fail_some(dify, app, clock, 1, error="model overloaded after {i}3s")
        assert not rt.cycle().ok
        rt = build_runtime(make_settings(tmp_path, env, toml=toml.replace("C0OLD", "C0NEW")), dify, clock)
        clock.advance(60)
        assert rt.cycle().ok
        (moved,) = [m for m in slack.posts() if m["channel"] == "C0NEW"]
        assert moved["thread_ts"] is None and late[0].run_id in shown(moved)


def test_a_click_during_an_edit_is_shown_by_the_next_edit(tmp_path, dify, clock, slack):
    from storage.incidents import IncidentStore

    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, SLACK_SIGNING_SECRET="s" * 32)
    fail_some(dify, app, clock, 2)
    rt.cycle()
    clock.advance(60)
    fail_some(dify, app, clock, 1, error="model overloaded after {i}5s")
    rt.poll()
    rt.deliverer.keeper.evaluate(int(clock.now))
    incidents = IncidentStore(rt.store)
    (drawn,) = incidents.dirty(CHANNEL)  # the deliverer draws the parent...
    rt.actions.acknowledge(int(drawn["id"]), "U0ALICE", int(clock.now))  # ...a click lands meanwhile...
    incidents.edited(int(drawn["id"]), int(drawn["dirty"]))  # ...and the older drawing is sent
    assert incidents.dirty(CHANNEL)  # so the click is still to be shown
    rt.deliver()
    assert "Acknowledged by U0ALICE" in shown(top(slack)[0])
    assert not incidents.dirty(CHANNEL)


# -- as the CLI runs it ------------------------------------------------------------------------------


def test_poll_once_evaluates_incidents_and_a_kill_mid_reply_doubles_at_most_that_reply(tmp_path):
    import time

    from tests.fakes.dify import DifyServer
    from tests.fakes.slack import BOT_TOKEN
    from tests.test_cli import poll_once_killed_when, wflogs

    with DifyServer(FakeDify()) as server, FakeSlack() as slack:
        app = server.fake.add_app("Support Bot")
        now = int(time.time())
        first = [server.fake.add_log(app, at=now - 60 + i, error=f"timed out after {i}s") for i in range(2)]
        env = {
            "DIFY_API_KEY": app.key,
            "DIFY_API_URL": server.url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_API_URL": slack.base_url,
            "WFLOGS_ALERT_CHANNEL": CHANNEL,
        }
        assert wflogs(tmp_path, "poll", "--once", **env).returncode == 0
        (parent,) = top(slack)
        later = server.fake.add_log(app, at=int(time.time()) - 2, error="timed out after 9s")
        slack.fail("chat.postMessage", "accept_hang", 30)  # the reply is taken, then we die
        poll_once_killed_when(tmp_path, env, lambda: len(slack.messages) >= 2)
        done = wflogs(tmp_path, "poll", "--once", **env)
        assert done.returncode == 0, done.stderr
        assert len(top(slack)) == 1  # no new channel message for the same error
        assert 1 <= messages_mentioning(slack, later.run_id) <= 2
        for run in first:
            assert messages_mentioning(slack, run.run_id) == 1
        assert "3 runs failed" in shown(parent)  # edited in place by the second poll


def test_a_long_rate_limit_on_edits_waits_for_a_later_pass_and_never_posts(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    fail_some(dify, app, clock, 2)
    rt.cycle()
    (parent,) = top(slack)
    slack.fail("chat.update", "ratelimit", 120)
    clock.advance(60)
    fail_some(dify, app, clock, 1, error="model overloaded after {i}8s")
    assert not rt.cycle().ok
    assert "2 runs failed" in shown(parent)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)  # later (the wait is over)
    clock.advance(60)
    assert rt.cycle().ok
    assert "3 runs failed" in shown(parent) and len(top(slack)) == 1


def test_a_parent_slack_will_not_let_us_edit_is_left_alone(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    fail_some(dify, app, clock, 2)
    rt.cycle()
    slack.fail("chat.update", "error", "edit_window_closed")
    clock.advance(60)
    run = fail_some(dify, app, clock, 1, error="model overloaded after {i}8s")[0]
    assert rt.cycle().ok
    clock.advance(60)
    rt.cycle()
    assert len(slack.calls_to("chat.update")) == 1  # not retried for ever
    assert messages_mentioning(slack, run.run_id) == 1 and len(top(slack)) == 1


def test_an_app_mute_that_runs_out_is_told_once_and_alerts_resume(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    app_id = rt.settings.apps[0].id
    rt.actions.mute_app(
        app_id=app_id,
        app_name="Support Bot",
        channel=CHANNEL,
        seconds=600,
        reason="deploy",
        user="U0OPS",
        now=int(clock.now),
    )
    hidden = fail_some(dify, app, clock, 2)
    rt.cycle()
    assert [m["text"] for m in slack.posts()] == [
        next(m["text"] for m in slack.posts() if "is muted" in m["text"])
    ]  # only the notice
    for _ in range(11):
        clock.advance(60)
        rt.cycle()
    shown_now = fail_some(dify, app, clock, 1, error="model overloaded after {i}4s")
    clock.advance(60)
    rt.cycle()
    ended = [m for m in slack.posts() if "no longer muted" in m["text"]]
    assert len(ended) == 1 and "ran out" in ended[0]["text"]
    for run in hidden:
        assert messages_mentioning(slack, run.run_id) == 0
    assert messages_mentioning(slack, shown_now[0].run_id) == 1
    assert rt.store.outbox_size() == 0


def test_a_parent_stored_by_an_earlier_version_is_still_edited_with_its_runs():
    from bot import incident_format as ifmt

    inc = ifmt.Incident(id=7, app_name="A", status="failed", state="open", runs=3, sessions=1, opened_at=1)
    old_body = json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "run `r-1` listed"}}])
    _, blocks = ifmt.edit(inc, old_body, with_controls=True, now=2)
    assert "run `r-1` listed" in json.dumps(blocks) and "wflogs_similar" not in json.dumps(blocks)
    run = "3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b"
    new_body = json.dumps({"blocks": json.loads(old_body), "run": run})
    _, blocks = ifmt.edit(inc, new_body, with_controls=True, now=2)
    assert "run `r-1` listed" in json.dumps(blocks) and f'"value": "{run}"' in json.dumps(blocks)
    _, blocks = ifmt.edit(inc, new_body, with_controls=False, now=2)
    assert "wflogs_similar" not in json.dumps(blocks)


def test_resolve_after_takes_any_whole_number_of_seconds_from_one(tmp_path):
    import pytest

    from bot.errors import ConfigError

    one = make_settings(tmp_path, {"DIFY_API_KEY": "app-k1234567", "WFLOGS_RESOLVE_AFTER": "1"})
    assert one.resolve_after == 1
    assert make_settings(tmp_path, {"DIFY_API_KEY": "app-k1234567"}).resolve_after == 1800
    for bad, says in (("0", "use 1 or more"), ("30m", "not a whole number of seconds")):
        with pytest.raises(ConfigError, match=says):
            make_settings(tmp_path, {"DIFY_API_KEY": "app-k1234567", "WFLOGS_RESOLVE_AFTER": bad})
    with pytest.raises(ConfigError, match="resolve_after must be a whole number of seconds, 1 or more"):
        make_settings(tmp_path, {}, toml='[[apps]]\napi_key = "app-k1234567"\nresolve_after = 0\n')
