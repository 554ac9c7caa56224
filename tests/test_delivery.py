"""Delivery to Slack: exactly once through outages and rate limits, grouped storms, safe text."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import Clock, build_runtime, make_settings, messages_mentioning, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack, assert_valid_blocks, mrkdwn_texts


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **kw):
    return build_runtime(
        make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack)}), dify, clock, **kw
    )


def _validate(slack: FakeSlack) -> None:
    for message in slack.messages:
        assert message["text"]
        assert_valid_blocks(message.get("blocks") or [])


def _mrkdwn(slack: FakeSlack) -> str:
    """Every text Slack parses for mentions and links: top-level text and mrkdwn objects."""
    parts: list[str] = []
    for message in slack.messages:
        parts.append(message["text"] or "")
        parts.extend(mrkdwn_texts(message.get("blocks") or []))
    return "\n".join(parts)


def test_slack_down_keeps_alerts_until_it_is_back(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [dify.add_log(app, at=int(clock.now) - 60 + i, error=f"error {chr(65 + i)}") for i in range(3)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("chat.postMessage", "status", 503, times=2)
    slack.fail("chat.postMessage", "html", 502)
    report = rt.cycle()
    assert not report.ok and "Slack" in report.problems[0]
    assert rt.store.outbox_size() == 3
    for _ in range(3):
        clock.advance(60)
        rt.cycle()
    assert rt.store.outbox_size() == 0
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1


def test_a_slack_timeout_loses_nothing(tmp_path, dify, clock, slack):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.web.timeout = 1  # type: ignore[union-attr]
    rt.web.retry_handlers = []  # type: ignore[union-attr]
    slack.fail("chat.postMessage", "hang", 2)
    assert not rt.cycle().ok
    clock.advance(60)
    assert rt.cycle().ok
    # The hung request never reached Slack's message list, so the retry is the only copy.
    assert messages_mentioning(slack, run.run_id) == 1


def test_rate_limit_waits_at_least_retry_after_and_carries_on(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [dify.add_log(app, at=int(clock.now) - 60 + i, error=f"error {chr(65 + i)}") for i in range(2)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("chat.postMessage", "ratelimit", 1)
    report = rt.cycle()
    assert report.ok
    calls = slack.calls_to("chat.postMessage")
    assert len(calls) == 3
    assert calls[1].at - calls[0].at >= 1.0  # never less than Retry-After
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1


def test_a_long_rate_limit_leaves_the_rest_for_a_later_cycle(tmp_path, dify, clock, slack):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("chat.postMessage", "ratelimit", 120)
    started = time.monotonic()
    report = rt.cycle()
    assert time.monotonic() - started < 10
    assert not report.ok and "wait" in report.problems[0]
    assert rt.store.outbox_size() == 1
    rt2 = _runtime(tmp_path, dify, clock, slack, app.key)  # after a restart the wait is over
    assert rt2.cycle().ok
    assert messages_mentioning(slack, run.run_id) == 1


def test_permanent_slack_errors_say_how_to_fix_and_keep_the_alerts(tmp_path, dify, clock, slack):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("chat.postMessage", "error", "not_in_channel")
    report = rt.cycle()
    assert "/invite" in report.problems[0]
    assert rt.store.outbox_size() == 1
    clock.advance(60)
    assert rt.cycle().ok
    assert messages_mentioning(slack, run.run_id) == 1


def test_refused_blocks_fall_back_to_plain_text(tmp_path, dify, clock, slack):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("chat.postMessage", "error", "invalid_blocks")
    assert rt.cycle().ok
    (post,) = slack.posts()
    assert post["blocks"] is None and run.run_id in post["text"]


def test_same_error_shape_groups_into_one_message_with_every_run_in_the_thread(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [
        dify.add_log(
            app, at=int(clock.now) - 100 + i, error=f"timed out after {30 + i}s", session=f"u{i % 7}"
        )
        for i in range(95)
    ]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    top = [m for m in slack.posts() if not m["thread_ts"]]
    assert len(top) == 1
    assert "95 runs failed" in top[0]["text"]
    assert "95 runs · 7 sessions affected" in json.dumps(top[0]["blocks"], ensure_ascii=False)
    replies = [m for m in slack.posts() if m["thread_ts"] == top[0]["ts"]]
    assert len(replies) == 3  # 85 unlisted runs, 40 a reply
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1
    _validate(slack)


def test_hundreds_of_runs_go_into_a_csv_file_in_the_thread(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [
        dify.add_log(app, at=int(clock.now) - 400 + i, error='=HYPERLINK("x") timed out') for i in range(350)
    ]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    assert len(slack.posts()) == 1
    (csv_file,) = slack.files
    assert csv_file["thread_ts"] == slack.posts()[0]["ts"]
    assert "'=HYPERLINK" in csv_file["content"]  # no formula injection
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1


def test_a_storm_of_many_error_shapes_posts_a_few_messages_not_a_flood(tmp_path, dify, clock, slack):
    app = dify.add_app()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    runs = [
        dify.add_log(app, at=int(clock.now) - 500 + i, error=f"node {words[i % 11]} exploded")
        for i in range(330)
    ]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    top = [m for m in slack.posts() if not m["thread_ts"]]
    assert len(top) <= 5
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1
    _validate(slack)


def test_untrusted_text_cannot_mention_or_link(tmp_path, dify, clock, slack):
    app = dify.add_app("<!here> app")
    evil = "<!channel> <@U123> <https://evil.example|click> & more"
    runs = [dify.add_log(app, at=int(clock.now) - 10, error=evil, session="<!everyone>") for _ in range(1)]
    runs += [
        dify.add_log(app, at=int(clock.now) - 9 + i, error=f"{evil} {i}", session="<!everyone>")
        for i in range(3)
    ]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    everything = _mrkdwn(slack)
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<@U123>", "<https://evil"):
        assert raw not in everything
    assert "&lt;!channel&gt;" in everything and "&amp; more" in everything
    _validate(slack)


def test_a_huge_error_is_cut_to_fit_slack(tmp_path, dify, clock, slack):
    app = dify.add_app()
    dify.add_log(app, at=int(clock.now) - 5, error="<" * 9000)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    (post,) = slack.posts()
    assert post["blocks"] is not None  # accepted with blocks, not the fallback
    assert "…" in json.dumps(post["blocks"], ensure_ascii=False)
    _validate(slack)


def test_alert_says_what_a_user_needs(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    run = dify.add_log(
        app,
        at=int(clock.now) - 5,
        error="[Errno 111] Connection refused",
        elapsed=12.5,
        session="user_workflow_123",
        total_tokens=321,
        total_steps=4,
        triggered_from="webhook",
    )
    toml = f'[[apps]]\napi_key = "{app.key}"\nconsole_url = "https://dify.example/app/1/logs"\n'
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    assert rt.cycle().ok
    (post,) = slack.posts()
    blocks = json.dumps(post["blocks"])
    for needle in (
        "Support Bot",
        "Connection refused",
        run.run_id,
        "user_workflow_123",
        "12.5s",
        "321 tokens",
        "4 steps",
        "webhook",
        "service-api",
        "/wflogs session user_workflow_123",
        "https://dify.example/app/1/logs",
        "Workflow version",
    ):
        assert needle in blocks, needle
    _validate(slack)


def test_terminal_mode_prints_alerts_without_slack(tmp_path, dify, clock):
    import io

    app = dify.add_app("Support Bot")
    run = dify.add_log(app, at=int(clock.now) - 5, error="<b>boom</b>")
    out = io.StringIO()
    rt = build_runtime(make_settings(tmp_path, {"DIFY_API_KEY": app.key}), dify, clock, stream=out)
    assert rt.cycle().ok
    text = out.getvalue()
    assert run.run_id in text and "<b>boom</b>" in text and "Support Bot" in text


# -- one message must not hold its channel, nothing dropped, no flood after an outage ------------------


def _top(slack: FakeSlack) -> list[dict]:
    return [m for m in slack.posts() if not m["thread_ts"]]


def test_a_message_slack_refuses_for_good_does_not_hold_the_others(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [dify.add_log(app, at=int(clock.now) - 60 + i, error=f"error {chr(65 + i)}") for i in range(3)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    # The first message is refused with its blocks and again as plain text.
    slack.fail("chat.postMessage", "error", "invalid_blocks", times=2)
    report = rt.cycle()
    assert report.ok
    assert messages_mentioning(slack, runs[0].run_id) == 0
    for run in runs[1:]:
        assert messages_mentioning(slack, run.run_id) == 1
    assert rt.store.outbox_size() == 1  # kept, not dropped
    clock.advance(60)
    rt.cycle()
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1


def test_runs_whose_csv_slack_refuses_go_as_thread_replies_and_the_operator_is_told_once(
    tmp_path, dify, clock, slack, caplog
):
    app = dify.add_app()
    big = [dify.add_log(app, at=int(clock.now) - 300 + i, error="upstream timed out") for i in range(215)]
    others = [dify.add_log(app, at=int(clock.now) - 20 + i, error=f"other {chr(65 + i)}") for i in range(3)]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("files.getUploadURLExternal", "error", "missing_scope", times=2)
    assert rt.cycle().ok
    assert rt.store.outbox_size() == 0
    for run in big + others:
        assert messages_mentioning(slack, run.run_id) == 1
    parent = next(m for m in _top(slack) if "215 runs" in m["text"])
    assert len([m for m in slack.posts() if m["thread_ts"] == parent["ts"]]) >= 6
    more = [dify.add_log(app, at=int(clock.now) + 5 + i // 10, error="db locked") for i in range(230)]
    clock.advance(60)
    assert rt.cycle().ok
    for run in more:
        assert messages_mentioning(slack, run.run_id) == 1
    told = [r for r in caplog.records if "files:write" in r.getMessage()]
    assert len(told) == 1 and "missing_scope" in told[0].getMessage()


def test_thread_replies_never_drop_runs_with_long_session_ids(tmp_path, dify, clock, slack):
    app = dify.add_app()
    runs = [
        dify.add_log(app, at=int(clock.now) - 100 + i, error="timed out", session=f"s{i:03d}-" + "x" * 186)
        for i in range(60)
    ]
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    assert rt.cycle().ok
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1
    for reply in slack.posts():
        if reply["thread_ts"]:
            span = reply["text"].split(" of ")[0].split(" ", 1)[1]
            first, last = span.split("–") if "–" in span else (span, span)
            listed = sum(run.run_id in json.dumps(reply["blocks"]) for run in runs)
            assert listed == int(last) - int(first) + 1  # the label tells the truth
    _validate(slack)


def test_a_slack_outage_backlog_is_regrouped_not_flooded(tmp_path, dify, clock, slack):
    app = dify.add_app()
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    runs = []
    slack.fail("chat.postMessage", "error", "not_in_channel", times=30)
    for i in range(30):
        runs.append(dify.add_log(app, at=int(clock.now) - 5, error=f"model overloaded after {i}s"))
        if i % 3 == 0:
            runs.append(dify.add_log(app, at=int(clock.now) - 4, error=f"node n{i} failed: no such tool"))
        assert not rt.cycle().ok
        clock.advance(60)
    assert slack.posts() == []
    assert rt.cycle().ok
    assert len(_top(slack)) <= 5
    for run in runs:
        assert messages_mentioning(slack, run.run_id) == 1


def test_waiting_alerts_follow_the_apps_channel_after_a_config_change(tmp_path, dify, clock):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 5)
    with FakeSlack(channels={"C0NEW"}) as slack:
        env = {k: v for k, v in slack_env(slack).items() if k != "WFLOGS_ALERT_CHANNEL"}
        toml = f'[[apps]]\napi_key = "{app.key}"\nchannel = "C0OLD"\n'
        rt = build_runtime(make_settings(tmp_path, env, toml=toml), dify, clock)
        assert not rt.cycle().ok  # channel_not_found
        assert rt.store.outbox_size() == 1
        toml = toml.replace("C0OLD", "C0NEW")
        rt = build_runtime(make_settings(tmp_path, env, toml=toml), dify, clock)
        clock.advance(60)
        assert rt.cycle().ok
        assert rt.store.outbox_size() == 0
        (post,) = slack.posts()
        assert post["channel"] == "C0NEW" and run.run_id in post["text"]


def test_terminal_mode_strips_escape_sequences_from_error_texts(tmp_path, dify, clock):
    import io

    app = dify.add_app("Support Bot")
    evil = "boom \x1b[31mred\x1b[0m \x1b]0;owned\x07 \x1b[2J\x1b[H\x9b1mend"
    runs = [dify.add_log(app, at=int(clock.now) - 9 + i, error=f"{evil} {i}") for i in range(3)]
    runs.append(dify.add_log(app, at=int(clock.now) - 5, error=f"single {evil}"))
    out = io.StringIO()
    rt = build_runtime(make_settings(tmp_path, {"DIFY_API_KEY": app.key}), dify, clock, stream=out)
    assert rt.cycle().ok
    text = out.getvalue()
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text
    assert "[31m" not in text and "owned" not in text and "[2J" not in text
    assert "boom red" in text and runs[0].run_id in text


def test_delivery_does_not_wait_for_a_slow_poll(tmp_path, dify, clock, slack):
    from apscheduler.schedulers.background import BackgroundScheduler

    from bot.service import DeliveryLoop, add_poll_job

    app = dify.add_app("Support Bot")
    run = dify.add_log(app, at=int(clock.now) - 5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.poll()  # found, not yet delivered (as if Slack was down before a restart)
    dify.latency = 0.5  # Dify is slow now: a poll takes well over a second
    scheduler = BackgroundScheduler(timezone=rt.settings.tz)
    delivery = DeliveryLoop(rt)
    add_poll_job(scheduler, rt)
    started = time.monotonic()
    delivery.start()
    scheduler.start()
    try:
        while not slack.posts() and time.monotonic() - started < 5:
            time.sleep(0.02)
        assert time.monotonic() - started < 0.5
        assert messages_mentioning(slack, run.run_id) == 1
    finally:
        scheduler.shutdown(wait=True)
        delivery.stop()
        rt.close()


def test_a_message_refused_again_and_again_is_told_once(tmp_path, dify, clock, slack, caplog):
    app = dify.add_app()
    run = dify.add_log(app, at=int(clock.now) - 5, error="refused shape")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    slack.fail("chat.postMessage", "error", "invalid_blocks", times=6)  # blocks, then plain text; 3 passes
    for _ in range(3):
        rt.cycle()
        clock.advance(60)
    told = [r for r in caplog.records if "Slack refused a message" in r.getMessage()]
    assert len(told) == 1
    rt.cycle()
    assert messages_mentioning(slack, run.run_id) == 1


def test_the_delivery_thread_of_a_standby_instance_posts_nothing(tmp_path, dify, clock, slack):
    from bot.service import DeliveryLoop

    app = dify.add_app("Support Bot")
    run = dify.add_log(app, at=int(clock.now) - 5)
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.poll()
    active = [False]
    delivery = DeliveryLoop(rt, active=lambda: active[0]).start()
    try:
        rt.cycle()  # wakes the thread rather than delivering itself
        time.sleep(0.2)
        assert slack.posts() == []
        active[0] = True  # it took over the lease
        rt.cycle()
        deadline = time.monotonic() + 5
        while not slack.posts() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert messages_mentioning(slack, run.run_id) == 1
    finally:
        delivery.stop()
        rt.close()
