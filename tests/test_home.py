"""The App Home: a pure view of the stored state (layout rules, limits, escaping), published on
app_home_opened over signed HTTP and Socket Mode, with buttons that act like on the channel
message and then publish the Home tab again. Slack is faked at the wire."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from bot import home_format as hfmt
from bot import incident_format as ifmt
from bot.slack_app import build_app
from tests.conftest import Clock
from tests.fakes.dify import FakeDify
from tests.fakes.slack import FakeSlack, check_blocks, mrkdwn_texts
from tests.test_incident_controls import CHANNEL, Bench, pressed, serving

T0 = 1_795_000_000


def incident(i: int, **kw: Any) -> hfmt.HomeIncident:
    inc = ifmt.Incident(
        id=i,
        app_name=kw.pop("app_name", f"app {i % 200}"),
        status=kw.pop("status", "failed"),
        state="open",
        runs=kw.pop("runs", i + 1),
        sessions=1,
        opened_at=T0 - 3600,
        first_seen=T0 - 3600,
        last_seen=T0 - 60,
        error=kw.pop("error", f"model overloaded {i}"),
        **kw,
    )
    return hfmt.HomeIncident(inc, "C0ALERTS", f"https://test.slack.com/archives/C0ALERTS/p{i}")


def big_state(apps: int = 200, incidents: int = 50, mutes: int = 20) -> hfmt.HomeState:
    rng = random.Random(20)
    home_apps = [
        hfmt.HomeApp(
            app_id=f"id{n}",
            name=f"app {n} <!channel> & co",
            open_incidents=1 if n < incidents else 0,
            unreadable_since=T0 - 600 if n % 37 == 5 else None,
            unreadable_error="401 <@U123> rejected" if n % 37 == 5 else None,
            yesterday_runs=rng.randint(0, 20000),
            yesterday_failed=rng.randint(0, 300),
            before_runs=rng.randint(1, 20000),
            before_failed=rng.randint(0, 300),
        )
        for n in range(apps)
    ]
    home_mutes = [
        hfmt.HomeMute(
            id=m, app_name=f"app {m}", channel="C0ALERTS", until=T0 + 3600, by_user="U0ALICE", reason="<b>x"
        )
        for m in range(mutes)
    ]
    return hfmt.HomeState(
        now=T0,
        apps=home_apps,
        incidents=[incident(i, error=f"<script> & {i} " + "x" * 3000) for i in range(incidents)],
        mutes=home_mutes,
    )


# -- the formatter ---------------------------------------------------------------------------------


def test_a_full_home_fits_slack_limits_most_urgent_first_and_says_how_many_more():
    view = hfmt.home_view(big_state())
    assert view["type"] == "home" and len(view["blocks"]) <= 100
    assert check_blocks(view["blocks"], most=100, chars=None) is None
    text = hfmt.home_text(view)
    assert "50 incidents" not in text and "Open incidents* (50)" in text
    assert "30 more open incidents" in text  # 20 shown
    assert "8 more mutes" in text
    # Apps: those that cannot be read come first, then the failing ones; every app is counted.
    lines = [t for t in mrkdwn_texts(view["blocks"]) if "cannot be read since" in t or "ok ·" in t]
    apps_text = "\n".join(lines)
    assert apps_text.index("cannot be read since") < apps_text.index("failing: ") < apps_text.index("* ok ·")
    assert "200 apps watched" in text


def test_untrusted_text_is_escaped_everywhere():
    view = hfmt.home_view(big_state(apps=5, incidents=3, mutes=2))
    raw = json.dumps(view)
    assert "<!channel>" not in raw and "<@U123>" not in raw and "<script>" not in raw and "<b>" not in raw
    assert "&lt;!channel&gt;" in raw and "&lt;script&gt;" in raw


def test_each_state_reads_as_it_is():
    apps = [
        hfmt.HomeApp(
            "a",
            "Alpha",
            open_incidents=2,
            yesterday_runs=1000,
            yesterday_failed=30,
            before_runs=1000,
            before_failed=10,
        ),
        hfmt.HomeApp("b", "Beta", muted_until=T0 + 7200, mute_reason="deploying v2"),
        hfmt.HomeApp("c", "Gamma", unreadable_since=T0 - 900, unreadable_error="Dify rejected the API key"),
        hfmt.HomeApp("d", "Delta", yesterday_runs=50, yesterday_failed=0, before_runs=50, before_failed=1),
    ]
    view = hfmt.home_view(hfmt.HomeState(now=T0, apps=apps, incidents=[incident(1, app_name="Alpha")]))
    text = hfmt.home_text(view)
    assert "*Alpha* failing: 2 open incidents · yesterday 1,000 runs, 3.0% failed (↑ from 1.0%)" in text
    assert "*Beta* muted until" in text and "(deploying v2)" in text and "no daily figures yet" in text
    assert "*Gamma* cannot be read since" in text and "Dify rejected the API key" in text
    assert "*Delta* ok · yesterday 50 runs, 0.0% failed (↓ from 2.0%)" in text
    assert (
        text.index("Gamma")
        < text.index("Alpha* failing")
        < text.index("Beta* muted")
        < text.index("Delta* ok")
    )
    actions = [b for b in view["blocks"] if b["type"] == "actions"]
    ids = [e["action_id"] for e in actions[0]["elements"]]
    assert ids[:3] == ["incident_ack", "incident_mute", "incident_resolve"] and ids[3].startswith(
        "home_thread_"
    )
    assert "Nothing is failing" not in text and "No mutes are in force." in text


# -- served: HTTP and Socket Mode --------------------------------------------------------------------


@pytest.fixture
def b(tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock) -> Iterator[Bench]:
    with serving(tmp_path, dify, slack, web, clock) as bench:
        bench.dify.add_log(bench.app, at=int(clock.now) - 30, error="model overloaded after 3s")
        bench.dify.add_log(bench.app, at=int(clock.now) - 20, error="model overloaded after 4s")
        bench.rt.cycle()
        yield bench


def home_opened(user: str) -> dict[str, Any]:
    return {
        "token": "legacy",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": f"Ev{user}",
        "event_time": T0,
        "event": {
            "type": "app_home_opened",
            "user": user,
            "channel": "D0HOME",
            "tab": "home",
            "event_ts": "1.2",
        },
    }


def home_click(action: dict[str, Any], user: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": "T1", "domain": "test"},
        "user": {"id": user, "username": user.removeprefix("U0").lower(), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "container": {"type": "view", "view_id": "V00001"},
        "trigger_id": "1.2.3",
        "view": {"id": "V00001", "type": "home", "callback_id": "wflogs_home", "blocks": []},
        "actions": [{"block_id": "b1", "action_ts": "1", **action}],
    }


def wait_home(b: Bench, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with b.slack.lock:
            if len(b.slack.published) >= count:
                return dict(b.slack.published[-1]["view"])
        time.sleep(0.01)
    raise AssertionError(f"expected {count} publishes, got {len(b.slack.published)}")


def element(view: dict[str, Any], action_id: str) -> dict[str, Any]:
    for block in view["blocks"]:
        for e in [*block.get("elements", []), block.get("accessory") or {}]:
            if e.get("action_id") == action_id:
                return dict(e)
    raise AssertionError(f"no {action_id} in the Home view")


def test_opening_the_home_tab_publishes_apps_incidents_and_mutes_without_asking_dify(b: Bench):
    b.command("mute app:support-bot 1h planned maintenance")
    app_id = b.rt.settings.apps[0].id
    for hours, runs, failed in ((30, 800, 8), (6, 1000, 30)):  # the last two daily digests
        b.rt.store.db["digests"].insert(  # type: ignore[union-attr]
            {
                "app_id": app_id,
                "day": f"d{hours}",
                "kind": "scheduled",
                "window_end": int(b.clock.now) - hours * 3600,
                "runs": runs,
                "failed": failed,
            }
        )
    before = len(b.dify.requests)
    answer = b.signed(json.dumps(home_opened("U0ALICE")))
    assert answer.status_code == 200  # acknowledged; the view is published after (bench: its time)
    view = wait_home(b, 1)
    assert b.slack.published[-1]["user"] == "U0ALICE"
    text = hfmt.home_text(view)
    assert "*Support Bot* failing: 1 open incident" in text
    assert "model overloaded after" in text and "2 runs" in text and f"<#{CHANNEL}>" in text
    assert "planned maintenance" in text and "Mutes in force* (1)" in text
    assert "yesterday 1,000 runs, 3.0% failed (↑ from 1.0%)" in text
    assert element(view, "home_thread_1")["url"].endswith(
        f"/archives/{CHANNEL}/p" + b.parent()["ts"].replace(".", "")
    )
    assert len(b.dify.requests) == before  # stored state only


def test_home_buttons_act_like_the_channel_message_and_publish_again(b: Bench):
    b.signed(json.dumps(home_opened("U0ALICE")))
    view = wait_home(b, 1)
    answer = b.signed("payload=" + json.dumps(home_click(pressed(element(view, "incident_ack")), "U0ALICE")))
    assert answer.status_code == 200
    view = wait_home(b, 2)
    assert b.incident()["ack_by"] == "alice"  # the clicker's name: shown, it pings nobody
    assert "Acknowledged. The message shows it in a moment." in hfmt.home_text(view)
    assert "acknowledged by alice" in hfmt.home_text(view) and "<@" not in hfmt.home_text(view)
    b.rt.deliver()  # the channel's parent is edited through the journal, as for a click there
    assert "Acknowledged by alice" in json.dumps(b.parent()["blocks"])
    # Resolve from the Home tab.
    b.signed("payload=" + json.dumps(home_click(pressed(element(view, "incident_resolve")), "U0ALICE")))
    view = wait_home(b, 3)
    assert b.incident()["state"] == "resolved" and "Open incidents* (0)" in hfmt.home_text(view)
    b.rt.deliver()
    assert "Resolved" in json.dumps(b.parent()["blocks"])


def test_mute_and_unmute_from_the_home_tab(b: Bench):
    b.signed(json.dumps(home_opened("U0ALICE")))
    view = wait_home(b, 1)
    mute = element(view, "incident_mute")
    option = next(o for o in mute["options"] if o["text"]["text"] == "4 hours")
    click = {"type": "static_select", "action_id": "incident_mute", "selected_option": option}
    b.signed("payload=" + json.dumps(home_click(click, "U0ALICE")))
    view = wait_home(b, 2)
    assert "Mutes in force* (1)" in hfmt.home_text(view)
    b.signed("payload=" + json.dumps(home_click(pressed(element(view, "home_unmute")), "U0ALICE")))
    view = wait_home(b, 3)
    assert "Mutes in force* (0)" in hfmt.home_text(view) and "ended" in hfmt.home_text(view)
    b.rt.deliver()
    thread = [m for m in b.slack.posts() if m["thread_ts"] == b.parent()["ts"]]
    assert any("Muted by alice" in m["text"] for m in thread)


def test_home_refuses_people_not_on_allowed_users(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    with serving(tmp_path, dify, slack, web, clock, toml='[slack]\nallowed_users = ["U0ALICE"]\n') as b:
        b.signed(json.dumps(home_opened("U0MALLORY")))
        view = wait_home(b, 1)
        assert "not on it" in hfmt.home_text(view) and "Support Bot" not in hfmt.home_text(view)


def test_socket_mode_home_opened_and_home_click(b: Bench):
    handler = SocketModeHandler(build_app(b.rt, now=b.clock), "xapp-1-test")
    sent: list[str] = []
    handler.client.send_message = sent.append  # type: ignore[method-assign]  # the WebSocket's send
    try:
        handler.client.enqueue_message(
            json.dumps(
                {
                    "envelope_id": "env-1",
                    "type": "events_api",
                    "accepts_response_payload": False,
                    "payload": home_opened("U0CAROL"),
                }
            )
        )
        view = wait_home(b, 1)
        handler.client.enqueue_message(
            json.dumps(
                {
                    "envelope_id": "env-2",
                    "type": "interactive",
                    "accepts_response_payload": False,
                    "payload": home_click(pressed(element(view, "incident_ack")), "U0CAROL"),
                }
            )
        )
        wait_home(b, 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(sent) < 2:
            time.sleep(0.01)
        assert {json.loads(s)["envelope_id"] for s in sent} >= {"env-1", "env-2"}
        assert b.incident()["ack_by"] == "carol"
    finally:
        handler.close()
    b.rt.deliver()
    assert "Acknowledged by carol" in json.dumps(b.parent()["blocks"])


def test_the_manifest_enables_the_home_tab_and_its_event():
    manifest = (Path(__file__).resolve().parents[1] / "manifest.yml").read_text()
    features = manifest[manifest.index("features:") : manifest.index("oauth_config:")]
    assert "  app_home:\n    home_tab_enabled: true\n" in features
    settings = manifest[manifest.index("settings:") :]
    assert "  event_subscriptions:\n" in settings and "    bot_events:\n      - app_home_opened\n" in settings


def test_a_muted_incident_of_an_app_limited_to_its_channels_keeps_its_error_there(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    with serving(tmp_path, dify, slack, web, clock, toml=f'channels = ["{CHANNEL}"]\n') as b:
        b.dify.add_log(b.app, at=int(clock.now) - 30, error="salary table unreadable")
        b.rt.cycle()
        b.rt.actions.mute(int(b.incident()["id"]), "3600", "alice", int(clock.now))
        b.signed(json.dumps(home_opened("U0ALICE")))
        text = hfmt.home_text(wait_home(b, 1))
        assert "Mutes in force* (1)" in text
        assert "salary table" not in text and "shown in its channel only" in text


def test_a_home_click_on_an_incident_that_is_gone_says_so(
    tmp_path: Path, dify: FakeDify, slack: FakeSlack, web: WebClient, clock: Clock
):
    # With controls limited to some channels, the Home tab (no channel) still acts where the
    # incident lives; one pruned since the view was drawn is named as gone, not as a refusal.
    toml = f'\n[slack]\nallowed_channels = ["{CHANNEL}"]\n'
    with serving(tmp_path, dify, slack, web, clock, toml=toml) as b:
        b.signed(json.dumps(home_opened("U0ALICE")))
        wait_home(b, 1)
        for count, action in enumerate(
            (
                {"type": "button", "action_id": "incident_ack", "value": "999"},
                {"type": "button", "action_id": "home_unmute", "value": "999"},
            ),
            start=2,
        ):
            b.signed("payload=" + json.dumps(home_click(action, "U0ALICE")))
            text = hfmt.home_text(wait_home(b, count))
            assert "not known to wflogs any more" in text or "no mute number 999" in text, action
            assert "not enabled in this conversation" not in text
