"""Exactly once across fail-over, a full disk and racing clicks: the journal of Slack effects, the
lease's fence, incident transitions guarded in one transaction, and resolution on evidence.
Slack is the fake at the wire; Dify the MockTransport fake; two instances are two runtimes on one
database file (the tests with real processes are in test_failover.py)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from bot.lease import Lease, LeaseFence
from bot.logs import SecretFilter
from bot.runtime import Runtime
from bot.service import DeliveryLoop, Operations
from tests.conftest import Clock, build_runtime, isolate_cli, make_settings, messages_mentioning, slack_env
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack

CHANNEL = "C0ALERTS"


def _runtime(tmp_path: Path, dify: FakeDify, clock: Clock, slack: FakeSlack, key: str, **env: str) -> Runtime:
    return build_runtime(
        make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack), **env}), dify, clock
    )


def fenced(rt: Runtime, owner: str, clock: Clock, ttl: float = 10) -> Lease:
    """The runtime writes to Slack only while it holds the lease as ``owner``."""
    lease = Lease(rt.store, ttl=ttl, owner=owner, now=clock)
    rt.fence(LeaseFence(lease))
    return lease


def top(slack: FakeSlack) -> list[dict]:
    return [m for m in slack.posts() if not m["thread_ts"]]


def shown(message: dict) -> str:
    return (message.get("text") or "") + json.dumps(message.get("blocks") or [], ensure_ascii=False)


# -- the fence --------------------------------------------------------------------------------


def test_a_post_in_flight_when_the_lease_moves_is_deleted_and_the_new_holder_posts_once(
    tmp_path, dify, clock, slack
):
    app = dify.add_app("Support Bot")
    run = dify.add_log(app, at=int(clock.now) - 30, error="model overloaded")
    a = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_MENTION="here")
    b = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_MENTION="here")
    lease_a, lease_b = fenced(a, "a", clock), fenced(b, "b", clock)
    assert lease_a.tick() and not lease_b.tick()
    a.poll()

    def freeze_a(method: str, params: dict) -> None:
        # A's post is in Slack; A is frozen (a VM pause) before it hears back, past its lease.
        if method == "chat.postMessage":
            slack.on_call = None
            clock.advance(11)
            assert lease_b.tick()  # the standby takes over, epoch 2
            assert b.deliver().posts == 1

    slack.on_call = freeze_a
    result = a.deliver()  # A resumes: its record finds the lease gone
    assert result.paused and "lease moved" in result.paused
    assert len(slack.calls_to("chat.delete")) == 1
    (live,) = top(slack)
    assert messages_mentioning(slack, run.run_id) == 1
    (incident,) = a.store.query("select parent_ts from incidents")
    assert incident["parent_ts"] == live["ts"]  # the record is the new holder's
    calls = len(slack.calls)
    dify.add_log(app, at=int(clock.now) - 5, error="model overloaded")
    a.poll()
    a.deliver()  # the old holder writes nothing any more
    assert len(slack.calls) == calls
    b.deliver()
    assert len(top(slack)) == 1 and len(slack.posts()) == 2


def test_a_holder_whose_clock_lags_cannot_write_once_the_lease_moved(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=int(clock.now) - 30, error="model overloaded")
    a = _runtime(tmp_path, dify, clock, slack, app.key)
    b = _runtime(tmp_path, dify, clock, slack, app.key)
    lagging = Clock(clock.now)
    lease_a = Lease(a.store, ttl=10, owner="a", now=lagging)
    a.fence(LeaseFence(lease_a))
    lease_b = fenced(b, "b", clock)
    assert lease_a.tick()
    a.poll()
    clock.advance(11)  # A's host clock stays behind: by its own clock its lease is still good
    assert lease_b.tick() and lease_a.active
    result = a.deliver()
    assert result.paused and "not the active instance" in result.paused
    assert slack.calls_to("chat.postMessage") == []
    b.deliver()
    assert len(top(slack)) == 1


# -- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB file system (tmpfs) that a test can fill; skipped where mounting is not allowed."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, db: Path) -> None:
    """Empty the WAL (so the next write must grow it), then take every byte left."""
    with sqlite3.connect(db) as conn:
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
    with (disk / "filler").open("wb", buffering=0) as out:
        for size in (65536, 1):
            try:
                while out.write(b"\0" * size):
                    pass
            except OSError:
                pass


def test_a_full_disk_sends_one_escalation_and_one_digest_and_loses_nothing(
    tmp_path, small_disk, dify, clock, slack, caplog
):
    app = dify.add_app("Support Bot")
    db = small_disk / "wflogs.db"
    rt = _runtime(
        tmp_path,
        dify,
        clock,
        slack,
        app.key,
        WFLOGS_DB=str(db),
        WFLOGS_ESCALATE_AFTER="300",
        WFLOGS_ESCALATE_TO="U0LEAD0001",
    )
    ops = Operations(rt, now=clock)
    runs = [dify.add_log(app, at=int(clock.now) - 30, error="model overloaded")]
    assert ops.tick() and ops.cycle() is not None
    rt.store.digest_first_seen(rt.settings.apps[0].id, int(clock.now) - 86400)

    def full_at_the_escalation(method: str, params: dict) -> None:
        if method == "chat.postMessage" and str(params.get("reply_broadcast")).lower() in ("1", "true"):
            slack.on_call = None
            fill(small_disk, db)  # Slack took it; recording it fails

    slack.on_call = full_at_the_escalation
    caplog.set_level(logging.ERROR)
    for _ in range(5):  # until the escalation is due (300 s)
        clock.advance(60)
        runs.append(dify.add_log(app, at=int(clock.now) - 10, error="model overloaded"))
        ops.tick()
        ops.cycle()
    assert (small_disk / "filler").exists()
    for _ in range(6):  # delivery passes for a while, the disk full all along
        clock.advance(60)
        runs.append(dify.add_log(app, at=int(clock.now) - 10, error="model overloaded"))
        ops.tick()
        ops.cycle()
        rt.deliver()
        with pytest.raises(sqlite3.OperationalError):
            rt.digester.run_due(clock.now + 86400)  # the digest is due: it cannot be planned
    broadcasts = [m for m in slack.posts() if m["reply_broadcast"]]
    assert len(broadcasts) == 1
    assert not any("daily digest" in m["text"] for m in slack.posts())
    assert sum("delivery paused" in r.getMessage() for r in caplog.records) == 1

    (small_disk / "filler").unlink()  # space again
    clock.advance(60)
    ops.tick()
    ops.cycle()
    rt.digester.run_due(clock.now + 86400)
    rt.deliver()
    rt.deliver()
    assert len([m for m in slack.posts() if m["reply_broadcast"]]) == 1
    assert sum("daily digest" in m["text"] for m in slack.posts()) == 1
    alerts = [m for m in slack.posts() if "daily digest" not in m["text"]]  # the digest names a few runs
    assert [sum(r.run_id in shown(m) for m in alerts) for r in runs] == [1] * len(runs)
    (incident,) = rt.store.query("select escalated_at from incidents")
    assert incident["escalated_at"] is not None
    rt.close()


# -- incident transitions ------------------------------------------------------------------------


def test_a_resolve_racing_new_runs_never_swallows_them(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    stop = threading.Event()
    runs_when_resolved: dict[int, int] = {}

    def clicker() -> None:
        while not stop.is_set():
            for row in rt.store.query("select id from incidents where state = 'open'"):
                if rt.actions.resolve(int(row["id"]), "U0ALICE", int(clock.now)).startswith("Resolved"):
                    (after,) = rt.store.query("select runs from incidents where id = ?", [row["id"]])
                    runs_when_resolved[int(row["id"])] = int(after["runs"])
            time.sleep(0)

    thread = threading.Thread(target=clicker)
    thread.start()
    runs = []
    try:
        for _ in range(150):
            clock.advance(1)
            runs.append(dify.add_log(app, at=int(clock.now) - 1, error="model overloaded"))
            rt.cycle()
    finally:
        stop.set()
        thread.join()
    rt.deliver()
    now_runs = {int(r["id"]): int(r["runs"]) for r in rt.store.query("select id, runs from incidents")}
    grown = {i: (then, now_runs[i]) for i, then in runs_when_resolved.items() if now_runs[i] != then}
    assert not grown, f"runs counted into incidents after they were resolved: {grown}"
    assert len(runs_when_resolved) > 5  # the race was really run
    assert [messages_mentioning(slack, r.run_id) for r in runs] == [1] * len(runs)


def test_resolving_and_its_thread_reply_are_one_change(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=int(clock.now) - 30, error="model overloaded")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    rt.cycle()
    (incident,) = rt.store.query("select id from incidents")
    # The reply cannot be recorded (as if the process died right after resolving).
    rt.store.db.execute(
        "create trigger no_events before insert on incident_events begin select raise(abort, 'crash'); end"
    )
    with pytest.raises(sqlite3.IntegrityError):
        rt.actions.resolve(int(incident["id"]), "U0ALICE", int(clock.now))
    (after,) = rt.store.query("select state from incidents")
    assert after["state"] == "open"  # not resolved without its reply
    rt.store.db.execute("drop trigger no_events")
    assert rt.actions.resolve(int(incident["id"]), "U0ALICE", int(clock.now)).startswith("Resolved")
    rt.deliver()
    assert sum("Resolved" in m["text"] for m in slack.posts() if m["thread_ts"]) == 1


def test_an_incident_does_not_resolve_while_wflogs_cannot_read_its_app(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=int(clock.now) - 30, error="model overloaded")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RESOLVE_AFTER="600")
    rt.cycle()
    for _ in range(30):  # Dify unreachable for half an hour (the workflow probably fails too)
        clock.advance(60)
        dify.fail_next(3, "502")
        rt.cycle()
    (incident,) = rt.store.query("select state from incidents")
    assert incident["state"] == "open"
    clock.advance(60)
    late = dify.add_log(app, at=int(clock.now) - 900, error="model overloaded")  # failed meanwhile
    rt.cycle()  # read again: the failure during the outage joins the same incident
    assert len(rt.store.query("select id from incidents")) == 1
    assert messages_mentioning(slack, late.run_id) == 1
    for _ in range(11):  # then quiet, and read, for resolve_after
        clock.advance(60)
        rt.cycle()
    states = rt.store.query("select state from incidents")
    assert [s["state"] for s in states] == ["resolved"]
    assert not any("back again" in shown(m).lower() for m in slack.posts())


def test_incident_ids_are_never_reused_and_old_signals_never_touch_new_incidents(
    tmp_path, dify, clock, slack
):
    app = dify.add_app("Support Bot")
    now = int(clock.now)
    for i in range(10):
        dify.add_log(app, status="succeeded", at=now - 600 + i, error="")
        dify.add_log(app, at=now - 300 + i, error="quota exceeded")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RATE_THRESHOLD="0.2")
    rt.cycle()
    first_ids = [int(r["id"]) for r in rt.store.query("select id from incidents order by id")]
    assert len(first_ids) == 2  # the error, and the failure rate
    for _ in range(40):  # quiet for 40 days: both resolve, then are forgotten
        clock.advance(86400)
        dify.add_log(app, status="succeeded", at=int(clock.now) - 10, error="")
        rt.cycle()
    assert rt.store.query("select id from incidents") == []
    assert rt.store.query("select id from signals where incident_id is not null") == []
    dify.add_log(app, at=int(clock.now) - 5, error="a new, unrelated error")
    rt.cycle()
    clock.advance(60)
    rt.cycle()  # the next cycle must not resolve it through a month-old signal
    (new,) = rt.store.query("select id, state from incidents")
    assert new["state"] == "open" and int(new["id"]) > max(first_ids)


# -- delivery ---------------------------------------------------------------------------------


def test_a_busy_channels_edits_never_hold_up_another_channels_first_alert(tmp_path, dify, clock, slack):
    busy, quiet = dify.add_app("Busy"), dify.add_app("Quiet")
    toml = f"""
