"""Workspace mode figures: ``python -m bench --workspace-only`` (also part of a full run).

1. Quiet-cycle cost per app by mode: console requests per app per cycle for a workflow app
   (read through the console's log endpoint) and a chatflow (its production run list), once
   nothing changes; the app list's re-read (every WFLOGS_DISCOVER_INTERVAL) counted apart.
2. A chatflow storm: N failed production runs in one cycle, read from the run list (100 a
   page) with one detail per run (the list has no error), at WFLOGS_CONSOLE_CONCURRENCY
   requests at once, each answered after ``latency`` seconds: requests, and the wall time
   until every run is in Slack (one incident: one parent, the runs listed in its thread).
3. A chatflow of 1,000 runs a day: console requests and wall time of `failed since:1d`, a text
   search and a session search (run details for 200 runs at most), and of its digest before and
   after the poller stored its failures' errors.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
from slack_sdk import WebClient

from bot.config import load_settings
from bot.runtime import Runtime
from tests.fakes.console import FakeConsole
from tests.fakes.slack import BOT_TOKEN, FakeSlack

NOW = 1_795_000_000
ENV = {"DIFY_ADMIN_API_KEY": "wflogs-admin-key", "DIFY_WORKSPACE_ID": "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11"}


def _runtime(tmp: str, console: FakeConsole, slack: FakeSlack, clock: list[float], pacing: float) -> Runtime:
    env = {
        **ENV,
        "WFLOGS_DB": str(Path(tmp) / "bench.db"),
        "DIFY_API_URL": "http://dify.bench/v1",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack.base_url,
        "WFLOGS_ALERT_CHANNEL": "C0WS",
    }
    return Runtime.build(
        load_settings(env, cwd=Path(tmp)),
        transport=httpx.MockTransport(console.handler),
        now=lambda: clock[0],
        web=WebClient(token=BOT_TOKEN, base_url=slack.base_url),
        slack_min_interval=pacing,
    )


def quiet_cost(cycles: int = 10) -> None:
    clock = [float(NOW)]
    console = FakeConsole(clock=lambda: clock[0])
    flow = console.add_app("flow")
    chat = console.add_app("chat", mode="advanced-chat")
    console.add_app("faq", mode="chat")
    for j in range(-120, 0):
        console.dify.add_log(flow, status="succeeded", at=NOW + j * 60, error="")
        console.add_chat_run(chat, status="succeeded", at=NOW + j * 60)
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        runtime = _runtime(tmp, console, slack, clock, 0.0)
        runtime.cycle()
        clock[0] += 60
        before = len(console.requests)
        for _ in range(cycles):
            runtime.cycle()
            clock[0] += 60
        made = console.requests[before:]
        runtime.close()
    flow_id, chat_id = flow.app_id, chat.app_id  # type: ignore[attr-defined]
    per_flow = sum(1 for r in made if f"/apps/{flow_id}/" in r.url.path) / cycles
    per_chat = sum(1 for r in made if f"/apps/{chat_id}/" in r.url.path) / cycles
    listing = sum(1 for r in made if r.url.path.endswith("/console/api/apps"))
    print(
        f"  quiet cycle, per app: workflow {per_flow:.1f} console requests, chatflow {per_chat:.1f}, "
        f"chat 0 (not watched); the app list: {listing} request(s) in {cycles} cycles of 60 s "
        "(re-read every 300 s)"
    )


def chatflow_storm(failures: int, latency: float, pacing: float) -> None:
    clock = [float(NOW)]
    console = FakeConsole(clock=lambda: clock[0])
    chat = console.add_app("support-chat", mode="advanced-chat")
    for n in range(failures):
        # Five a second over the last minutes (a cycle's look-back holds them all).
        console.add_chat_run(
            chat, at=NOW - failures // 5 + n // 5, error=f"Timeout after {n % 7}s", session=f"u{n}"
        )
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        runtime = _runtime(tmp, console, slack, clock, pacing)
        console.latency = latency
        started = time.perf_counter()
        report = runtime.cycle()
        wall = time.perf_counter() - started
        made = len(console.requests)
        lists = len(console.console_requests("/advanced-chat/workflow-runs"))
        details = sum(
            1
            for r in console.requests
            if "/workflow-runs/" in r.url.path and not r.url.path.endswith("node-executions")
        )
        nodes = len(console.console_requests("/node-executions"))
        in_slack = sum(1 for _ in runtime.store.query("select 1 from alerts where sent_at is not null"))
        runtime.close()
    print(
        f"  chatflow storm, {failures:,} failed runs, {latency * 1000:.0f} ms a request, "
        f"{console.max_in_flight} at once: {made:,} requests ({lists} list pages, {details:,} run details, "
        f"{nodes} node list), {wall:.1f}s until every run is in Slack ({in_slack:,} runs, "
        f"{len(slack.messages)} posts), ok={report.ok}"
    )


def chatflow_search_and_digest(runs: int, latency: float) -> None:
    """Console requests and wall time of chatflow searches and of its digest, ``runs`` runs a day."""
    from bot.query import parse
    from bot.search import search, targets_for

    clock = [float(NOW)]
    console = FakeConsole(clock=lambda: clock[0])
    chat = console.add_app("support-chat", mode="advanced-chat")
    for n in range(runs):
        status = "failed" if n % 10 == 0 else "succeeded"
        at = NOW - 86000 + n * 86000 // runs
        console.add_chat_run(
            chat, status=status, at=at, error=f"quota exceeded after {n % 7}s", session=f"u{n % 50}"
        )
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        runtime = _runtime(tmp, console, slack, clock, 0.0)
        runtime.discover()
        console.latency = latency
        app = next(a for a in runtime.settings.apps if a.mode == "advanced-chat")
        targets = targets_for(
            runtime.settings, runtime.clients, runtime.poller.app_name, channel=None, wanted=None
        )
        lines = []
        for words in ("failed since:1d", '"quota" since:1d', "session:u7 since:1d"):
            before = len(console.requests)
            started = time.perf_counter()
            result = search(parse(words, now=clock[0]), targets, now=clock[0])
            wall = time.perf_counter() - started
            hits = result.apps[0]
            lines.append(
                f"{words!r}: {len(console.requests) - before} requests, {wall:.1f}s, "
                f"{'at least ' if not hits.exact else ''}{hits.total} runs"
            )
        for label in ("nothing alerted", "after the poller alerted the failures"):
            if label != "nothing alerted":
                console.latency = 0.0
                runtime.store.update_app_state(app.id, alert_from=NOW - 90000)
                runtime.poller.poll_app(app)
                console.latency = latency
            before = len(console.requests)
            started = time.perf_counter()
            digest = runtime.digester.compute(app, NOW, now=NOW)
            wall = time.perf_counter() - started
            lines.append(
                f"digest, {label}: {len(console.requests) - before} requests, {wall:.1f}s "
                f"({digest.current.total if digest.current else 0} runs, "
                f"{digest.failures_read} failures read)"
            )
        runtime.close()
    print(
        f"  chatflow of {runs:,} runs a day (1 in 10 failed), {latency * 1000:.0f} ms a request, 3 at once:"
    )
    for line in lines:
        print(f"    {line}")


def run(latency: float = 0.3, failures: int = 1000, pacing: float = 1.0) -> None:
    print("workspace mode:")
    quiet_cost()
    chatflow_storm(failures, latency, pacing)
    chatflow_search_and_digest(1000, latency)
