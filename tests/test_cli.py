"""The CLI as a user runs it: a real process against Dify and Slack fakes on local ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import messages_mentioning
from tests.fakes.dify import DifyServer, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFY_", "SLACK_", "WFLOGS_"))}
    env.update({"WFLOGS_DB": str(tmp_path / "wflogs.db"), "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def wflogs(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def poll_once_killed_when(tmp_path: Path, env: dict[str, str], ready: Callable[[], bool]) -> None:
    """Start a real ``wflogs poll --once`` and SIGKILL it as soon as ``ready()`` (within 30 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "poll", "--once"],
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def server():
    fake = FakeDify()
    with DifyServer(fake) as srv:
        yield srv


def test_poll_once_prints_alerts_to_the_terminal_without_slack(tmp_path, server):
    app = server.fake.add_app("Support Bot")
    run = server.fake.add_log(app, at=int(time.time()) - 30, error="timed out")
    done = wflogs(tmp_path, "poll", "--once", DIFY_API_KEY=app.key, DIFY_API_URL=server.url)
    assert done.returncode == 0, done.stderr
    assert run.run_id in done.stdout and "Support Bot" in done.stdout
    again = wflogs(tmp_path, "poll", "--once", DIFY_API_KEY=app.key, DIFY_API_URL=server.url)
    assert again.returncode == 0 and run.run_id not in again.stdout  # remembered across runs


def test_poll_once_fails_with_one_line_per_failing_app_and_no_secret(tmp_path, server):
    good = server.fake.add_app("Good")
    bad_key = "app-" + "q" * 20 + "ABCD"
    toml = f'[[apps]]\napi_key = "{good.key}"\n[[apps]]\nname = "broken"\napi_key = "{bad_key}"\n'
    (tmp_path / "wflogs.toml").write_text(toml)
    done = wflogs(tmp_path, "poll", "--once", DIFY_API_URL=server.url)
    assert done.returncode == 1
    lines = [
        line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith("wflogs:")
    ]
    assert len(lines) == 1 and "broken" in lines[0] and "…ABCD" in lines[0]
    assert "Traceback" not in done.stderr
    assert bad_key not in done.stdout + done.stderr


def test_a_bad_configuration_is_one_clear_message(tmp_path):
    done = wflogs(tmp_path, "poll", "--once")
    assert done.returncode == 2
    assert "DIFY_API_KEY" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "wflogs.toml").write_text('[[apps]]\napi_key = "app-x"\nchanel = "C1"\n')
    done = wflogs(tmp_path, "check")
    assert done.returncode == 2 and "unknown field 'chanel'" in done.stderr


def test_check_reports_what_works_and_what_does_not(tmp_path, server):
    flow = server.fake.add_app("Flow")
    chat = server.fake.add_app("Chatty", mode="advanced-chat")
    keys = [flow.key, chat.key, "app-" + "n" * 24]
    toml = "".join(f'[[apps]]\napi_key = "{key}"\n' for key in keys)
    (tmp_path / "wflogs.toml").write_text(toml)
    with FakeSlack() as slack:
        done = wflogs(
            tmp_path,
            "check",
            DIFY_API_URL=server.url,
            DIFY_API_KEY="app-ignored-key-1234",
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_API_URL=slack.base_url,
            WFLOGS_ALERT_CHANNEL="C0ALERTS",
        )
    out = done.stdout
    assert done.returncode == 1  # the unknown key
    assert "✓ Flow: Dify 1.13.3, workflow app" in out
    assert "Chatty" in out and "not a workflow app" in out
    assert "rejected the API key" in out
    assert "DIFY_API_KEY is set but ignored" in out
    assert "✓ Slack: signed in as wflogs" in out
    assert "✓ channel C0ALERTS" in out


def test_check_says_when_the_slack_token_is_wrong(tmp_path, server):
    app = server.fake.add_app("Flow")
    with FakeSlack(token="xoxb-the-right-one") as slack:
        done = wflogs(
            tmp_path,
            "check",
            DIFY_API_URL=server.url,
            DIFY_API_KEY=app.key,
            SLACK_BOT_TOKEN="xoxb-wrong-token-9999",
            SLACK_API_URL=slack.base_url,
            WFLOGS_ALERT_CHANNEL="C0ALERTS",
        )
    assert done.returncode == 1
    assert "✗ Slack: invalid_auth" in done.stdout
    assert "xoxb-wrong-token-9999" not in done.stdout + done.stderr


