"""Benchmarks: ``python -m bench`` prints the figures.

1. A cycle over many apps: wall time and requests against the minimum (a
   quiet cycle needs two per app).
2. Storms: 10,000 failures of one app at 20 a second (no second holds more
   than 100 rows) and at 167 a second (every second holds more than a page),
   with the order inside a second stable or shuffled on every call, and at
   20 a second with runs at random seconds (counts per second vary). Each is
   read in one cycle and delivered to a Slack fake with the production pacing
   (one post per second per channel). Printed: Dify log requests against the
   floor (one per 100 rows, at least one per status), the wall time until every
   run is in Slack, the most requests Dify had in flight at once, Slack posts,
   and the cost of the quiet cycle that follows.
3. An incident: one error that keeps failing (one run a minute) for 60
   cycles, then goes quiet until it resolves: channel messages (one), thread
   replies (at most one a cycle), parent edits (at most one a cycle), and every
   run in Slack exactly once.
4. The digest's chart: 14 days of scheduled digests for 1, 3 and 12 apps in one
   channel; the last round with the chart on and off: Dify requests (the same),
   the time to draw it (the first one in a process includes importing
   matplotlib), its bytes, and its upload into the first digest's thread.
   ``--chart-example FILE`` writes the 3-app chart (the one in docs/).
5. The idle cost of quiet cycles with every feature on.
6. Opening the App Home with 200 apps and 50 open incidents: time from the
   event to views.publish, and Dify requests (none).
7. Workspace mode (bench/workspace.py): console requests per quiet cycle for
   workflow apps and chatflows, a 1,000-failure chatflow storm, and chatflow searches and digests.

``--home-only``, ``--chart-only``, ``--idle-only``, ``--incident-only`` and
``--workspace-only`` run only those (several may be given).

Dify answers each request after ``--latency`` seconds and serves at most
``--connections`` requests at once (a real server's default is about ten), so
request counts and their parallelism turn into seconds as they do in
production. Everything runs against the fakes on this machine; nothing reaches
a network.
"""

from __future__ import annotations

import argparse
import io
import random
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
PAGE = 100


def _settings(tmp: Path, env: dict[str, str], toml: str | None = None):
    base = {"WFLOGS_DB": str(tmp / "bench.db"), "DIFY_API_URL": "http://dify.bench/v1"}
    if toml:
        (tmp / "wflogs.toml").write_text(toml)
        base["WFLOGS_CONFIG"] = str(tmp / "wflogs.toml")
    base.update(env)
    return load_settings(base, cwd=tmp)


def _slack_runtime(
    tmp: str,
    dify: FakeDify,
    slack: FakeSlack,
    clock: list[float],
    env: dict[str, str],
    *,
    channel: str,
    toml: str | None = None,
    pacing: float = 1.0,
) -> Runtime:
    """A runtime on the Dify fake that alerts ``channel`` on the Slack fake, with ``pacing`` per post."""
    env = {
        **env,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack.base_url,
        "WFLOGS_ALERT_CHANNEL": channel,
    }
    return Runtime.build(
        _settings(Path(tmp), env, toml),
        transport=httpx.MockTransport(dify.handler),
        now=lambda: clock[0],
        web=WebClient(token=BOT_TOKEN, base_url=slack.base_url),
        slack_min_interval=pacing,
    )


