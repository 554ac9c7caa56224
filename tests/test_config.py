"""Configuration: one app from the environment, many from TOML, every mistake named with its fix."""

from __future__ import annotations

import logging

import pytest

from bot.config import alert_channel_for, load_settings
from bot.errors import ConfigError
from bot.logs import SecretFilter
from tests.conftest import make_settings

KEY = "app-" + "a" * 20 + "KEY1"


def test_one_app_from_the_environment_with_defaults(tmp_path):
    s = load_settings({"DIFY_API_KEY": KEY}, cwd=tmp_path)
    (app,) = s.apps
    assert app.api_url == "https://api.dify.ai/v1"
    assert s.poll_interval == 60 and s.backfill == 3600 and s.lookback >= 1200
    assert s.db_path == "wflogs.db" and not s.slack_enabled
    assert KEY not in repr(s) and KEY not in repr(app)


def test_many_apps_from_toml(tmp_path):
    toml = f"""
[[apps]]
name = "support-bot"
api_key = "{KEY}"
channel = "C0SUPPORT"
console_url = "https://cloud.dify.ai/app/1/logs"

[[apps]]
api_key_env = "DIFY_KEY_OTHER"
api_url = "http://dify.internal/v1/"
"""
    s = make_settings(
        tmp_path,
        {
            "DIFY_KEY_OTHER": "app-" + "b" * 24,
            "WFLOGS_ALERT_CHANNEL": "C0DEFAULT",
            "DIFY_API_KEY": "app-" + "c" * 24,
        },
        toml=toml,
    )
    first, second = s.apps
    assert first.name == "support-bot" and alert_channel_for(s, first) == "C0SUPPORT"
    assert second.api_url == "http://dify.internal/v1" and alert_channel_for(s, second) == "C0DEFAULT"
    assert first.id != second.id
    assert any("DIFY_API_KEY is set but ignored" in w for w in s.warnings)


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        ({}, None, "export DIFY_API_KEY"),
        ({"DIFY_API_KEY": KEY, "WFLOGS_POLL_INTERVAL": "soon"}, None, "WFLOGS_POLL_INTERVAL"),
        ({"DIFY_API_KEY": KEY, "WFLOGS_POLL_INTERVAL": "1"}, None, "too small"),
        ({"DIFY_API_KEY": KEY, "WFLOGS_ALERT_CHANNEL": "#alerts"}, None, "not a Slack channel ID"),
        ({"DIFY_API_KEY": KEY, "SLACK_BOT_TOKEN": "xoxb-1"}, None, "no alert channel"),
        ({"DIFY_API_KEY": KEY, "SLACK_BOT_TOKEN": "secret"}, None, "starts with xoxb-"),
        ({"DIFY_API_KEY": KEY, "DIFY_API_URL": "dify.local"}, None, "not an http(s) URL"),
        ({"DIFY_API_KEY": KEY, "WFLOGS_TIMEZONE": "Mars/Olympus"}, None, "IANA"),
        ({"DIFY_API_KEY": KEY, "WFLOGS_DIGEST_TIME": "9am"}, None, "HH:MM"),
        ({}, "[[apps]]\nname = 'x'\n", "missing api_key"),
        ({}, f"[[apps]]\napi_key = '{KEY}'\nchanel = 'C1'\n", "unknown field 'chanel'"),
        ({}, "[[apps]]\napi_key_env = 'NOPE'\n", "NOPE"),
        ({}, "[[apps]\n", "not valid TOML"),
        ({}, "", "no [[apps]]"),
        ({}, f"[[apps]]\napi_key = '{KEY}'\n[[apps]]\napi_key = '{KEY}'\n", "same api_key"),
        ({}, f"[[apps]]\napi_key = '{KEY}'\n[slak]\n", "unknown section"),
    ],
)
def test_bad_configuration_is_named_with_its_fix(tmp_path, env, toml, message):
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, env, toml=toml)
    assert message in str(caught.value)
    assert KEY not in str(caught.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"WFLOGS_CONFIG": "missing.toml"}, cwd=tmp_path)


def test_wflogs_toml_in_the_working_directory_is_used(tmp_path):
    (tmp_path / "wflogs.toml").write_text(f"[[apps]]\napi_key = '{KEY}'\nname = 'here'\n")
    assert load_settings({}, cwd=tmp_path).apps[0].name == "here"


def test_secrets_are_scrubbed_from_log_records():
    secret_filter = SecretFilter([KEY, "xoxb-very-secret-token"])
    record = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "key %s token %s and app-abcdefghijklmnop",
        (KEY, "xoxb-very-secret-token"),
        None,
    )
    secret_filter.filter(record)
    text = record.getMessage()
    assert KEY not in text and "xoxb-very-secret-token" not in text and "app-abcdefghijklmnop" not in text
    assert text.count("***") == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "abc", "PORT='abc' is not a port number; e.g. PORT=3000"),
        ("PORT", "70000", "PORT=70000 is too large; use 65535 or less"),
        ("WFLOGS_CONCURRENCY", "many", "WFLOGS_CONCURRENCY='many' is not a whole number; e.g."),
        ("WFLOGS_RATE_MIN_RUNS", "ten", "WFLOGS_RATE_MIN_RUNS='ten' is not a whole number of runs; e.g."),
        ("WFLOGS_POLL_INTERVAL", "soon", "WFLOGS_POLL_INTERVAL='soon' is not a whole number of seconds"),
    ],
)
def test_a_number_that_is_not_one_says_what_kind_of_number(tmp_path, name, value, message):
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, {"DIFY_API_KEY": KEY, name: value})
    assert message in str(caught.value)


def test_no_app_names_every_way_to_configure_one(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings({"WFLOGS_DB": str(tmp_path / "w.db")})
    text = str(caught.value)
    assert "DIFY_API_KEY=app-" in text and "DIFY_ADMIN_API_KEY and DIFY_WORKSPACE_ID" in text
    assert "wflogs.toml" in text
