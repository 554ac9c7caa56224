"""Search answers: escaping, Slack's limits, masking, buttons (pure formatter, no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bot import search_format as fmt
from bot.errors import QueryError
from bot.query import Query, parse
from bot.records import AppHits, LogEntry, RunDetail, SearchResult
from tests.conftest import T0
from tests.fakes.slack import assert_valid_blocks, mrkdwn_texts

EVIL = "<!channel> <@U123> <https://evil.example|click> & `<!here>`"


def valid(blocks: list[dict]) -> None:
    assert_valid_blocks(blocks)


def entry(i: int, **kw) -> LogEntry:
    base = dict(log_id=f"log-{i}", created_at=T0 - i, run_id=f"run-{i}", status="failed", elapsed_time=1.0)
    return LogEntry(**{**base, **kw})


def result(query: Query, *apps: AppHits, page_size: int = 10) -> SearchResult:
    return SearchResult(query=query, page_size=page_size, apps=list(apps))


def mrkdwn(blocks: list[dict]) -> str:
    """Every mrkdwn text in the blocks: what Slack parses for mentions and links.

    (Header text is plain_text, which Slack never parses; button values are never shown.)"""
    out = mrkdwn_texts(blocks)
    assert all(b["text"]["type"] == "plain_text" for b in blocks if b["type"] == "header")
    return "\n".join(out)


def no_live_markup(text: str) -> None:
    for live in ("<!channel>", "<!here>", "<@U123>", "<https://evil"):
        assert live not in text


def test_untrusted_text_is_escaped_everywhere_including_backticks():
    query = parse(f"session:{EVIL.replace(' ', '_')} 'x'", now=T0)
    hits = AppHits(
        name="App <!everyone>",
        entries=[entry(1, session_id=EVIL, error=EVIL)],
        total=1,
    )
    text, blocks = fmt.results(result(query, hits, AppHits(name="B", error=EVIL)))
    valid(blocks)
    no_live_markup(text)
    no_live_markup(mrkdwn(blocks))
    assert "`&lt;!channel&gt; &lt;@U123&gt;" in mrkdwn(
        blocks
    )  # the session, escaped inside backticks  # the session, escaped inside backticks


def test_error_and_usage_are_escaped():
    text, blocks = fmt.error(f"unknown word {EVIL!r}", "Usage: <!here>")
    valid(blocks)
    no_live_markup(text + mrkdwn(blocks))


def test_buttons_carry_the_query_and_page_and_round_trip():
    query = parse("failed since:2h page:2", now=T0)
    hits = AppHits(name="A", entries=[entry(i) for i in range(10)], total=35)
    _, blocks = fmt.results(result(query, hits))
    valid(blocks)
    (bar,) = [b for b in blocks if b["type"] == "actions"]
    by_id = {e["action_id"]: e for e in bar["elements"]}
    assert set(by_id) == {fmt.ACTION_PREV, fmt.ACTION_NEXT, fmt.ACTION_SHARE}
    assert fmt.read_button_value(by_id[fmt.ACTION_PREV]["value"]) == query.with_page(1)
    assert fmt.read_button_value(by_id[fmt.ACTION_NEXT]["value"]) == query.with_page(3)
    assert fmt.read_button_value(by_id[fmt.ACTION_SHARE]["value"]) == query


def test_first_and_last_pages_have_no_button_past_the_end():
    hits = AppHits(name="A", entries=[entry(1)], total=1)
    _, blocks = fmt.results(result(parse("failed", now=T0), hits))
    ids = [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert ids == [fmt.ACTION_SHARE]


def test_shared_copy_has_no_buttons_and_says_who_shared_it():
    hits = AppHits(name="A", entries=[entry(1)], total=1)
    _, blocks = fmt.results(result(parse("failed", now=T0), hits), shared_by="U0ALICE")
    assert not [b for b in blocks if b["type"] == "actions"]
    assert "Shared by <@U0ALICE>" in json.dumps(blocks)
    _, forged = fmt.results(result(parse("failed", now=T0), hits), shared_by="<!channel>")
    assert "<!channel>" not in mrkdwn(forged)


def test_capped_scans_and_refusals_are_explained():
    capped = AppHits(name="A", total=0, exact=False, scanned=1000, dify_total=5000)
    refused = AppHits(name="B", error="Dify refused the query: Account not found: x@y", bad_request=True)
    text, blocks = fmt.results(result(parse("running", now=T0), capped, refused, page_size=5))
    dump = json.dumps(blocks)
    assert "at least 0 runs" in text
    assert "the newest 1,000 of 5,000 runs were read" in dump
    assert "Account not found: x@y" in dump and "Usage: /wflogs" in dump


def test_a_full_page_of_long_runs_in_many_apps_stays_within_slacks_limits():
    apps = [
        AppHits(
            name=f"App {n} " + "n" * 200,
            entries=[entry(i, session_id="s" * 300, error="<e>" * 500) for i in range(5)],
            total=500,
        )
        for n in range(12)
    ]
    _, blocks = fmt.results(result(parse("failed", now=T0), *apps, page_size=5))
    valid(blocks)
    assert blocks[-2]["type"] == "actions"  # the buttons survive the cut


def test_run_detail_masks_secrets_and_fits():
    detail = RunDetail(
        app_name="App",
        run={"id": "r1", "status": "failed", "error": EVIL, "created_at": T0, "finished_at": T0 + 2},
        inputs={
            "q": "hello",
            "api_key": "sk-live-123",
            "password": "hunter2",
            "nested": {"Authorization": "Bearer abc", "token_count": 5},
            "note": "xoxb-1234-5678-abcdef",
            "sys.user_id": "user_1",
            "big": EVIL * 500,
        },
        outputs={"answer": "<!channel> hi" * 2000},
    )
    text, blocks = fmt.run_detail(detail)
    valid(blocks)
    dump = text + json.dumps(blocks, ensure_ascii=False)
    no_live_markup(text + mrkdwn(blocks))
    for secret in ("sk-live-123", "hunter2", "Bearer abc", "xoxb-1234"):
        assert secret not in dump
    assert "user_1" in dump and "hello" in dump


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ({"password": "x"}, {"password": fmt.MASK}),
        ({"client_secret": "x", "name": "ok"}, {"client_secret": fmt.MASK, "name": "ok"}),
        ({"key": "x", "monkey": "banana"}, {"key": fmt.MASK, "monkey": "banana"}),
        ({"password": ""}, {"password": ""}),
        ([{"auth": "x"}], [{"auth": fmt.MASK}]),
        ("app-abcdefghijklmnopqrstuvwx", fmt.MASK),
        ("plain text", "plain text"),
    ],
)
def test_mask_secrets(value, masked):
    assert fmt.mask_secrets(value) == masked


@pytest.mark.parametrize("value", ["", "not json", "[]", '{"page": -1}', '"x"'])
def test_damaged_button_values_are_query_errors(value):
    with pytest.raises(QueryError):
        fmt.read_button_value(value)


def test_help_is_valid_block_kit():
    _, blocks = fmt.help_message()
    valid(blocks)


def test_formatters_do_not_import_slack_sdk():
    # httpx arrives only through bot.dify's LogEntry, as it does for alert_format.
    code = (
        "import sys, bot.search_format, bot.query; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'slack_sdk', 'slack_bolt')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "slack_sdk" not in out and "slack_bolt" not in out
