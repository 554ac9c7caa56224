"""Two real ``wflogs run`` processes on one database: one polls, the other stands by and takes over."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import messages_mentioning
from tests.fakes.dify import DifyServer, FakeDify
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.test_cli import _env, free_port, wflogs

INTERVAL = 5


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def health(port: int) -> dict[str, Any]:
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json())
    except httpx.HTTPError:
        return {}


@pytest.fixture
def server():
    with DifyServer(FakeDify()) as srv:
        yield srv


def test_a_standby_takes_over_when_the_active_instance_is_killed(tmp_path: Path, server):
    app = server.fake.add_app("Support Bot")
    first = server.fake.add_log(app, at=int(time.time()) - 20, error="before the kill")
    with FakeSlack() as slack:
        env = {
            "DIFY_API_KEY": app.key,
            "DIFY_API_URL": server.url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_API_URL": slack.base_url,
            "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
            "WFLOGS_POLL_INTERVAL": str(INTERVAL),
            "WFLOGS_HTTP_HOST": "127.0.0.1",
        }
        ports = free_port(), free_port()
        procs: list[subprocess.Popen[bytes]] = []
        outputs: list[IO[str]] = []

        def start(port: int, name: str) -> subprocess.Popen[bytes]:
            outputs.append((tmp_path / f"{name}.out").open("w"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "run"],
                cwd=tmp_path,
                env=_env(tmp_path, PORT=str(port), **env),
                stdout=outputs[-1],
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            return proc

        try:
            active = start(ports[0], "a")
            wait_until(lambda: health(ports[0]).get("role") == "active")
            wait_until(lambda: messages_mentioning(slack, first.run_id) == 1)
            start(ports[1], "b")
            wait_until(lambda: health(ports[1]).get("role") == "standby")
            owner_a = health(ports[0])["active_instance"]
            assert health(ports[1])["active_instance"] == owner_a
            assert health(ports[1])["status"] == "ok"

            active.send_signal(signal.SIGKILL)
            active.wait(timeout=10)
            killed = time.monotonic()
            second = server.fake.add_log(app, at=int(time.time()), error="after the kill")
            wait_until(lambda: health(ports[1]).get("role") == "active", timeout=3 * INTERVAL + 5)
            assert time.monotonic() - killed < 3 * INTERVAL
            wait_until(lambda: messages_mentioning(slack, second.run_id) == 1)
            owner_b = health(ports[1])["active_instance"]
            assert owner_b != owner_a

            done = wflogs(tmp_path, "check", **{**env, "PORT": str(free_port())})
            assert f"✓ active instance: {owner_b}" in done.stdout
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=20)
            for output in outputs:
                output.close()
        log_b = (tmp_path / "b.out").read_text()
        assert "standby:" in log_b and "is the active one" in log_b and "Traceback" not in log_b
        # Nothing lost, nothing doubled across the hand-over.
        assert messages_mentioning(slack, first.run_id) == 1
        assert messages_mentioning(slack, second.run_id) == 1


def test_a_lease_of_another_host_is_respected_until_it_expires(tmp_path: Path, server):
    from bot.lease import Lease
    from bot.runtime import open_store

    app = server.fake.add_app("Support Bot")
    run = server.fake.add_log(app, at=int(time.time()) - 20, error="waits for the lease")
    # Another host's wflogs (a pod on another node sharing the volume) held it and went silent.
    store = open_store(str(tmp_path / "wflogs.db"))
    assert Lease(store, ttl=3, owner="other-node:1:beef").tick()
    store.db.conn.close()
    port = free_port()
    env = {
        "DIFY_API_KEY": app.key,
        "DIFY_API_URL": server.url,
        "WFLOGS_POLL_INTERVAL": str(INTERVAL),
        "WFLOGS_LOOKBACK": "900",
    }
    with (tmp_path / "out.txt").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"],
            cwd=tmp_path,
            env=_env(tmp_path, PORT=str(port), WFLOGS_HTTP_HOST="127.0.0.1", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: health(port).get("role") == "standby")
            assert health(port)["active_instance"] == "other-node:1:beef"
            assert run.run_id not in (tmp_path / "out.txt").read_text()  # a standby does not poll
            wait_until(lambda: health(port).get("role") == "active", timeout=10)
            wait_until(lambda: run.run_id in (tmp_path / "out.txt").read_text())
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    assert "WARNING bot.service: WFLOGS_LOOKBACK=900 is below 1200 s" in (tmp_path / "out.txt").read_text()


def test_systemd_hears_ready_watchdog_pings_while_healthy_and_stopping(tmp_path: Path, server):
    import socket

    app = server.fake.add_app("Support Bot")
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(10)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"],
            cwd=tmp_path,
            env=_env(
                tmp_path,
                PORT=str(free_port()),
                WFLOGS_HTTP_HOST="127.0.0.1",
                DIFY_API_KEY=app.key,
                DIFY_API_URL=server.url,
                WFLOGS_POLL_INTERVAL=str(INTERVAL),
                NOTIFY_SOCKET=address,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert systemd.recv(100) == b"READY=1"
            assert systemd.recv(100) == b"WATCHDOG=1"  # the lease is renewed every second here
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        received = []
        systemd.settimeout(0.5)
        try:
            while True:
                received.append(systemd.recv(100))
        except TimeoutError:
            pass
        assert received[-1] == b"STOPPING=1"
