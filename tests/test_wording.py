"""Smaller wording (issue 18 item 12): config errors write NAME=VALUE alike, and the manifest's
usage hint lists every status the grammar takes."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from bot.cli import main
from bot.query import STATUS_WORDS
from tests.conftest import isolate_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"WFLOGS_ALERT_CHANNEL": "#alerts"}, "WFLOGS_ALERT_CHANNEL='#alerts' is not a Slack channel ID"),
        ({"PORT": "abc"}, "PORT='abc' is not"),
    ],
)
def test_config_errors_write_name_equals_value_without_spaces(monkeypatch, tmp_path, env, says):
    # Dify on a port nothing listens on: the configuration fails before any request anyway.
    isolate_cli(
        monkeypatch, tmp_path, DIFY_API_KEY="app-" + "k" * 24, DIFY_API_URL="http://127.0.0.1:9/v1", **env
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["check"], out=out, err=err) != 0
    said = out.getvalue() + err.getvalue()
    assert says in said, said
    assert not re.search(r"[A-Z_]+ = ", said)


def test_the_manifest_usage_hint_names_every_status():
    hint = next(line for line in (ROOT / "manifest.yml").read_text().splitlines() if "usage_hint:" in line)
    for status in STATUS_WORDS:
        if status != "partial-succeeded":
            assert status in hint, status
