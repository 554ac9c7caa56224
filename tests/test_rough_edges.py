"""Small things a first trial ran into: wording of warnings, a masked key shown once, the /v1 hint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from bot.cli import main
from bot.config import load_settings
from bot.dify import DifyClient
from bot.errors import DifyError
from tests.conftest import build_runtime, isolate_cli, make_settings, slack_env
from tests.fakes.dify import DifyServer, FakeDify
from tests.fakes.slack import FakeSlack


def test_an_instantly_rejected_key_says_rejected_not_failing_for_0ms(tmp_path, dify: FakeDify, clock, slack):
    dify.add_app()
    key = "app-" + "r" * 20 + "nope"
    settings = make_settings(tmp_path, {"DIFY_API_KEY": key, **slack_env(slack)})
    build_runtime(settings, dify, clock).cycle()
    (warning,) = slack.posts()
    shown = warning["text"] + json.dumps(warning["blocks"])
    assert shown.count("rejected the API key") == 2  # once in the text, once in the blocks' code block
    assert "Failing for" not in shown and "0ms" not in shown
    assert warning["text"].count("…nope") == 1 and "(…nope)" not in shown


def test_the_masked_key_appears_once(tmp_path, dify: FakeDify, clock, slack: FakeSlack):
    dify.add_app()
    settings = make_settings(tmp_path, {"DIFY_API_KEY": "app-" + "z" * 20 + "nope", **slack_env(slack)})
    report = build_runtime(settings, dify, clock).cycle()
    assert report.problems[0].count("…nope") == 1
    assert report.problems[0].startswith("app …nope: Dify rejected the API key: Access token is invalid")


def _json_404(request: httpx.Request) -> httpx.Response:
    # A server (or Dify's own web API) that is not the Service API, answering 404 in JSON.
    body = {"code": "not_found", "message": "The requested URL was not found on the server.", "status": 404}
    return httpx.Response(404, json=body)


@pytest.mark.parametrize("call", ["info", "logs"])
def test_a_json_404_hints_at_v1(call: str):
    http = httpx.Client(transport=httpx.MockTransport(_json_404))
    dify = DifyClient(http=http, base_url="http://dify.example", api_key="app-" + "k" * 24, label="app")
    with pytest.raises(DifyError, match=r"check that DIFY_API_URL ends in /v1"):
        getattr(dify, call)()


def test_a_missing_run_is_still_not_found_with_a_json_404():
    from bot.errors import DifyNotFound

    http = httpx.Client(transport=httpx.MockTransport(_json_404))
    dify = DifyClient(http=http, base_url="http://dify.example/v1", api_key="app-" + "k" * 24, label="app")
    with pytest.raises(DifyNotFound):
        dify.run("0b6f0000-0000-4000-8000-000000000000")


def test_a_short_lookback_is_warned_about(tmp_path: Path):
    settings = load_settings({"DIFY_API_KEY": "app-" + "k" * 24, "WFLOGS_LOOKBACK": "600"}, cwd=tmp_path)
    assert any("WFLOGS_LOOKBACK=600 is below 1200" in w and "can be missed" in w for w in settings.warnings)
    fine = load_settings({"DIFY_API_KEY": "app-" + "k" * 24, "WFLOGS_LOOKBACK": "1200"}, cwd=tmp_path)
    assert fine.warnings == ()


def test_check_prints_the_lookback_warning_and_the_instance(monkeypatch, tmp_path: Path, dify: FakeDify):
    isolate_cli(monkeypatch, tmp_path)
    monkeypatch.setenv("DIFY_API_KEY", "app-" + "k" * 24)
    monkeypatch.setenv("DIFY_API_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("WFLOGS_LOOKBACK", "900")
    out, err = io.StringIO(), io.StringIO()
    main(["check"], out=out, err=err)
    assert "! WFLOGS_LOOKBACK=900 is below 1200 s" in out.getvalue()
    assert "no wflogs run has used this database yet" in out.getvalue()


def test_unknown_log_format_and_bad_host_are_configuration_errors(tmp_path: Path):
    from bot.errors import ConfigError

    base = {"DIFY_API_KEY": "app-" + "k" * 24}
    with pytest.raises(ConfigError, match="WFLOGS_LOG_FORMAT='xml' is not known; use text or json"):
        load_settings({**base, "WFLOGS_LOG_FORMAT": "xml"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="WFLOGS_HTTP_HOST"):
        load_settings({**base, "WFLOGS_HTTP_HOST": "http://x/"}, cwd=tmp_path)
    settings = load_settings({**base, "WFLOGS_LOG_FORMAT": "JSON"}, cwd=tmp_path)
    assert settings.log_format == "json" and settings.http_host == "0.0.0.0"


def test_check_fails_for_a_channel_the_bot_was_not_invited_to(monkeypatch, tmp_path: Path, slack: FakeSlack):
    dify = FakeDify()
    app = dify.add_app("Flow")
    slack.not_member.add("C0OUTSIDE")
    isolate_cli(monkeypatch, tmp_path)
    with DifyServer(dify) as server:
        env = {**slack_env(slack), "DIFY_API_KEY": app.key, "DIFY_API_URL": server.url}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        assert main(["check"], out=out, err=err) == 0
        monkeypatch.setenv("WFLOGS_ALERT_CHANNEL", "C0OUTSIDE")
        out = io.StringIO()
        assert main(["check"], out=out, err=err) == 1
    assert "✗ channel C0OUTSIDE (#alerts): the bot is not a member" in out.getvalue()
    assert "invite it with /invite @wflogs" in out.getvalue()


def test_check_against_the_dify_fake_without_v1_hints_at_v1(monkeypatch, tmp_path: Path):
    # The fake serves the Service API under /v1 only, as Dify does: a URL without it is a JSON 404.
    with DifyServer(FakeDify()) as server:
        app = server.fake.add_app("Support Bot")
        isolate_cli(monkeypatch, tmp_path)
        monkeypatch.setenv("DIFY_API_KEY", app.key)
        monkeypatch.setenv("DIFY_API_URL", server.url.removesuffix("/v1"))
        out, err = io.StringIO(), io.StringIO()
        code = main(["check"], out=out, err=err)
    assert code == 1
    assert "check that DIFY_API_URL ends in /v1" in out.getvalue()
