"""The daily digest of a chatflow (workspace mode), the console faked at the wire: counts from the
run count endpoint, errors from the alerts wflogs stored (else run details), slowest from the list."""

from __future__ import annotations

import json

import pytest

from tests.conftest import build_runtime, make_settings, slack_env
from tests.fakes.console import FakeConsole

ADMIN = {
    "DIFY_ADMIN_API_KEY": "wflogs-admin-key",
    "DIFY_WORKSPACE_ID": "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11",
}


@pytest.fixture
def console(dify, clock) -> FakeConsole:
    return FakeConsole(dify, clock=clock)


def _runtime(tmp_path, console, clock, slack, env=None):
    settings = make_settings(tmp_path, {**ADMIN, **slack_env(slack), **(env or {})})
    return build_runtime(settings, console, clock)  # type: ignore[arg-type]


def _chat_app(rt):
    return next(a for a in rt.settings.apps if a.mode == "advanced-chat")


def test_a_chatflows_digest_counts_its_runs_and_names_errors_slowest_and_sessions(
    tmp_path, console, clock, slack
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    day = 86400
    # The window: 24 h ending now. 5 failed (two shapes), 1 stopped, 4 succeeded; one slow run.
    for n in range(3):
        console.add_chat_run(app, at=now - 3000 - n, error=f"Timeout after {n + 10}s", session="alice")
    for n in range(2):
        console.add_chat_run(app, at=now - 20000 - n, error="<!channel> quota exceeded", session="bob")
    console.add_chat_run(app, status="stopped", at=now - 500, error="stopped by user")
    for n in range(3):
        console.add_chat_run(app, status="succeeded", at=now - 4000 - n, elapsed=2.0)
    slow = console.add_chat_run(app, status="succeeded", at=now - 6000, elapsed=95.0, session="carol")
    # The day before: 2 runs; and debugger runs, never counted.
    console.add_chat_run(app, status="succeeded", at=now - day - 100)
    console.add_chat_run(app, at=now - day - 200)
    console.add_chat_run(app, at=now - 100, triggered_from="debugging")
    rt = _runtime(tmp_path, console, clock, slack)
    rt.discover()
    console.requests.clear()
    d = rt.digester.compute(_chat_app(rt), now, now=now)
    assert d.error is None
    assert (d.current.total, d.current.succeeded, d.current.failed, d.current.stopped) == (10, 4, 5, 1)
    assert (d.before.total, d.before.failed) == (2, 1)
    assert sum(d.hourly) == 5
    assert [e.count for e in d.errors] == [3, 2, 1]
    assert (
        d.errors[0].example.startswith("Timeout after") and d.errors[1].example == "<!channel> quota exceeded"
    )
    assert d.sessions[0] == ("alice", 3)
    assert d.slowest[0].run_id == slow.run_id and d.slowest[0].who == "carol"
    assert not d.runs_sampled and not d.failures_sampled
    counts = console.console_requests("/workflow-runs/count")
    # The window ends now: runs since each window's start, two requests for both windows' counts.
    assert len(counts) == 2 and all(r.url.params["triggered_from"] == "app-run" for r in counts)
    lists = [r for r in console.console_requests("/advanced-chat/workflow-runs") if "count" not in r.url.path]
    details = [
        r
        for r in console.console_requests("/workflow-runs/")
        if "advanced-chat" not in r.url.path and not r.url.path.endswith("count")
    ]
    # Nothing was alerted yet: a detail per failure (6) and one per slowest run shown (3), one list page.
    assert (len(counts), len(lists), len(details)) == (2, 1, 9)


def test_errors_come_from_stored_alerts_without_run_details(tmp_path, console, clock, slack):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    failed = [console.add_chat_run(app, at=now - 300 - n, error="[Errno 111] refused") for n in range(4)]
    rt = _runtime(tmp_path, console, clock, slack, {"WFLOGS_BACKFILL": "3600"})
    assert rt.cycle().ok  # the poller alerts the four, with their errors
    console.requests.clear()
    d = rt.digester.compute(_chat_app(rt), now, now=now)
    assert d.current.failed == 4 and d.errors[0].count == 4 and d.errors[0].example == "[Errno 111] refused"
    details = [
        r
        for r in console.console_requests("/workflow-runs/")
        if "advanced-chat" not in r.url.path and not r.url.path.endswith("count")
    ]
    assert len(details) <= 1  # the slowest run's user at most; no detail per failure
    assert d.errors[0].newest_run_id == failed[0].run_id


def test_a_late_digest_counts_its_window_not_the_runs_since(tmp_path, console, clock, slack):
    app = console.add_app("support-chat", mode="advanced-chat")
    scheduled = int(clock.now)
    console.add_chat_run(app, at=scheduled - 100)
    console.add_chat_run(app, status="succeeded", at=scheduled - 90000)
    clock.advance(7200)  # posted two hours late; a run meanwhile belongs to the next window
    console.add_chat_run(app, at=int(clock.now) - 60)
    rt = _runtime(tmp_path, console, clock, slack)
    rt.discover()
    console.requests.clear()
    d = rt.digester.compute(_chat_app(rt), scheduled, now=int(clock.now))
    assert (d.current.total, d.current.failed) == (1, 1) and (d.before.total, d.before.succeeded) == (1, 1)
    assert len(console.console_requests("/workflow-runs/count")) == 3


def test_a_quiet_chatflow_costs_two_requests(tmp_path, console, clock, slack):
    console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    rt = _runtime(tmp_path, console, clock, slack)
    rt.discover()
    console.requests.clear()
    d = rt.digester.compute(_chat_app(rt), now, now=now)
    assert d.current.total == 0 and d.error is None
    assert len(console.console_requests("/apps/")) == 2  # count since both windows' starts


def test_a_posted_chatflow_digest_shows_the_counts_escaped(tmp_path, console, clock, slack):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    for n in range(3):
        console.add_chat_run(app, at=now - 600 - n, error="<!channel> quota exceeded")
    rt = _runtime(tmp_path, console, clock, slack)
    rt.discover()
    assert rt.digester.post_now(now).ok
    rt.deliverer.deliver_planned()
    digest = next(m for m in slack.posts() if "support-chat" in json.dumps(m))
    text = json.dumps(digest)
    assert "quota exceeded" in text and "<!channel>" not in text


def test_a_busy_chatflow_is_sampled_within_its_caps_and_says_so(tmp_path, console, clock, slack):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    for n in range(8):
        console.add_chat_run(app, status="succeeded", at=now - 1000 - n)
    for n in range(4):
        console.add_chat_run(app, at=now - 5000 - n, error="quota exceeded")
    rt = _runtime(tmp_path, console, clock, slack)
    rt.discover()
    rt.digester.run_cap, rt.digester.failure_cap = 5, 3
    d = rt.digester.compute(_chat_app(rt), now, now=now)
    assert (d.current.total, d.current.failed) == (12, 4)  # the counts stay exact
    assert d.runs_sampled and d.failures_sampled and not d.hourly_exact
    assert d.errors[0].count == 4 and d.errors[0].approx
