"""Searching Dify: what is sent, what is filtered here, totals, paging, several apps, failures."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from bot.config import AppConfig
from bot.dify import DifyClient
from bot.errors import QueryError
from bot.query import Query, parse
from bot.search import DETAIL_CAP, PAGE_SIZE, SCAN_PAGES, Target, choose_apps, find_run, search
from tests.conftest import T0
from tests.fakes.dify import FakeApp, FakeDify


def target(dify: FakeDify, app: FakeApp, *, transport: httpx.BaseTransport | None = None) -> Target:
    http = httpx.Client(transport=transport or httpx.MockTransport(dify.handler))
    client = DifyClient(
        http=http,
        base_url="http://dify.test/v1",
        api_key=app.key,
        label=app.name,
        backoff=0,
        sleep=lambda s: None,
    )
    return Target(
        app=AppConfig(api_key=app.key, api_url="http://dify.test/v1", name=app.name),
        name=app.name,
        client=client,
    )


def q(text: str) -> Query:
    return parse(text, now=T0)


def log_params(dify: FakeDify) -> list[dict[str, str]]:
    return [dict(r.url.params) for r in dify.log_requests()]


def test_dify_filters_what_it_can_and_the_total_is_exact(dify: FakeDify):
    app = dify.add_app()
    for i in range(25):
        dify.add_log(app, status="failed", at=T0 - 100 - i)
    dify.add_log(app, status="succeeded", at=T0 - 50)
    result = search(q("failed since:1h"), [target(dify, app)], now=T0)
    hits = result.apps[0]
    assert (hits.total, hits.exact, len(hits.entries), result.pages) == (25, True, PAGE_SIZE, 3)
    assert all(e.status == "failed" for e in hits.entries)
    (params,) = log_params(dify)
    assert params["status"] == "failed"
    assert params["created_at__after"] == "2026-11-18T10:06:40Z"  # since:1h, sent with Z
    assert params["created_at__before"] == "2026-11-18T11:06:40Z"  # until frozen at the search's now
    assert datetime.fromtimestamp(T0, UTC).isoformat() == "2026-11-18T11:06:40+00:00"


def test_pages_are_disjoint_and_cover_every_run_even_within_one_second(dify: FakeDify):
    app = dify.add_app()
    runs = [dify.add_log(app, status="failed", at=T0 - 10) for _ in range(23)]  # all in ONE second
    t = target(dify, app)
    seen: list[str] = []
    for page in (1, 2, 3):
        seen += [e.log_id for e in search(q(f"failed page:{page}"), [t], now=T0).apps[0].entries]
    assert sorted(seen) == sorted(r.log_id for r in runs)


def test_statuses_dify_cannot_filter_are_filtered_here(dify: FakeDify):
    app = dify.add_app()
    partial = [
        dify.add_log(app, status="partial-succeeded", at=T0 - 10 - i, exceptions_count=1) for i in range(3)
    ]
    for i in range(40):
        dify.add_log(app, status="succeeded", at=T0 - 100 - i)
    result = search(q("partial"), [target(dify, app)], now=T0)
    hits = result.apps[0]
    assert {e.log_id for e in hits.entries} == {r.log_id for r in partial}
    assert (hits.total, hits.exact) == (3, True)
    assert all("status" not in p for p in log_params(dify))  # never a 400 for partial-succeeded


def test_several_statuses_are_filtered_here(dify: FakeDify):
    app = dify.add_app()
    dify.add_log(app, status="failed", at=T0 - 10)
    dify.add_log(app, status="stopped", at=T0 - 11)
    dify.add_log(app, status="succeeded", at=T0 - 12)
    hits = search(q("failed stopped"), [target(dify, app)], now=T0).apps[0]
    assert sorted(e.status or "" for e in hits.entries) == ["failed", "stopped"]


def test_a_local_scan_stops_at_its_cap_and_says_so(dify: FakeDify):
    app = dify.add_app()
    for i in range(SCAN_PAGES * 100 + 50):
        dify.add_log(app, status="succeeded", at=T0 - 100 - i)
    dify.add_log(app, status="running", at=T0 - 100 - SCAN_PAGES * 100 - 60)  # beyond the cap
    result = search(q("running"), [target(dify, app)], now=T0)
    hits = result.apps[0]
    assert (hits.total, hits.exact, hits.scanned, hits.dify_total) == (0, False, SCAN_PAGES * 100, 1051)
    assert len(dify.log_requests()) == SCAN_PAGES


def test_keyword_and_session_are_never_sent_together_few_runs(dify: FakeDify):
    app = dify.add_app()
    hit = dify.add_log(app, at=T0 - 10, session="alice", inputs={"q": "Where is my ORDER?"})
    dify.add_log(app, at=T0 - 11, session="alice", inputs={"q": "hello"})
    dify.add_log(app, at=T0 - 12, session="bob", inputs={"q": "order"})
    hits = search(q('session alice "order"'), [target(dify, app)], now=T0).apps[0]
    assert [e.log_id for e in hits.entries] == [hit.log_id]
    assert hits.total == 1
    for params in log_params(dify):
        assert not ("keyword" in params and "created_by_end_user_session_id" in params)


def test_keyword_and_session_on_a_busy_session_send_the_keyword_and_match_the_session_here(dify: FakeDify):
    app = dify.add_app()
    for i in range(DETAIL_CAP + 5):
        dify.add_log(app, at=T0 - 100 - i, session="busy", inputs={"q": "plain"})
    hit = dify.add_log(app, at=T0 - 10, session="busy", inputs={"q": "needle"})
    dify.add_log(app, at=T0 - 11, session="other", inputs={"q": "needle"})
    hits = search(q('session busy "needle"'), [target(dify, app)], now=T0).apps[0]
    assert [e.log_id for e in hits.entries] == [hit.log_id]
    params = log_params(dify)
    assert any(p.get("keyword") == "needle" and "created_by_end_user_session_id" not in p for p in params)
    assert not any("keyword" in p and "created_by_end_user_session_id" in p for p in params)
    assert not [r for r in dify.requests if "/workflows/run/" in r.url.path]  # no detail reads


def test_several_apps_get_a_section_each(dify: FakeDify):
    a, b = dify.add_app("A"), dify.add_app("B")
    for i in range(7):
        dify.add_log(a, at=T0 - 10 - i)
    dify.add_log(b, at=T0 - 10)
    result = search(q("failed"), [target(dify, a), target(dify, b)], now=T0)
    assert [(h.name, h.total) for h in result.apps] == [("A", 7), ("B", 1)]
    assert result.page_size == 5 and result.pages == 2


def test_page_out_of_range_is_an_error(dify: FakeDify):
    app = dify.add_app()
    for i in range(12):
        dify.add_log(app, at=T0 - 10 - i)
    with pytest.raises(QueryError, match="page 3 is out of range: 12 matching runs fill 2 pages"):
        search(q("failed page:3"), [target(dify, app)], now=T0)


def test_unknown_account_is_reported_as_difys_refusal(dify: FakeDify):
    app = dify.add_app()
    hits = search(q("account:nobody@example.com"), [target(dify, app)], now=T0).apps[0]
    assert hits.bad_request and "Account not found: nobody@example.com" in (hits.error or "")


def test_dify_down_or_key_rejected_is_an_error_per_app_not_a_crash(dify: FakeDify):
    good, gone = dify.add_app("Good"), dify.add_app("Gone")
    dify.add_log(good, at=T0 - 10)
    bad_key = Target(
        app=AppConfig(api_key="app-" + "x" * 24, name="Revoked"),
        name="Revoked",
        client=DifyClient(
            http=httpx.Client(transport=httpx.MockTransport(dify.handler)),
            base_url="http://dify.test/v1",
            api_key="app-" + "x" * 24,
            label="Revoked",
            backoff=0,
        ),
    )
    gone.mode = "deleted"
    result = search(q("failed"), [target(dify, good), bad_key, target(dify, gone)], now=T0)
    good_hits, revoked, deleted = result.apps
    assert good_hits.total == 1 and good_hits.error is None
    # The answer puts the app's name before the error: the error names the key, not the app again.
    assert "rejected the API key (…xxxx)" in (revoked.error or "") and "Revoked" not in (revoked.error or "")
    assert "x" * 24 not in (revoked.error or "")
    assert "no longer exists" in (deleted.error or "") and deleted.name not in (deleted.error or "")

    dify.fail_next(3, "connect")
    down = search(q("failed"), [target(dify, good)], now=T0).apps[0]
    assert "cannot reach Dify" in (down.error or "")


def test_choose_apps_by_channel_name_prefix_and_refuses_unknown(tmp_path):
    from tests.conftest import make_settings

    toml = """