def test_run_stops_at_start_up_with_checks_line_when_slack_rejects_the_bot_token(tmp_path, server):
    app = server.fake.add_app("Flow")
    env = {
        "DIFY_API_URL": server.url,
        "DIFY_API_KEY": app.key,
        "SLACK_BOT_TOKEN": "xoxb-wrong-token-9999",
        "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
        "PORT": str(free_port()),
    }
    with FakeSlack(token="xoxb-the-right-one") as slack:
        checked = wflogs(tmp_path, "check", SLACK_API_URL=slack.base_url, **env)
        done = wflogs(tmp_path, "run", SLACK_API_URL=slack.base_url, **env)
    line = next(x for x in checked.stdout.splitlines() if x.startswith("✗ Slack"))
    assert done.returncode == 1
    assert line.removeprefix("✗ ") in done.stderr, done.stderr  # the same words as check
    assert "xoxb-wrong-token-9999" not in done.stdout + done.stderr


def test_sigkill_during_delivery_repeats_at_most_the_message_in_flight(tmp_path, server):
    app = server.fake.add_app("Support Bot")
    now = int(time.time())
    runs = [server.fake.add_log(app, at=now - 60 + i, error=f"kind {chr(65 + i)} failed") for i in range(4)]
    with FakeSlack() as slack:
        env = {
            "DIFY_API_KEY": app.key,
            "DIFY_API_URL": server.url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_API_URL": slack.base_url,
            "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
        }
        slack.fail("chat.postMessage", "ok", None, times=1)  # the first post goes through
        slack.fail("chat.postMessage", "accept_hang", 30)  # the second is taken, then we die
        poll_once_killed_when(tmp_path, env, lambda: len(slack.messages) >= 2)
        assert len(slack.messages) == 2
        done = wflogs(tmp_path, "poll", "--once", **env)
        assert done.returncode == 0, done.stderr
        counts = [messages_mentioning(slack, run.run_id) for run in runs]
    assert all(c >= 1 for c in counts)  # nothing lost
    assert sorted(counts) == [1, 1, 1, 2]  # only the one in flight was doubled


def test_run_alerts_on_schedule_and_stops_cleanly_on_sigterm(tmp_path, server):
    app = server.fake.add_app("Support Bot")
    run = server.fake.add_log(app, at=int(time.time()) - 30, error="timed out")
    out_path = tmp_path / "out.txt"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(tmp_path, DIFY_API_KEY=app.key, DIFY_API_URL=server.url, PORT=str(free_port())),
        )
        deadline = time.monotonic() + 30
        while run.run_id not in out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    text = out_path.read_text()
    assert run.run_id in text
    assert code == 0 and "Traceback" not in text
    # The start-up line names the apps (as configured or known, else by the key's label).
    assert re.search(r"wflogs is watching 1 app every 60s \((Support Bot|app …\w+)\)", text), text
    assert "SIGTERM received: stopping" in text  # a stop is never silent
    # The cycle says what it queued for the delivery thread, not "0 runs delivered in 0 posts".
    assert "cycle: 1 app, 1 new alert; 1 run queued for the delivery thread" in text, text
    assert "0 runs delivered" not in text


def test_sigterm_ends_poll_once_at_once_even_while_dify_is_slow(tmp_path, server):
    # As PID 1 in a container a process has no default action for SIGTERM: wflogs must end by itself.
    app = server.fake.add_app("Support Bot")
    server.fake.add_log(app, at=int(time.time()) - 30, error="timed out")
    server.fake.latency = 8.0  # every Dify request hangs far longer than the test waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "poll", "--once"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path, DIFY_API_KEY=app.key, DIFY_API_URL=server.url),
    )
    time.sleep(1.5)  # well inside the first request
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=5)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err


def test_json_logs_are_one_object_per_line_with_secrets_scrubbed(tmp_path, server):
    bad_key = "app-" + "q" * 20 + "ABCD"
    done = wflogs(
        tmp_path,
        "poll",
        "--once",
        DIFY_API_KEY=bad_key,
        DIFY_API_URL=server.url,
        WFLOGS_LOG_FORMAT="json",
        WFLOGS_LOOKBACK="600",
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    others = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert others == [line for line in others if line.startswith("wflogs:")]  # the CLI's own summary
    assert {"time", "level", "logger", "message"} <= set(records[0])
    failed = [r for r in records if r["level"] == "ERROR" and r["logger"] == "bot.poller"]
    assert failed and "rejected the API key" in failed[0]["message"]
    assert bad_key not in done.stderr + done.stdout
