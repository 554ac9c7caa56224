"""Search answers: escaping, Slack's limits, masking, buttons (pure formatter, no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bot import search_format as fmt
from bot.errors import QueryError
from bot.query import Query, parse, parse_mute_command
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


# -- secrets inside text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "secret", "kept"),
    [
        # a key inside a JSON string nested in the inputs
        ({"payload": '{"user": "ann", "api_key": "k-123456"}'}, "k-123456", "ann"),
        ({"payload": '[{"config": {"password": "hunter2"}}]'}, "hunter2", "config"),
        # an Authorization header inside a value
        ({"curl": "curl -H 'Authorization: Bearer eyJhbGciOi.abc' https://x"}, "eyJhbGciOi", "curl -H"),
        ({"headers": "authorization=Basic dXNlcjpwYXNz"}, "dXNlcjpwYXNz", "headers"),
        ({"log": 'sent {"Authorization": "Bearer abc123"}'}, "abc123", "sent"),
        ({"log": "retry with Bearer eyJhbGciOiJIUzI1NiJ9 again"}, "eyJhbGciOiJIUzI1NiJ9", "again"),
        # a URL with a password
        ({"db": "postgres://admin:s3cr3t@db.internal:5432/app"}, "s3cr3t", "admin:"),
        ({"note": "see https://bob:pa55@example.com/x"}, "pa55", "example.com/x"),
        # key=value pairs and known tokens inside text
        ({"note": "retry with password=hunter2 later"}, "hunter2", "later"),
        ({"note": "DB_PASSWORD: hunter2"}, "hunter2", "DB_PASSWORD"),
        ({"note": "token is xoxb-1234-5678-abcdef ok"}, "xoxb-1234", " ok"),
    ],
)
def test_secrets_inside_text_are_masked(value, secret, kept):
    masked = json.dumps(fmt.mask_secrets(value), ensure_ascii=False)
    assert secret not in masked and kept in masked and fmt.MASK in masked


def test_masking_leaves_plain_text_and_json_alone():
    plain = {
        "q": "how do I reset my password?",
        "payload": '{"a": 1}',
        "url": "https://example.com/a:b@c",
        "error": "Invalid token provided; see the basic usage guide",
        "flags": "bypass=true",
        "bearer": "",
    }
    assert fmt.mask_secrets(plain) == plain


def test_run_detail_masks_the_error_too():
    error = (
        "POST https://svc:topsecret@api.internal/v1 failed: Authorization: Bearer sk-proj-abcdefghijklmnop"
    )
    detail = RunDetail(
        app_name="App", run={"id": "r1", "status": "failed", "error": error}, inputs={}, outputs={}
    )
    text, blocks = fmt.run_detail(detail)
    shown = text + json.dumps(blocks)
    assert "topsecret" not in shown and "sk-proj-abcdefghijklmnop" not in shown
    assert "api.internal" in shown
    assert "topsecret" not in fmt.run_text(detail)


# -- where the text was found, similar runs ---------------------------------------------------------

RUN = "3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b"
TB = (
    'Traceback (most recent call last):\n  File "/x.py", line 3, in main\n    json.loads(s)\n'
    "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n"
)


def test_each_line_says_where_the_text_was_found_and_a_traceback_reads_as_its_exception():
    hits = AppHits(
        name="A",
        entries=[entry(1, error=TB), entry(2, error=None, status="succeeded")],
        total=2,
        found={"log-1": "error", "log-2": "inputs/outputs"},
    )
    _, blocks = fmt.results(result(parse('"json"', now=T0), hits))
    valid(blocks)
    shown = mrkdwn(blocks)
    assert "json.decoder.JSONDecodeError: Expecting value" in shown and "Traceback" not in shown
    assert "_found in error_" in shown and "_found in inputs/outputs_" in shown


def test_similar_results_show_the_error_and_a_count_per_day():
    from bot.records import SimilarSource

    day = 86400
    source = SimilarSource(run_id=RUN, app_name="A", status="failed", error=TB, shape="s")
    res = SearchResult(
        query=parse(f"similar:{RUN}", now=T0),
        page_size=10,
        apps=[AppHits(name="A", entries=[entry(1, error=TB)], total=3, found={"log-1": "error"})],
        similar_to=source,
        per_day=[(T0 - 2 * day, 2), (T0 - day, 0), (T0, 1)],
    )
    text, blocks = fmt.results(res)
    valid(blocks)
    shown = mrkdwn(blocks)
    assert "3 runs" in text and f"like run {RUN}" in text
    assert "json.decoder.JSONDecodeError" in shown
    assert "*Per day*" in shown and "` ▇▇▇▇▇▇ 1" in shown and "` · 0" in shown
    table = fmt.table(res)
    assert "per day: " in table and "JSONDecodeError" in table


def test_run_detail_offers_similar_runs_only_for_a_run_with_an_error():
    failed = RunDetail(
        app_name="A", run={"id": RUN, "status": "failed", "error": "boom"}, inputs={}, outputs={}
    )
    _, blocks = fmt.run_detail(failed)
    (button,) = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert (button["action_id"], button["value"]) == (fmt.ACTION_SIMILAR, RUN)
    fine = RunDetail(app_name="A", run={"id": RUN, "status": "succeeded"}, inputs={}, outputs={})
    assert not [b for b in fmt.run_detail(fine)[1] if b["type"] == "actions"]


def test_the_similar_button_builder_takes_run_ids_only():
    assert fmt.similar_button(RUN, "wflogs_similar_7") == {
        "type": "button",
        "text": {"type": "plain_text", "text": "Similar runs", "emoji": True},
        "action_id": "wflogs_similar_7",
        "value": RUN,
    }
    assert fmt.similar_button(None) is None and fmt.similar_button("../x") is None


# -- the terminal ------------------------------------------------------------------------------------


def test_an_empty_answer_says_no_runs_match():
    out = fmt.table(result(parse("failed since:2h", now=T0), AppHits(name="A")))
    assert out.startswith("No failed runs since ") and "APP" not in out


def test_apps_that_could_not_be_searched_are_not_counted_as_zero_runs():
    query = parse("failed", now=T0)
    assert fmt.table(result(query, AppHits(name="A", error="cannot reach Dify"))) == ""
    out = fmt.table(
        result(query, AppHits(name="A", entries=[entry(1)], total=1), AppHits(name="B", error="x"))
    )
    assert "1 run: failed runs" in out and "could not search (the errors are on stderr): B" in out


def test_help_readme_and_manifest_show_the_same_grammar():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Slash command") : readme.index("Who may use it")]
    hint = next(line for line in (root / "manifest.yml").read_text().splitlines() if "usage_hint:" in line)
    _, blocks = fmt.help_message()
    helps = json.dumps(blocks, ensure_ascii=False)
    for form in ("session:ID", "error:TEXT", "similar:RUN_ID", "run RUN_ID", "since:"):
        assert form in section and form in hint and form in helps, form
    # The mute commands too: help shows each as the README and the manifest's hint write it.
    for form in ("mutes", "unmute N", "mute app:NAME 2h [reason]"):
        assert form in section and form in hint and form in helps, form
    help_text, _ = fmt.help_message()
    assert "/wflogs mute app:NAME 2h [reason]" in help_text and "/wflogs unmute N" in help_text
    for command in ("mutes", "unmute 3", "mute app:support-bot 2h deploying v2"):
        assert f"`/wflogs {command.split()[0]}" in helps and parse_mute_command(command) is not None
    assert "session ID]" not in section  # one spelling in the grammar
    # Every example in the README is a query the grammar takes, and each new filter has one.
    examples = [e for e in section.split("`") if e.startswith("/wflogs ") and "[" not in e]
    parsed = [parse(e.removeprefix("/wflogs "), now=T0) for e in examples]
    assert any(q.error for q in parsed) and any(q.similar for q in parsed) and any(q.keyword for q in parsed)


def test_search_lines_mask_secrets_in_errors():
    hits = AppHits(
        name="A", entries=[entry(1, error="GET https://bot:hunter22@api.example.com failed: 401")], total=1
    )
    res = result(parse("failed", now=T0), hits)
    shown = mrkdwn(fmt.results(res)[1]) + fmt.table(res)
    assert "hunter22" not in shown and "api.example.com failed: 401" in shown
