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
    assert "rejected the API key of Revoked (…xxxx)" in (revoked.error or "")
    assert "x" * 24 not in (revoked.error or "")
    assert "no longer exists" in (deleted.error or "")

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
