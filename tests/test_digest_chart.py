"""The digest's chart of the last 14 days: drawn from stored digests, uploaded through the journal
into the thread of the channel's first digest message (Slack fake over HTTP, Dify fake)."""

from __future__ import annotations

import io
import logging
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.cli import build_parser, cmd_digest
from bot.config import ConfigError
from storage import journal as effects
from tests.conftest import make_settings
from tests.fakes.dify import DifyServer, FakeDify
from tests.fakes.slack import FakeSlack
from tests.test_digest import BERLIN, S, build, slack_env

PNG = b"\x89PNG\r\n\x1a\n"
DAY = 86400


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def two_apps(dify: FakeDify) -> tuple[str, str, str]:
    """Two apps sharing the digest channel, with failures on the last three days; the toml."""
    billing, support = dify.add_app("Billing"), dify.add_app("Support <!channel>")
    for day in (2, 1, 0):
        for i in range(3 - day):
            dify.add_log(billing, status="failed", at=S - day * DAY - 100 - i)
        dify.add_log(billing, status="stopped", at=S - day * DAY - 200)
        dify.add_log(billing, status="succeeded", at=S - day * DAY - 300)
        dify.add_log(support, status="succeeded", at=S - day * DAY - 400)
    toml = (
        f'[[apps]]\napi_key = "{billing.key}"\ndigest_channel = "C0DIGEST"\n'
        f'[[apps]]\napi_key = "{support.key}"\ndigest_channel = "C0DIGEST"\n'
    )
    return billing.key, support.key, toml


def days_of_digests(digester, first: int = 2) -> None:
    for day in range(first, -1, -1):
        digester.run_due(S - day * DAY + 1)


