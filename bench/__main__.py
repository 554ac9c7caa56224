"""Benchmarks: ``python -m bench`` prints the figures.

1. A cycle over many apps with Dify answering in 100 ms: wall time and
   requests against the minimum (a quiet cycle needs two per app).
2. A storm: 10,000 failures of one app within one minute, delivered to a
   Slack fake with the production pacing (one post per second per channel):
   Dify requests against the minimum (one per 100 rows), wall time, Slack
   posts, and peak memory.
3. An incident: one error that keeps failing (one run a minute) for 60
   cycles, then goes quiet until it resolves: channel messages (one), thread
   replies (at most one a cycle), parent edits (at most one a cycle), and every
   run in Slack exactly once.

Everything runs against the fakes on this machine; nothing reaches a network.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx
from slack_sdk import WebClient

from bot.config import load_settings
from bot.runtime import Runtime
from tests.fakes.dify import FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack

NOW = 1_795_000_000


def _settings(tmp: Path, env: dict[str, str], toml: str | None = None):
    base = {"WFLOGS_DB": str(tmp / "bench.db"), "DIFY_API_URL": "http://dify.bench/v1"}
    if toml:
        (tmp / "wflogs.toml").write_text(toml)
        base["WFLOGS_CONFIG"] = str(tmp / "wflogs.toml")
    base.update(env)
    return load_settings(base, cwd=tmp)


def many_apps(apps: int, latency: float) -> None:
    """One first cycle and one quiet cycle over ``apps`` apps."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.latency = latency
    keys = []
    for i in range(apps):
        app = dify.add_app(f"app {i}")
        keys.append(app.key)
        for j in range(3):
            dify.add_log(app, at=NOW - 600 + j * 60, error=f"app {i} error {j}")
    toml = "".join(f'[[apps]]\napi_key = "{k}"\nname = "app {i}"\n' for i, k in enumerate(keys))
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(Path(tmp), {}, toml)
        runtime = Runtime.build(
            settings, transport=httpx.MockTransport(dify.handler), stream=io.StringIO(), now=lambda: clock[0]
        )
        for label in ("first cycle (alerts 3 runs per app)", "quiet cycle (nothing new)"):
            before = len(dify.requests)
            started = time.perf_counter()
            report = runtime.cycle()
            wall = time.perf_counter() - started
            made = len(dify.requests) - before
            print(
                f"  {label}: {wall:.2f}s wall, {made} Dify requests (minimum {2 * apps}), "
                f"{report.delivery.runs_delivered} runs delivered, ok={report.ok}"
            )
            clock[0] += 60
        runtime.close()


def storm(failures: int, shapes: int, pacing: float, *, stable: bool = False) -> None:
    """``failures`` failed runs in one minute, ``shapes`` kinds of error, one channel."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.stable_within_second = stable
    app = dify.add_app("Storm App")
    for i in range(failures):
        node = "abcdefghijklmnopqrstuvwxyz"[i % shapes] * 3
        dify.add_log(
            app,
            at=NOW - 60 + (i * 60) // failures,
            error=f"node {node} timed out after {i}s",
            session=f"user_{i % 500}",
        )
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        settings = _settings(
            Path(tmp),
            {
                "DIFY_API_KEY": app.key,
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_API_URL": slack.base_url,
                "WFLOGS_ALERT_CHANNEL": "C0STORM",
            },
        )
        web = WebClient(token=BOT_TOKEN, base_url=slack.base_url)
        runtime = Runtime.build(
            settings,
            transport=httpx.MockTransport(dify.handler),
            now=lambda: clock[0],
            web=web,
            slack_min_interval=pacing,
        )
        tracemalloc.start()
        started = time.perf_counter()
        report = runtime.cycle()
        wall = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        runtime.close()
        top = [m for m in slack.messages if not m["thread_ts"]]
        listed = sum(f["content"].count("\n") - 1 for f in slack.files)
        order = "stable" if stable else "shuffled per call"
        print(
            f"  {failures:,} failures, {shapes} error shapes, order within a second {order}, "
            f"pacing {pacing:.1f}s/post: {wall:.1f}s wall, "
            f"{report.apps[0].requests} Dify requests (minimum {-(-failures // 100)}), "
            f"{len(slack.messages)} Slack posts ({len(top)} top-level) + {len(slack.files)} CSV files "
            f"({listed:,} rows), {report.delivery.runs_delivered:,} runs delivered, "
            f"peak traced memory {peak / 1e6:.1f} MB, ok={report.ok}"
        )


def incident(cycles: int) -> None:
    """One error failing once a minute for ``cycles`` cycles, then quiet until it resolves."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    app = dify.add_app("Flaky App")
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        settings = _settings(
            Path(tmp),
            {
                "DIFY_API_KEY": app.key,
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_API_URL": slack.base_url,
                "WFLOGS_ALERT_CHANNEL": "C0FLAKY",
                "SLACK_SIGNING_SECRET": "bench-secret",
            },
        )
        web = WebClient(token=BOT_TOKEN, base_url=slack.base_url)
        runtime = Runtime.build(
            settings,
            transport=httpx.MockTransport(dify.handler),
            now=lambda: clock[0],
            web=web,
            slack_min_interval=0.0,
        )
        runs = []
        started = time.perf_counter()
        for i in range(cycles):
            runs.append(
                dify.add_log(app, at=int(clock[0]) - 20, error=f"LLM provider timed out after {30 + i}s")
            )
            runtime.cycle()
            clock[0] += 60
        during = (len(slack.messages), len(slack.calls_to("chat.update")))
        for _ in range(31):  # quiet for WFLOGS_RESOLVE_AFTER (30 minutes)
            runtime.cycle()
            clock[0] += 60
        wall = time.perf_counter() - started
        runtime.close()
        top = [m for m in slack.messages if not m["thread_ts"]]
        replies = [m for m in slack.messages if m["thread_ts"]]
        everywhere = "\n".join((m["text"] or "") + str(m["blocks"]) for m in slack.messages)
        once = sum(1 for r in runs if r.run_id in everywhere)
        resolved = top and "Resolved" in str(top[0]["blocks"])
        print(
            f"  {cycles} cycles of one error, one run each: {len(top)} channel message, "
            f"{during[0] - len(top)} thread replies and {during[1]} parent edits while failing; "
            f"after 30 quiet minutes: resolved={bool(resolved)}, {len(replies)} replies and "
            f"{len(slack.calls_to('chat.update'))} edits in all; {once}/{len(runs)} runs in Slack; "
            f"{wall:.1f}s wall"
        )


