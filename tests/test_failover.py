"""Two real ``wflogs run`` processes on one database, frozen (SIGSTOP), resumed, killed and
restarted while failures arrive: every run ends up in exactly one live Slack message.

Each process has its own bot token on the Slack fake, so what each one wrote can be told apart.
The chaos test is randomised with a fixed seed (``WFLOGS_CHAOS_SEED``, default 1) for
``WFLOGS_CHAOS_SECONDS`` (default 75); run it with several seeds when changing what it guards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import messages_mentioning
from tests.fakes.dify import DifyServer, FakeDify, FakeRun
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.test_cli import _env, free_port

INTERVAL = 5  # seconds between polls; the lease lasts two of them
LEASE = 2 * INTERVAL
TOKENS = {"a": BOT_TOKEN + "a", "b": BOT_TOKEN + "b"}


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting{': ' + what if what else ''}")
        time.sleep(0.05)


class Instance:
    """One ``wflogs run`` process of a slot (a or b), restartable, on its own port and token."""

    def __init__(self, slot: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.slot = slot
        self.tmp_path = tmp_path
        self.env = {**env, "SLACK_BOT_TOKEN": TOKENS[slot]}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: IO[str] | None = None
        self.starts = 0

    def start(self) -> Instance:
        if self.out is not None:
            self.out.close()
        self.starts += 1
        self.out = (self.tmp_path / f"{self.slot}{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"],
            cwd=self.tmp_path,
            env=_env(self.tmp_path, PORT=str(self.port), WFLOGS_HTTP_HOST="127.0.0.1", **self.env),
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any]:
        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).json())
        except (httpx.HTTPError, ValueError):
            return {}

    def role(self) -> str | None:
        return self.health().get("role")

    def freeze(self) -> None:
        """SIGSTOP, and wait until the process IS stopped (the signal is delivered asynchronously:
        until then its threads run on, and may take a lock)."""
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # /proc/PID/stat: "pid (comm) STATE ..."; T is stopped by a signal.
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
            time.sleep(0.005)
        raise AssertionError(f"process {self.pid} did not stop")

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.out is not None:
            self.out.close()

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp_path.glob(f"{self.slot}*.log")))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[DifyServer, FakeSlack, Callable[[str], Instance]]]:
    instances: list[Instance] = []
    with DifyServer(FakeDify()) as server, FakeSlack(more_tokens=set(TOKENS.values())) as slack:
        app = server.fake.add_app("Support Bot")
        env = {
            "DIFY_API_KEY": app.key,
            "DIFY_API_URL": server.url,
            "SLACK_API_URL": slack.base_url,
            "WFLOGS_ALERT_CHANNEL": "C0ALERTS",
            "WFLOGS_POLL_INTERVAL": str(INTERVAL),
            "WFLOGS_MENTION": "here",
        }

        def instance(slot: str) -> Instance:
            made = Instance(slot, tmp_path, env)
            instances.append(made)
            return made

        try:
            yield server, slack, instance
        finally:
            for made in instances:
                made.stop()


def live(slack: FakeSlack) -> list[dict[str, Any]]:
    """Top-level messages in the channel now (deleted ones are gone from the fake)."""
    return [m for m in slack.posts() if not m["thread_ts"]]


def by(slack: FakeSlack, slot: str) -> list[Any]:
    return [c for c in slack.calls if c.params.get("_by") == TOKENS[slot]]


def test_an_instance_frozen_inside_its_post_past_its_lease_leaves_one_live_parent(rig):
    server, slack, instance = rig
    app = next(iter(server.fake.apps.values()))
    a = instance("a").start()
    wait_until(lambda: a.role() == "active", what="a active")
    b = instance("b").start()
    wait_until(lambda: b.role() == "standby", what="b standby")
    frozen = threading.Event()

    def freeze_a_in_its_post(method: str, params: dict[str, Any]) -> None:
        if method == "chat.postMessage" and params.get("_by") == TOKENS["a"] and not frozen.is_set():
            # Slack has the message; A does not hear back until it is thawed. A is frozen while this
            # test holds the database's write lock, so that none of A's other threads (the lease
            # job) is frozen inside a write: a process frozen holding SQLite's write lock stops
            # every instance on the file, which is not what this test is about.
            probe = sqlite3.connect(a.tmp_path / "wflogs.db", timeout=30, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                a.freeze()
                probe.execute("ROLLBACK")
            finally:
                probe.close()
            frozen.set()

    slack.on_call = freeze_a_in_its_post
    run = server.fake.add_log(app, at=int(time.time()) - 5, error="model overloaded")
    wait_until(frozen.is_set, what="a posting")
    try:
        wait_until(lambda: b.role() == "active", timeout=3 * LEASE, what="b taking over")
    except AssertionError:
        print("=== A LOGS\n" + a.logs()[-6000:] + "\n=== B LOGS\n" + b.logs()[-6000:])
        raise
    wait_until(lambda: len(live(slack)) == 2, what="b posting the incident")  # A's copy and B's
    a.thaw()
    wait_until(lambda: len(live(slack)) == 1, what="a deleting its copy")
    (parent,) = live(slack)
    assert parent["by"] == TOKENS["b"]
    thawed = len(by(slack, "a"))
    later = server.fake.add_log(app, at=int(time.time()) - 2, error="model overloaded")
    wait_until(lambda: messages_mentioning(slack, later.run_id) == 1, what="the next run")
    time.sleep(2)
    assert len(by(slack, "a")) == thawed  # the resumed instance writes nothing more
    assert [c.method for c in by(slack, "a")][-1] == "chat.delete"
    if messages_mentioning(slack, run.run_id) != 1:  # seen once, not reproduced: say what carried it
        for m in slack.messages:
            if run.run_id in (m.get("text") or "") + json.dumps(m.get("blocks") or []):
                print(
                    "carries the run:",
                    m.get("by"),
                    m.get("ts"),
                    m.get("thread_ts"),
                    (m.get("text") or "")[:200],
                )
        print("=== A LOGS\n" + a.logs()[-6000:] + "\n=== B LOGS\n" + b.logs()[-6000:])
    assert messages_mentioning(slack, run.run_id) == 1
    assert messages_mentioning(slack, later.run_id) == 1
    assert "deleted its copy" in a.logs() and "Traceback" not in a.logs() + b.logs()


def test_an_instance_frozen_between_cycles_posts_nothing_after_it_resumes(rig):
    server, slack, instance = rig
    app = next(iter(server.fake.apps.values()))
    a = instance("a").start()
    wait_until(lambda: a.role() == "active", what="a active")
    b = instance("b").start()
    wait_until(lambda: b.role() == "standby", what="b standby")
    first = server.fake.add_log(app, at=int(time.time()) - 5, error="model overloaded")
    wait_until(lambda: messages_mentioning(slack, first.run_id) == 1, what="a posting")
    time.sleep(1)
    a.freeze()
    writes = len(by(slack, "a"))
    second = server.fake.add_log(app, at=int(time.time()) - 1, error="model overloaded")
    wait_until(lambda: b.role() == "active", timeout=3 * LEASE, what="b taking over")
    wait_until(lambda: messages_mentioning(slack, second.run_id) == 1, what="b posting")
    a.thaw()
    wait_until(lambda: a.role() == "standby", what="a standing by")
    third = server.fake.add_log(app, at=int(time.time()) - 1, error="model overloaded")
    wait_until(lambda: messages_mentioning(slack, third.run_id) == 1, what="b posting again")
    time.sleep(INTERVAL)
    assert len(by(slack, "a")) == writes
    for run in (first, second, third):
        assert messages_mentioning(slack, run.run_id) == 1
    assert len(live(slack)) == 1


# -- chaos ------------------------------------------------------------------------------------


ERRORS = ["model overloaded", "tool search timed out", "quota exceeded for key", "node llm 502"]


def test_chaos_every_run_in_exactly_one_live_message(rig):
    """Failures every second; every few seconds a nemesis freezes the active instance past its
    lease, kills and restarts one, or makes Slack answer 500/429 or Dify 502."""
    seed = int(os.environ.get("WFLOGS_CHAOS_SEED", "1"))
    seconds = float(os.environ.get("WFLOGS_CHAOS_SECONDS", "75"))
    rng = random.Random(seed)
    server, slack, instance = rig
    app = next(iter(server.fake.apps.values()))
    slots = {"a": instance("a").start(), "b": instance("b").start()}
    wait_until(lambda: any(i.role() == "active" for i in slots.values()), what="an active instance")
    runs: list[FakeRun] = []
    kills: list[tuple[float, str]] = []  # (when, slot)
    stop = threading.Event()

    def failures() -> None:
        while not stop.wait(1.0):
            runs.append(
                server.fake.add_log(
                    app, at=int(time.time()) - 1, error=rng.choice(ERRORS), session=f"u{len(runs)}"
                )
            )

    feeder = threading.Thread(target=failures, daemon=True)
    feeder.start()
    actions: list[str] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2.0, 5.0))
            active = [i for i in slots.values() if i.alive() and i.role() == "active"]
            action = rng.choice(["freeze", "kill", "slack500", "slack429", "dify502"])
            actions.append(action)
            if action == "freeze" and active:
                victim = active[0]
                victim.freeze()
                time.sleep(LEASE + rng.uniform(1.0, 3.0))
                victim.thaw()
            elif action == "kill":
                victim = slots[rng.choice(sorted(slots))]
                if victim.alive():
                    kills.append((time.monotonic(), victim.slot))
                    victim.kill()
                    time.sleep(rng.uniform(0.5, 3.0))
                    victim.start()
            elif action == "slack500":
                slack.fail("chat.postMessage", "status", 500, times=rng.randint(1, 3))
            elif action == "slack429":
                slack.fail("chat.postMessage", "ratelimit", 1, times=1)
            elif action == "dify502":
                server.fake.fail_next(rng.randint(1, 4), "502")
    finally:
        stop.set()
        feeder.join()
    slack.faults.clear()
    server.fake.faults.clear()
    for made in slots.values():
        if not made.alive():
            made.start()
    wait_until(
        lambda: all(messages_mentioning(slack, r.run_id) >= 1 for r in runs),
        timeout=90,
        what=f"every run in Slack after {actions}",
    )
    time.sleep(INTERVAL)  # let anything in flight land
    doubled = [r for r in runs if messages_mentioning(slack, r.run_id) != 1]
    # A kill in the middle of a post (after Slack took it, before it was recorded) may leave that
    # one post doubled: each doubled run must have a copy posted by a process killed right after.
    unexplained = []
    for run in doubled:
        copies = [m for m in slack.posts() if run.run_id in str(m.get("blocks")) + (m.get("text") or "")]
        copies += [f for f in slack.files if run.run_id in f["content"]]
        explained = any(
            any(
                slot_token == TOKENS[slot] and 0 <= at - c["at"] <= 10
                for at, slot in kills
                for slot_token in [c["by"]]
            )
            for c in copies
        )
        if not explained:
            unexplained.append((run.run_id, [(c.get("by"), c.get("ts")) for c in copies]))
    assert not unexplained, f"seed {seed}: {len(unexplained)} runs in two live messages: {unexplained[:3]}"
    assert len(runs) > seconds * 0.8
    logs = "".join(i.logs() for i in slots.values())
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000 :][:4000]
