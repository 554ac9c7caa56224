"""Failure-rate and stuck-run signals, over the Dify fake and the Slack fake."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack, assert_valid_blocks, mrkdwn_texts

MENTIONS = "U0ONCALL1,S0SUPPORT,here"


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **env: str):
    settings = make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack), **env})
    return build_runtime(settings, dify, clock)


def _unfiltered_counts(dify: FakeDify, since: int) -> list:
    """Log requests without a status filter made after request number ``since``."""
    return [r for r in dify.log_requests()[since:] if "status" not in r.url.params]


def _has_mention(message: dict) -> bool:
    texts = [message.get("text") or "", *mrkdwn_texts(message.get("blocks") or [])]
    return any(s in t for t in texts for s in ("<@", "<!subteam^", "<!here>", "<!channel>"))


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


# -- failure rate -------------------------------------------------------------------


def test_a_failure_rate_above_the_threshold_opens_once_with_mentions_and_resolves_without(
    tmp_path, dify, clock, slack
):
    app = _rate_app(dify, clock, ok=14, failed=5, stopped=1)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2", WFLOGS_MENTION=MENTIONS)
    rt.cycle()
    rate = [m for m in slack.messages if "failure rate" in (m["text"] or "")]
    assert len(rate) == 1
    assert "failure rate 30.0% over the last 15 min: 6 of 20 runs" in rate[0]["text"]
    body = "\n".join(mrkdwn_texts(rate[0]["blocks"]))
    assert "<@U0ONCALL1> <!subteam^S0SUPPORT> <!here>" in body
    assert "node llm timed out after 30s" in body  # the top error shape, with an example
    assert_valid_blocks(rate[0]["blocks"])
    # Still above: no second message.
    for _ in range(3):
        clock.advance(60)
        rt.cycle()
    assert messages_mentioning(slack, "failure rate") == 1
    # Many successes bring it below the threshold: one resolution, mentioning nobody.
    for i in range(40):
        dify.add_log(app, status="succeeded", at=int(clock.now) - 30 + i % 30, error="")
    clock.advance(60)
    rt.cycle()
    resolved = [m for m in slack.messages if "failure rate back to" in (m["text"] or "")]
    assert len(resolved) == 1 and "Resolved after" in resolved[0]["text"]
    assert "peak was 30.0%" in resolved[0]["text"]
    assert not _has_mention(resolved[0])
    # Only the opening mentions anyone (the per-run alerts never do).
    assert [m for m in slack.messages if _has_mention(m)] == rate


def test_too_few_runs_open_nothing(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=2, failed=5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    assert messages_mentioning(slack, "failure rate") == 0
    assert (
        rt.watcher is not None and rt.watcher.db.open_signal(rt.settings.apps[0].id, "failure_rate") is None
    )


def test_the_rate_resolves_below_the_threshold_and_a_new_burst_opens_it_again(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=5, failed=5)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.4", WFLOGS_RATE_MIN_RUNS="10"
    )
    rt.cycle()  # 50% > 40%
    assert messages_mentioning(slack, "failure rate 50.0%") == 1
    for i in range(3):  # 5 of 13 = 38.5%: below, resolves
        dify.add_log(app, status="succeeded", at=int(clock.now) - 10 + i, error="")
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "failure rate back to 38.5%") == 1
    # The window moves past every run: none left, nothing reopens.
    clock.advance(900)
    rt.cycle()
    # A new burst opens a new signal.
    now = int(clock.now)
    for i in range(6):
        dify.add_log(app, at=now - 20 + i, error="boom")
    for i in range(6):
        dify.add_log(app, status="succeeded", at=now - 20 + i, error="")
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "failure rate 50.0% over the last 15 min: 6 of 12 runs") == 1


def test_the_rate_costs_one_request_per_app_per_cycle(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=30, failed=2)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    clock.advance(60)
    before = len(dify.log_requests())
    rt.cycle()  # quiet: the poller's two counts and the rate's total
    made = dify.log_requests()[before:]
    assert len(made) == 3
    (total,) = _unfiltered_counts(dify, before)
    assert total.url.params["limit"] == "1"


def test_the_rate_opens_through_a_slack_outage_exactly_once(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    slack.fail("chat.postMessage", "status", 503, times=50)
    report = rt.cycle()
    assert not report.ok
    slack.faults.clear()
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "failure rate 50.0%") == 1


def test_a_restart_neither_repeats_nor_forgets_a_failure_rate(tmp_path, dify, clock, slack):
    app = _rate_app(dify, clock, ok=10, failed=10)
    env = {"WFLOGS_RATE_THRESHOLD": "0.2"}
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    rt.close()
    clock.advance(60)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, **env)
    rt.cycle()
    assert messages_mentioning(slack, "failure rate 50.0%") == 1
    clock.advance(901)
    rt.cycle()
    assert messages_mentioning(slack, "failure rate back to 0.0%") == 1


def test_muted_or_not_the_rate_counts_every_failure_and_escapes_error_text(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    for i in range(12):
        dify.add_log(app, at=now - 100 + i, error="<!channel> injected & <https://evil|x>")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.5")
    rt.cycle()
    (rate,) = [m for m in slack.messages if "failure rate" in (m["text"] or "")]
    assert "100.0%" in rate["text"]
    assert not _has_mention(rate)
    assert "&lt;!channel&gt; injected &amp;" in "\n".join(mrkdwn_texts(rate["blocks"]))


# -- stuck runs ----------------------------------------------------------------------


def test_a_stuck_run_is_reported_once_with_mentions_and_resolved_when_it_ends(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    stuck = dify.start_run(app, at=now - 1500, session="user_stuck")
    fine = dify.start_run(app, at=now - 100)
    rt = _runtime(
        tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200", WFLOGS_MENTION="U0ONCALL1"
    )
    rt.cycle()
    (found,) = [m for m in slack.messages if "stuck" in (m["text"] or "")]
    assert "1 run stuck in running" in found["text"]
    assert stuck.run_id in "\n".join(mrkdwn_texts(found["blocks"]))
    assert fine.run_id not in str(found["blocks"])
    assert "<@U0ONCALL1>" in found["text"]
    assert_valid_blocks(found["blocks"])
    for _ in range(3):
        clock.advance(60)
        rt.cycle()
    assert messages_mentioning(slack, stuck.run_id) == 1
    # The other run also hangs: reported as one more, without a mention.
    clock.advance(1200)
    rt.cycle()
    (more,) = [m for m in slack.messages if fine.run_id in str(m["blocks"])]
    assert "1 more run stuck" in more["text"] and not _has_mention(more)
    # Both end: one resolution saying how each ended, mentioning nobody.
    dify.finish_run(stuck, status="failed", at=int(clock.now) - 10, error="worker died")
    dify.finish_run(fine, status="succeeded", at=int(clock.now) - 5)
    clock.advance(60)
    rt.cycle()
    (ended,) = [m for m in slack.messages if "no stuck runs any more" in (m["text"] or "")]
    assert "2 runs ended" in ended["text"] and not _has_mention(ended)
    text = "\n".join(mrkdwn_texts(ended["blocks"]))
    assert f"`{stuck.run_id}` failed after" in text and f"`{fine.run_id}` succeeded after" in text
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "no stuck runs any more") == 1


def test_stuck_watching_costs_one_request_a_cycle_when_nothing_is_stuck(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    for i in range(30):
        dify.add_log(app, status="succeeded", at=now - 3000 + i * 100, error="")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    for _ in range(5):
        clock.advance(60)
        before = len(dify.log_requests())
        rt.cycle()
        assert len(dify.log_requests()) - before == 3  # the poller's two counts and the band
    assert not slack.messages


def test_a_busy_band_is_counted_before_it_is_read(tmp_path, dify, clock, slack):
    app = dify.add_app("Busy")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    # 150 finished runs start in the next band: counted (1 + 3 requests), not read.
    now = int(clock.now)
    for i in range(150):
        dify.add_log(app, status="succeeded", at=now - 1200 + 1 + i % 60, error="")
    clock.advance(60)
    before = len(dify.log_requests())
    rt.cycle()
    assert len(dify.log_requests()) - before == 2 + 4
    # One of the next band's 150 is still running: the band is read, the run found.
    now = int(clock.now)
    for i in range(149):
        dify.add_log(app, status="succeeded", at=now - 1200 + 1 + i % 60, error="")
    hung = dify.start_run(app, at=now - 1200 + 30)
    clock.advance(60)
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
    assert messages_mentioning(slack, "stuck in running") == 1


def test_stuck_runs_survive_a_restart_and_still_resolve(tmp_path, dify, clock, slack):
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
    assert messages_mentioning(slack, "no stuck runs any more") == 1


def test_a_stuck_run_deleted_from_dify_ends_as_gone(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    run = dify.start_run(app, at=int(clock.now) - 1300)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    app.runs.remove(run)
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, "is gone from Dify") == 1


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
    import io

    app = dify.add_app("Support Bot")
    run = dify.start_run(app, at=int(clock.now) - 1300)
    out = io.StringIO()
    settings = make_settings(tmp_path, {"DIFY_API_KEY": app.key, "WFLOGS_STUCK_AFTER": "1200"})
    rt = build_runtime(settings, dify, clock, stream=out)
    rt.cycle()
    assert "1 run stuck in running" in out.getvalue() and run.run_id in out.getvalue()


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
    assert messages_mentioning(slack, "failure rate") == 0
    clock.advance(60)
    assert rt.cycle().ok
    assert messages_mentioning(slack, "failure rate 50.0%") == 1
