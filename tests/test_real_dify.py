"""Against a real Dify (e.g. shared/tools/dify-rig, 1.13.3): run only when WFLOGS_TEST_DIFY_URL is set.

    WFLOGS_TEST_DIFY_URL=http://127.0.0.1:5001 WFLOGS_TEST_DIFY_WORKSPACE=<tenant id> \\
    [WFLOGS_TEST_DIFY_ADMIN_KEY=wflogs-admin-key] [WFLOGS_TEST_DIFY_EMAIL=.. WFLOGS_TEST_DIFY_PASSWORD=..] \\
    .venv/bin/pytest tests/test_real_dify.py
"""

from __future__ import annotations

import io
import os

import httpx
import pytest

from bot.console import ConsoleClient, failed_node
from tests.conftest import make_settings

URL = os.environ.get("WFLOGS_TEST_DIFY_URL", "")
WORKSPACE = os.environ.get("WFLOGS_TEST_DIFY_WORKSPACE", "")
ADMIN_KEY = os.environ.get("WFLOGS_TEST_DIFY_ADMIN_KEY", "wflogs-admin-key")
EMAIL = os.environ.get("WFLOGS_TEST_DIFY_EMAIL", "")
PASSWORD = os.environ.get("WFLOGS_TEST_DIFY_PASSWORD", "")

pytestmark = pytest.mark.skipif(
    not URL, reason="WFLOGS_TEST_DIFY_URL is not set (no real Dify to test against)"
)


def _ways_in() -> list[dict[str, str]]:
    ways = []
    if WORKSPACE:
        ways.append({"admin_key": ADMIN_KEY, "workspace_id": WORKSPACE})
    if EMAIL and PASSWORD:
        ways.append({"email": EMAIL, "password": PASSWORD})
    return ways


def test_both_ways_in_read_apps_runs_and_the_failed_node():
    if not _ways_in():
        pytest.skip("set WFLOGS_TEST_DIFY_WORKSPACE or WFLOGS_TEST_DIFY_EMAIL and _PASSWORD")
    for way in _ways_in():
        with httpx.Client(timeout=20) as http:
            client = ConsoleClient(http=http, url=URL, **way)
            apps = client.apps()
            assert client.version and client.role()
            for app in apps:
                if app["mode"] != "advanced-chat" or not app.get("workflow"):
                    continue
                page = client.runs(app["id"], status="failed")
                for run in page["data"][:1]:
                    assert client.run_detail(app["id"], run["id"])["status"] == "failed"
                    node = failed_node(client.node_executions(app["id"], run["id"]))
                    assert node is None or node["title"]


def test_check_and_one_poll(tmp_path):
    if not WORKSPACE:
        pytest.skip("set WFLOGS_TEST_DIFY_WORKSPACE")
    from bot.cli import cmd_check
    from bot.runtime import Runtime

    origin = URL.rstrip("/")
    env = {
        "DIFY_API_URL": origin + "/v1",
        "DIFY_ADMIN_API_KEY": ADMIN_KEY,
        "DIFY_WORKSPACE_ID": WORKSPACE,
        "WFLOGS_BACKFILL": "604800",
    }
    settings = make_settings(tmp_path, env)
    out = io.StringIO()
    assert cmd_check(settings, None, out, io.StringIO()) == 0, out.getvalue()  # type: ignore[arg-type]
    assert "signed in with the admin key" in out.getvalue()
    printed = io.StringIO()
    runtime = Runtime.build(settings, stream=printed)
    try:
        first = runtime.cycle()
        again = runtime.cycle()
    finally:
        runtime.close()
    assert first.ok and again.ok, first.problems + again.problems
    assert sum(r.new_alerts for r in again.apps) == 0


def test_chatflow_search_digest_and_links(tmp_path):
    """Searches and digests of every chatflow agree with Dify's own run counts; prints the cost."""
    if not WORKSPACE:
        pytest.skip("set WFLOGS_TEST_DIFY_WORKSPACE")
    import time

    from bot.query import parse
    from bot.runtime import Runtime
    from bot.search import search, targets_for

    origin = URL.rstrip("/")
    env = {"DIFY_API_URL": origin + "/v1", "DIFY_ADMIN_API_KEY": ADMIN_KEY, "DIFY_WORKSPACE_ID": WORKSPACE}
    runtime = Runtime.build(make_settings(tmp_path, env), stream=io.StringIO())
    try:
        runtime.discover()
        console = runtime.console
        assert console is not None
        chats = [a for a in runtime.settings.apps if a.mode == "advanced-chat"]
        assert chats, "the rig has no published chatflow"
        for app in chats:
            assert app.console_url == f"{origin}/app/{app.app_id}/logs"
            now = time.time()
            targets = targets_for(
                runtime.settings, runtime.clients, runtime.poller.app_name, channel=None, wanted=app.name
            )
            ever = console.run_counts(app.app_id or "", seconds=None)
            before = console.requests
            hits = search(parse("failed", now=now), targets, now=now).apps[0]
            cost = console.requests - before
            assert hits.error is None and hits.exact and hits.total == ever["failed"], hits
            shown = hits.entries
            assert all(e.run_id and e.status == "failed" and e.error for e in shown)
            print(f"{app.name}: failed search, {hits.total} runs, {cost} requests")
            if not shown:
                continue
            words = f'"{shown[0].error[:20]}"' if shown[0].error else ""
            before = console.requests
            text = search(parse(words, now=now), targets, now=now).apps[0]
            cost = console.requests - before
            same = [e for e in shown if (e.error or "").startswith((shown[0].error or "")[:20])]
            assert text.error is None and text.total >= len(same) and "error" in text.found[shown[0].log_id]
            print(f"{app.name}: text search {words}, {text.total} runs, {cost} requests")
            session = shown[0].session_id
            if session:
                before = console.requests
                found = search(parse(f"failed session:{session}", now=now), targets, now=now).apps[0]
                cost = console.requests - before
                same_session = [e for e in shown if e.session_id == session]
                assert found.exact and found.total >= len(same_session)
                assert all(e.session_id == session for e in found.entries)
                print(f"{app.name}: failed session:{session}, {found.total} runs, {cost} requests")
            before = console.requests
            digest = runtime.digester.compute(app, int(now), now=int(now))
            cost = console.requests - before
            day = console.run_counts(app.app_id or "", seconds=86400)
            assert digest.error is None and digest.current is not None
            assert (
                abs(digest.current.total - day["total"]) <= 1 and digest.current.failed <= day["failed"] + 1
            )
            if digest.current.failed:
                assert digest.errors and digest.errors[0].count >= 1
            print(f"{app.name}: digest, {digest.current.total} runs, {cost} requests")
    finally:
        runtime.close()
