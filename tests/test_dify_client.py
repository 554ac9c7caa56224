"""The Dify client against the fake: bounds, error bodies of every version, retries."""

from __future__ import annotations

import httpx
import pytest

from bot.dify import DifyClient, iso
from bot.errors import DifyAuthError, DifyBadRequest, DifyNotFound, DifyUnavailable
from tests.fakes.dify import FakeDify


def client(dify: FakeDify, key: str, retries: int = 2) -> DifyClient:
    http = httpx.Client(transport=httpx.MockTransport(dify.handler))
    return DifyClient(
        http=http,
        base_url="http://dify.test/v1",
        api_key=key,
        label="Support Bot",
        retries=retries,
        backoff=0,
    )


def test_bounds_are_inclusive_iso_seconds_with_z(dify, clock):
    app = dify.add_app()
    t = int(clock.now)
    edge_low, inside, edge_high = (dify.add_log(app, at=t + d) for d in (0, 5, 10))
    dify.add_log(app, at=t - 1)
    dify.add_log(app, at=t + 11)
    page = client(dify, app.key).logs(status="failed", after=t, before=t + 10)
    assert {e.run_id for e in page.data} == {edge_low.run_id, inside.run_id, edge_high.run_id}
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert dify.log_requests()[-1].url.params["created_at__after"].endswith("Z")


def test_version_comes_from_the_header(dify):
    app = dify.add_app("Support Bot")
    c = client(dify, app.key)
    info = c.info()
    assert (info.name, info.mode, info.dify_version) == ("Support Bot", "workflow", "1.13.3")


@pytest.mark.parametrize("version", ["1.10.1", "1.13.3"])
def test_both_shapes_of_400_give_a_readable_message(clock, version):
    dify = FakeDify(version=version, clock=clock)
    app = dify.add_app()
    with pytest.raises(DifyBadRequest) as caught:
        client(dify, app.key).logs(status="running")
    assert "status" in str(caught.value)


def test_unknown_account_is_a_bad_request(dify):
    app = dify.add_app()
    with pytest.raises(DifyBadRequest, match="Account not found"):
        client(dify, app.key).logs(account="nobody@example.com")


def test_rejected_key_and_deleted_app(dify):
    app = dify.add_app()
    key = "app-" + "x" * 20 + "LAST"
    with pytest.raises(DifyAuthError) as caught:
        client(dify, key).logs()
    assert "…LAST" in str(caught.value) and key not in str(caught.value)
    app.mode = "deleted"
    with pytest.raises(DifyAuthError, match="no longer exists"):
        client(dify, app.key).info()


def test_unknown_run_is_not_found_in_every_version(clock):
    for version in ("1.12.0", "1.13.3"):
        dify = FakeDify(version=version, clock=clock)
        app = dify.add_app()
        with pytest.raises(DifyNotFound):
            client(dify, app.key).run("0b6f0000-0000-4000-8000-000000000000")


@pytest.mark.parametrize("kind", ["500", "502", "badjson", "timeout", "connect"])
def test_transient_failures_are_retried_then_reported(dify, kind):
    app = dify.add_app()
    dify.fail_next(2, kind)
    assert client(dify, app.key, retries=2).logs().total == 0
    dify.fail_next(3, kind)
    with pytest.raises(DifyUnavailable):
        client(dify, app.key, retries=2).logs()
