"""Searching chatflows (workspace mode): /wflogs over real signed requests, the console faked at the
wire. A chatflow writes no log rows: its runs come from the console's run list, newest first with a
cursor, and their errors and end users from run details, read only where needed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from bot.ops_http import EVENTS_PATH, OpsServer
from bot.runtime import Runtime
from bot.slack_app import build_app, events_handler
from tests.conftest import Clock, build_runtime, make_settings
from tests.fakes.console import FakeConsole
from tests.fakes.slack import BOT_TOKEN, FakeSlack, signed_post

SECRET = "8f14e45fceea167a5a36dedd4bea2543"
CHANNEL = "C0ALERTS"
ADMIN = {
    "DIFY_ADMIN_API_KEY": "wflogs-admin-key",
    "DIFY_WORKSPACE_ID": "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11",
}


@dataclass
class Bench:
    rt: Runtime
    console: FakeConsole
    slack: FakeSlack
    url: str
    names: int = 0

    def ask(self, text: str) -> dict[str, Any]:
        """``/wflogs text`` as Slack sends it (signed), and the answer posted to its response_url."""
        self.names += 1
        name = f"r{self.names}"
        form = {
            "command": "/wflogs",
            "text": text,
            "user_id": "U0ALICE",
            "user_name": "alice",
            "channel_id": CHANNEL,
            "team_id": "T1",
            "api_app_id": "A1",
            "response_url": self.slack.response_url(name),
            "trigger_id": "1.2.3",
        }
        assert signed_post(self.url, urlencode(form), SECRET).status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.slack.lock:
                answers = [r for r in self.slack.responses if r["name"] == name]
            if answers:
                return answers[-1]
            time.sleep(0.01)
        raise AssertionError(f"no answer to {text!r}")

    def runs_requests(self) -> list[httpx.Request]:
        return [r for r in self.console.console_requests("/advanced-chat/workflow-runs")]

    def detail_requests(self) -> list[httpx.Request]:
        return [
            r
            for r in self.console.console_requests("/workflow-runs/")
            if "advanced-chat" not in r.url.path and not r.url.path.endswith(("node-executions", "count"))
        ]


def shown(answer: dict[str, Any]) -> str:
    return json.dumps(answer, ensure_ascii=False)


@pytest.fixture
def console(dify, clock) -> FakeConsole:
    return FakeConsole(dify, clock=clock)


@contextmanager
def serving(
    tmp_path: Path,
    console: FakeConsole,
    slack: FakeSlack,
    web,
    clock: Clock,
    way_in: dict[str, str] | None = None,
) -> Iterator[Bench]:
    env = {
        **(way_in or ADMIN),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
        "WFLOGS_ALERT_CHANNEL": CHANNEL,
        "WFLOGS_CONSOLE_CONCURRENCY": "2",
    }
    rt = build_runtime(make_settings(tmp_path, env), console, clock, web=web)  # type: ignore[arg-type]
    rt.discover()
    server = OpsServer(events_handler(build_app(rt, now=clock)), "127.0.0.1", 0)
    try:
        yield Bench(rt, console, slack, f"http://127.0.0.1:{server.port}{EVENTS_PATH}")
    finally:
        server.close()
        rt.close()


def test_failed_since_lists_chatflow_runs_with_error_and_session_reading_details_only_for_shown_rows(
    tmp_path, console, slack, web, clock
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    failed = [
        console.add_chat_run(app, at=now - 600 + n, error=f"[Errno 111] refused <{n}>", session=f"user-{n}")
        for n in range(15)
    ]
    old = console.add_chat_run(app, at=now - 7200, error="too old")
    ok = console.add_chat_run(app, status="succeeded", at=now - 100)
    debug = console.add_chat_run(app, at=now - 50, triggered_from="debugging")
    with serving(tmp_path, console, slack, web, clock) as b:
        console.requests.clear()
        console.latency = 0.02  # so that details overlap, and the bound shows
        answer = b.ask("failed since:1h")
        console.latency = 0.0
        text = shown(answer)
        assert "15 runs" in answer["text"]
        newest = failed[-1]
        assert newest.run_id in text and "user-14" in text and "refused &lt;14&gt;" in text
        for run in (old, ok, debug):
            assert run.run_id not in text
        # The status filter goes to Dify; one page of the list; a detail per row shown (10), no more.
        assert {r.url.params.get("status") for r in b.runs_requests()} == {"failed"}
        assert len(b.runs_requests()) == 1
        assert len(b.detail_requests()) == 10
        assert console.max_in_flight <= 2  # WFLOGS_CONSOLE_CONCURRENCY
        # Page 2 holds the five oldest.
        page2 = shown(b.ask("failed since:1h page:2"))
        assert failed[0].run_id in page2 and failed[5].run_id not in page2


def test_search_text_finds_chatflow_runs_by_error_and_by_the_users_message(
    tmp_path, console, slack, web, clock
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    by_error = console.add_chat_run(app, at=now - 300, error="Billing API timed out")
    by_message = console.add_chat_run(
        app, status="succeeded", at=now - 200, inputs={"sys.query": "Why was my BILLING doubled?"}
    )
    neither = console.add_chat_run(app, at=now - 100, error="model overloaded", inputs={"sys.query": "hi"})
    with serving(tmp_path, console, slack, web, clock) as b:
        answer = b.ask('"billing" since:1d')
        text = shown(answer)
        assert "2 runs" in answer["text"]
        assert by_error.run_id in text and by_message.run_id in text and neither.run_id not in text
        assert "error" in text and "inputs/outputs" in text
        assert "note" not in answer["text"]


def test_session_filter_on_a_chatflow_reads_the_sessions_conversations_not_every_runs_detail(
    tmp_path, console, slack, web, clock
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    mine = [console.add_chat_run(app, at=now - 500 + n, session="alice-42") for n in range(3)]
    other = console.add_chat_run(
        app, at=now - 100, session="alice-4"
    )  # contains the keyword, not the session
    for n in range(40):
        console.add_chat_run(app, at=now - 1000 + n, session=f"bob-{n}")
    with serving(tmp_path, console, slack, web, clock) as b:
        console.requests.clear()
        answer = b.ask("failed session:alice-42 since:1d")
        text = shown(answer)
        assert "3 runs" in answer["text"] and "note" not in text.lower()
        assert all(r.run_id in text for r in mine) and other.run_id not in text
        assert len(console.console_requests("/chat-conversations")) == 1
        assert len(b.detail_requests()) == 3  # the rows shown only
        # With search text as well: details only for the session's runs.
        console.requests.clear()
        answer = b.ask('"refused" session:alice-42 since:1d')
        assert "3 runs" in answer["text"] and len(b.detail_requests()) == 3


def test_session_filter_below_the_editor_role_reads_run_details(tmp_path, console, slack, web, clock):
    console.add_account("bot@example.com", "Secret-pass1", role="normal")
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    mine = [console.add_chat_run(app, at=now - 500 + n, session="alice-42") for n in range(3)]
    console.add_chat_run(app, at=now - 100, session="bob")
    login = {"DIFY_CONSOLE_EMAIL": "bot@example.com", "DIFY_CONSOLE_PASSWORD": "Secret-pass1"}
    with serving(tmp_path, console, slack, web, clock, way_in=login) as b:
        console.requests.clear()
        answer = b.ask("failed session:alice-42 since:1d")
        assert "3 runs" in answer["text"] and all(r.run_id in shown(answer) for r in mine)
        assert len(b.detail_requests()) == 4  # every run of the window (403 on the conversations)


def test_a_text_search_over_many_chatflow_runs_reads_at_most_200_details_and_says_so(
    tmp_path, console, slack, web, clock
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    for n in range(260):
        console.add_chat_run(app, at=now - 3000 + n * 10, error="boom" if n % 2 else "quota exceeded")
    with serving(tmp_path, console, slack, web, clock) as b:
        console.requests.clear()
        answer = b.ask('"quota" since:1d')
        assert len(b.detail_requests()) == 200
        assert "at least 100 runs" in answer["text"]
        assert "only the newest 200 runs were searched" in shown(answer)


def test_every_chatflow_run_sharing_a_second_across_page_ends_is_counted(
    tmp_path, console, slack, web, clock
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    runs = [console.add_chat_run(app, at=now - 900 + n // 9, session=f"u{n}") for n in range(330)]
    runs.append(console.add_chat_run(app, at=now - 9000))  # before the window: not counted
    with serving(tmp_path, console, slack, web, clock) as b:
        answer = b.ask("failed since:1h")
        assert "330 runs" in answer["text"] and "at least" not in answer["text"]


def test_similar_and_error_search_cover_chatflows(tmp_path, console, slack, web, clock):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    same = [
        console.add_chat_run(app, at=now - 500 + n, error=f"Timeout after {n}s calling billing")
        for n in range(4)
    ]
    console.add_chat_run(app, at=now - 100, error="model overloaded")
    with serving(tmp_path, console, slack, web, clock) as b:
        answer = b.ask(f"similar:{same[0].run_id}")
        assert "4 runs" in answer["text"]
        answer = b.ask("error:overloaded since:1d")
        assert "1 run" in answer["text"]


def test_discovered_apps_link_to_their_logs_page_in_dify(tmp_path, console, slack, web, clock):
    chat = console.add_app("support-chat", mode="advanced-chat")
    flow = console.add_app("billing")
    now = int(clock.now)
    run = console.add_chat_run(chat, at=now - 60, error="[Errno 111] Connection refused")
    console.dify.add_log(flow, status="failed", at=now - 50, error="boom")
    with serving(tmp_path, console, slack, web, clock) as b:
        assert b.rt.cycle().ok
        links = {
            el["url"]
            for m in slack.messages
            for block in m.get("blocks") or []
            for el in block.get("elements") or []
            if el.get("type") == "button" and el.get("url")
        }
        assert links == {
            f"http://dify.test/app/{chat.app_id}/logs",  # type: ignore[attr-defined]
            f"http://dify.test/app/{flow.app_id}/logs",  # type: ignore[attr-defined]
        }
        both = b.ask("failed since:1h")  # a workflow app and a chatflow in one answer
        assert "2 runs" in both["text"] and run.run_id in shown(both)
        detail = shown(b.ask(f"run {run.run_id}"))
        assert f"http://dify.test/app/{chat.app_id}/logs" in detail  # type: ignore[attr-defined]


def test_an_apps_setting_keeps_its_own_console_url(tmp_path, console, clock):
    from bot.workspace import app_logs_url

    console.add_app("support-chat", mode="advanced-chat")
    other = console.add_app("billing")
    toml = '[[apps]]\nname = "support-chat"\nconsole_url = "https://dify.example.com/custom"\n'
    rt = build_runtime(make_settings(tmp_path, ADMIN, toml), console, clock)  # type: ignore[arg-type]
    rt.discover()
    urls = {a.name: a.console_url for a in rt.settings.apps}
    assert urls == {
        "support-chat": "https://dify.example.com/custom",
        "billing": f"http://dify.test/app/{other.app_id}/logs",  # type: ignore[attr-defined]
    }
    rt.close()
    assert (
        app_logs_url("https://dify.example.com/console/api", "abc") == "https://dify.example.com/app/abc/logs"
    )
    assert app_logs_url("http://10.0.0.5:5001/console/api/", "abc") == "http://10.0.0.5:5001/app/abc/logs"


def test_paused_runs_which_the_run_list_cannot_filter_are_filtered_here(tmp_path, console, slack, web, clock):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    paused = console.add_chat_run(app, status="paused", at=now - 300)
    failed = console.add_chat_run(app, at=now - 200)
    with serving(tmp_path, console, slack, web, clock) as b:
        answer = b.ask("paused since:1h")
        assert (
            "1 run" in answer["text"]
            and paused.run_id in shown(answer)
            and failed.run_id not in shown(answer)
        )
        answer = b.ask("paused failed since:1h")
        assert "2 runs" in answer["text"]


def test_wflogs_search_prints_chatflow_runs_with_their_errors(tmp_path, console, clock, monkeypatch):
    import argparse
    import io

    from bot import cli

    app = console.add_app("support-chat", mode="advanced-chat")
    run = console.add_chat_run(
        app, at=int(clock.now) - 60, error="[Errno 111] Connection refused", session="ann"
    )
    settings = make_settings(tmp_path, ADMIN)
    real_build = cli.Runtime.build
    monkeypatch.setattr(
        cli.Runtime,
        "build",
        lambda settings, **kw: real_build(settings, transport=httpx.MockTransport(console.handler), **kw),
    )
    monkeypatch.setattr(cli.time, "time", clock)
    out, err = io.StringIO(), io.StringIO()
    assert cli.cmd_search(settings, argparse.Namespace(words=["failed", "since:1h"]), out, err) == 0, (
        err.getvalue()
    )
    text = out.getvalue()
    assert run.run_id in text and "Connection refused" in text and "ann" in text and "1 run" in text


def test_a_window_with_more_chatflow_runs_than_ten_pages_says_how_many_were_read(
    tmp_path, console, slack, web, clock
):
    app = console.add_app("support-chat", mode="advanced-chat")
    now = int(clock.now)
    for n in range(1050):
        console.add_chat_run(app, at=now - 3000 + n)
    with serving(tmp_path, console, slack, web, clock) as b:
        console.requests.clear()
        answer = b.ask("failed since:1h")
        assert len(b.runs_requests()) == 10
        assert answer["text"].startswith("at least 9")
        assert "the newest 1,000 were read and older ones not searched" in shown(answer)
