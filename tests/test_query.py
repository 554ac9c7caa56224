"""The /wflogs grammar: every form it takes and every mistake it names."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.errors import QueryError
from bot.query import USAGE, Query, describe, parse
from tests.conftest import T0

RUN = "3f2b9c4e-1d2a-4b6f-9e1a-0c4d5e6f7a8b"


def p(text: str, tz: str = "UTC") -> Query:
    return parse(text, now=T0, tz=ZoneInfo(tz))


def test_empty_query_is_every_recent_run():
    q = p("")
    assert (q.kind, q.statuses, q.keyword, q.page) == ("search", (), None, 1)


def test_statuses_in_canonical_order_without_duplicates():
    assert p("stopped failed failed").statuses == ("failed", "stopped")
    assert p("partial").statuses == ("partial-succeeded",)
    assert p("status:running,paused").statuses == ("running", "paused")
    assert p("FAILED").statuses == ("failed",)


def test_durations_count_back_from_now():
    assert p("since:2h").since == T0 - 7200
    assert p("since:1h30m").since == T0 - 5400
    assert p("after:3d").since == T0 - 3 * 86400
    assert p("until:15m").until == T0 - 900
    assert p("since:1w").since == T0 - 604800


def test_dates_are_in_the_bot_time_zone_unless_they_say_otherwise():
    berlin = ZoneInfo("Europe/Berlin")
    q = p("since:2026-11-16 until:2026-11-16", tz="Europe/Berlin")
    assert q.since == int(datetime(2026, 11, 16, tzinfo=berlin).timestamp())
    assert (
        q.until == int(datetime(2026, 11, 17, tzinfo=berlin).timestamp()) - 1
    )  # a bare date ends at midnight
    assert p("since:2026-11-16T09:30:00Z").since == int(datetime(2026, 11, 16, 9, 30, tzinfo=UTC).timestamp())
    assert p('since:"2026-11-16 09:30"').since == int(datetime(2026, 11, 16, 9, 30, tzinfo=UTC).timestamp())


def test_today_and_yesterday():
    midnight = int(datetime.fromtimestamp(T0, UTC).replace(hour=0, minute=0, second=0).timestamp())
    assert p("since:today").since == midnight
    q = p("since:yesterday until:yesterday")
    assert (q.since, q.until) == (midnight - 86400, midnight - 1)


def test_before_a_day_stops_where_that_day_starts_until_takes_it_whole():
    midnight = int(datetime.fromtimestamp(T0, UTC).replace(hour=0, minute=0, second=0).timestamp())
    q = p("since:yesterday before:today")  # yesterday's runs, not today's as well
    assert (q.since, q.until) == (midnight - 86400, midnight - 1)
    assert p("before:2026-11-17").until == int(datetime(2026, 11, 17, tzinfo=UTC).timestamp()) - 1
    assert p("until:2026-11-17").until == int(datetime(2026, 11, 18, tzinfo=UTC).timestamp()) - 1
    assert p("to:today").until == midnight + 86400 - 1
    assert p("before:2h").until == T0 - 7200 - 1
    with pytest.raises(QueryError, match="since: is later than before:"):
        p("since:today before:today")


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ('"timeout"', "timeout"),
        ('"timed out after"', "timed out after"),
        ("\u201ctimed out\u201d", "timed out"),  # Slack's clients turn quotes curly
        ("'single quoted'", "single quoted"),
        ('keyword:"Connection refused"', "Connection refused"),
        ('failed "a <b> & c"', "a <b> & c"),
    ],
)
def test_quoted_text_is_the_keyword(text, keyword):
    assert p(text).keyword == keyword


def test_the_full_form():
    q = p(
        'failed since:2h until:30m app:"Support Bot" session:user_1 account:ops@example.com "refused" page:3'
    )
    assert q == Query(
        statuses=("failed",),
        since=T0 - 7200,
        until=T0 - 1800,
        app="Support Bot",
        session="user_1",
        account="ops@example.com",
        keyword="refused",
        page=3,
    )


def test_session_word_and_filter_forms():
    assert p("session user_workflow_123").session == "user_workflow_123"
    assert p('session "id with spaces" failed').session == "id with spaces"
    assert p("user:abc").session == "abc"


def test_run_forms():
    assert p(f"run {RUN}") == Query(kind="run", run_id=RUN)
    assert p(RUN.upper()).run_id == RUN  # a bare run id works and is normalised
    assert p(f"run:{RUN} app:billing") == Query(kind="run", run_id=RUN, app="billing")


def test_help():
    assert p("help").kind == "help"


def test_long_keyword_gets_a_note_about_difys_30_characters():
    assert p('"' + "x" * 31 + '"').notes
    assert not p('"' + "x" * 30 + '"').notes


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("limit:0", "limit:0 is not a number of runs"),
        ("limit:101", "limit:101 is not a number of runs"),
        ("limit:ten", "limit:ten is not a number of runs"),
        ("before:soon", "cannot read the time 'soon'"),
        ("color:red", "unknown filter color: —"),
        ("sinse:2h", "unknown filter sinse: (did you mean since:?)"),
        ("since:2x", "cannot read the time '2x'"),
        ("since:", "since: needs a value"),
        ("since:2026-13-45", "not a real date"),
        ("since:500d", "too far back"),
        ("since:2099-01-01", "in the future"),
        ("since:1h until:2h", "since: is later than until:"),
        ("page:0", "page:0 is not a page number"),
        ("page:two", "page:two is not a page number"),
        ("page:100000", "not a page number"),
        ("status:done", "unknown status 'done'"),
        ("account:ops", "takes the console account's e-mail"),
        ('"unclosed', "a quote is not closed"),
        ('""', "the search text in quotes is empty"),
        (f"run {RUN} timeout", "run RUN_ID takes only app:NAME"),
        ("app:a app:b", "app: is given twice"),
        ("session", "session needs an id"),
        ("run", "run needs an id"),
        ("run not-a-uuid", "'not-a-uuid' is not a run id"),
        (f"run {RUN} failed", "run RUN_ID takes only app:NAME"),
        ("help me", "help takes nothing"),
        ("x" * 501, "keep it under 500"),
    ],
)
def test_every_mistake_is_named_with_the_usage_line(text, says):
    with pytest.raises(QueryError) as caught:
        p(text)
    assert says in str(caught.value)
    assert caught.value.usage == USAGE


def test_round_trip_through_a_button_value_keeps_the_query():
    q = p('failed partial since:2h app:x session:s "k" page:4')
    assert Query.from_dict(q.to_dict()) == q
    assert Query.from_dict(q.to_dict()).with_page(5).page == 5


@pytest.mark.parametrize(
    "bad", [None, [], {"page": 0}, {"page": "2"}, {"since": "yesterday"}, {"keyword": 5}]
)
def test_a_damaged_button_value_is_a_query_error(bad):
    with pytest.raises(QueryError, match="damaged"):
        Query.from_dict(bad)


def test_describe_reads_like_a_sentence():
    text = describe(p('failed stopped session:s "k" since:2026-11-16T00:00:00Z'))
    assert text == "failed or stopped runs of session s matching “k” since 2026-11-16 00:00 UTC"


def test_the_issue_grammar_example_with_an_unquoted_keyword_and_limit():
    q = p("session u_1 timeout page:2 limit:10")
    assert (q.session, q.keyword, q.page, q.limit) == ("u_1", "timeout", 2, 10)
    assert not q.notes


def test_unquoted_words_are_search_text_and_a_typo_gets_a_did_you_mean_note():
    q = p("faild since:2h")
    assert q.keyword == "faild" and q.statuses == ()
    assert any("did you mean failed?" in note for note in q.notes)
    assert p('refund "time out" again').keyword == "refund time out again"


def test_status_key_before_and_control_characters():
    q = p("status:failed before:2026-11-17 \x07\x1bquery")
    assert q.statuses == ("failed",) and q.until is not None
    assert q.keyword == "query"


def test_limit_survives_the_button_round_trip():
    q = p("failed limit:25")
    assert Query.from_dict(q.to_dict()).limit == 25


def test_error_and_similar_forms():
    q = p('failed error:"rate limit" since:1d')
    assert (q.error, q.keyword, q.statuses, q.since) == ("rate limit", None, ("failed",), T0 - 86400)
    assert describe(q).startswith("failed runs with an error matching “rate limit”")
    s = p(f"similar:{RUN.upper()} app:billing")
    assert (s.similar, s.app, s.since, s.until) == (RUN, "billing", T0 - 7 * 86400, None)  # a week by default
    assert p(f"similar:{RUN} since:2d").since == T0 - 2 * 86400
    assert p(f"like:{RUN}").similar == RUN
    assert f"with an error like run {RUN}" in describe(s)
    for q in (p('error:"x y" stopped page:2'), s):
        assert Query.from_dict(q.to_dict()) == q


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("similar:12345", "similar: takes a run id"),
        (f"similar:{RUN} timeout", "takes no search text or error:"),
        (f"similar:{RUN} error:x", "takes no search text or error:"),
        ("error:x timeout", "give one of them"),
        ("error:a error:b", "error: is given twice"),
        ("error:", "error: needs a value"),
        (f"run {RUN} error:x", "run RUN_ID takes only app:NAME"),
    ],
)
def test_error_and_similar_mistakes_are_named(text, says):
    with pytest.raises(QueryError, match=re.escape(says)):
        p(text)


@pytest.mark.parametrize(
    "forged",
    [
        {"kind": "run", "run_id": "../../info"},
        {"kind": "run", "run_id": "00000000-0000-4000-8000-000000000000/../x"},
        {"similar": "../logs?keyword=x"},
        {"kind": "run"},
        {"kind": "evil"},
    ],
)
def test_a_forged_button_cannot_put_anything_but_a_run_id_into_a_dify_url(forged):
    with pytest.raises(QueryError, match=r"not a run id|damaged"):
        Query.from_dict(forged)


def test_usage_shows_the_whole_grammar_once():
    for part in ("session:ID", "error:TEXT", "similar:RUN_ID", '"search text"', "run RUN_ID", "help"):
        assert part in USAGE
