"""The daily digest against the Dify fake (MockTransport) and the Slack fake (local HTTP)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk import WebClient

from bot.digest import Digester, latest_schedule
from bot.records import Window
from bot.runtime import Runtime
from tests.conftest import make_settings
from tests.fakes.dify import FakeApp, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack, check_blocks, mrkdwn_texts


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())  # type: ignore[misc]


# 2026-11-18 09:00 in Europe/Berlin (CET, UTC+1) is 08:00 UTC.
S = utc(2026, 11, 18, 8, 0)
BERLIN = {"WFLOGS_TIMEZONE": "Europe/Berlin", "WFLOGS_DIGEST_TIME": "09:00"}


def slack_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"SLACK_BOT_TOKEN": BOT_TOKEN, "WFLOGS_ALERT_CHANNEL": "C0ALERTS", **BERLIN, **(extra or {})}


def build(
    tmp_path: Path,
    dify: FakeDify,
    web: WebClient | None,
    env: dict[str, str],
    toml: str | None = None,
    **caps: int,
) -> tuple[Runtime, Digester]:
    settings = make_settings(tmp_path, env, toml)
    runtime = Runtime.build(
        settings, transport=httpx.MockTransport(dify.handler), web=web, slack_min_interval=0, dify_backoff=0
    )
    digester = Digester(
        settings=runtime.settings,
        store=runtime.store,
        clients=runtime.clients,
        name_of=runtime.poller.app_name,
        **caps,
    )
    return runtime, Posting(runtime, digester)  # type: ignore[return-value]


class Posting:
    """The digester as ``wflogs run`` uses it: the digest job plans, then the deliverer posts."""

    def __init__(self, runtime: Runtime, digester: Digester) -> None:
        self.runtime = runtime
        self.digester = digester

    def run_due(self, now: float) -> Any:
        report = self.digester.run_due(now)
        self.runtime.deliverer.deliver_planned()
        return report

    def post_now(self, now: float) -> Any:
        report = self.digester.post_now(now)
        self.runtime.deliverer.deliver_planned()
        return report

    def __getattr__(self, name: str) -> Any:
        return getattr(self.digester, name)


def message_text(post: dict[str, Any]) -> str:
    return post["text"] + "\n" + json.dumps(post["blocks"], ensure_ascii=False)


def mrkdwn(post: dict[str, Any]) -> str:
    """The text Slack parses for mentions and links: the fallback and every mrkdwn object."""
    return "\n".join([post["text"], *mrkdwn_texts(post["blocks"])])


def known_day(dify: FakeDify, app: FakeApp) -> dict[str, Any]:
    """Runs inside the digest window of S, at both its edges, in the window before and outside."""
    ids: dict[str, Any] = {}
    start, end = S - 86400, S - 1
    # Current window: 6 succeeded, 6 failed, 1 stopped, 1 partial, 1 running = 15 runs.
    ids["edge_start"] = dify.add_log(app, status="succeeded", at=start, elapsed=3.0, total_tokens=100)
    ids["edge_end"] = dify.add_log(app, status="succeeded", at=end, elapsed=2.0, total_tokens=50)
    for i, elapsed in enumerate([1.0, 400.0, 30.5, 5.0]):
        ids[f"ok{i}"] = dify.add_log(
            app, status="succeeded", at=start + 7200 + i * 600, elapsed=elapsed, total_tokens=10
        )
    for i, at in enumerate([start + 5, start + 3605, end - 3600]):
        ids[f"refused{i}"] = dify.add_log(app, status="failed", at=at, session="alice", total_tokens=1)
    ids["timeout0"] = dify.add_log(
        app, status="failed", at=end - 60, error="timed out after 31s", session="bob"
    )
    ids["timeout1"] = dify.add_log(
        app, status="failed", at=end - 30, error="timed out after 32s", session="alice"
    )
    ids["evil"] = dify.add_log(
        app,
        status="failed",
        at=end - 3700,
        error="<!channel> boom & <https://evil.example|click>",
        session="<@U1>",
    )
    ids["stopped"] = dify.add_log(app, status="stopped", at=start + 100, session="carol", elapsed=600.0)
    ids["partial"] = dify.add_log(
        app, status="partial-succeeded", at=start + 200, exceptions_count=2, total_tokens=1000
    )
    ids["running"] = dify.start_run(app, at=end - 10)
    # Previous window: 3 succeeded and 1 failed = 4 runs, at both its edges.
    dify.add_log(app, status="succeeded", at=start - 86400)
    dify.add_log(app, status="failed", at=start - 1, error="old failure 1")
    dify.add_log(app, status="succeeded", at=start - 40000)
    dify.add_log(app, status="succeeded", at=start - 30000)
    # Outside both windows: one second after the current one, one second before the previous one.
    dify.add_log(app, status="failed", at=S, error="tomorrow's problem")
    dify.add_log(app, status="failed", at=start - 86401, error="ancient problem")
    return ids


def test_every_figure_with_runs_at_both_edges_in_berlin(tmp_path: Path, dify: FakeDify) -> None:
    app = dify.add_app("Support Bot")
    ids = known_day(dify, app)
    _, digester = build(tmp_path, dify, None, {"DIFY_API_KEY": app.key, **BERLIN})
    d = digester.compute(digester.settings.apps[0], S, now=S)

    assert d.window == Window(S - 86400, S - 1)
    assert d.previous == Window(S - 172800, S - 86401)
    assert d.current is not None and d.before is not None
    assert (d.current.total, d.current.succeeded, d.current.failed, d.current.stopped) == (15, 6, 6, 1)
    assert (d.before.total, d.before.succeeded, d.before.failed, d.before.stopped) == (4, 3, 1, 0)
    assert d.current.other == 2
    assert str(d.current.failure_rate) == "40.0" and str(d.before.failure_rate) == "25.0"
    assert (d.partial, d.running) == (1, 1)
    assert d.tokens == 100 + 50 + 40 + 3 + 1000
    assert not d.runs_sampled and not d.failures_sampled and d.hourly_exact

    hourly = [0] * 24
    hourly[0] = 1  # start + 5
    hourly[1] = 1  # start + 3605
    hourly[22] = 2  # end - 3700 (the evil one), end - 3600
    hourly[23] = 2  # end - 60, end - 30
    assert d.hourly == hourly

    assert [(e.count, e.shape) for e in d.errors] == [
        (3, "[Errno <n>] Connection refused"),
        (2, "timed out after <n>s"),
        (1, "<!channel> boom & <https://evil.example|click>"),
        (1, "Workflow execution aborted by user command"),
    ]
    assert d.errors[0].newest_run_id == ids["refused2"].run_id
    assert d.errors[1].newest_run_id == ids["timeout1"].run_id
    assert d.errors[1].example == "timed out after 32s"
    assert not any(e.new for e in d.errors)  # no previous digest: nothing is "new"
    assert not any(e.approx for e in d.errors)
    assert d.sessions == [("alice", 4), ("<@U1>", 1), ("bob", 1)]
    assert [(r.run_id, r.elapsed) for r in d.slowest] == [
        (ids["stopped"].run_id, 600.0),
        (ids["ok1"].run_id, 400.0),
        (ids["ok2"].run_id, 30.5),
    ]
    assert not d.silent


def test_the_posted_message_shows_the_figures_escaped_and_within_limits(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Support <!here> Bot")
    known_day(dify, app)
    _, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    digester.store.digest_first_seen(digester.settings.apps[0].id, S - 86400 * 3)

    report = digester.run_due(S + 5)

    assert report.ok and report.posted == ["Support <!here> Bot"]
    [post] = slack.posts("C0ALERTS")
    assert check_blocks(post["blocks"]) is None
    everything = message_text(post)
    for figure in [
        "15 (+11)",
        "40.0% (+15.0 pts)",
        "🟢 6 (+3)",
        "🔴 6 (+5)",
        "🟠 1 (+1)",
        "🟡 1 partial",
        "🔵 1 running",
    ]:
        assert figure in everything, figure
    assert "Tue 17 Nov 09:00 CET → Wed 18 Nov 09:00 CET" in everything
    assert "peak 2 in the hour from 07:00" in everything
    assert "×3" in everything and "×2" in everything
    # Untrusted text cannot mention or link (header blocks are plain text, never parsed).
    for raw in ("<!channel>", "<!here>", "<@U1>", "<https://evil"):
        assert raw not in mrkdwn(post)
    assert "&lt;!channel&gt; boom &amp; &lt;https://evil.example|click&gt;" in everything
    assert "Late" not in everything


def test_digest_counts_with_total_and_stays_cheap_on_a_day_of_10000_runs(
    tmp_path: Path, dify: FakeDify
) -> None:
    app = dify.add_app("Busy")
    start = S - 86400
    expected_hourly = [0] * 24
    shapes: Counter[str] = Counter()
    for i in range(10_000):
        at = start + int(i * 8.64)
        if i % 4 == 1:
            error = ["db down on shard 3", "rate limited by openai", "timed out after 30s"][i % 3]
            dify.add_log(app, status="failed", at=at, error=error, session=f"s{i % 7}")
            expected_hourly[(at - start) // 3600] += 1
            shapes[error] += 1
        elif i % 33 == 0:
            dify.add_log(app, status="stopped", at=at)
        elif i % 50 == 7:
            dify.add_log(app, status="partial-succeeded", at=at, exceptions_count=1)
        else:
            dify.add_log(app, status="succeeded", at=at, total_tokens=20, elapsed=float(i % 97))
    _, digester = build(tmp_path, dify, None, {"DIFY_API_KEY": app.key, **BERLIN})
    before = len(dify.log_requests())

    d = digester.compute(digester.settings.apps[0], S, now=S)

    requests = len(dify.log_requests()) - before
    assert requests <= 45, requests
    assert d.current is not None
    assert d.current.total == 10_000 and d.current.failed == 2_500
    assert d.current.stopped == sum(1 for i in range(10_000) if i % 4 != 1 and i % 33 == 0)
    assert d.hourly == expected_hourly and d.hourly_exact  # exact from per-hour totals
    assert d.failures_sampled and d.runs_sampled
    assert d.failures_read <= 500 + 500
    stopped_line = next(e for e in d.errors if e.status == "stopped")
    assert not stopped_line.approx and stopped_line.count == d.current.stopped  # read completely
    assert all(e.approx for e in d.errors if e.status == "failed")
    # The sample is weighted by each hour's total: the estimate is close to the truth.
    assert {e.example.split(" ")[0] for e in d.errors[:3]} == {"db", "rate", "timed"}
    for line in d.errors:
        if line.status == "failed":
            true = shapes[line.example] if line.example in shapes else None
            if true:
                assert abs(line.count - true) <= true * 0.15
    assert d.tokens is not None and d.tokens > 0


def test_complete_reads_survive_crowded_seconds_and_page_edges(tmp_path: Path, dify: FakeDify) -> None:
    app = dify.add_app("Crowded")
    crowded_a, crowded_b = S - 5000, S - 4000
    for _ in range(130):
        dify.add_log(app, status="failed", at=crowded_a, error="alpha broke")
    for _ in range(120):
        dify.add_log(app, status="failed", at=crowded_b, error="beta broke")
    for i in range(150):
        dify.add_log(app, status="succeeded", at=S - 86400 + i * 500)
    dify.add_log(app, status="failed", at=S - 86400, error="gamma broke")
    _, digester = build(tmp_path, dify, None, {"DIFY_API_KEY": app.key, **BERLIN})

    d = digester.compute(digester.settings.apps[0], S, now=S)

    assert not d.failures_sampled and not d.runs_sampled
    assert [(e.example, e.count) for e in d.errors] == [
        ("alpha broke", 130),
        ("beta broke", 120),
        ("gamma broke", 1),
    ]
    assert sum(d.hourly) == 251


def test_failures_are_read_completely_when_only_all_runs_exceed_the_cap(
    tmp_path: Path, dify: FakeDify
) -> None:
    app = dify.add_app("Mid")
    for _ in range(110):
        dify.add_log(app, status="failed", at=S - 7200, error="same second")
    for i in range(300):
        dify.add_log(app, status="succeeded", at=S - 86400 + i * 200)
    _, digester = build(tmp_path, dify, None, {"DIFY_API_KEY": app.key, **BERLIN}, run_cap=200)

    d = digester.compute(digester.settings.apps[0], S, now=S)

    assert d.runs_sampled and not d.failures_sampled
    assert [(e.example, e.count) for e in d.errors] == [("same second", 110)]
    assert d.hourly[22] == 110 and sum(d.hourly) == 110


def test_a_quiet_app_costs_eight_requests_and_says_no_runs(tmp_path: Path, dify: FakeDify) -> None:
    app = dify.add_app("Quiet")
    _, digester = build(tmp_path, dify, None, {"DIFY_API_KEY": app.key, **BERLIN})
    digester.name_of(digester.settings.apps[0])
    before = len(dify.requests)
    d = digester.compute(digester.settings.apps[0], S, now=S)
    assert len(dify.requests) - before == 8
    assert d.current is not None and d.current.total == 0 and not d.silent


def test_dst_autumn_window_is_24_real_hours_ending_at_nine_local(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    # Berlin leaves summer time on 2026-10-25 at 01:00 UTC; 09:00 CET that day is 08:00 UTC,
    # while the day before 09:00 CEST was 07:00 UTC.
    app = dify.add_app("DST")
    day_before = utc(2026, 10, 24, 7, 0)
    instant = utc(2026, 10, 25, 8, 0)
    dify.add_log(app, status="failed", at=instant - 86400, error="first second of the window")
    dify.add_log(app, status="failed", at=instant - 86401, error="last second of the window before")
    dify.add_log(app, status="succeeded", at=instant - 1)
    dify.add_log(app, status="succeeded", at=instant)
    _, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    settings = digester.settings
    assert latest_schedule(settings, instant + 60)[1] == instant
    assert latest_schedule(settings, instant - 60)[1] == day_before
    digester.store.digest_first_seen(settings.apps[0].id, day_before - 86400)

    digester.run_due(day_before + 1)
    digester.run_due(instant + 1)

    first, second = slack.posts("C0ALERTS")
    assert "Fri 23 Oct 09:00 CEST → Sat 24 Oct 09:00 CEST" in first["text"]
    assert "Sat 24 Oct 10:00 CEST → Sun 25 Oct 09:00 CET" in second["text"]
    d = digester.compute(settings.apps[0], instant, now=instant)
    assert d.window == Window(instant - 86400, instant - 1)
    assert d.current is not None and d.before is not None
    assert (d.current.total, d.current.failed, d.before.total, d.before.failed) == (2, 1, 1, 1)
    assert [e.example for e in d.errors] == ["first second of the window"]


def test_dst_spring_schedule_in_new_york_late_evening(tmp_path: Path, dify: FakeDify) -> None:
    # New York enters summer time on 2026-03-08; 23:30 EDT that day is 03:30 UTC the next day.
    app = dify.add_app("NY")
    _, digester = build(
        tmp_path,
        dify,
        None,
        {"DIFY_API_KEY": app.key, "WFLOGS_TIMEZONE": "America/New_York", "WFLOGS_DIGEST_TIME": "23:30"},
    )
    settings = digester.settings
    day, instant = latest_schedule(settings, utc(2026, 3, 9, 4, 10))  # 00:10 EDT on the 9th
    assert (day.isoformat(), instant) == ("2026-03-08", utc(2026, 3, 9, 3, 30))
    day, instant = latest_schedule(settings, utc(2026, 3, 8, 4, 29))  # 23:29 EST on the 7th
    assert (day.isoformat(), instant) == ("2026-03-06", utc(2026, 3, 7, 4, 30))


def test_posted_once_per_app_and_day_across_restarts(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Once")
    dify.add_log(app, status="failed", at=S - 100)
    env = {"DIFY_API_KEY": app.key, **slack_env()}

    runtime, digester = build(tmp_path, dify, web, env)
    assert digester.run_due(S - 3600).posted == []  # installed at 08:00; yesterday's 09:00 was before
    assert digester.run_due(S).posted == ["Once"]
    assert digester.run_due(S + 60).posted == []
    runtime.close()

    runtime, digester = build(tmp_path, dify, web, env)  # a restart on the same database
    assert digester.run_due(S + 600).posted == []
    assert digester.run_due(S + 86400 - 1).posted == []
    assert digester.run_due(S + 86400).posted == ["Once"]
    runtime.close()

    assert len(slack.posts("C0ALERTS")) == 2
    assert all("Late" not in p["text"] for p in slack.posts())


def test_a_bot_down_at_digest_time_posts_it_late_when_back(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Late")
    dify.add_log(app, status="failed", at=S - 100, error="inside the window")
    dify.add_log(app, status="failed", at=S + 100, error="after the window")
    env = {"DIFY_API_KEY": app.key, **slack_env()}
    runtime, digester = build(tmp_path, dify, web, env)
    digester.run_due(S - 2 * 86400 + 60)  # running two days ago, then down
    slack.messages.clear()
    runtime.close()

    runtime, digester = build(tmp_path, dify, web, env)
    back = S + 3 * 3600 + 120  # 12:02 CET
    assert digester.run_due(back).posted == ["Late"]
    [post] = slack.posts()
    assert "⏰ Late: due 09:00 CET, posted Wed 18 Nov 12:02 CET" in post["text"]
    assert "inside the window" in post["text"] and "after the window" not in post["text"]
    rows = digester.store.query("select late, window_end, kind from digests where day = '2026-11-18'")
    assert rows == [{"late": 1, "window_end": S - 1, "kind": "scheduled"}]
    assert digester.run_due(back + 600).posted == []


def test_a_fresh_install_posts_no_late_digest_for_a_day_before_it_ran(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Fresh")
    dify.add_log(app, status="failed", at=S - 100)
    _, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    assert digester.run_due(S + 3 * 3600).posted == []
    assert digester.run_due(S + 86400 - 60).posted == []
    assert slack.posts() == []
    assert digester.run_due(S + 86400 + 30).posted == ["Fresh"]
    assert "Late" not in slack.posts()[0]["text"]


def test_an_unreachable_app_gets_a_line_and_the_others_still_go_out(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    good = dify.add_app("Good")
    dify.add_log(good, status="failed", at=S - 100)
    gone = dify.add_app("Gone", mode="deleted")
    toml = f"""
