"""Failure-rate and stuck-runs incidents, over the Dify fake and the Slack fake: when they open
(mentioning the mention list), how they are kept current, and when they resolve."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack, assert_valid_blocks, mrkdwn_texts

MENTIONS = "U0ONCALL1,S0SUPPORT,here"
CALLED = ("<@U0ONCALL1>", "<!subteam^S0SUPPORT>", "<!here>", "<!channel>")


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **env: str):
    settings = make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack), **env})
    return build_runtime(settings, dify, clock)


def top(slack: FakeSlack) -> list[dict]:
    """Channel messages (not thread replies), as Slack shows them now (edits applied)."""
    return [m for m in slack.posts() if not m["thread_ts"]]


def thread(slack: FakeSlack, ts: str) -> list[dict]:
    return [m for m in slack.posts() if m["thread_ts"] == ts]


def edits(slack: FakeSlack) -> list[dict]:
    return [c.params for c in slack.calls_to("chat.update")]


def texts(message: dict) -> str:
    """Everything Slack parses for mentions in a message: its text and its mrkdwn."""
    return "\n".join([message.get("text") or "", *mrkdwn_texts(message.get("blocks") or [])])


def calls_anyone(message: dict) -> bool:
    return any(c in texts(message) for c in CALLED)


def posted_mentions(slack: FakeSlack) -> list[dict]:
    """The posts (as first sent) that call anyone on the mention list."""
    return [c.params for c in slack.calls_to("chat.postMessage") if calls_anyone(c.params)]


def _rate_app(dify: FakeDify, clock: Clock, *, ok: int, failed: int, stopped: int = 0):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    for i in range(ok):
        dify.add_log(app, status="succeeded", at=now - 600 + i, error="")
    for i in range(failed):
        dify.add_log(app, at=now - 300 + i, error=f"node llm timed out after {30 + i}s")
    for i in range(stopped):
        dify.add_log(app, status="stopped", at=now - 200 + i)
    return app


def _rate_parents(slack: FakeSlack) -> list[dict]:
    return [m for m in top(slack) if "failure rate" in json.dumps(m["blocks"][:1])]


# -- failure rate ---------------------------------------------------------------------------


def test_a_failure_rate_opens_one_incident_that_mentions_and_resolves_in_its_thread(
    tmp_path, dify, clock, slack
):
    app = _rate_app(dify, clock, ok=14, failed=5, stopped=1)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", WFLOGS_MENTION=MENTIONS)
    rt.cycle()
    (parent,) = _rate_parents(slack)
    first = slack.calls_to("chat.postMessage")[[m["ts"] for m in slack.posts()].index(parent["ts"])].params
    assert "failure rate 30.0% over the last 15 min: 6 of 20 runs" in first["text"]
    assert "<@U0ONCALL1> <!subteam^S0SUPPORT> <!here>" in texts(first)
    assert "node llm timed out after 30s" in texts(first)  # a top error shape, with an example
    assert_valid_blocks(first["blocks"])
    # Still above: no new channel message; the parent is kept current by edits, which never mention.
    for _ in range(3):
        clock.advance(60)
        rt.cycle()
    assert len(_rate_parents(slack)) == 1
    # Many successes bring it below the threshold: resolved in place, told in the thread.
    for i in range(40):
        dify.add_log(app, status="succeeded", at=int(clock.now) - 30 + i % 30, error="")
    clock.advance(60)
    rt.cycle()
    (parent,) = _rate_parents(slack)
    assert "Resolved" in json.dumps(parent["blocks"][0])
    (reply,) = [m for m in thread(slack, parent["ts"]) if "Failure rate back to" in m["text"]]
    assert "peak was 30.0%" in reply["text"] and "after" in reply["text"]
    assert edits(slack) and not any(calls_anyone(e) for e in edits(slack))
    assert not any(calls_anyone(m) for m in slack.posts() if m["thread_ts"])
    # The mention list was called by the first messages of the three new incidents only: the
    # failure rate, and the failed and the stopped error shapes.
    assert len(posted_mentions(slack)) == 3


def test_too_few_runs_open_nothing(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=2, failed=5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    assert not _rate_parents(slack)
    assert not rt.store.query("select * from incidents where kind is not null")


def test_the_rate_resolves_below_the_threshold_and_a_new_burst_opens_a_new_incident(
    tmp_path, dify, clock, slack
):
    app = _rate_app(dify, clock, ok=5, failed=5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.4")
    rt.cycle()  # 50% > 40%
    assert len(_rate_parents(slack)) == 1
    for i in range(3):  # 5 of 13 = 38.5%: below, resolves
        dify.add_log(app, status="succeeded", at=int(clock.now) - 10 + i, error="")
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "Failure rate back to 38.5%") == 1
    clock.advance(900)  # the window moves past every run: nothing reopens
    rt.cycle()
    assert len(_rate_parents(slack)) == 1
    now = int(clock.now)
    for i in range(6):
        dify.add_log(app, at=now - 20 + i, error="boom")
        dify.add_log(app, status="succeeded", at=now - 20 + i, error="")
    clock.advance(60)
    rt.cycle()
    assert len(_rate_parents(slack)) == 2
    assert "6 of 12 runs" in _rate_parents(slack)[-1]["text"]


def test_the_rate_costs_one_request_per_app_per_cycle(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=30, failed=2)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    clock.advance(60)
    before = len(dify.log_requests())
    rt.cycle()  # quiet: the poller's two counts and the rate's total
    made = dify.log_requests()[before:]
    assert len(made) == 3
    (total,) = [r for r in made if "status" not in r.url.params]
    assert total.url.params["limit"] == "1"


def test_a_failure_rate_through_a_slack_outage_is_posted_exactly_once(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    slack.fail("chat.postMessage", "status", 503, times=50)
    assert not rt.cycle().ok
    slack.faults.clear()
    for _ in range(2):
        clock.advance(60)
        rt.cycle()
    assert len(_rate_parents(slack)) == 1


def test_a_restart_neither_repeats_nor_forgets_a_failure_rate(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    env = {"WFLOGS_RATE_THRESHOLD": "0.2"}
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    rt.close()
    clock.advance(60)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    assert len(_rate_parents(slack)) == 1
    clock.advance(901)
    rt.close()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    assert messages_mentioning(slack, "Failure rate back to 0.0%") == 1


def test_the_rate_fires_even_when_every_error_shape_is_muted(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=30, failed=2)  # 6%: only the shape's own incident
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    (shape,) = rt.store.query("select id from incidents")
    rt.actions.mute(int(shape["id"]), "resolved", "U0BOB", int(clock.now))
    clock.advance(60)
    for i in range(10):
        dify.add_log(app, at=int(clock.now) - 30 + i, error=f"node llm timed out after {i}s")
    posts = len(slack.posts())
    rt.cycle()
    new = slack.posts()[posts:]
    assert not any("node llm timed out after 5s" in texts(m) for m in new)  # the muted runs stay quiet
    (parent,) = _rate_parents(slack)
    assert "12 of 42 runs" in parent["text"]


def test_resolving_a_failure_rate_by_hand_waits_for_it_to_fall_before_a_new_one(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", SLACK_SIGNING_SECRET="s" * 32
    )
    rt.cycle()
    (incident,) = rt.store.query("select id from incidents where kind = 'failure_rate'")
    rt.actions.resolve(int(incident["id"]), "U0ALICE", int(clock.now))
    for _ in range(3):  # still above: no new incident
        clock.advance(60)
        rt.cycle()
    assert len(_rate_parents(slack)) == 1
    assert "Resolved" in json.dumps(_rate_parents(slack)[0]["blocks"][0])
    clock.advance(900)  # it falls (no runs at all), then a new burst
    rt.cycle()
    for i in range(10):
        dify.add_log(app, at=int(clock.now) - 20 + i, error="boom")
    clock.advance(60)
    rt.cycle()
    assert len(_rate_parents(slack)) == 2


def test_error_text_in_a_failure_rate_cannot_mention_or_link(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    for i in range(12):
        dify.add_log(app, at=int(clock.now) - 100 + i, error="<!channel> injected & <https://evil|x>")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.5")
    rt.cycle()
    (parent,) = _rate_parents(slack)
    assert "100.0%" in parent["text"]
    assert not calls_anyone(parent) and "<https://evil" not in texts(parent)
    assert "&lt;!channel&gt; injected &amp;" in texts(parent)


def test_dify_failing_the_rate_count_is_a_problem_of_the_cycle_and_retried(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    left = [3]  # the client's first try and both retries

    def unfiltered_fails(request):
        if not request.url.path.endswith("/logs") or "status" in request.url.params or left[0] <= 0:
            return None
        left[0] -= 1
        return dify._error(500, "unknown", "Internal Server Error")

    dify.faults.append(unfiltered_fails)
    report = rt.cycle()
    assert any("Support Bot" in p and "HTTP 500" in p for p in report.problems)
    assert not _rate_parents(slack)
    clock.advance(60)
    assert rt.cycle().ok
    assert len(_rate_parents(slack)) == 1


# -- stuck runs -----------------------------------------------------------------------------


def _stuck_parents(slack: FakeSlack) -> list[dict]:
    return [m for m in top(slack) if "stuck" in json.dumps(m["blocks"][:1])]


def test_a_stuck_run_opens_one_incident_with_mentions_and_resolves_when_it_ends(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    stuck = dify.start_run(app, at=now - 1500, session="user_stuck")
    later = dify.start_run(app, at=now - 100)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200", WFLOGS_MENTION="U0ONCALL1"
    )
    rt.cycle()
    (parent,) = _stuck_parents(slack)
    assert "1 run stuck in running" in parent["text"] and "<@U0ONCALL1>" in parent["text"]
    assert stuck.run_id in texts(parent) and later.run_id not in texts(parent)
    assert_valid_blocks(parent["blocks"])
    for _ in range(3):
        clock.advance(60)
        rt.cycle()
    assert messages_mentioning(slack, stuck.run_id) == 1
    # The other run hangs too: one reply in the thread, no mention; the parent now shows both.
    clock.advance(1200)
    rt.cycle()
    (more,) = [m for m in thread(slack, parent["ts"]) if later.run_id in texts(m)]
    assert "1 more run stuck" in more["text"] and not calls_anyone(more)
    assert later.run_id in texts(_stuck_parents(slack)[0])
    # Both end: resolved in place, and the thread says how each ended.
    dify.finish_run(stuck, status="failed", at=int(clock.now) - 10, error="worker died")
    dify.finish_run(later, status="succeeded", at=int(clock.now) - 5)
    clock.advance(60)
    rt.cycle()
    (parent,) = _stuck_parents(slack)
    assert "Resolved" in json.dumps(parent["blocks"][0])
    (ended,) = [m for m in thread(slack, parent["ts"]) if "No stuck runs any more" in m["text"]]
    assert f"`{stuck.run_id}`" in ended["text"] and "failed after" in ended["text"]
    assert "succeeded after" in ended["text"]
    assert not any(calls_anyone(e) for e in edits(slack))
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "No stuck runs any more") == 1
    # The stuck run that failed is a failure like any other: alerted once, as its own incident.
    assert [m for m in posted_mentions(slack) if "worker died" in texts(m)]
    assert len(posted_mentions(slack)) == 2


def test_stuck_watching_costs_one_request_per_tenth_of_the_limit_when_nothing_is_stuck(
    tmp_path, dify, clock, slack
):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    for i in range(60):
        dify.add_log(app, status="succeeded", at=now - 3000 + i * 100, error="")
    # A look-back of an hour: no band of runs leaves it within these cycles (that costs a request
    # every quarter of the look-back, counted by test_poller).
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1800", WFLOGS_LOOKBACK="3600")
    rt.cycle()
    made = []
    for _ in range(9):
        clock.advance(60)
        before = len(dify.log_requests())
        rt.cycle()
        made.append(len(dify.log_requests()) - before - 2)  # beyond the poller's two counts
    assert made == [0, 0, 1] * 3  # one band of 180 s (a tenth of 1800) every third cycle
    assert not slack.messages


def test_a_run_is_reported_at_most_a_tenth_of_the_limit_late(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1800")
    rt.cycle()
    run = dify.start_run(app, at=int(clock.now) + 5)
    waited = 0
    while not messages_mentioning(slack, run.run_id):
        clock.advance(60)
        waited += 60
        rt.cycle()
        assert waited <= 1800 + 180 + 60
    assert waited >= 1800


def test_a_busy_band_is_counted_before_it_is_read(tmp_path, dify, clock, slack):
    app = dify.add_app("Busy")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    # 150 finished runs start in the next band (120 s, a tenth of the limit): counted
    # (1 + 3 requests), not read.
    now = int(clock.now)
    for i in range(150):
        dify.add_log(app, status="succeeded", at=now - 1200 + 1 + i % 120, error="")
    clock.advance(120)
    before = len(dify.log_requests())
    rt.cycle()
    assert len(dify.log_requests()) - before == 2 + 4
    # One of the next band's 150 is still running: the band is read, the run found.
    now = int(clock.now)
    for i in range(149):
        dify.add_log(app, status="succeeded", at=now - 1200 + 1 + i % 120, error="")
    hung = dify.start_run(app, at=now - 1200 + 30)
    clock.advance(120)
    rt.cycle()
    assert messages_mentioning(slack, hung.run_id) == 1


def test_a_run_stuck_for_good_is_looked_at_less_and_less(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    dify.start_run(app, at=int(clock.now) - 1300)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")

    def detail_requests() -> int:
        return sum(1 for r in dify.requests if "/workflows/run/" in r.url.path)

    checks = []
    for _ in range(6 * 60):  # six hours of one-minute cycles
        before = detail_requests()
        rt.cycle()
        checks.append(detail_requests() - before)
        clock.advance(60)
    assert sum(checks[1:61]) >= 58  # every cycle in the first hour
    assert sum(checks[-60:]) <= 3  # a few times in the sixth
    assert len(_stuck_parents(slack)) == 1


def test_resolving_stuck_runs_by_hand_stops_looking_at_them(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    run = dify.start_run(app, at=int(clock.now) - 1300)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    (incident,) = rt.store.query("select id from incidents where kind = 'stuck_runs'")
    rt.actions.resolve(int(incident["id"]), "U0ALICE", int(clock.now))
    clock.advance(60)
    rt.cycle()
    before = len(dify.requests)
    for _ in range(5):
        clock.advance(60)
        rt.cycle()
    assert not any("/workflows/run/" in r.url.path for r in dify.requests[before:])
    (parent,) = _stuck_parents(slack)
    assert "Resolved" in json.dumps(parent["blocks"][0]) and run.run_id in texts(parent)
    # A run that gets stuck later opens a new incident.
    dify.start_run(app, at=int(clock.now) - 1170)
    clock.advance(120)
    rt.cycle()
    assert len(_stuck_parents(slack)) == 2


def test_stuck_runs_survive_restarts_and_still_resolve(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    run = dify.start_run(app, at=int(clock.now) - 1300)
    env = {"WFLOGS_STUCK_AFTER": "1200"}
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    rt.close()
    clock.advance(60)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    assert messages_mentioning(slack, run.run_id) == 1
    dify.finish_run(run, status="stopped", at=int(clock.now))
    clock.advance(60)
    rt.close()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    assert messages_mentioning(slack, "No stuck runs any more") == 1


def test_a_stuck_run_deleted_from_dify_ends_as_gone(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    run = dify.start_run(app, at=int(clock.now) - 1300)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    app.runs.remove(run)
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "gone from Dify") >= 1


def test_dify_before_1_11_has_no_running_rows_and_costs_nothing(tmp_path, clock, slack):
    dify = FakeDify(version="1.10.1", clock=clock)
    app = dify.add_app("Old")
    dify.start_run(app, at=int(clock.now) - 1300)  # invisible until it ends on 1.10
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    clock.advance(60)
    before = len(dify.log_requests())
    rt.cycle()
    assert len(dify.log_requests()) - before == 2
    assert not slack.messages


def test_stuck_runs_print_to_the_terminal_without_slack(tmp_path, dify, clock):
    app = dify.add_app("Support Bot")
    run = dify.start_run(app, at=int(clock.now) - 1300)
    out = io.StringIO()
    settings = make_settings(tmp_path, {"DIFY_API_KEY": app.key, "WFLOGS_STUCK_AFTER": "1200"})
    rt = build_runtime(settings, dify, clock, stream=out)
    rt.cycle()
    dify.finish_run(run, status="failed", at=int(clock.now), error="worker died")
    clock.advance(60)
    rt.cycle()
    text = out.getvalue()
    assert "1 run stuck in running" in text and run.run_id in text
    assert "No stuck runs any more" in text and "no stuck runs any more" in text  # reply, then edit


def test_a_failure_rate_is_not_resolved_by_the_quiet_rule_of_error_incidents(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", WFLOGS_RESOLVE_AFTER="60"
    )
    rt.cycle()
    clock.advance(3600)
    now = int(clock.now)
    for i in range(10):  # still failing half the time, with another error
        dify.add_log(app, status="succeeded", at=now - 400 + i, error="")
        dify.add_log(app, at=now - 300 + i, error=f"quota exceeded for key {i}")
    rt.cycle()
    (rate,) = rt.store.query("select state from incidents where kind = 'failure_rate'")
    assert rate["state"] == "open"
    states = rt.store.query(
        "select error, state from incidents where kind is null and status = 'failed' order by id"
    )
    assert [s["state"] for s in states] == ["resolved", "open"]  # the first error is quiet for an hour


def test_many_stuck_runs_with_long_sessions_fit_slack(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    runs = [
        dify.start_run(app, at=int(clock.now) - 1300 - i, session="<s>&" * 60 + str(i)) for i in range(30)
    ]
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    (parent,) = _stuck_parents(slack)
    assert "30 runs stuck in running" in parent["text"]
    assert_valid_blocks(parent["blocks"])
    body = texts(parent)
    listed = sum(1 for r in runs if r.run_id in body)
    assert 1 <= listed < 30 and f"… and {30 - listed} more" in body
    assert "<s>" not in body and "&lt;s&gt;&amp;" in body


# -- channels subscribed to the app -----------------------------------------------------------


def _subscribe(rt, channel: str, app_id: str, *, status: str = "", text: str = "") -> None:
    from storage import subscriptions

    subscriptions.subscribe(
        rt.store,
        channel=channel,
        app_id=app_id,
        app_name="Support Bot",
        status=status,
        text=text,
        user="bob",
        now=0,
    )


def _resolve_by_hand(rt, kind: str, channel: str, who: str, clock: Clock) -> None:
    (row,) = rt.store.query("select id from incidents where kind = ? and channel = ?", [kind, channel])
    rt.actions.resolve(int(row["id"]), who, int(clock.now))


def _in(slack: FakeSlack, channel: str, needle: str) -> list[dict]:
    return [m for m in slack.posts(channel) if not m["thread_ts"] and needle in json.dumps(m["blocks"][:1])]


def test_a_failure_rate_reaches_subscribed_channels_without_paging_twice(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=14, failed=6)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", WFLOGS_MENTION=MENTIONS)
    app_id = rt.settings.apps[0].id
    _subscribe(rt, "C0TEAM", "*")
    _subscribe(rt, "C0FAILED", app_id, status="failed")
    _subscribe(rt, "C0STOPPED", app_id, status="stopped")  # a rate is of failures: not this one
    _subscribe(rt, "C0QUOTA", app_id, text="quota")  # a rate has no one error to match: not this
    rt.cycle()
    (configured,) = _in(slack, "C0ALERTS", "failure rate")
    (team,) = _in(slack, "C0TEAM", "failure rate")
    assert len(_in(slack, "C0FAILED", "failure rate")) == 1
    assert not _in(slack, "C0STOPPED", "failure rate") and not _in(slack, "C0QUOTA", "failure rate")
    assert calls_anyone(configured) and not calls_anyone(team)  # the mention list is called once
    assert "6 of 20 runs" in team["text"]
    assert_valid_blocks(team["blocks"])
    for _ in range(3):  # still above, and across a restart: nothing new in any channel
        clock.advance(60)
        rt.cycle()
    rt.close()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", WFLOGS_MENTION=MENTIONS)
    clock.advance(60)
    rt.cycle()
    assert len(_in(slack, "C0TEAM", "failure rate")) == 1 and len(_in(slack, "C0ALERTS", "failure rate")) == 1
    for i in range(40):  # it falls: resolved in each channel, told in each thread once
        dify.add_log(app, status="succeeded", at=int(clock.now) - 30 + i % 30, error="")
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    for channel in ("C0ALERTS", "C0TEAM", "C0FAILED"):
        (parent,) = _in(slack, channel, "failure rate")
        assert "Resolved" in json.dumps(parent["blocks"][0]), channel
        replies = [m for m in thread(slack, parent["ts"]) if "Failure rate back to" in m["text"]]
        assert len(replies) == 1, channel
    assert len(posted_mentions(slack)) == 2  # the rate and the error shape, both in C0ALERTS only
    assert all(c["channel"] == "C0ALERTS" for c in posted_mentions(slack))


def test_a_subscribed_channel_resolving_its_copy_leaves_the_configured_incident_open(
    tmp_path, dify, clock, slack
):
    app = _rate_app(dify, clock, ok=10, failed=10)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", SLACK_SIGNING_SECRET="s" * 32
    )
    _subscribe(rt, "C0TEAM", "*")
    rt.cycle()
    _resolve_by_hand(rt, "failure_rate", "C0TEAM", "bob", clock)
    for _ in range(3):  # still above: the team's copy stays resolved, nothing new there
        clock.advance(60)
        rt.cycle()
    assert len(_in(slack, "C0TEAM", "failure rate")) == 1
    assert "Resolved" in json.dumps(_in(slack, "C0TEAM", "failure rate")[0]["blocks"][0])
    assert "Resolved" not in json.dumps(_in(slack, "C0ALERTS", "failure rate")[0]["blocks"][0])


def test_stuck_runs_reach_a_subscribed_channel_and_resolve_there(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    stuck = dify.start_run(app, at=now - 1500, session="user_stuck")
    later = dify.start_run(app, at=now - 100)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200", WFLOGS_MENTION="U0ONCALL1"
    )
    _subscribe(rt, "C0TEAM", "*")
    _subscribe(rt, "C0FAILED", rt.settings.apps[0].id, status="failed")  # stuck runs have not failed
    rt.cycle()
    (team,) = _in(slack, "C0TEAM", "stuck")
    assert stuck.run_id in texts(team) and not calls_anyone(team)
    assert not _in(slack, "C0FAILED", "stuck")
    clock.advance(1200)  # the other run hangs too: the configured thread is told, the copy edited
    rt.cycle()
    (configured,) = _in(slack, "C0ALERTS", "stuck")
    assert [m for m in thread(slack, configured["ts"]) if later.run_id in texts(m)]
    assert later.run_id in texts(_in(slack, "C0TEAM", "stuck")[0])
    dify.finish_run(stuck, status="failed", at=int(clock.now) - 10, error="worker died")
    dify.finish_run(later, status="succeeded", at=int(clock.now) - 5)
    clock.advance(60)
    rt.cycle()
    (team,) = _in(slack, "C0TEAM", "stuck")
    assert "Resolved" in json.dumps(team["blocks"][0])
    assert [m for m in thread(slack, team["ts"]) if "No stuck runs any more" in m["text"]]


def test_stuck_runs_resolved_by_hand_in_the_configured_channel_end_the_copies_too(
    tmp_path, dify, clock, slack
):
    app = dify.add_app("Support Bot")
    dify.start_run(app, at=int(clock.now) - 1500)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200", SLACK_SIGNING_SECRET="s" * 32
    )
    _subscribe(rt, "C0TEAM", "*")
    rt.cycle()
    _resolve_by_hand(rt, "stuck_runs", "C0ALERTS", "alice", clock)
    clock.advance(60)
    rt.cycle()
    (team,) = _in(slack, "C0TEAM", "stuck")
    assert "Resolved" in json.dumps(team["blocks"][0])
    assert [m for m in thread(slack, team["ts"]) if "Resolved by hand in <#C0ALERTS>" in m["text"]]
    clock.advance(60)
    rt.cycle()
    assert len([m for m in thread(slack, team["ts"]) if "Resolved by hand" in m["text"]]) == 1


def test_an_app_limited_to_its_channels_sends_no_rate_or_stuck_copy_to_every_app_subscribers(
    tmp_path, dify, clock, slack
):
    # Like its runs, an app searchable only from its own channels never reaches a channel that
    # subscribed to `app:*`: neither its failure rate nor its stuck runs.
    app = _rate_app(dify, clock, ok=10, failed=10)
    dify.start_run(app, at=int(clock.now) - 1500)
    toml = f'[[apps]]\napi_key = "{app.key}"\nchannels = ["C0ALERTS"]\n'
    settings = make_settings(
        tmp_path,
        {**slack_env(slack), "WFLOGS_RATE_THRESHOLD": "0.2", "WFLOGS_STUCK_AFTER": "1200"},
        toml=toml,
    )
    rt = build_runtime(settings, dify, clock)
    _subscribe(rt, "C0TEAM", "*")
    rt.cycle()
    assert _in(slack, "C0ALERTS", "failure rate") and _in(slack, "C0ALERTS", "stuck")
    assert not slack.posts("C0TEAM")
    assert not rt.store.query("select id from incidents where channel = 'C0TEAM'")