def idle_cost(apps: int, latency: float, cycles: int = 10) -> None:
    """Quiet cycles over ``apps`` busy but healthy apps with every feature on (failure rate,
    stuck runs, mentions, escalation): Dify requests per app per cycle, by what asked."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.latency = latency
    keys = []
    for i in range(apps):
        app = dify.add_app(f"app {i}")
        keys.append(app.key)
        # A run a minute for the last two hours, and on into the cycles to come.
        for j in range(-120, cycles + 2):
            dify.add_log(app, status="succeeded", at=NOW + j * 60, error="")
    toml = "".join(f'[[apps]]\napi_key = "{k}"\nname = "app {i}"\n' for i, k in enumerate(keys))
    env = {
        "WFLOGS_RATE_THRESHOLD": "0.2",
        "WFLOGS_STUCK_AFTER": "1800",
        "WFLOGS_MENTION": "U0ONCALL1,here",
        "WFLOGS_ESCALATE_AFTER": "900",
    }
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        env.update(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=slack.base_url, WFLOGS_ALERT_CHANNEL="C0IDLE")
        settings = _settings(Path(tmp), env, toml)
        runtime = Runtime.build(
            settings,
            transport=httpx.MockTransport(dify.handler),
            now=lambda: clock[0],
            web=WebClient(token=BOT_TOKEN, base_url=slack.base_url),
        )
        runtime.cycle()
        clock[0] += 60
        before = len(dify.requests)
        started = time.perf_counter()
        for _ in range(cycles):
            runtime.cycle()
            clock[0] += 60
        wall = (time.perf_counter() - started) / cycles
        made = dify.requests[before:]
        runtime.close()
    filtered = sum(1 for r in made if "status" in r.url.params)
    unfiltered = sum(1 for r in made if "status" not in r.url.params and r.url.path.endswith("/logs"))
    other = len(made) - filtered - unfiltered
    per = len(made) / cycles / apps
    print(
        f"  {apps} apps, {cycles} quiet cycles, every feature on: {per:.2f} Dify requests per app per cycle "
        f"({filtered / cycles / apps:.2f} poller counts, {unfiltered / cycles / apps:.2f} failure-rate "
        f"count + stuck band, {other / cycles / apps:.2f} other), {wall:.2f}s wall per cycle, "
        f"{len(slack.messages)} Slack posts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--failures", type=int, default=10_000)
    parser.add_argument("--pacing", type=float, default=1.0)
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--only", choices=["apps", "idle", "storm", "incident"], help="run one benchmark")
    args = parser.parse_args()
    if args.only in (None, "apps"):
        print(f"many apps: {args.apps} apps, Dify latency {args.latency * 1000:.0f} ms, concurrency 16")
        many_apps(args.apps, args.latency)
    if args.only in (None, "idle"):
        print(f"idle cost: {args.apps} apps, Dify latency {args.latency * 1000:.0f} ms")
        idle_cost(args.apps, args.latency)
    if args.only in (None, "storm"):
        print("storm:")
        storm(args.failures, 1, args.pacing)
        storm(args.failures, 1, args.pacing, stable=True)
        storm(args.failures, 25, args.pacing)
    if args.only in (None, "incident"):
        print("incident (Slack pacing off; edits and replies counted, not timed):")
        incident(args.cycles)


if __name__ == "__main__":
    main()
