"""The console client against the console fake: both ways in, refresh, lockout, versions."""

from __future__ import annotations

import base64
import logging
import threading

import httpx
import pytest

from bot.console import ConsoleClient, ConsoleLoginError, capabilities, console_base, failed_node
from bot.errors import DifyAuthError
from tests.fakes.console import FakeConsole, Node

PASSWORD = "Secret-pass1"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _client(fake: FakeConsole, clock: Clock, **kw) -> ConsoleClient:
    http = httpx.Client(transport=httpx.MockTransport(fake.handler))
    return ConsoleClient(http=http, url="http://dify.test/v1", now=clock, **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock) -> FakeConsole:
    fake = FakeConsole(clock=clock)
    fake.add_account("bot@example.com", PASSWORD, role="editor")
    return fake


def test_console_url_accepts_an_origin_or_the_console_path_or_the_service_api():
    assert console_base("https://dify.example.com") == "https://dify.example.com/console/api"
    assert console_base("https://dify.example.com/console/api/") == "https://dify.example.com/console/api"
    assert console_base("http://127.0.0.1:5001/v1") == "http://127.0.0.1:5001/console/api"


def test_version_matrix():
    assert capabilities("1.13.3").admin_key and capabilities("1.13.3").base64_password
    assert not capabilities("1.11.1").base64_password and capabilities("1.11.1").admin_key
    old = capabilities("1.10.1")
    assert old.login and not old.admin_key and not old.current_by_post
    assert capabilities("1.9.0").unsupported and "per-app API keys" in capabilities("1.9.0").unsupported
    beta = capabilities("2.0.0-beta2")
    assert beta.unsupported and not beta.login  # older code than 1.9.0 despite its number
    assert capabilities("1.14.1").tag_ids_indexed


def test_admin_key_reads_apps_without_a_login(fake, clock):
    for n in range(130):  # two pages
        fake.add_app(f"app-{n:03}", created_at=1_700_000_000 + n // 3)  # ties in created_at
    client = _client(fake, clock, admin_key="wflogs-admin-key", workspace_id=fake.workspace_id)
    apps = client.apps()
    assert len({a["id"] for a in apps}) == 130
    assert client.role() == "owner"
    assert fake.login_attempts == 0
    assert client.version == "1.13.3"


def test_admin_key_on_1_10_is_refused_by_the_csrf_check(clock, caplog):
    fake = FakeConsole(version="1.10.1", clock=clock)
    client = _client(fake, clock, admin_key="wflogs-admin-key", workspace_id=fake.workspace_id)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            with pytest.raises(DifyAuthError):
                client.apps()
    assert caplog.text.count("1.11.0") == 1 and "DIFY_CONSOLE_EMAIL" in caplog.text
    assert not fake.console_requests("/apps")  # not asked: the answer is known
    assert "wflogs-admin-key" not in caplog.text


def test_login_reads_system_features_first_then_logs_in_once_with_cookies_and_csrf(fake, clock):
    fake.add_app("Support")
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD)
    assert len(client.apps()) == 1
    assert len(client.apps()) == 1
    paths = [r.url.path for r in fake.requests]
    assert paths.index("/console/api/system-features") < paths.index("/console/api/login")
    assert fake.login_attempts == 1
    login = next(r for r in fake.requests if r.url.path.endswith("/login"))
    assert PASSWORD.encode() not in login.content  # base64 from 1.11.2
    assert base64.b64encode(PASSWORD.encode()) in login.content
    assert client.role() == "editor"


def test_1_10_takes_the_password_plain_and_workspaces_current_by_get(clock):
    fake = FakeConsole(version="1.10.1", clock=clock)
    fake.add_account("bot@example.com", PASSWORD)
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD)
    assert client.role() == "editor"
    login = next(r for r in fake.requests if r.url.path.endswith("/login"))
    assert PASSWORD.encode() in login.content


def test_https_cookie_names_are_echoed_back(clock):
    fake = FakeConsole(https_names=True, clock=clock)
    fake.add_account("bot@example.com", PASSWORD)
    fake.add_app("Support")
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD)
    assert len(client.apps()) == 1


def test_a_rejected_password_is_tried_once_and_said_once(fake, clock, caplog):
    told: list[str] = []
    client = _client(fake, clock, email="bot@example.com", password="wrong-one", notify=told.append)
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            with pytest.raises(ConsoleLoginError):
                client.apps()
    assert fake.login_attempts == 1
    assert fake.failures["bot@example.com"] == 1
    assert len(told) == 1 and "DIFY_CONSOLE_PASSWORD" in told[0]
    assert caplog.text.count("rejected the password") == 1
    assert "wrong-one" not in caplog.text and "wrong-one" not in told[0]


def test_a_locked_out_email_is_not_tried_again(fake, clock):
    fake.failures["bot@example.com"] = 6
    told: list[str] = []
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD, notify=told.append)
    for _ in range(3):
        with pytest.raises(ConsoleLoginError):
            client.apps()
    assert fake.login_attempts == 1
    assert len(told) == 1 and "locked out" in told[0]


