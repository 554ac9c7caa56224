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
