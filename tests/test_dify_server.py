"""The standalone Dify fake (``python -m tests.fakes.dify_server``) that scripts/test-image serves."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_cli import ROOT, wflogs


def _start(*args: str) -> tuple[subprocess.Popen[str], dict[str, list[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.dify_server", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    values: dict[str, list[str]] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline().strip()
        if line == "READY" or not line:
            break
        name, _, value = line.partition("=")
        values.setdefault(name, []).append(value)
    return proc, values


def test_serves_failed_and_stopped_runs_that_wflogs_alerts_once(tmp_path: Path) -> None:
    proc, values = _start("--failed", "2", "--stopped", "1")
    try:
        assert values["DIFY_API_URL"][0].startswith("http://127.0.0.1:")
        env = {"DIFY_API_URL": values["DIFY_API_URL"][0], "DIFY_API_KEY": values["DIFY_API_KEY"][0]}
        done = wflogs(tmp_path, "poll", "--once", **env)
        assert done.returncode == 0, done.stderr
        assert len(values["RUN_ID"]) == 3
        for run_id in values["RUN_ID"]:
            assert f"Run ID: {run_id}" in done.stdout
        assert done.stdout.count("Run ID:") == 3  # the succeeded runs are not alerted
        # Plain text, and the terminal's own commands: no Slack markup, no /wflogs.
        assert "*" not in done.stdout and "`" not in done.stdout and "/wflogs" not in done.stdout
        assert "Next: wflogs search session:" in done.stdout
        assert all(f"wflogs search run:{run_id}" in done.stdout for run_id in values["RUN_ID"])
        assert "run was stopped" in done.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