def many_apps(apps: int, latency: float, connections: int) -> None:
    """One first cycle and one quiet cycle over ``apps`` apps."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.latency = latency
    dify.connections = connections
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
            before = len(dify.log_requests())
            started = time.perf_counter()
            report = runtime.cycle()
            wall = time.perf_counter() - started
            made = len(dify.log_requests()) - before
            print(
                f"  {label}: {wall:.2f}s wall, {made} Dify log requests (minimum {2 * apps}), "
                f"{report.delivery.runs_delivered} runs delivered, ok={report.ok}"
            )
            clock[0] += 60
        runtime.close()


def storm(
    failures: int,
    rate: int,
    *,
    stable: bool,
    latency: float,
    connections: int,
    pacing: float,
    shapes: int = 1,
    memory: bool = False,
    irregular: bool = False,
) -> dict[str, float]:
    """``failures`` failed runs at ``rate`` a second ending just before now, one channel.

    Regular: exactly ``rate`` runs every second. Irregular: each run at a random second of
    the same span (so seconds hold varying counts, as in a real storm)."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.stable_within_second = stable
    app = dify.add_app("Storm App")
    span = -(-failures // rate)
    arrivals = random.Random(1)
    for i in range(failures):
        node = "abcdefghijklmnopqrstuvwxyz"[i % shapes] * 3
        dify.add_log(
            app,
            at=NOW - span + (arrivals.randrange(span) if irregular else i // rate),
            error=f"node {node} timed out after {i}s",
            session=f"user_{i % 500}",
        )
    dify.latency = latency
    dify.connections = connections
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        runtime = _slack_runtime(
            tmp, dify, slack, clock, {"DIFY_API_KEY": app.key}, channel="C0STORM", pacing=pacing
        )
        if memory:
            tracemalloc.start()
        started = time.perf_counter()
        report = runtime.cycle()
        wall = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if memory else 0
        if memory:
            tracemalloc.stop()
        made = len(dify.log_requests())
        in_flight = dify.max_in_flight
        clock[0] += 60
        quiet = runtime.cycle()
        quiet_requests = len(dify.log_requests()) - made
        runtime.close()
        top = [m for m in slack.messages if not m["thread_ts"]]
        listed = sum(f["content"].count("\n") - 1 for f in slack.files)
    floor = -(-failures // PAGE) + 1  # failed rows, plus one request for the empty stopped list
    order = ("stable  " if stable else "shuffled") + (", irregular" if irregular else "")
    print(
        f"  {rate:>3}/s {order}: {made:>4} log requests, floor {floor} ({made / floor:.2f}x), "
        f"{wall:5.1f}s until all in Slack, at most {in_flight} in flight; "
        f"{report.delivery.runs_delivered:,} runs delivered in {len(slack.messages)} posts "
        f"({len(top)} top-level) + {len(slack.files)} CSV ({listed:,} rows); "
        f"next quiet cycle {quiet_requests} requests; ok={report.ok and quiet.ok}"
        + (f"; peak traced memory {peak / 1e6:.1f} MB" if memory else "")
    )
    return {"requests": made, "floor": floor, "wall": wall}


def incident(cycles: int) -> None:
    """One error failing once a minute for ``cycles`` cycles, then quiet until it resolves."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    app = dify.add_app("Flaky App")
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        env = {"DIFY_API_KEY": app.key, "SLACK_SIGNING_SECRET": "bench-secret"}
        runtime = _slack_runtime(tmp, dify, slack, clock, env, channel="C0FLAKY", pacing=0.0)
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


def idle_cost(apps: int, latency: float, connections: int, cycles: int = 10) -> None:
    """Quiet cycles over ``apps`` busy but healthy apps with every feature on (failure rate,
    stuck runs, mentions, escalation): Dify requests per app per cycle, by what asked."""
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.latency = latency
    dify.connections = connections
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
        runtime = _slack_runtime(tmp, dify, slack, clock, env, channel="C0IDLE", toml=toml)
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


def home_cost(apps: int, incidents: int, latency: float) -> None:
    """Opening the App Home with ``apps`` watched and ``incidents`` open: the time from the signed
    app_home_opened request to views.publish, and the Dify requests it made (none: stored state)."""
    import json

    from bot.ops_http import EVENTS_PATH, OpsServer
    from bot.slack_app import build_app, events_handler
    from tests.fakes.slack import signed_post

    secret = "bench-signing-secret"
    clock = [float(NOW)]
    dify = FakeDify(clock=lambda: clock[0])
    dify.latency = latency
    keys = []
    for i in range(apps):
        app = dify.add_app(f"app {i}")
        keys.append(app.key)
        if i < incidents:
            dify.add_log(app, at=NOW - 120, error=f"app {i}: model overloaded")
    toml = "".join(f'[[apps]]\napi_key = "{k}"\nname = "app {i}"\n' for i, k in enumerate(keys))
    with FakeSlack() as slack, tempfile.TemporaryDirectory() as tmp:
        env = {"SLACK_SIGNING_SECRET": secret}
        runtime = _slack_runtime(tmp, dify, slack, clock, env, channel="C0BENCH", toml=toml, pacing=0.0)
        runtime.cycle()
        opened = runtime.store.query("select count(*) as n from incidents where state = 'open'")[0]["n"]
        for day, runs in ((1, 1000), (2, 900)):  # two daily digests per app, for the trend
            for app_cfg in runtime.settings.apps:
                runtime.store.db["digests"].insert(  # type: ignore[union-attr]
                    {
                        "app_id": app_cfg.id,
                        "day": f"d{day}",
                        "kind": "scheduled",
                        "window_end": NOW - day * 3600,
                        "runs": runs,
                        "failed": 10 * day,
                    }
                )
        server = OpsServer(events_handler(build_app(runtime, now=lambda: clock[0])), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}{EVENTS_PATH}"
        try:
            times: list[float] = []
            made = 0
            for n in range(5):
                body = {
                    "type": "event_callback",
                    "team_id": "T1",
                    "api_app_id": "A1",
                    "event_id": f"Ev{n}",
                    "event_time": NOW,
                    "event": {"type": "app_home_opened", "user": f"U{n}", "tab": "home"},
                }
                before_dify, before_views = len(dify.requests), len(slack.published)
                started = time.perf_counter()
                signed_post(url, json.dumps(body), secret)
                while len(slack.published) == before_views and time.perf_counter() - started < 30:
                    time.sleep(0.001)
                times.append(time.perf_counter() - started)
                made += len(dify.requests) - before_dify
            view = slack.published[-1]["view"]
            print(
                f"  {apps} apps, {opened} open incidents: views.publish {min(times) * 1000:.0f} ms after "
                f"the event (median of 5: {sorted(times)[2] * 1000:.0f} ms), {made} Dify requests in all, "
                f"{len(view['blocks'])} blocks, {len(json.dumps(view)):,} bytes"
            )
        finally:
            server.close()
            runtime.close()


CHART_APPS = ("Billing assistant", "Support triage", "Nightly import")


def chart_cost(apps: int, example: str | None = None) -> None:
    """14 days of scheduled digests for ``apps`` apps sharing one channel (seeded), the last one
    with the chart on and off: what the chart costs."""
    from bot import digest_chart

    rnd = random.Random(21)
    day = 86_400
    first = NOW - 14 * day
    dify = FakeDify(clock=lambda: NOW)
    keys = []
    for i in range(apps):
        name = CHART_APPS[i] if i < len(CHART_APPS) else f"app {i}"
        app = dify.add_app(name)
        keys.append(app.key)
        for d in range(15):
            start = first + d * day - day
            spike = 25 if (i == 0 and d == 14) or (i == 1 and d == 6) else 0
            for status, n in (("failed", rnd.randint(0, 6) + spike), ("stopped", rnd.randint(0, 3))):
                for _ in range(n):
                    dify.add_log(app, status=status, at=start + rnd.randint(0, day - 1))
            for _ in range(rnd.randint(20, 40)):
                dify.add_log(app, status="succeeded", at=start + rnd.randint(0, day - 1))
    toml = "".join(f'[[apps]]\napi_key = "{k}"\n' for k in keys)
    results = {}
    for chart in ("false", "true"):
        clock = [float(first)]
        with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
            env = {"WFLOGS_DIGEST_CHART": "false", "WFLOGS_DIGEST_TIME": "00:00"}
            runtime = _slack_runtime(tmp, dify, slack, clock, env, channel="C0DIGEST", toml=toml, pacing=0.0)
            for app in runtime.settings.apps:
                runtime.store.digest_first_seen(app.id, first - day)
            for d in range(14):  # the history, without charts
                clock[0] = first + d * day + 60
                runtime.digester.run_due(clock[0])
            runtime.close()
            env["WFLOGS_DIGEST_CHART"] = chart
            runtime = _slack_runtime(tmp, dify, slack, clock, env, channel="C0DIGEST", toml=toml, pacing=0.0)
            clock[0] = NOW + 60
            before = sum(c.requests for c in runtime.clients.values())
            started = time.perf_counter()
            report = runtime.digester.run_due(clock[0])
            planned = time.perf_counter() - started
            requests = sum(c.requests for c in runtime.clients.values()) - before
            runtime.deliverer.deliver_planned()
            runtime.close()
            files = list(slack.files)
        results[chart] = (requests, planned, files, report)
    (off_requests, off_time, _, _), (on_requests, on_time, files, report) = results["false"], results["true"]
    png = files[0]["data"] if files else b""
    print(
        f"  {apps} app{'s' if apps > 1 else ''} in one channel: {on_requests} Dify requests with the chart, "
        f"{off_requests} without; planning took {on_time:.2f}s with it, {off_time:.2f}s without "
        f"(+{on_time - off_time:.2f}s to draw); {len(png):,} bytes PNG; {len(files)} upload in the thread "
        f"of the first digest"
    )
    if example and png:
        Path(example).write_bytes(png)
        print(f"  wrote {example}; alt text: {files[0]['alt_txt'][:160]}...")
    assert digest_chart.DAYS == 14 and report.chart_keys


_COLD = """
import resource, time
from datetime import date
from bot import digest_chart as dc
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
png = dc.draw(dc.Chart([dc.Panel("app", [dc.Day(date(2026, 11, d), 100, d % 5, 1) for d in range(4, 18)])]))
first = time.perf_counter() - started
started = time.perf_counter()
dc.draw(dc.Chart([dc.Panel("app", [dc.Day(date(2026, 11, d), 100, d % 5, 1) for d in range(4, 18)])]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(first, time.perf_counter() - started, (peak - before) / 1024)
"""


def chart_cold() -> None:
    """A fresh process: the first chart (importing matplotlib), the second, and the peak memory added."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _COLD], capture_output=True, text=True, check=True).stdout
    first, second, rss = (float(x) for x in out.split())
    print(
        f"  a fresh process: first chart {first:.2f}s (imports matplotlib), the next {second:.2f}s; "
        f"peak memory +{rss:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--apps", type=int, default=200, help="apps in the many-apps cycle (0: skip it)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds Dify takes per request")
    parser.add_argument("--connections", type=int, default=10, help="requests Dify serves at once")
    parser.add_argument("--failures", type=int, default=10_000)
    parser.add_argument("--rates", default="20,167", help="failures a second, comma separated")
    parser.add_argument("--shapes", type=int, default=1, help="kinds of error in the storm")
    parser.add_argument("--pacing", type=float, default=1.0, help="seconds between posts to a channel")
    parser.add_argument("--memory", action="store_true", help="trace peak memory (slower)")
    parser.add_argument(
        "--irregular", default="20", help="rates also run with runs at random seconds (shuffled order)"
    )
    parser.add_argument("--cycles", type=int, default=60, help="cycles of the incident (0: skip it)")
    parser.add_argument("--incident-only", action="store_true", help="only the incident")
    parser.add_argument(
        "--idle-cycles", type=int, default=10, help="quiet cycles with every feature on (0: skip them)"
    )
    parser.add_argument("--idle-only", action="store_true", help="only the idle cost")
    parser.add_argument("--home-apps", type=int, default=200, help="apps in the App Home cost (0: skip it)")
    parser.add_argument("--home-incidents", type=int, default=50, help="open incidents in the App Home cost")
    parser.add_argument("--home-only", action="store_true", help="only the App Home cost")
    parser.add_argument("--chart-only", action="store_true", help="only the digest's chart")
    parser.add_argument("--chart-example", metavar="FILE", help="write the 3-app chart to FILE")
    parser.add_argument("--workspace-only", action="store_true", help="only the workspace-mode figures")
    parser.add_argument(
        "--console-latency", type=float, default=0.3, help="seconds the console takes per request"
    )
    args = parser.parse_args()
    only = {
        name for name in ("home", "chart", "idle", "incident", "workspace") if getattr(args, f"{name}_only")
    }

    def wanted(name: str) -> bool:
        return not only or name in only

    if args.home_apps and wanted("home"):
        print(f"App Home: opening the Home tab, Dify latency {args.latency * 1000:.0f} ms")
        home_cost(args.home_apps, args.home_incidents, args.latency)
    if wanted("chart"):
        print("digest chart (14 days of digests; the chart drawn in the last round):")
        chart_cold()
        for apps in (1, 3, 12):
            chart_cost(apps, args.chart_example if apps == 3 else None)
    latency_ms = f"{args.latency * 1000:.0f} ms"
    if args.idle_cycles and args.apps and wanted("idle"):
        print(f"idle cost: {args.apps} apps, Dify latency {latency_ms}, {args.connections} connections")
        idle_cost(args.apps, args.latency, args.connections, args.idle_cycles)
    if args.cycles and wanted("incident"):
        print("incident (Slack pacing off; edits and replies counted, not timed):")
        incident(args.cycles)
    if wanted("workspace"):
        from bench import workspace

        workspace.run(args.console_latency, 1000, args.pacing)
    if only:
        return
    if args.apps:
        print(
            f"many apps: {args.apps} apps, Dify latency {latency_ms}, {args.connections} connections, "
            "concurrency 16"
        )
        many_apps(args.apps, args.latency, args.connections)
    print(
        f"storms: {args.failures:,} failures of one app, Dify latency {latency_ms}, "
        f"{args.connections} connections, pacing {args.pacing:.1f}s/post"
    )
    for rate in (int(r) for r in args.rates.split(",")):
        for stable in (True, False):
            storm(
                args.failures,
                rate,
                stable=stable,
                latency=args.latency,
                connections=args.connections,
                pacing=args.pacing,
                shapes=args.shapes,
                memory=args.memory,
            )
    for rate in (int(r) for r in args.irregular.split(",") if r):
        storm(
            args.failures,
            rate,
            stable=False,
            latency=args.latency,
            connections=args.connections,
            pacing=args.pacing,
            shapes=args.shapes,
            memory=args.memory,
            irregular=True,
        )


if __name__ == "__main__":
    main()
