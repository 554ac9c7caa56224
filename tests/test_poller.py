"""The poller reads every failed and stopped run exactly once, whatever Dify's paging does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **env: str):
    return build_runtime(
        make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack), **env}), dify, clock
    )


def assert_each_once(slack: FakeSlack, run_ids: list[str]) -> None:
    counts = {rid: messages_mentioning(slack, rid) for rid in run_ids}
    assert counts == {rid: 1 for rid in run_ids}


def test_failed_and_stopped_runs_are_alerted_and_nothing_else(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    failed = dify.add_log(app, status="failed", at=now - 300, error="boom")
    stopped = dify.add_log(app, status="stopped", at=now - 200)
    ok = dify.add_log(app, status="succeeded", at=now - 100)
    partial = dify.add_log(app, status="partial-succeeded", at=now - 90, exceptions_count=2)
    running = dify.start_run(app, at=now - 50)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    report = rt.cycle()
    assert report.ok
    assert_each_once(slack, [failed.run_id, stopped.run_id])
    for quiet in (ok, partial, running):
        assert messages_mentioning(slack, quiet.run_id) == 0


def test_partial_successes_are_warned_only_when_switched_on(tmp_path, dify, clock, slack):
    app = dify.add_app()
    partial = dify.add_log(app, status="partial-succeeded", at=int(clock.now) - 60, error="branch failed")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_ALERT_PARTIAL="true")
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [partial.run_id])
    assert "partially succeeded" in slack.posts()[0]["text"]


def test_no_run_is_alerted_twice_across_cycles_and_restarts(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [dify.add_log(app, at=int(clock.now) - 500 + i * 7, error=f"err {chr(65 + i)}") for i in range(4)]
    _runtime(tmp_path, dify, clock, slack, app.key).cycle()
    for _ in range(3):
        clock.advance(60)
        runs.append(dify.add_log(app, at=int(clock.now) - 1, error="another kind"))
        rt = _runtime(tmp_path, dify, clock, slack, app.key)  # a restart each time
        rt.cycle()
        rt.close()
    assert_each_once(slack, [r.run_id for r in runs])


def test_rows_logged_in_the_cursor_second_but_visible_later_are_caught_once(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    first = dify.add_log(app, at=int(clock.now), error="first")
    rt.cycle()  # reads up to and including this second
    # Committed late: a row carrying the cursor's own second becomes visible only now.
    late = dify.add_log(app, at=int(clock.now), error="late")
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [first.run_id, late.run_id])


def test_run_logged_at_start_that_fails_minutes_later_is_alerted_once(tmp_path, clock, slack):
    dify = FakeDify(version="1.13.3", clock=clock)
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_BACKFILL="0")
    run = dify.start_run(app, at=int(clock.now) - 30, round_up=True)  # already running at the first poll
    rt.cycle()
    for _ in range(15):  # 15 quiet minutes, the cursor moves past the row's time
        clock.advance(60)
        rt.cycle()
    dify.finish_run(run, status="failed", at=int(clock.now), error="timed out")
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [run.run_id])


def test_dify_before_1_11_writes_rows_at_the_end_and_they_are_alerted(tmp_path, clock, slack):
    dify = FakeDify(version="1.10.1", clock=clock)
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    run = dify.start_run(app, at=int(clock.now) - 600)
    rt.cycle()
    clock.advance(60)
    dify.finish_run(run, status="failed", at=int(clock.now) - 1, error="timed out")
    rt.cycle()
    assert_each_once(slack, [run.run_id])


def test_many_failures_with_rows_arriving_while_paging_are_each_alerted_once(tmp_path, dify, clock, slack):
    app = dify.add_app()
    now = int(clock.now)
    runs = [dify.add_log(app, at=now - 900 + (i % 300), error="timed out after 30s") for i in range(450)]
    arrivals = iter(range(40))

    def insert_while_paging(_request) -> None:
        # New failures land at the top (and in the middle) between page requests.
        i = next(arrivals, None)
        if i is not None:
            runs.append(dify.add_log(app, at=now - (i % 2) * 400, error="timed out after 30s"))

    dify.after_logs = insert_while_paging
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    dify.after_logs = None
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [r.run_id for r in runs])


def test_more_than_a_page_in_one_second_is_read_completely(tmp_path, dify, clock, slack):
    app = dify.add_app()
    second = int(clock.now) - 120
    runs = [dify.add_log(app, at=second, error=f"Node llm_{i % 3} failed") for i in range(250)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    report = rt.cycle()
    assert report.ok, report.problems
    assert_each_once(slack, [r.run_id for r in runs])


def test_a_quiet_cycle_costs_at_most_two_requests_per_app(tmp_path, dify, clock, slack):
    app = dify.add_app()
    for i in range(30):
        dify.add_log(app, at=int(clock.now) - 600 + i, error="x")
        dify.add_log(app, status="succeeded", at=int(clock.now) - 600 + i)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    clock.advance(60)
    before = len(dify.log_requests())
    report = rt.cycle()
    assert len(dify.log_requests()) - before <= 2
    assert report.apps[0].requests <= 2


def test_a_new_failure_in_a_long_window_reads_only_what_changed(tmp_path, dify, clock, slack):
    app = dify.add_app()
    for i in range(500):
        dify.add_log(app, at=int(clock.now) - 1700 + i * 3, error="old")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    clock.advance(60)
    new = dify.add_log(app, at=int(clock.now) - 5, error="new")
    before = len(dify.log_requests())
    rt.cycle()
    assert messages_mentioning(slack, new.run_id) == 1
    assert len(dify.log_requests()) - before <= 30  # a binary search, not a re-read of 500 rows


def test_backfill_limits_the_first_poll_to_recent_endings(tmp_path, dify, clock, slack):
    app = dify.add_app()
    old = dify.add_log(app, at=int(clock.now) - 7200, error="two hours ago")
    recent = dify.add_log(app, at=int(clock.now) - 600, error="ten minutes ago")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_BACKFILL="3600", WFLOGS_LOOKBACK="7200")
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, old.run_id) == 0
    assert messages_mentioning(slack, recent.run_id) == 1


def test_backfill_zero_alerts_nothing_that_ended_before_the_first_poll(tmp_path, dify, clock, slack):
    app = dify.add_app()
    ended = dify.add_log(app, at=int(clock.now) - 60, error="before we started")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_BACKFILL="0")
    rt.cycle()
    clock.advance(60)
    fresh = dify.add_log(app, at=int(clock.now) - 2, error="after we started")
    rt.cycle()
    assert messages_mentioning(slack, ended.run_id) == 0
    assert messages_mentioning(slack, fresh.run_id) == 1


@pytest.mark.parametrize("kind", ["500", "502", "badjson", "timeout", "connect"])
def test_dify_outage_moves_no_cursor_and_the_next_cycle_catches_up(tmp_path, dify, clock, slack, kind):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    clock.advance(60)
    during = dify.add_log(app, at=int(clock.now) - 10, error="during the outage")
    dify.fail_next(10, kind)  # more than the client's retries
    report = rt.cycle()
    assert not report.ok
    assert "Dify" in report.problems[0]
    assert messages_mentioning(slack, during.run_id) == 0
    dify.faults.clear()
    clock.advance(3600)  # a long outage: the window reaches back to the last good cycle
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert messages_mentioning(slack, during.run_id) == 1


def test_a_transient_dify_error_is_retried_within_the_cycle(tmp_path, dify, clock, slack):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 10)
    dify.fail_next(1, "502")
    report = _runtime(tmp_path, dify, clock, slack, app.key).cycle()
    assert report.ok
    assert messages_mentioning(slack, run.run_id) == 1


def test_a_rejected_key_names_the_app_not_the_key(tmp_path, dify, clock, slack):
    dify.add_app()
    bad_key = "app-" + "z" * 20 + "WXYZ"
    report = _runtime(tmp_path, dify, clock, slack, bad_key).cycle()
    assert not report.ok
    assert "rejected the API key" in report.problems[0]
    assert "…WXYZ" in report.problems[0]
    assert bad_key not in report.problems[0]


def test_deleted_logs_stop_costing_requests(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [dify.add_log(app, at=int(clock.now) - 100 + i, error="x") for i in range(5)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    app.runs.remove(runs[0])  # Dify's log clean-up removed one
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    before = len(dify.log_requests())
    rt.cycle()
    assert len(dify.log_requests()) - before == 2


def test_many_apps_are_each_polled_and_alerted(tmp_path, dify, clock, slack):
    apps = [dify.add_app(f"app {i}") for i in range(12)]
    runs = [dify.add_log(a, at=int(clock.now) - 30, error=f"app {i} broke") for i, a in enumerate(apps)]
    toml = "".join(f'[[apps]]\napi_key = "{a.key}"\nchannel = "C0APP{i:02d}"\n' for i, a in enumerate(apps))
    settings = make_settings(tmp_path, slack_env(slack), toml=toml)
    report = build_runtime(settings, dify, clock).cycle()
    assert report.ok
    assert len(report.apps) == 12
    assert_each_once(slack, [r.run_id for r in runs])
    for i, run in enumerate(runs):
        (post,) = slack.posts(f"C0APP{i:02d}")
        assert run.run_id in post["text"] and f"app {i}" in post["text"]


def test_the_channel_hears_when_an_app_cannot_be_read_and_when_it_recovers(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    for _ in range(4):  # Dify down for four minutes: a blip, not news yet
        clock.advance(60)
        dify.fail_next(3, "502")
        rt.cycle()
    assert slack.posts() == []
    for _ in range(3):
        clock.advance(60)
        dify.fail_next(3, "502")
        rt.cycle()
    (warning,) = slack.posts()
    assert "cannot read Support Bot" in warning["text"] and "502" in warning["text"]
    missed = dify.add_log(app, at=int(clock.now) - 100, error="during the outage")
    clock.advance(60)
    rt.cycle()
    texts = [m["text"] for m in slack.posts()]
    assert len(texts) == 3 and "can read Support Bot again" in texts[1]  # before what it missed
    assert messages_mentioning(slack, missed.run_id) == 1


def test_a_rejected_key_is_reported_to_the_channel_at_once_and_only_once(tmp_path, dify, clock, slack):
    dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, "app-" + "r" * 20 + "REJ1")
    for _ in range(3):
        rt.cycle()
        clock.advance(60)
    (warning,) = slack.posts()
    assert "rejected the API key" in warning["text"] and "r" * 20 not in warning["text"]


def test_a_first_poll_that_fails_does_not_move_the_backfill_start(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_BACKFILL="0")
    dify.fail_next(100, "500")
    rt.cycle()
    clock.advance(30)
    during = dify.add_log(app, at=int(clock.now), error="while Dify was failing")
    clock.advance(7200)
    dify.faults.clear()
    rt.cycle()
    assert messages_mentioning(slack, during.run_id) == 1


def test_a_stored_app_name_is_used_without_asking_dify_again_while_it_is_down(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    _runtime(tmp_path, dify, clock, slack, app.key).cycle()  # learns and stores the name
    rt = _runtime(tmp_path, dify, clock, slack, app.key)  # a restart while /info fails
    dify.fail_next(100, "500", path="/info")
    assert rt.poller.app_name(rt.settings.apps[0]) == "Support Bot"
    asked = len([r for r in dify.requests if r.url.path.endswith("/info")])
    assert rt.poller.app_name(rt.settings.apps[0]) == "Support Bot"
    assert len([r for r in dify.requests if r.url.path.endswith("/info")]) == asked


# -- storms, crowded seconds, isolation, identity --------------------------------------------


def test_a_count_that_disagrees_with_its_rows_during_a_storm_still_alerts_what_was_read(
    tmp_path, dify, clock, slack
):
    app = dify.add_app()
    now = int(clock.now)
    older = [dify.add_log(app, at=now - 900 + i * 20, error=f"older {i}") for i in range(30)]
    storm: list = []

    def fail_between_count_and_rows(_request) -> None:
        # Dify counts, then selects: a run failing in between makes them disagree, every time.
        storm.append(dify.add_log(app, at=int(clock.now) - 1, error="storm"))

    dify.between_count_and_rows = fail_between_count_and_rows
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    report = rt.cycle()
    assert report.ok, report.problems
    assert_each_once(slack, [r.run_id for r in older])  # not held back by the storm
    for _ in range(3):
        clock.advance(60)
        assert rt.cycle().ok
    dify.between_count_and_rows = None
    for _ in range(2):
        clock.advance(60)
        rt.cycle()
    assert_each_once(slack, [r.run_id for r in older + storm])


def _hide(hidden_log_id: str):
    """An order within one second in which one row is never on the page asked for."""

    def order(rows, request):
        others = [r for r in rows if r.log_id != hidden_log_id]
        if len(others) == len(rows):
            return rows
        hidden = [r for r in rows if r.log_id == hidden_log_id]
        return others + hidden if request.url.params.get("page", "1") == "1" else hidden + others

    return order


def test_an_unreadable_crowded_second_alerts_what_was_found_reads_the_other_status_and_recovers(
    tmp_path, dify, clock, slack
):
    app = dify.add_app()
    second = int(clock.now) - 120
    crowd = [dify.add_log(app, at=second, error=f"Node llm_{i % 3} failed") for i in range(150)]
    stopped = dify.add_log(app, status="stopped", at=second - 30)
    dify.order_within_second = _hide(crowd[0].log_id)  # a consistently unlucky order
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    report = rt.cycle()
    assert report.ok, report.problems  # an unlucky order is not an outage
    assert "150 failed logs share one second" in (report.apps[0].incomplete or "")
    assert_each_once(slack, [r.run_id for r in crowd[1:]] + [stopped.run_id])
    assert messages_mentioning(slack, crowd[0].run_id) == 0
    assert rt.store.app_state(rt.settings.apps[0].id)["checked_until"] is None  # the window waits
    dify.order_within_second = None  # the order changes, as it does between calls
    clock.advance(60)
    report = rt.cycle()
    assert report.ok and report.apps[0].incomplete is None
    assert rt.store.app_state(rt.settings.apps[0].id)["checked_until"] == int(clock.now)
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [r.run_id for r in crowd] + [stopped.run_id])


@pytest.mark.parametrize("kind", ["gzip", "bug"])
def test_one_apps_unexpected_failure_stays_that_apps(tmp_path, dify, clock, slack, kind):
    broken, healthy = dify.add_app("Broken"), dify.add_app("Healthy")
    lost = dify.add_log(broken, at=int(clock.now) - 30, error="behind a broken proxy")
    fine = dify.add_log(healthy, at=int(clock.now) - 30, error="healthy app broke")
    toml = (
        f'[[apps]]\napi_key = "{broken.key}"\nname = "Broken"\n'
        f'[[apps]]\napi_key = "{healthy.key}"\nname = "Healthy"\n'
    )
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    dify.fail_next(10_000, kind, key=broken.key)
    report = rt.cycle()  # does not raise
    assert messages_mentioning(slack, fine.run_id) == 1  # delivery ran for the other app
    (problem,) = report.problems
    assert problem.startswith("Broken: ")
    assert "cannot be decoded" in problem if kind == "gzip" else "RuntimeError" in problem
    for _ in range(6):  # health checks run too: after the grace period the channel is told
        clock.advance(60)
        rt.cycle()
    assert any("cannot read Broken" in p["text"] for p in slack.posts())
    dify.faults.clear()
    clock.advance(60)
    assert rt.cycle().ok
    assert messages_mentioning(slack, lost.run_id) == 1


def test_a_new_api_key_for_the_same_app_does_not_alert_again(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [
        dify.add_log(app, at=int(clock.now) - 600 + i * 60, error=f"before the rotation {i}")
        for i in range(5)
    ]
    _runtime(tmp_path, dify, clock, slack, app.key).cycle()
    new_key = dify.add_key(app)
    dify.revoke_key(app.key)
    clock.advance(120)
    after = dify.add_log(app, at=int(clock.now) - 10, error="after the rotation")
    rt = _runtime(tmp_path, dify, clock, slack, new_key)  # restarted with the new key
    assert rt.cycle().ok
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [r.run_id for r in [*runs, after]])


def test_the_same_app_under_a_differently_spelled_url_does_not_alert_again(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [dify.add_log(app, at=int(clock.now) - 300 + i * 60, error=f"run {i}") for i in range(3)]
    _runtime(tmp_path, dify, clock, slack, app.key).cycle()
    clock.advance(60)
    rt = _runtime(tmp_path, dify, clock, slack, app.key, DIFY_API_URL="http://dify.test:80/v1")
    assert (
        rt.settings.apps[0].id
        != build_runtime(make_settings(tmp_path, {"DIFY_API_KEY": app.key}), dify, clock).settings.apps[0].id
    )
    rt.cycle()
    assert_each_once(slack, [r.run_id for r in runs])


def test_a_deleted_known_log_cannot_hide_a_new_older_failure(tmp_path, clock, slack):
    dify = FakeDify(version="1.13.3", clock=clock)
    app = dify.add_app()
    now = int(clock.now)
    slow = dify.start_run(app, at=now - 400)  # logged at its start, still running
    known = [dify.add_log(app, at=now - 300 + i * 60, error=f"known {i}") for i in range(3)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    dify.delete_log(app, known[1])  # the count of the window drops by one...
    dify.finish_run(slow, status="failed", at=int(clock.now), error="timed out")  # ...and rises by one
    clock.advance(60)
    rt.cycle()
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [slow.run_id] + [r.run_id for r in known])


def test_a_second_that_looked_whole_on_a_page_but_was_cut_is_read_again(tmp_path, dify, clock, slack):
    app = dify.add_app()
    dify.stable_within_second = True
    top = int(clock.now) - 100
    runs = [dify.add_log(app, at=top - s, error=f"s{s}") for s in range(4) for _ in range(20)]
    # 50 rows in the next second: 20 of them close the first page, as many as any second above.
    runs += [dify.add_log(app, at=top - 4, error="cut") for _ in range(50)]
    runs += [dify.add_log(app, at=top - 5 - s, error="below") for s in range(30)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    assert_each_once(slack, [r.run_id for r in runs])


@pytest.mark.parametrize("stable", [True, False])
def test_a_storm_costs_close_to_one_request_per_hundred_rows(tmp_path, dify, clock, slack, stable):
    app = dify.add_app()
    dify.stable_within_second = stable
    now = int(clock.now)
    runs = [dify.add_log(app, at=now - 200 + i // 15, error="timed out") for i in range(3000)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    report = rt.cycle()
    assert report.ok
    floor = 30 + 1  # 100 rows a request, and one for the empty stopped list
    # Above the floor: each page's oldest second, when cut, is read again whole (here 15 rows).
    assert len(dify.log_requests()) <= 1.2 * floor
    assert_each_once(slack, [r.run_id for r in runs])
    clock.advance(60)
    assert rt.cycle().apps[0].requests == 2  # then a quiet cycle costs one request per status


def test_a_quiet_cycle_over_hundreds_of_known_logs_and_a_crowded_second_costs_one_request_per_status(
    tmp_path, dify, clock, slack
):
    app = dify.add_app()
    now = int(clock.now)
    for i in range(400):
        dify.add_log(app, at=now - 1200 + i * 2, error="old")
    for _ in range(150):
        dify.add_log(app, at=now - 5, error="crowded")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    clock.advance(60)
    assert rt.cycle().apps[0].requests == 2


def test_a_key_replaced_after_a_long_outage_goes_on_from_where_the_old_key_stopped(
    tmp_path, dify, clock, slack
):
    app = dify.add_app()
    before = dify.add_log(app, at=int(clock.now) - 300, error="before the rotation")
    _runtime(tmp_path, dify, clock, slack, app.key).cycle()
    dify.revoke_key(app.key)  # the old key stops working; nobody notices for two hours
    clock.advance(600)
    missed = dify.add_log(app, at=int(clock.now), error="while the key was rejected")
    clock.advance(2 * 3600)  # longer than the backfill
    new_key = dify.add_key(app)
    rt = _runtime(tmp_path, dify, clock, slack, new_key)
    assert rt.cycle().ok
    clock.advance(60)
    rt.cycle()
    assert_each_once(slack, [before.run_id, missed.run_id])


def test_a_new_app_with_another_apps_state_around_is_backfilled_as_usual(tmp_path, dify, clock, slack):
    old_app, new_app = dify.add_app("Old"), dify.add_app("New")
    dify.add_log(old_app, at=int(clock.now) - 60, error="old app")
    _runtime(tmp_path, dify, clock, slack, old_app.key).cycle()  # then removed from the config
    clock.advance(60)
    recent = dify.add_log(new_app, at=int(clock.now) - 600, error="new app, ten minutes ago")
    rt = _runtime(tmp_path, dify, clock, slack, new_app.key)
    assert rt.cycle().ok
    assert messages_mentioning(slack, recent.run_id) == 1


def test_one_app_reads_a_few_parts_at_once_and_all_apps_stay_inside_the_concurrency_bound(
    tmp_path, dify, clock
):
    apps = [dify.add_app(f"app {i}") for i in range(3)]
    now = int(clock.now)
    for app in apps:
        for i in range(1200):
            dify.add_log(app, at=now - 300 + i // 10, error="timed out")
    dify.latency = 0.005  # so that requests overlap
    (tmp_path / "one").mkdir()
    one = build_runtime(make_settings(tmp_path / "one", {"DIFY_API_KEY": apps[0].key}), dify, clock)
    assert all(result.ok for result in one.poller.poll_all())
    assert 2 <= dify.max_in_flight <= 6  # parallel, but politely
    dify.max_in_flight = 0
    toml = "".join(f'[[apps]]\napi_key = "{a.key}"\n' for a in apps)
    (tmp_path / "all").mkdir()
    settings = make_settings(tmp_path / "all", {"WFLOGS_CONCURRENCY": "4"}, toml=toml)
    assert all(result.ok for result in build_runtime(settings, dify, clock).poller.poll_all())
    assert dify.max_in_flight <= 4


def test_dify_failing_in_the_middle_of_a_storm_keeps_what_was_read_and_the_next_cycle_finishes(
    tmp_path, dify, clock, slack
):
    app = dify.add_app()
    now = int(clock.now)
    runs = [dify.add_log(app, at=now - 600 + i // 5, error="timed out") for i in range(1500)]
    dify.fail_next(10_000, "500", after=5)  # down after five pages
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    report = rt.cycle()
    assert not report.ok
    delivered = report.delivery.runs_delivered
    assert 300 <= delivered < 1500  # what the first pages held is alerted now
    assert rt.store.app_state(rt.settings.apps[0].id)["checked_until"] is None
    dify.faults.clear()
    clock.advance(60)
    assert rt.cycle().ok
    assert_each_once(slack, [r.run_id for r in runs])


def test_a_run_paused_longer_than_the_look_back_that_then_fails_is_alerted_once(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_LOOKBACK="600")
    rt.cycle()
    waiting = dify.start_run(app, at=int(clock.now) - 5, session="user_waiting")
    waiting.status = "paused"  # a human input node waits for someone
    done = dify.start_run(app, at=int(clock.now) - 5, session="user_done")
    for _ in range(40):  # 40 minutes: both leave the 10-minute look-back still going
        clock.advance(60)
        rt.cycle()
    dify.finish_run(done, status="succeeded", at=int(clock.now) - 10)
    dify.finish_run(waiting, status="failed", at=int(clock.now) - 10, error="human input timed out")
    for _ in range(3):
        clock.advance(60)
        rt.cycle()
    assert messages_mentioning(slack, waiting.run_id) == 1
    assert messages_mentioning(slack, done.run_id) == 0
    assert "human input timed out" in slack.all_text()
    assert rt.store.long_runs_count(rt.settings.apps[0].id) == 0  # both are no longer followed
    # A run that fails right after it left the window, before anyone looked, is alerted too.
    late = dify.start_run(app, at=int(clock.now) - 5, session="user_late")
    for _ in range(12):
        clock.advance(60)
        rt.cycle()
        if late.status == "running" and int(clock.now) - late.created_at > 660:
            dify.finish_run(late, status="stopped", at=int(clock.now) - 1)
    for _ in range(12):
        clock.advance(60)
        rt.cycle()
    assert messages_mentioning(slack, late.run_id) == 1


def test_runs_leaving_the_look_back_cost_one_request_every_quarter_of_it_when_quiet(
    tmp_path, dify, clock, slack
):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_LOOKBACK="1200")
    rt.cycle()
    made = []
    for _ in range(10):
        clock.advance(60)
        before = len(dify.log_requests())
        rt.cycle()
        made.append(len(dify.log_requests()) - before - 2)  # beyond the two counts of a quiet cycle
    assert made == [0, 0, 0, 0, 1] * 2  # a band of 300 s (a quarter of 1200) every fifth cycle


def test_a_cannot_read_notice_is_closed_when_the_key_is_fixed_and_wflogs_restarted(
    tmp_path, dify, clock, slack
):
    app = dify.add_app("hr-bot")
    wrong = "app-" + "w" * 20 + "RONG"
    toml = '[[apps]]\nname = "hr-bot"\napi_key = "{key}"\nchannel = "C0HR"\n'
    (tmp_path / "first").mkdir()
    first = build_runtime(
        make_settings(tmp_path / "first", slack_env(slack), toml=toml.format(key=wrong)), dify, clock
    )
    first.cycle()
    (warning,) = slack.posts("C0HR")
    assert "cannot read hr-bot" in warning["text"]
    first.close()
    clock.advance(600)
    (tmp_path / "first" / "wflogs.toml").write_text(toml.format(key=app.key))  # fixed, then restarted
    second = build_runtime(
        make_settings(
            tmp_path / "first", {**slack_env(slack), "WFLOGS_CONFIG": str(tmp_path / "first" / "wflogs.toml")}
        ),
        dify,
        clock,
    )
    second.cycle()
    second.cycle()
    texts = [m["text"] for m in slack.posts("C0HR")]
    assert len(texts) == 2 and "can read hr-bot again" in texts[1]