def test_password_login_turned_off_is_never_attempted(clock):
    fake = FakeConsole(password_login=False, clock=clock)
    fake.add_account("bot@example.com", PASSWORD)
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD)
    with pytest.raises(ConsoleLoginError, match="DIFY_ADMIN_API_KEY"):
        client.apps()
    assert fake.login_attempts == 0


def test_the_session_is_refreshed_before_expiry_once_by_many_threads(fake, clock):
    fake.add_app("Support")
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD, concurrency=3)
    client.apps()
    clock.now += 58 * 60  # two minutes before the access token expires
    errors: list[Exception] = []

    def read() -> None:
        try:
            client.apps()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fake.refresh_calls == 1 and fake.refresh_reuse == 0
    assert fake.login_attempts == 1
    assert fake.max_in_flight <= 3


def test_an_expired_session_is_renewed_and_the_request_answered(fake, clock):
    fake.add_app("Support")
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD)
    client.apps()
    fake.expire_sessions()  # e.g. the server's clock or lifetime differs from the token's exp
    assert len(client.apps()) == 1
    assert fake.refresh_calls == 1 and fake.login_attempts == 1


def test_a_dead_refresh_token_falls_back_to_one_login(fake, clock):
    fake.add_app("Support")
    client = _client(fake, clock, email="bot@example.com", password=PASSWORD)
    client.apps()
    fake.refresh_tokens.clear()  # e.g. a logout elsewhere deleted it
    clock.now += 3600
    assert len(client.apps()) == 1
    assert fake.login_attempts == 2


def test_runs_detail_and_nodes(fake, clock):
    app = fake.add_app("Chat", mode="advanced-chat")
    now = int(clock.now)
    run = fake.add_chat_run(
        app,
        at=now - 60,
        error="Connection refused",
        nodes=[
            Node("start", "start", "Start", "succeeded"),
            Node("n2", "http-request", "Call billing API", "failed", "[Errno 111] Connection refused"),
        ],
    )
    fake.add_chat_run(app, at=now - 50, triggered_from="debugging")
    client = _client(fake, clock, admin_key="wflogs-admin-key", workspace_id=fake.workspace_id)
    page = client.runs(app.app_id, status="failed")
    assert [r["id"] for r in page["data"]] == [run.run_id]
    detail = client.run_detail(app.app_id, run.run_id)
    assert detail["error"] == "Connection refused"
    assert detail["created_by_end_user"]["session_id"] == "user-42"
    node = failed_node(client.node_executions(app.app_id, run.run_id))
    assert node is not None and node["title"] == "Call billing API" and node["node_type"] == "http-request"


def test_unknown_run_is_not_found_on_both_flavours(clock):
    from bot.errors import DifyNotFound

    for version in ("1.13.3", "1.14.1"):
        fake = FakeConsole(version=version, clock=clock)
        app = fake.add_app("Flow")
        client = _client(fake, clock, admin_key="wflogs-admin-key", workspace_id=fake.workspace_id)
        with pytest.raises(DifyNotFound):
            client.run_detail(app.app_id, "00000000-0000-4000-8000-000000000000")


def test_workspace_settings_from_the_environment_and_the_toml(tmp_path):
    from bot.config import load_settings
    from bot.errors import ConfigError

    env = {
        "DIFY_API_URL": "http://dify.test/v1",
        "DIFY_ADMIN_API_KEY": "wflogs-admin-key",
        "DIFY_WORKSPACE_ID": "7d1ec3b5-5b5b-4c8a-9b1c-2f0b0c0e0a11",
        "WFLOGS_APPS": "support-*,!*-test",
    }
    settings = load_settings(env, cwd=tmp_path)
    ws = settings.workspace
    assert ws is not None and ws.way_in == "admin key" and settings.apps == ()
    assert ws.console_url == "http://dify.test/v1" and ws.concurrency == 3 and ws.discover_interval == 300
    assert ws.wants("Support-Bot") and not ws.wants("support-bot-test") and not ws.wants("billing")
    assert "wflogs-admin-key" not in repr(settings)
    with pytest.raises(ConfigError, match="DIFY_WORKSPACE_ID"):
        load_settings({"DIFY_ADMIN_API_KEY": "k"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="DIFY_CONSOLE_PASSWORD"):
        load_settings({"DIFY_CONSOLE_EMAIL": "bot@example.com"}, cwd=tmp_path)
    (tmp_path / "wflogs.toml").write_text(
        '[workspace]\nconsole_url = "https://dify.example.com"\nemail = "bot@example.com"\n'
        'password_env = "BOT_PASSWORD"\n\n[[apps]]\nname = "Billing"\nchannel = "C0BILLING"\n'
    )
    settings = load_settings({"BOT_PASSWORD": "Secret-pass1"}, cwd=tmp_path)
    ws = settings.workspace
    assert ws is not None and ws.email == "bot@example.com" and ws.password == "Secret-pass1"
    assert ws.console_url == "https://dify.example.com"
    assert settings.apps == () and [o.name for o in settings.overrides] == ["Billing"]
    assert "Secret-pass1" not in repr(settings)