[[apps]]
name = "Revoked"
api_key = "app-notknowntodify00000000"
channel = "C0REVOKED"

[[apps]]
api_key = "{good.key}"
digest_channel = "C0DIGEST"

[[apps]]
name = "Gone"
api_key = "{gone.key}"

[[apps]]
name = "Skipped"
api_key = "app-skippedskippedskipped0"
digest = false
"""
    _, digester = build(tmp_path, dify, web, slack_env(), toml=toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 86400)

    report = digester.run_due(S + 1)

    assert report.posted == ["Revoked", "Good", "Gone"]
    assert len(report.problems) == 2
    [revoked] = slack.posts("C0REVOKED")
    assert "Could not read this app from Dify" in revoked["text"]
    assert "rejected the API key" in revoked["text"] and "notknown" not in message_text(revoked)
    [gone_post] = slack.posts("C0ALERTS")
    assert (
        "Could not read this app from Dify" in gone_post["text"] and "no longer exists" in gone_post["text"]
    )
    [good_post] = slack.posts("C0DIGEST")
    assert "Good: daily digest" in good_post["text"] and "🔴 1 (+1)" in good_post["text"]
    assert check_blocks(revoked["blocks"]) is None
    assert len(slack.posts()) == 3


def test_slack_refusing_the_post_keeps_the_digest_planned_until_it_lands_once(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Retry")
    dify.add_log(app, status="failed", at=S - 100)
    runtime, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    digester.store.digest_first_seen(digester.settings.apps[0].id, S - 86400)
    slack.fail("chat.postMessage", "error", "not_in_channel")

    report = digester.run_due(S + 1)
    assert report.posted == ["Retry"] and slack.posts() == []  # planned; Slack refused it
    assert digester.store.digest_posted(digester.settings.apps[0].id, "2026-11-18")
    # The bot was invited meanwhile: the next pass posts it, once, and it is not planned twice.
    assert digester.run_due(S + 600).posted == []
    runtime.deliverer.deliver_all()
    [post] = slack.posts()
    assert "Retry: daily digest" in post["text"]


def test_new_errors_are_marked_against_the_previous_digest(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("News")
    dify.add_log(app, status="failed", at=S - 100, error="known problem 1")
    dify.add_log(app, status="failed", at=S + 100, error="known problem 2")
    dify.add_log(app, status="failed", at=S + 200, error="brand new problem")
    _, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    digester.store.digest_first_seen(digester.settings.apps[0].id, S - 86400)

    digester.run_due(S + 1)
    digester.run_due(S + 86400 + 1)

    first, second = slack.posts()
    assert "🆕" not in first["text"]
    lines = {line.split("`")[1]: line for line in second["text"].splitlines() if line.count("`") >= 2}
    assert "🆕" in lines["brand new problem"]
    assert "🆕" not in lines["known problem 2"]


def test_silence_is_news_when_the_app_usually_has_runs(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Silent")
    for i in range(12):
        dify.add_log(app, status="succeeded", at=S - 86400 - 1000 * (i + 1))
    _, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    digester.store.digest_first_seen(digester.settings.apps[0].id, S - 86400)

    digester.run_due(S + 1)
    digester.run_due(S + 86400 + 1)

    silent, idle = slack.posts()
    assert "🔕 *No runs at all*" in silent["text"] and "about 12 runs a day" in silent["text"]
    # The day after, yesterday had none but the stored history says 0 and 0: median 0, no alarm.
    assert "🔕" not in idle["text"] and "No runs in the last 24 hours" in idle["text"]


def test_manual_digest_does_not_count_as_the_scheduled_one(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    app = dify.add_app("Manual")
    dify.add_log(app, status="failed", at=S - 100)
    _, digester = build(tmp_path, dify, web, {"DIFY_API_KEY": app.key, **slack_env()})
    digester.store.digest_first_seen(digester.settings.apps[0].id, S - 86400)

    assert digester.post_now(S - 60).posted == ["Manual"]
    assert "digest of the last 24 hours" in slack.posts()[0]["text"]
    assert digester.run_due(S + 1).posted == ["Manual"]
    assert "daily digest" in slack.posts()[1]["text"]


def test_apps_with_the_digest_off_are_skipped(tmp_path: Path, dify: FakeDify) -> None:
    app = dify.add_app("Off")
    toml = f'[[apps]]\napi_key = "{app.key}"\ndigest = false\n'
    _, digester = build(tmp_path, dify, None, BERLIN, toml=toml)
    assert digester.post_now(S).posted == []
    assert digester.due(S + 1) == []
    assert dify.requests == []


@pytest.mark.parametrize("version", ["1.9.0", "1.13.3"])
def test_rows_written_at_start_or_end_are_counted_by_their_log_time(
    tmp_path: Path, version: str, clock: Any
) -> None:
    dify = FakeDify(version=version, clock=clock)
    app = dify.add_app("Versions")
    run = dify.start_run(app, at=S - 50)
    dify.finish_run(run, status="failed", at=S + 50, error="ended after the window")
    _, digester = build(tmp_path, dify, None, {"DIFY_API_KEY": app.key, **BERLIN})
    d = digester.compute(digester.settings.apps[0], S, now=S + 60)
    assert d.current is not None
    # Up to 1.10 the row appears at the run's end (after S); from 1.11 at its start (inside).
    assert d.current.failed == (1 if version == "1.13.3" else 0)
