"""Settings for who is told and when: mentions, escalation, failure rate, stuck runs."""

from __future__ import annotations

import pytest

from bot.blocks import mention_text
from bot.config import escalation_for, mentions_for, rate_threshold_for, stuck_after_for
from bot.errors import ConfigError
from tests.conftest import make_settings

KEY = "app-" + "a" * 20 + "KEY1"
KEY2 = "app-" + "b" * 20 + "KEY2"


def test_everything_is_off_by_default(tmp_path):
    s = make_settings(tmp_path, {"DIFY_API_KEY": KEY})
    (app,) = s.apps
    assert mentions_for(s, app) == ()
    assert escalation_for(s, app) == (0, ())
    assert rate_threshold_for(s, app) == 0 and stuck_after_for(s, app) == 0
    assert s.watch.rate_window == 900 and s.watch.rate_min_runs == 10
    assert not s.warnings


def test_environment_defaults(tmp_path):
    s = make_settings(
        tmp_path,
        {
            "DIFY_API_KEY": KEY,
            "WFLOGS_MENTION": " U0123ABCD, S0456EFGH ,here,,W0789XYZ, channel",
            "WFLOGS_ESCALATE_AFTER": "900",
            "WFLOGS_RATE_THRESHOLD": "0.2",
            "WFLOGS_RATE_WINDOW": "600",
            "WFLOGS_RATE_MIN_RUNS": "25",
            "WFLOGS_STUCK_AFTER": "1800",
        },
    )
    (app,) = s.apps
    assert mentions_for(s, app) == ("U0123ABCD", "S0456EFGH", "here", "W0789XYZ", "channel")
    # escalate_to defaults to the mention list
    assert escalation_for(s, app) == (900, mentions_for(s, app))
    assert rate_threshold_for(s, app) == 0.2 and stuck_after_for(s, app) == 1800
    assert s.watch.rate_window == 600 and s.watch.rate_min_runs == 25


def test_per_app_settings_override_the_environment(tmp_path):
    toml = f"""
[[apps]]
name = "support-bot"
api_key = "{KEY}"
mention = ["S0SUPPORT", "here"]
escalate_after = 600
escalate_to = ["U0ONCALL1"]
rate_threshold = 0.5
stuck_after = 3600

[[apps]]
name = "quiet"
api_key = "{KEY2}"
rate_threshold = 0
"""
    s = make_settings(
        tmp_path,
        {
            "WFLOGS_MENTION": "U0DEFAULT",
            "WFLOGS_ESCALATE_TO": "U0LEAD01",
            "WFLOGS_ESCALATE_AFTER": "1200",
            "WFLOGS_RATE_THRESHOLD": "20%",
        },
        toml=toml,
    )
    support, quiet = s.apps
    assert mentions_for(s, support) == ("S0SUPPORT", "here")
    assert escalation_for(s, support) == (600, ("U0ONCALL1",))
    assert rate_threshold_for(s, support) == 0.5 and stuck_after_for(s, support) == 3600
    assert mentions_for(s, quiet) == ("U0DEFAULT",)
    assert escalation_for(s, quiet) == (1200, ("U0LEAD01",))
    assert rate_threshold_for(s, quiet) == 0  # turned off for this app
    assert stuck_after_for(s, quiet) == 0


@pytest.mark.parametrize(
    ("env", "toml_extra", "message"),
    [
        ({"WFLOGS_MENTION": "@alice"}, "", "looks like a name, not an ID"),
        ({"WFLOGS_MENTION": "U0123ABCD,#ops-team"}, "", "Copy member ID"),
        ({"WFLOGS_MENTION": "alice.smith"}, "", "looks like a name"),
        ({"WFLOGS_MENTION": "C0123ABCD"}, "", "is a channel ID, not a person or group"),
        ({"WFLOGS_MENTION": "everyone"}, "", "use channel"),
        ({"WFLOGS_ESCALATE_TO": "bob"}, "", "WFLOGS_ESCALATE_TO"),
        ({"WFLOGS_ESCALATE_AFTER": "soon"}, "", "WFLOGS_ESCALATE_AFTER"),
        ({"WFLOGS_RATE_THRESHOLD": "20"}, "", "use e.g. 0.2 for 20%"),
        ({"WFLOGS_RATE_THRESHOLD": "a lot"}, "", "is not a number"),
        ({"WFLOGS_RATE_THRESHOLD": "0.2", "WFLOGS_RATE_WINDOW": "3600"}, "", "set WFLOGS_LOOKBACK=3600"),
        ({"WFLOGS_LOOKBACK": "600"}, "rate_threshold = 0.3", "set WFLOGS_LOOKBACK=900"),
        ({"WFLOGS_RATE_MIN_RUNS": "0"}, "", "WFLOGS_RATE_MIN_RUNS=0 is too small"),
        ({"WFLOGS_STUCK_AFTER": "30"}, "", "WFLOGS_STUCK_AFTER=30 is too small"),
        ({}, 'mention = ["@oncall"]', "[[apps]] #1: mention"),
        ({}, "mention = 42", "must be a list of Slack IDs"),
        ({}, 'escalate_to = ["Bob Smith"]', "escalate_to"),
        ({}, 'escalate_after = "10m"', "whole number of seconds"),
        ({}, "rate_threshold = 1.5", "not a fraction between 0 and 1"),
        ({}, "stuck_after = -1", "too small"),
    ],
)
def test_bad_watch_settings_name_the_fix(tmp_path, env, toml_extra, message):
    toml = f'[[apps]]\napi_key = "{KEY}"\n{toml_extra}\n'
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, env, toml=toml)
    assert message in str(caught.value)


def test_a_short_lookback_is_fine_while_no_app_uses_a_failure_rate(tmp_path):
    s = make_settings(tmp_path, {"DIFY_API_KEY": KEY, "WFLOGS_LOOKBACK": "600"})
    assert s.lookback == 600 and s.watch.rate_window == 900


def test_a_longer_rate_window_is_fine_with_a_longer_lookback(tmp_path):
    s = make_settings(
        tmp_path, {"DIFY_API_KEY": KEY, "WFLOGS_RATE_WINDOW": "3600", "WFLOGS_LOOKBACK": "3600"}
    )
    assert s.watch.rate_window == 3600


def test_start_up_warnings_for_a_short_stuck_limit_and_an_escalation_to_nobody(tmp_path):
    s = make_settings(
        tmp_path, {"DIFY_API_KEY": KEY, "WFLOGS_STUCK_AFTER": "600", "WFLOGS_ESCALATE_AFTER": "300"}
    )
    assert any("below Dify's WORKFLOW_MAX_EXECUTION_TIME" in w for w in s.warnings)
    assert any("escalation is on but names nobody" in w for w in s.warnings)
    fine = make_settings(tmp_path, {"DIFY_API_KEY": KEY, "WFLOGS_STUCK_AFTER": "1200"})
    assert not fine.warnings


def test_mentions_render_as_slack_syntax():
    assert mention_text(("U0123ABCD", "W0789XYZ", "S0456EFGH", "here", "channel")) == (
        "<@U0123ABCD> <@W0789XYZ> <!subteam^S0456EFGH> <!here> <!channel>"
    )
    assert mention_text(()) == ""