[[apps]]
name = "Busy"
api_key = "{busy.key}"
channel = "C0BUSY"

[[apps]]
name = "Quiet"
api_key = "{quiet.key}"
channel = "C0QUIET"
"""
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    shapes = [f"tool {chr(97 + i // 26)}{chr(97 + i % 26)} broke" for i in range(40)]
    for start in range(0, 40, 5):  # 40 incidents, each with its own message
        for shape in shapes[start : start + 5]:
            dify.add_log(busy, at=int(clock.now) - 10, error=shape)
        rt.cycle()
        clock.advance(60)
    assert len(top(slack)) == 40
    for shape in shapes:  # every one fails again: 40 replies and 40 parents to edit
        dify.add_log(busy, at=int(clock.now) - 10, error=shape)
    first = dify.add_log(quiet, at=int(clock.now) - 10, error="the first failure of another team")
    before = len(slack.calls)
    rt.cycle()
    calls = slack.calls[before:]
    quiet_post = next(i for i, c in enumerate(calls) if c.params.get("channel") == "C0QUIET")
    first_edit = next(i for i, c in enumerate(calls) if c.method == "chat.update")
    assert quiet_post < first_edit
    assert messages_mentioning(slack, first.run_id) == 1
    assert len([c for c in calls if c.method == "chat.update"]) <= 12  # a budget of edits per pass
    for _ in range(4):
        rt.deliver()
    assert len(slack.calls_to("chat.update")) == 40  # the rest follow in the next passes
    assert all("2 runs failed" in shown(m) for m in top(slack) if m["channel"] == "C0BUSY")


def test_a_bug_in_one_channel_leaves_the_other_channels_delivered(tmp_path, dify, clock, slack, caplog):
    first, second = dify.add_app("First"), dify.add_app("Second")
    toml = f"""