def test_the_chart_is_a_png_in_the_thread_of_the_channels_first_digest_with_alt_text(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    _b, _s, toml = two_apps(dify)
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    days_of_digests(digester)
    runtime.close()

    posts = slack.posts("C0DIGEST")
    assert len(posts) == 6 and len(slack.files) == 3  # two digests and one chart a day
    first_of_last_day = posts[-2]
    assert "Billing: daily digest" in first_of_last_day["text"]
    chart = slack.files[-1]
    assert chart["channel"] == "C0DIGEST" and chart["thread_ts"] == first_of_last_day["ts"]
    assert chart["filename"].endswith(".png") and chart["data"][:8] == PNG
    width, height = png_size(chart["data"])
    assert width == 1200 and 600 < height < 1400  # two panels
    assert 20_000 < len(chart["data"]) < 400_000
    # Alt text: the same in words, both apps, their counts yesterday and over the days shown.
    alt = chart["alt_txt"]
    assert alt and len(alt) <= 1000
    assert "Billing: yesterday 3 failed, 1 stopped of 5 runs (60.0% failed)" in alt
    assert "14 days: 6 failed, 3 stopped" in alt and "no digest on 11 days" in alt
    assert "Support <!channel>: yesterday 0 failed, 0 stopped of 1 runs" in alt
    assert alt.index("Billing") < alt.index("Support")  # ordered like the digest
    assert chart["title"].startswith("Failed and stopped runs per day")


def test_the_chart_costs_no_dify_request(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    _b, _s, toml = two_apps(dify)
    counted: dict[str, int] = {}
    for chart in ("true", "false"):
        where = tmp_path / chart
        where.mkdir()
        runtime, digester = build(where, dify, web, slack_env({"WFLOGS_DIGEST_CHART": chart}), toml)
        for app in digester.settings.apps:
            digester.store.digest_first_seen(app.id, S - 10 * DAY)
        days_of_digests(digester)
        counted[chart] = sum(client.requests for client in runtime.clients.values())
        runtime.close()
    assert len(slack.files) == 3
    assert counted["true"] == counted["false"]


@pytest.mark.parametrize(
    "where",
    ["environment", "toml", "each app"],
)
def test_the_chart_can_be_turned_off(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, where: str
) -> None:
    _b, _s, toml = two_apps(dify)
    env = slack_env()
    if where == "environment":
        env["WFLOGS_DIGEST_CHART"] = "false"
    elif where == "toml":
        toml = "digest_chart = false\n" + toml
    else:
        toml = toml.replace(
            'digest_channel = "C0DIGEST"\n', 'digest_channel = "C0DIGEST"\ndigest_chart = false\n'
        )
    runtime, digester = build(tmp_path, dify, web, env, toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    report = digester.run_due(S + 1)
    runtime.close()
    assert report.chart_keys == [] and slack.files == []
    assert len(slack.posts("C0DIGEST")) == 2


def test_one_app_off_leaves_the_other_in_the_chart(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    _b, _s, toml = two_apps(dify)
    parts = toml.split("[[apps]]")
    toml = "[[apps]]".join([parts[0], parts[1] + "digest_chart = false\n", parts[2]])
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    digester.run_due(S + 1)
    runtime.close()
    [chart] = slack.files
    assert "Support" in chart["alt_txt"] and "Billing" not in chart["alt_txt"]
    assert chart["thread_ts"] == slack.posts("C0DIGEST")[0]["ts"]


def test_a_bad_digest_chart_setting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WFLOGS_DIGEST_CHART"):
        make_settings(tmp_path, {"DIFY_API_KEY": "app-abcdefghijkl", "WFLOGS_DIGEST_CHART": "maybe"})
    with pytest.raises(ConfigError, match="digest_chart"):
        make_settings(tmp_path, {}, 'digest_chart = "maybe"\n[[apps]]\napi_key = "app-abcdefghijkl"\n')


@pytest.mark.parametrize("refusal", ["missing_scope", "file_uploads_disabled"])
def test_a_refused_chart_leaves_the_text_digest_and_tells_the_operator_once(
    tmp_path: Path,
    dify: FakeDify,
    slack: FakeSlack,
    web: WebClient,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
) -> None:
    _b, _s, toml = two_apps(dify)
    if refusal == "missing_scope":
        slack.missing_scopes.add("files:write")  # installed without files:write
    else:
        slack.fail("files.getUploadURLExternal", "error", refusal, times=10)
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    with caplog.at_level(logging.ERROR):
        days_of_digests(digester, first=1)
        states = runtime.store.query("select state from effects where op = 'upload'")
        assert [r["state"] for r in states] == ["refused", "refused"]  # never retried
        runtime.deliverer.deliver_all()
    assert slack.files == []
    posts = slack.posts("C0DIGEST")
    assert len(posts) == 4 and all("daily digest" in p["text"] for p in posts)
    assert ["Billing" in p["text"] for p in posts] == [True, False, True, False]
    told = [r.getMessage() for r in caplog.records if "Slack refused a file" in r.getMessage()]
    assert len(told) == 1 and refusal in told[0] and "files:write" in told[0]
    runtime.close()


def test_delivering_twice_uploads_the_chart_once(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    _b, _s, toml = two_apps(dify)
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    slack.fail("chat.postMessage", "status", 503)  # the first pass cannot post the digest
    report = digester.digester.run_due(S + 1)
    assert len(report.chart_keys) == 1
    runtime.deliverer.deliver_planned()
    assert slack.files == []  # the chart waits for its thread
    for _ in range(3):
        runtime.deliverer.deliver_planned()
        runtime.deliverer.deliver_all()
    assert digester.digester.run_due(S + 600).chart_keys == []  # planned once
    runtime.deliverer.deliver_all()
    runtime.close()
    assert len(slack.files) == 1 and len(slack.calls_to("files.completeUploadExternal")) == 1
    row = effects.get(runtime.store, report.chart_keys[0])
    assert row is not None and row["state"] == "sent" and row["file_id"] == slack.files[0]["id"]


def test_a_chart_uploaded_by_an_instance_that_lost_the_lease_is_deleted(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    """The fence: an upload in flight when the lease moved is taken back (files.delete)."""
    from bot.journal import LeaseLost

    class Moving:
        def __init__(self) -> None:
            self.epoch = 1

        def admits(self, now: float) -> int | None:
            return self.epoch

        def holds(self, epoch: int) -> bool:
            return epoch == self.epoch

    _b, _s, toml = two_apps(dify)
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    fence = Moving()
    runtime.deliverer.journal.fence = fence
    digester.digester.run_due(S + 1)

    def moved(method: str, _params: object) -> None:
        if method == "files.completeUploadExternal":
            fence.epoch = 2  # another instance took over while the upload was in flight

    slack.on_call = moved
    result = runtime.deliverer.deliver_planned()
    assert result.paused and "lease" in result.paused
    assert slack.files == [] and len(slack.calls_to("files.delete")) == 1
    slack.on_call = None
    runtime.deliverer.deliver_planned()  # the holder of epoch 2 sends it: exactly one copy
    runtime.close()
    assert len(slack.files) == 1
    assert LeaseLost  # (the journal raised it inside delivery)


def test_digest_now_chart_writes_the_png_in_terminal_mode(tmp_path: Path) -> None:
    dify = FakeDify()
    app = dify.add_app("Terminal")
    import time

    now = int(time.time())
    dify.add_log(app, status="failed", at=now - 600)
    dify.add_log(app, status="stopped", at=now - 700)
    with DifyServer(dify) as server:
        settings = make_settings(tmp_path, {"DIFY_API_KEY": app.key, "DIFY_API_URL": server.url, **BERLIN})
        out, err = io.StringIO(), io.StringIO()
        target = tmp_path / "chart.png"
        args = build_parser().parse_args(["digest", "--now", "--chart", str(target)])
        assert cmd_digest(settings, args, out, err) == 0
    assert err.getvalue() == ""
    data = target.read_bytes()
    assert png_size(data)[0] == 1200
    assert f"written to {target}" in out.getvalue()


def test_digest_now_chart_is_for_terminal_mode(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"DIFY_API_KEY": "app-abcdefghijkl", **slack_env()})
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["digest", "--now", "--chart", str(tmp_path / "c.png")])
    assert cmd_digest(settings, args, out, err) == 2
    assert "terminal mode" in err.getvalue()


def test_the_poller_and_the_cli_do_not_import_matplotlib() -> None:
    code = (
        "import sys, bot.cli, bot.poller, bot.service, bot.runtime, bot.digest, bot.delivery; "
        "print('matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_digests_run_from_cron_make_the_history_too(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient
) -> None:
    """`wflogs digest --now` every morning instead of `wflogs run`: its digests are the days."""
    _b, _s, toml = two_apps(dify)
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for day in (2, 1, 0):
        digester.post_now(S - day * DAY + 1)
    runtime.close()
    alt = slack.files[-1]["alt_txt"]
    assert "Billing: last 24 h 3 failed, 1 stopped of 5 runs" in alt
    assert "14 days: 6 failed, 3 stopped" in alt and "no digest on 11 days" in alt


def test_without_matplotlib_the_text_digests_still_go_out(
    tmp_path: Path,
    dify: FakeDify,
    slack: FakeSlack,
    web: WebClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An install that lost matplotlib (or a chart that cannot be drawn): no chart, said once."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    _b, _s, toml = two_apps(dify)
    runtime, digester = build(tmp_path, dify, web, slack_env(), toml)
    for app in digester.settings.apps:
        digester.store.digest_first_seen(app.id, S - 10 * DAY)
    with caplog.at_level(logging.ERROR):
        days_of_digests(digester, first=1)
    runtime.close()
    assert len(slack.posts("C0DIGEST")) == 4 and slack.files == []
    assert len([r for r in caplog.records if "chart cannot be drawn" in r.getMessage()]) == 1
