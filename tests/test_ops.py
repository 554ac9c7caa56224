"""Operating wflogs: the lease, /healthz and /metrics over real HTTP, and a database failing mid-run."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
from pathlib import Path

import httpx
import pytest
from slack_sdk import WebClient

from bot.lease import Lease, instance_id, lease_timings, view
from bot.ops_http import HEALTH_PATH, METRICS_PATH
from bot.runtime import Runtime
from bot.service import Operations, start_serving
from storage import Store
from tests.conftest import (
    T0,
    Clock,
    build_runtime,
    isolate_cli,
    make_settings,
    messages_mentioning,
    slack_env,
)
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the lease ---------------------------------------------------------------------------------------


def test_one_instance_holds_the_lease_and_a_standby_takes_it_when_it_expires(tmp_path: Path, clock: Clock):
    path = str(tmp_path / "wflogs.db")
    ttl, _every = lease_timings(60)
    first = Lease(Store.open(path), ttl=ttl, owner="host-a:10:aaaa", now=clock)
    second = Lease(Store.open(path), ttl=ttl, owner="host-b:20:bbbb", now=clock)
    assert first.tick() and first.active
    assert not second.tick() and not second.active and second.holder == "host-a:10:aaaa"
    clock.advance(ttl - 1)
    assert first.tick()  # renewed in time: still the holder
    clock.advance(ttl - 1)
    assert not second.tick()
    clock.advance(2)  # the holder died right after its last renewal: the lease runs out
    assert not first.active  # a holder that could not renew stops acting on its own
    assert second.tick() and second.active
    assert not first.tick() and first.holder == "host-b:20:bbbb"
    lease = view(Store.open(path))
    assert lease is not None and lease.owner == "host-b:20:bbbb" and lease.alive(clock())


def test_a_clean_stop_hands_the_lease_over_at_once(tmp_path: Path, clock: Clock):
    path = str(tmp_path / "wflogs.db")
    first = Lease(Store.open(path), ttl=120, owner="host-a:10:aaaa", now=clock)
    second = Lease(Store.open(path), ttl=120, owner="host-b:20:bbbb", now=clock)
    assert first.tick() and not second.tick()
    first.release()
    assert not first.active
    assert second.tick()


def test_a_crashed_holder_on_this_host_is_replaced_without_waiting(tmp_path: Path, clock: Clock):
    store = Store.open(str(tmp_path / "wflogs.db"))
    # A pid that cannot exist (above the kernel's pid_max): the process that held the lease is gone.
    namespace = instance_id().rsplit(":", 1)[1].split(".")[0]
    dead = f"{socket.gethostname()}:4194999:{namespace}.dead"
    assert Lease(store, ttl=120, owner=dead, now=clock).tick()
    successor = Lease(store, ttl=120, now=clock)
    assert successor.tick() and successor.holder == successor.owner


def test_a_holder_in_another_container_on_this_host_is_waited_for(tmp_path: Path, clock: Clock):
    store = Store.open(str(tmp_path / "wflogs.db"))
    # Same host name, same (dead here) pid, but another pid namespace: it may well be alive there.
    other = f"{socket.gethostname()}:4194999:4026000001.beef"
    assert Lease(store, ttl=120, owner=other, now=clock).tick()
    assert not Lease(store, ttl=120, now=clock).tick()


# -- /healthz and /metrics -------------------------------------------------------------------------


def _serve(tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock, **env: str):
    settings = make_settings(tmp_path, env={**slack_env(slack), "PORT": str(free_port()), **env})
    runtime = build_runtime(settings, dify, clock)
    ops = Operations(runtime, now=clock)
    stop = start_serving(runtime, ops)
    return runtime, ops, stop, f"http://127.0.0.1:{settings.port}"


def test_healthz_and_metrics_answer_over_http(tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock):
    good = dify.add_app("Support Bot")
    dify.add_log(good, at=T0 - 60, error="timed out")
    dify.add_log(good, at=T0 - 50, status="stopped")
    toml = f'[[apps]]\napi_key = "{good.key}"\n[[apps]]\nname = "broken"\napi_key = "app-{"x" * 20}NOPE"\n'
    settings_env = {"WFLOGS_HTTP_HOST": "127.0.0.1"}
    (tmp_path / "wflogs.toml").write_text(toml)
    runtime, ops, stop, base = _serve(
        tmp_path, dify, slack, clock, WFLOGS_CONFIG=str(tmp_path / "wflogs.toml"), **settings_env
    )
    try:
        assert ops.tick()
        assert ops.cycle() is not None
        health = httpx.get(base + HEALTH_PATH)
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["role"] == "active"
        assert body["apps"] == {"ok": 1, "failing": ["broken"]}
        assert body["outbox_pending"] == 0 and body["last_cycle_at"] == "2026-11-18T11:06:40+00:00"
        assert body["active_instance"] == ops.lease.owner

        metrics = httpx.get(base + METRICS_PATH)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'wflogs_cycles_total{result="problems"} 1.0' in text
        assert "wflogs_cycle_duration_seconds_count 1.0" in text
        assert 'wflogs_app_poll_ok{app="Support Bot"} 1.0' in text
        assert 'wflogs_app_poll_ok{app="broken"} 0.0' in text
        assert 'wflogs_app_last_success_timestamp_seconds{app="Support Bot"} 1.795e+09' in text
        assert 'wflogs_dify_requests_total{outcome="ok"}' in text
        assert 'wflogs_dify_requests_total{outcome="rejected"}' in text
        assert 'wflogs_alerts_sent_total{status="failed"} 1.0' in text
        assert 'wflogs_alerts_sent_total{status="stopped"} 1.0' in text
        assert 'wflogs_slack_calls_total{method="chat.postMessage",outcome="ok"}' in text
        assert "wflogs_outbox_pending 0.0" in text
        assert "wflogs_open_incidents 2.0" in text  # the failed run and the stopped one
        assert 'wflogs_role{wflogs_role="active"} 1.0' in text
        assert "wflogs_database_ok 1.0" in text

        assert httpx.post(base + "/slack/events", content=b"{}").status_code == 404  # no signing secret
        assert httpx.get(base + "/").status_code == 404

        # The lease is renewed but cycles hang: three poll intervals later the health check fails.
        clock.advance(3 * settings_interval(runtime) + 1)
        assert ops.tick()
        stale = httpx.get(base + HEALTH_PATH)
        assert stale.status_code == 503
        assert "no poll cycle finished" in stale.json()["reason"]
    finally:
        stop()
        runtime.close()


def settings_interval(runtime: Runtime) -> int:
    return runtime.settings.poll_interval


def test_each_runtime_has_its_own_metrics(tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=T0 - 60)
    settings = make_settings(tmp_path, env={"DIFY_API_KEY": app.key, **slack_env(slack)})
    one = build_runtime(settings, dify, clock)
    two = build_runtime(settings, dify, clock)
    try:
        one.cycle()
        assert b'wflogs_cycles_total{result="ok"} 1.0' in one.metrics.render()
        assert b"wflogs_cycles_total{" not in two.metrics.render()
    finally:
        one.close()
        two.close()


def test_a_standby_reports_itself_and_the_active_instance(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock
):
    app = dify.add_app("Support Bot")
    runtime, ops, stop, base = _serve(tmp_path, dify, slack, clock, DIFY_API_KEY=app.key)
    other = Lease(Store.open(str(tmp_path / "wflogs.db")), ttl=600, owner="elsewhere:1:beef", now=clock)
    try:
        assert other.tick()
        assert not ops.tick()
        assert ops.cycle() is None  # a standby does not poll
        assert dify.requests == [] or all("/info" in str(r.url) for r in dify.requests)
        body = httpx.get(base + HEALTH_PATH).json()
        assert body["role"] == "standby" and body["active_instance"] == "elsewhere:1:beef"
        assert body["status"] == "ok" and body["last_cycle_at"] is None
        assert 'wflogs_role{wflogs_role="standby"} 1.0' in httpx.get(base + METRICS_PATH).text
    finally:
        stop()
        runtime.close()


def test_slack_events_are_served_on_the_same_port_with_a_signing_secret(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock
):
    app = dify.add_app("Support Bot")
    runtime, _ops, stop, base = _serve(
        tmp_path, dify, slack, clock, DIFY_API_KEY=app.key, SLACK_SIGNING_SECRET="s3cr3t-signing"
    )
    try:
        unsigned = httpx.post(base + "/slack/events", content=b"command=/wflogs&text=help")
        assert unsigned.status_code == 401  # Bolt checks the signature
        assert httpx.get(base + HEALTH_PATH).status_code == 200
    finally:
        stop()
        runtime.close()


def test_a_taken_port_is_one_clear_error(tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock):
    from bot.errors import ConfigError

    app = dify.add_app("Support Bot")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(
            tmp_path, env={"DIFY_API_KEY": app.key, "PORT": str(port), "WFLOGS_HTTP_HOST": "127.0.0.1"}
        )
        runtime = build_runtime(settings, dify, clock)
        try:
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*set PORT"):
                start_serving(runtime, Operations(runtime, now=clock))
        finally:
            runtime.close()


# -- a database failing mid-run --------------------------------------------------------------------


def _fill(runtime: Runtime) -> None:
    """No page can be added any more: SQLite answers SQLITE_FULL, as on a full disk."""
    conn = runtime.store.db.conn
    pages = conn.execute("pragma page_count").fetchone()[0]
    conn.execute(f"pragma max_page_count = {pages}")


def test_a_full_database_mid_run_fails_health_logs_once_a_minute_and_loses_nothing(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock, caplog
):
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=T0 - 300, error="before")
    settings = make_settings(tmp_path, env={"DIFY_API_KEY": app.key, **slack_env(slack)})
    runtime = build_runtime(settings, dify, clock, web=web)
    ops = Operations(runtime, now=clock)
    try:
        assert ops.tick() and ops.cycle() is not None
        cursor = runtime.store.app_state(app_id(runtime))["checked_until"]
        runs = [dify.add_log(app, at=T0 + 1 + i // 6, error=f"timed out after {i}s") for i in range(300)]
        clock.advance(60)
        _fill(runtime)
        caplog.set_level(logging.ERROR, logger="bot.ops_http")
        ops.cycle()  # fails (or reports the app as failing, when the poller handles the error)
        status, body = ops.health.report()
        assert status == 503 and "WFLOGS_DB=" in body["reason"] and "disk is full" in body["reason"]
        assert runtime.store.app_state(app_id(runtime))["checked_until"] == cursor  # the cursor stayed
        clock.advance(20)
        assert ops.tick()  # the lease row still takes a write; the alerts do not
        ops.cycle()
        clock.advance(41)
        assert ops.tick()
        ops.cycle()
        assert ops.health.report()[0] == 503
        reports = [r for r in caplog.records if "WFLOGS_DB=" in r.getMessage()]
        assert len(reports) == 2  # at start and a minute later, not every cycle
        assert "nothing is lost" in reports[0].getMessage()
        noisy = [r.getMessage() for r in caplog.records if r.exc_info or r.name == "bot.poller"]
        assert not noisy  # no traceback per app and cycle: the one line a minute says it all

        runtime.store.db.conn.execute("pragma max_page_count = 1073741823")  # space again
        clock.advance(60)
        assert ops.tick()
        report = ops.cycle()
        assert report is not None and report.ok
        assert ops.health.report()[0] == 200
        counts = [messages_mentioning(slack, run.run_id) for run in runs]
        assert counts == [1] * len(runs), (sorted(set(counts)), report)
    finally:
        runtime.close()


def app_id(runtime: Runtime) -> str:
    return runtime.settings.apps[0].id


def test_a_database_locked_for_long_stops_the_lease_and_says_so(tmp_path: Path, dify: FakeDify, clock: Clock):
    app = dify.add_app("Support Bot")
    settings = make_settings(tmp_path, env={"DIFY_API_KEY": app.key})
    runtime = build_runtime(settings, dify, clock, db_timeout=0.05)
    ops = Operations(runtime, now=clock)
    blocker = sqlite3.connect(settings.db_path, isolation_level=None)
    try:
        assert ops.tick()
        blocker.execute("begin exclusive")
        clock.advance(ops.lease.ttl + 1)
        assert not ops.tick()  # cannot renew: stops acting before anyone could take over
        status, body = ops.health.report()
        assert status == 503 and "is locked by another program" in body["reason"]
        assert body["role"] == "standby"
        blocker.execute("rollback")
        assert ops.tick() and ops.cycle() is not None and ops.health.report()[0] == 200
    finally:
        blocker.close()
        runtime.close()


def test_healthz_json_has_no_secrets(tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock):
    app = dify.add_app("Support Bot")
    runtime, ops, stop, base = _serve(tmp_path, dify, slack, clock, DIFY_API_KEY=app.key)
    try:
        ops.tick()
        ops.cycle()
        text = httpx.get(base + HEALTH_PATH).text + httpx.get(base + METRICS_PATH).text
        assert app.key not in text and "xoxb-" not in text
        json.loads(httpx.get(base + HEALTH_PATH).text)
    finally:
        stop()
        runtime.close()


def test_poll_once_leaves_the_polling_to_an_active_instance(monkeypatch, tmp_path: Path, dify: FakeDify):
    import io

    from bot.cli import main

    isolate_cli(monkeypatch, tmp_path)
    monkeypatch.setenv("DIFY_API_KEY", "app-" + "k" * 24)
    monkeypatch.setenv("DIFY_API_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("WFLOGS_DB", str(tmp_path / "wflogs.db"))
    assert Lease(Store.open(str(tmp_path / "wflogs.db")), ttl=600, owner="elsewhere:7:cafe").tick()
    out, err = io.StringIO(), io.StringIO()
    assert main(["poll", "--once"], out=out, err=err) == 1
    assert "another wflogs (elsewhere:7:cafe) is active on" in err.getvalue()
    out = io.StringIO()
    main(["check"], out=out, err=err)
    assert "✓ active instance: elsewhere:7:cafe" in out.getvalue()


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (OSError(28, "No space left on device"), "the disk is full"),
        (sqlite3.OperationalError("database or disk is full"), "the disk is full"),
        (sqlite3.OperationalError("database is locked"), "is locked by another program"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "cannot be written"),
        (sqlite3.DatabaseError("file is not a database"), "not a usable SQLite database"),
        (sqlite3.OperationalError("disk I/O error"), "a disk error occurred"),
    ],
)
def test_database_errors_are_named_with_a_fix(error: BaseException, says: str):
    from bot.runtime import database_error

    message = str(database_error("/srv/wflogs/wflogs.db", error))
    assert (
        message.startswith(("WFLOGS_DB=/srv/wflogs/wflogs.db ", "WFLOGS_DB=/srv/wflogs/wflogs.db: "))
        and says in message
        and ";" in message
    )


def test_the_systemd_watchdog_is_fed_only_while_healthy(tmp_path: Path, dify: FakeDify, clock: Clock):
    from bot.systemd import Notifier

    app = dify.add_app("Support Bot")
    runtime = build_runtime(make_settings(tmp_path, env={"DIFY_API_KEY": app.key}), dify, clock)
    ops = Operations(runtime, now=clock)
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.setblocking(False)
        ops.systemd = Notifier(address)
        try:
            assert ops.tick() and ops.cycle() is not None
            ops.watchdog()
            assert systemd.recv(100) == b"WATCHDOG=1"
            clock.advance(3 * runtime.settings.poll_interval + 1)  # cycles hang
            assert ops.tick()
            ops.watchdog()
            with pytest.raises(BlockingIOError):
                systemd.recv(100)  # no ping: systemd restarts wflogs after WatchdogSec
        finally:
            runtime.close()


def test_a_standby_with_apps_the_active_instance_does_not_watch_says_so(
    tmp_path: Path, dify: FakeDify, clock: Clock, caplog, monkeypatch
):
    import io

    from bot.cli import main
    from bot.config import load_settings

    shared, extra = dify.add_app("Shared"), dify.add_app("Only Here")
    toml = f'[[apps]]\nname = "shared"\napi_key = "{shared.key}"\n'
    toml += f'[[apps]]\nname = "only-here"\napi_key = "{extra.key}"\n'
    settings = make_settings(tmp_path, toml=toml)
    runtime = build_runtime(settings, dify, clock)
    active = Lease(
        Store.open(settings.db_path), ttl=600, owner="elsewhere:1:beef", now=clock, apps=[settings.apps[0].id]
    )
    ops = Operations(runtime, now=clock)
    try:
        assert active.tick() and not ops.tick()
        caplog.set_level(logging.ERROR, logger="bot.service")
        body = ops.health.report()[1]
        assert body["unwatched_apps"] == ["only-here"]
        assert "does not watch only-here" in caplog.text
        ops.tick()
        assert caplog.text.count("does not watch") == 1  # said once, not every tick
    finally:
        runtime.close()
    isolate_cli(monkeypatch, tmp_path)
    monkeypatch.setenv("DIFY_API_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("WFLOGS_DB", settings.db_path)
    # check reads the real clock and its own configuration: the active instance watches "shared" only.
    mine = load_settings({"DIFY_API_URL": "http://127.0.0.1:9/v1"}, cwd=tmp_path)
    assert Lease(
        Store.open(settings.db_path), ttl=600, owner="elsewhere:2:cafe", apps=[mine.apps[0].id]
    ).tick()
    out = io.StringIO()
    main(["check"], out=out, err=io.StringIO())
    assert "! the active instance does not watch only-here from this configuration" in out.getvalue()


def test_health_can_listen_on_ipv6(tmp_path: Path, dify: FakeDify, clock: Clock):
    from bot.metrics import Metrics
    from bot.ops_http import OpsServer, ProcessHealth, make_wsgi_app

    try:
        server = OpsServer(make_wsgi_app(ProcessHealth(60, now=clock), Metrics()), "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        assert httpx.get(f"http://[::1]:{server.port}{HEALTH_PATH}").json()["status"] == "ok"
    finally:
        server.close()


def test_outbox_depth_follows_delivery_on_its_own_thread(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, clock: Clock
):
    # In `wflogs run` the cycle only finds alerts; the delivery thread sends them. /healthz and
    # /metrics must not keep showing them as waiting until the next cycle.
    app = dify.add_app("Support Bot")
    dify.add_log(app, at=T0 - 60, error="timed out")
    dify.add_log(app, at=T0 - 50, status="stopped")
    runtime, ops, stop, base = _serve(
        tmp_path, dify, slack, clock, DIFY_API_KEY=app.key, WFLOGS_HTTP_HOST="127.0.0.1"
    )
    runtime.deliver_in_cycle = False
    try:
        assert ops.tick()
        assert ops.cycle() is not None
        assert httpx.get(base + HEALTH_PATH).json()["outbox_pending"] == 2
        assert "wflogs_outbox_pending 2.0" in httpx.get(base + METRICS_PATH).text
        runtime.deliver()
        assert httpx.get(base + HEALTH_PATH).json()["outbox_pending"] == 0
        assert "wflogs_outbox_pending 0.0" in httpx.get(base + METRICS_PATH).text
    finally:
        stop()
        runtime.close()


@pytest.mark.parametrize("host", ["nosuchhost.invalid", "192.0.2.1"])
def test_an_address_that_is_not_this_hosts_names_wflogs_http_host(
    tmp_path: Path, dify: FakeDify, clock: Clock, host: str
):
    from bot.errors import ConfigError

    app = dify.add_app("Support Bot")
    settings = make_settings(
        tmp_path, env={"DIFY_API_KEY": app.key, "PORT": str(free_port()), "WFLOGS_HTTP_HOST": host}
    )
    runtime = build_runtime(settings, dify, clock)
    try:
        with pytest.raises(ConfigError) as caught:
            start_serving(runtime, Operations(runtime, now=clock))
    finally:
        runtime.close()
    message = str(caught.value)
    assert f"cannot listen on {host}:" in message and "set WFLOGS_HTTP_HOST" in message
    assert "set PORT" not in message


def test_check_says_a_lease_taken_a_moment_ago_was_taken_just_now(tmp_path: Path, dify: FakeDify):
    import io
    import time

    from bot.cli import _check_instances

    app = dify.add_app("Support Bot")
    runtime = build_runtime(make_settings(tmp_path, env={"DIFY_API_KEY": app.key}), dify, Clock(time.time()))
    try:
        assert Lease(runtime.store, ttl=120, owner="host:1:2.ab").tick()
        out = io.StringIO()
        _check_instances(runtime, out)
    finally:
        runtime.close()
    line = out.getvalue()
    assert "✓ active instance: host:1:2.ab (active since just now, renewed just now)" in line, line
    assert "0ms" not in line
