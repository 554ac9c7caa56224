"""Failure rate and stuck runs of a chatflow (workspace mode), the console faked at the wire: a
chatflow writes no log rows, so its runs are counted with the run count endpoint and its running
runs read from the run list."""

from __future__ import annotations

import json

import pytest

from tests.fakes.console import FakeConsole
from tests.test_chat_digest import _runtime as _digest_runtime


@pytest.fixture
def console(dify, clock) -> FakeConsole:
    return FakeConsole(dify, clock=clock)


def _runtime(tmp_path, console, clock, slack, **env: str):
    return _digest_runtime(tmp_path, console, clock, slack, env)


def _parents(slack, needle: str) -> list[dict]:
    return [m for m in slack.posts() if not m["thread_ts"] and needle in json.dumps(m["blocks"][:1])]


def test_a_chatflows_failure_rate_opens_an_incident_and_resolves(tmp_path, console, clock, slack):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    for n in range(12):
        console.add_chat_run(app, status="succeeded", at=now - 600 + n)
    for n in range(8):
        console.add_chat_run(app, at=now - 300 + n, error=f"Timeout after {n + 10}s")
    console.add_chat_run(app, at=now - 100, triggered_from="debugging")  # the debugger: never counted
    rt = _runtime(tmp_path, console, clock, slack, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    (parent,) = _parents(slack, "failure rate")
    assert "8 of 20 runs" in parent["text"], parent["text"]
    assert "Timeout after" in json.dumps(parent["blocks"])  # the top error, from the alerts stored
    for n in range(60):  # many successes: below the threshold, resolved in place
        console.add_chat_run(app, status="succeeded", at=int(clock.now) - 30 + n % 30)
    clock.advance(60)
    rt.cycle()
    (parent,) = _parents(slack, "failure rate")
    assert "Resolved" in json.dumps(parent["blocks"][0])


def test_a_chatflow_run_stuck_in_running_opens_an_incident_that_resolves_when_it_ends(
    tmp_path, console, clock, slack
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    stuck = console.add_chat_run(app, status="running", at=now - 1500, session="user_stuck")
    console.add_chat_run(app, status="running", at=now - 100)  # running, not for long
    console.add_chat_run(app, status="succeeded", at=now - 1400)
    rt = _runtime(tmp_path, console, clock, slack, WFLOGS_STUCK_AFTER="1200")
    rt.cycle()
    (parent,) = _parents(slack, "stuck")
    assert "1 run stuck in running" in parent["text"] and stuck.run_id in json.dumps(parent["blocks"])
    console.dify.finish_run(stuck, status="succeeded", at=int(clock.now) - 5)
    clock.advance(60)
    rt.cycle()
    (parent,) = _parents(slack, "stuck")
    assert "Resolved" in json.dumps(parent["blocks"][0])
    assert [m for m in slack.posts() if m["thread_ts"] == parent["ts"] and "No stuck runs" in m["text"]]


def test_a_discovered_apps_failure_rate_calls_the_mention_list_like_its_failures(
    tmp_path, console, clock, slack
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    for n in range(10):
        console.add_chat_run(app, status="succeeded", at=now - 600 + n)
    for n in range(10):
        console.add_chat_run(app, at=now - 300 + n, error=f"Timeout after {n + 10}s")
    rt = _runtime(tmp_path, console, clock, slack, WFLOGS_RATE_THRESHOLD="0.2", WFLOGS_MENTION="U0ONCALL1")
    rt.cycle()
    (rate,) = _parents(slack, "failure rate")
    (failures,) = [m for m in slack.posts() if not m["thread_ts"] and m["ts"] != rate["ts"]]
    assert "<@U0ONCALL1>" in failures["text"] + json.dumps(failures["blocks"])
    posted = [c.params for c in slack.calls_to("chat.postMessage")]
    (first,) = [p for p in posted if "failure rate" in p["text"]]  # as posted (edits drop the call)
    assert "<@U0ONCALL1>" in first["text"] + json.dumps(first["blocks"])