[[apps]]
name = "support-bot"
api_key = "app-aaaaaaaaaaaaaaaaaaaaaaaa"
channel = "C0SUPPORT"
[[apps]]
name = "billing"
api_key = "app-bbbbbbbbbbbbbbbbbbbbbbbb"
channel = "C0BILLING"
[[apps]]
name = "secret-hr"
api_key = "app-cccccccccccccccccccccccc"
channel = "C0HR"
channels = ["C0HR"]
"""
    settings = make_settings(tmp_path, toml=toml)
    names = {a.id: a.name or "" for a in settings.apps}

    def pick(channel, wanted=None):
        return [a.name for a in choose_apps(settings, names, channel=channel, wanted=wanted)]

    assert pick("C0BILLING") == ["billing"]
    assert pick("C0RANDOM") == ["support-bot", "billing"]  # secret-hr is only searchable in C0HR
    assert pick("C0HR") == ["secret-hr"]
    assert pick("C0BILLING", "SUPPORT-BOT") == ["support-bot"]
    assert pick("C0BILLING", "supp") == ["support-bot"]
    with pytest.raises(QueryError, match="no app called 'secret-hr'; the apps are: billing, support-bot"):
        pick("C0RANDOM", "secret-hr")
    assert pick(None, "secret-hr") == ["secret-hr"]  # the CLI sees every app


@pytest.mark.parametrize("version", ["1.12.0", "1.13.3"])
def test_find_run_decodes_inputs_and_outputs_in_every_version(version, clock):
    dify = FakeDify(version=version, clock=clock)
    app = dify.add_app()
    run = dify.add_log(app, at=T0 - 10, inputs={"q": "hi"}, outputs={"answer": "yo"})
    detail = find_run(q(f"run {run.run_id}"), [target(dify, app)])
    assert (detail.inputs, detail.outputs) == ({"q": "hi"}, {"answer": "yo"})
    assert json.loads(json.dumps(detail.run))["id"] == run.run_id


@pytest.mark.parametrize("version", ["1.13.0", "1.13.3"])  # 200-all-null before 1.13.1, 404 from it
def test_find_run_looks_in_each_app_and_says_when_none_has_it(version, clock):
    dify = FakeDify(version=version, clock=clock)
    a, b = dify.add_app("A"), dify.add_app("B")
    run = dify.add_log(b, at=T0 - 10)
    assert find_run(q(f"run {run.run_id}"), [target(dify, a), target(dify, b)]).app_name == "B"
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(QueryError, match=f"no run {missing} in A, B"):
        find_run(q(f"run {missing}"), [target(dify, a), target(dify, b)])


# -- finding runs by their error -------------------------------------------------------------


def test_the_fake_matches_keywords_as_dify_does_never_in_the_error(dify: FakeDify):
    app = dify.add_app()
    in_error = dify.add_log(app, at=T0 - 10, error="Rate limit exceeded", session="s1")
    in_inputs = dify.add_log(app, at=T0 - 11, inputs={"q": "about the RATE LIMIT of the API"}, session="s2")
    in_outputs = dify.add_log(app, at=T0 - 12, outputs={"a": "rate limit hit"}, session="s3")
    in_session = dify.add_log(app, at=T0 - 13, session="rate-limit-tester")
    t = target(dify, app)
    found = {e.log_id for e in t.client.logs(keyword="rate limit").data}
    assert found == {in_inputs.log_id, in_outputs.log_id}
    assert {e.log_id for e in t.client.logs(keyword="rate-limit").data} == {in_session.log_id}
    assert not t.client.logs(keyword="exceeded").data  # never the error
    assert in_error.log_id not in found
    # Only the first 30 characters count.
    assert {e.log_id for e in t.client.logs(keyword="About the rate limit of the AP-and-not-this").data} == {
        in_inputs.log_id
    }


def test_text_also_matches_errors_merged_with_difys_keyword_matches(dify: FakeDify):
    app = dify.add_app()
    failed = dify.add_log(app, at=T0 - 10, error="429 Rate limit exceeded, retry later")
    stopped = dify.add_log(app, status="stopped", at=T0 - 20, error="Stopped: rate LIMIT reached")
    partial = dify.add_log(
        app, status="partial-succeeded", at=T0 - 30, error="rate limit on a branch", exceptions_count=1
    )
    both = dify.add_log(app, at=T0 - 40, error="rate limit", inputs={"q": "rate limit test"})
    inputs_only = dify.add_log(app, status="succeeded", at=T0 - 50, error=None, inputs={"q": "rate limit?"})
    session_only = dify.add_log(app, status="succeeded", at=T0 - 60, error=None, session="rate limit bot")
    dify.add_log(app, at=T0 - 70, error="Connection refused")
    for i in range(30):
        dify.add_log(app, status="succeeded", at=T0 - 100 - i)
    hits = search(q('"rate limit"'), [target(dify, app)], now=T0).apps[0]
    order = [failed, stopped, partial, both, inputs_only, session_only]
    assert [e.log_id for e in hits.entries] == [r.log_id for r in order]  # each once, newest first
    assert (hits.total, hits.exact) == (6, True)
    assert [hits.found[r.log_id] for r in order] == [
        "error",
        "error",
        "error",
        "error, inputs/outputs",
        "inputs/outputs",
        "session",
    ]
    params = log_params(dify)
    assert any(p.get("keyword") == "rate limit" for p in params)  # Dify's own matches were asked for
    assert {p.get("status") for p in params if "keyword" not in p} == {"failed", "stopped", None}


def test_a_status_narrows_which_errors_are_read(dify: FakeDify):
    app = dify.add_app()
    hit = dify.add_log(app, at=T0 - 10, error="timed out")
    dify.add_log(app, status="stopped", at=T0 - 11, error="timed out")
    hits = search(q('failed "timed out"'), [target(dify, app)], now=T0).apps[0]
    assert [e.log_id for e in hits.entries] == [hit.log_id]
    assert all(p.get("status") == "failed" for p in log_params(dify))  # Dify filtered the status
    dify.requests.clear()
    hits = search(q('succeeded "timed out"'), [target(dify, app)], now=T0).apps[0]
    assert hits.total == 0
    assert all("keyword" in p for p in log_params(dify))  # succeeded runs have no error to read


def test_error_text_searches_errors_only(dify: FakeDify):
    app = dify.add_app()
    hit = dify.add_log(app, at=T0 - 10, error="HTTP 502 from upstream: Bad Gateway")
    dify.add_log(app, at=T0 - 11, error="Connection refused", inputs={"q": "bad gateway"})
    hits = search(q('error:"bad gateway"'), [target(dify, app)], now=T0).apps[0]
    assert [e.log_id for e in hits.entries] == [hit.log_id]
    assert hits.found == {hit.log_id: "error"}
    assert not any("keyword" in p for p in log_params(dify))


def test_errors_of_a_session_are_read_with_the_session_filter(dify: FakeDify):
    app = dify.add_app()
    hit = dify.add_log(app, at=T0 - 10, session="alice", error="quota exceeded")
    dify.add_log(app, at=T0 - 11, session="bob", error="quota exceeded")
    hits = search(q("session:alice quota"), [target(dify, app)], now=T0).apps[0]
    assert [e.log_id for e in hits.entries] == [hit.log_id]
    for params in log_params(dify):
        assert not ("keyword" in params and "created_by_end_user_session_id" in params)


def test_reading_errors_stops_at_its_cap_and_says_so(dify: FakeDify):
    app = dify.add_app()
    for i in range(SCAN_PAGES * 100 + 20):
        dify.add_log(app, at=T0 - 100 - i, error=f"boom {i}")
    old = dify.add_log(app, at=T0 - 100 - SCAN_PAGES * 100 - 50, error="needle in the haystack")
    hits = search(q("failed error:needle"), [target(dify, app)], now=T0).apps[0]
    assert old.log_id not in {e.log_id for e in hits.entries}
    assert (hits.total, hits.exact, hits.scanned, hits.dify_total) == (0, False, SCAN_PAGES * 100, 1021)
    until = f"before:{T0 - old.log_created_at - 10}s"  # ten seconds after it: only the old run
    narrowed = search(q(f"failed error:needle {until}"), [target(dify, app)], now=T0)
    assert [e.log_id for e in narrowed.apps[0].entries] == [old.log_id]


def test_text_with_no_error_match_keeps_difys_exact_total_and_one_read(dify: FakeDify):
    app = dify.add_app()
    for i in range(30):
        dify.add_log(app, status="succeeded", at=T0 - 10 - i, inputs={"q": "invoice"}, error=None)
    hits = search(q("succeeded invoice"), [target(dify, app)], now=T0).apps[0]
    assert (hits.total, hits.exact, len(hits.entries)) == (30, True, PAGE_SIZE)
    assert len(dify.log_requests()) == 1


# -- similar runs ---------------------------------------------------------------------------------------

TRACEBACK = (
    "Node 'Parse' run failed: Traceback (most recent call last):\n"
    '  File "/var/sandbox/tmp/x.py", line {line}, in main\n    return json.loads(text)\n'
    "{last}\n"
)


def test_similar_finds_runs_with_the_same_error_shape_and_counts_them_per_day(dify: FakeDify):
    a, b = dify.add_app("A"), dify.add_app("B")
    day = 86400
    source = dify.add_log(a, at=T0 - 10, error=TRACEBACK.format(line=3, last="KeyError: 'user'"))
    same = [
        dify.add_log(a, at=T0 - 2 * day, error=TRACEBACK.format(line=9, last="KeyError: 'order'")),
        dify.add_log(
            a, status="stopped", at=T0 - 3 * day - 5, error=TRACEBACK.format(line=4, last="KeyError: 'x'")
        ),
        dify.add_log(b, at=T0 - 2 * day - 60, error=TRACEBACK.format(line=3, last="KeyError: 'user'")),
    ]
    dify.add_log(
        a, at=T0 - 100, error=TRACEBACK.format(line=3, last="ValueError: 'user'")
    )  # another exception
    dify.add_log(
        a, at=T0 - 200, error=TRACEBACK.format(line=3, last="KeyError: 'user'").replace("Parse", "Load")
    )
    dify.add_log(
        a, at=T0 - 9 * day, error=TRACEBACK.format(line=3, last="KeyError: 'user'")
    )  # before the window
    result = search(q(f"similar:{source.run_id}"), [target(dify, a), target(dify, b)], now=T0)
    assert result.similar_to is not None
    assert (result.similar_to.app_name, result.similar_to.shape) == (
        "A",
        "Node 'Parse' run failed: KeyError: <v>",
    )
    found = {e.log_id for h in result.apps for e in h.entries}
    assert found == {source.log_id, *(r.log_id for r in same)}
    counts = [n for _, n in result.per_day]
    assert len(counts) == 8 and sum(counts) == 4  # seven days back: eight calendar days
    assert counts[-1] == 1 and counts[-3] == 2 and counts[-4] == 1
    assert result.query.since == T0 - 7 * day


def test_similar_to_a_run_without_an_error_or_an_unknown_run_is_a_clear_answer(dify: FakeDify):
    app = dify.add_app()
    fine = dify.add_log(app, status="succeeded", at=T0 - 10, error=None)
    with pytest.raises(QueryError, match=f"run {fine.run_id} in Support Bot has no error"):
        search(q(f"similar:{fine.run_id}"), [target(dify, app)], now=T0)
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(QueryError, match=f"no run {missing} in Support Bot"):
        search(q(f"similar:{missing}"), [target(dify, app)], now=T0)


def test_find_run_never_sends_something_that_is_not_a_run_id(dify: FakeDify):
    app = dify.add_app()
    with pytest.raises(QueryError, match="is not a run id"):
        find_run(Query(kind="run", run_id="../../info"), [target(dify, app)])
    assert not dify.requests