[[apps]]
name = "First"
api_key = "{first.key}"
channel = "C0AAAA"

[[apps]]
name = "Second"
api_key = "{second.key}"
channel = "C0BBBB"
"""
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    dify.add_log(first, at=int(clock.now) - 10, error="boom")
    later = dify.add_log(second, at=int(clock.now) - 10, error="boom")
    rt.poll()
    rt.deliverer.keeper.evaluate(int(clock.now))  # counted into their incidents, then damaged:
    rt.store.execute("update alerts set entry = '{damaged' where channel = 'C0AAAA'")
    caplog.set_level(logging.ERROR)
    result = rt.deliver()
    assert messages_mentioning(slack, later.run_id) == 1
    assert "C0AAAA" in result.errors and "unexpected error" in result.errors["C0AAAA"]
    rt.deliver()
    rt.deliver()
    assert sum(bool(r.exc_info) or "Traceback" in (r.exc_text or "") for r in caplog.records) == 1


def test_a_failing_database_is_one_line_a_minute_from_the_delivery_thread(
    tmp_path, dify, clock, slack, caplog
):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    ops = Operations(rt, now=clock)
    assert ops.tick()
    for i in range(300):
        dify.add_log(app, at=int(clock.now) - 10 - i // 10, error=f"boom {i % 40}", session=f"user {i}")
    rt.poll()  # alerts wait for delivery: their incidents need room
    conn = rt.store.db.conn
    pages = conn.execute("pragma page_count").fetchone()[0]
    conn.execute(f"pragma max_page_count = {pages}")  # then the database is full
    caplog.set_level(logging.INFO)
    loop = DeliveryLoop(rt, interval=0.01, active=lambda: True, database_failed=ops.database_failed)
    loop.start()
    try:
        time.sleep(0.3)  # many passes
        clock.advance(30)
        time.sleep(0.2)
    finally:
        loop.stop()
    lines = [r for r in caplog.records if "WFLOGS_DB=" in r.getMessage()]
    assert len(lines) == 1
    assert not any(r.exc_info or r.exc_text for r in caplog.records)
    assert ops.health.report()[0] == 503


# -- secrets and names --------------------------------------------------------------------------


def test_credentials_in_the_dify_url_are_refused_and_never_shown(monkeypatch, tmp_path, capsys):
    isolate_cli(
        monkeypatch,
        tmp_path,
        DIFY_API_URL="http://bob:hunter2@dify.internal/v1",
        DIFY_API_KEY="app-" + "k" * 24,
        WFLOGS_DB=str(tmp_path / "wflogs.db"),
    )
    assert main(["check"]) == 2
    out, err = capsys.readouterr()
    assert "hunter2" not in out + err and "bob" not in out + err
    assert "DIFY_API_URL=http://***@dify.internal/v1" in err and "HTTPS_PROXY" in err
    assert len(err.strip().splitlines()) == 1


def test_the_log_scrubber_hides_the_user_and_password_of_any_url():
    scrub = SecretFilter([]).scrub
    assert scrub("cannot reach Dify at https://bob:hunter2@dify.internal/v1 (ConnectError)") == (
        "cannot reach Dify at https://***@dify.internal/v1 (ConnectError)"
    )


def test_an_app_name_is_escaped_in_the_cannot_read_notice(tmp_path, dify, clock, slack):
    dify.add_app()
    toml = '[[apps]]\nname = "<!channel> payroll"\napi_key = "app-' + "r" * 20 + 'nope"\n'
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    rt.cycle()
    (notice,) = slack.posts()
    assert "<!channel>" not in notice["text"] and "&lt;!channel&gt; payroll" in notice["text"]


# -- a hanging Dify ------------------------------------------------------------------------------


def test_a_dify_that_stops_answering_is_given_up_on_for_the_cycle(tmp_path, dify, clock, slack):
    apps = [dify.add_app(f"App {i}") for i in range(6)]
    toml = "".join(f'[[apps]]\nname = "App {i}"\napi_key = "{a.key}"\n\n' for i, a in enumerate(apps))
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    rt.cycle()
    asked = len(dify.requests)
    dify.fail_next(10_000, "timeout", path="")  # every request to this Dify times out
    report = rt.cycle()
    assert not any(r.ok for r in report.apps)
    hanging = len(dify.requests) - asked
    # At most the requests already in flight when it was given up on (each app's first), not
    # every app's every request with its retries (18 here before).
    assert hanging <= len(apps) + 2
    dify.faults.clear()
    assert all(r.ok for r in rt.cycle().apps)  # the next cycle asks again


def test_a_planned_message_slack_refuses_on_its_own_holds_up_nothing_else(tmp_path, dify, clock, slack):
    first, second = dify.add_app("First"), dify.add_app("Second")
    toml = "".join(f'[[apps]]\nname = "{a.name}"\napi_key = "{a.key}"\n\n' for a in (first, second))
    rt = build_runtime(make_settings(tmp_path, slack_env(slack), toml=toml), dify, clock)
    for app in rt.settings.apps:
        rt.store.digest_first_seen(app.id, int(clock.now) - 86400)
    assert rt.digester.run_due(clock.now).posted == ["First", "Second"]
    slack.fail("chat.postMessage", "error", "msg_too_long", times=2)  # the blocks, then the plain text
    result = rt.deliver()
    assert [m["text"].split(":")[0] for m in slack.posts()] == ["*📊 Second"]
    assert "C0ALERTS" in result.refused and not result.errors
    rt.deliver()  # retried: Slack takes it now
    assert sorted(m["text"].split(":")[0] for m in slack.posts()) == ["*📊 First", "*📊 Second"]
    rt.deliver()
    assert len(slack.posts()) == 2
