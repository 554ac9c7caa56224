"""What an incident's channel message says is true after every edit (issue 18, items 1-4): no stale
counts, sessions or times in the body, how long it failed and how long it was quiet told apart, the
runs' own times, and "back again" even without a permalink. Slack is the fake at the wire."""

from __future__ import annotations

import re

from bot.text import clock as clock_text
from tests.test_incidents import _runtime, replies, shown, top


def test_every_figure_of_an_edited_parent_is_current(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key)
    runs = []
    for cycle in range(4):
        at, error, session = int(clock.now) - 30, f"model overloaded after {cycle}s", f"user_{cycle % 3}"
        runs += [dify.add_log(app, at=at + i, error=error, session=session) for i in range(2)]
        assert rt.cycle().ok
        clock.advance(60)
    (parent,) = top(slack)
    text = shown(parent)
    assert "8 runs failed" in text and "8 runs · 3 sessions affected" in text
    # Nothing in the body still tells the first post's figures.
    assert "2 runs with this error" not in text and "Sessions affected" not in text
    numbers = {int(n) for n in re.findall(r"(\d+) runs?\b", text)}
    assert numbers <= {8}, numbers
    # First and last failure are the runs' own times (Dify's), from the first run to the last.
    ends = sorted(r.finished_at for r in runs)
    assert f"first failure {clock_text(ends[0])}" in text and f"last {clock_text(ends[-1])}" in text
    assert "Between" not in text
    # The example error is the latest one seen, not the first post's.
    assert "model overloaded after 3s" in text and "model overloaded after 0s" not in text


def test_a_resolution_tells_how_long_it_failed_and_how_long_it_was_quiet(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RESOLVE_AFTER="600")
    start = int(clock.now) - 40
    dify.add_log(app, at=start)
    dify.add_log(app, at=start + 19)
    rt.cycle()
    (parent,) = top(slack)
    for _ in range(11):
        clock.advance(60)
        rt.cycle()
    said = replies(slack, parent["ts"])[-1]["text"]
    assert "failed for 19s" in said and "2 runs" in said, said
    assert re.search(r"quiet for 1[01]m( \d+s)?", said), said
    assert "✅ Resolved" in shown(parent) and "failed for 19s" in shown(parent)
    contexts = [b["elements"][0]["text"] for b in parent["blocks"] if b["type"] == "context"]
    state = next(t for t in contexts if "Resolved" in t)  # the state line
    assert not re.search(r"\d\.\d+s", said + state)  # no needless decimals


def test_back_again_is_told_without_a_permalink(tmp_path, dify, clock, slack):
    app = dify.add_app("Support Bot")
    rt = _runtime(tmp_path, dify, clock, slack, app.key, WFLOGS_RESOLVE_AFTER="600")
    dify.add_log(app, at=int(clock.now) - 5)
    rt.cycle()
    for _ in range(12):
        clock.advance(60)
        rt.cycle()
    (first,) = top(slack)
    assert "✅ Resolved" in shown(first)
    resolved_at = rt.store.query("select resolved_at from incidents")[0]["resolved_at"]
    slack.fail("chat.getPermalink", "error", "channel_not_found", times=5)
    dify.add_log(app, at=int(clock.now) + 5)
    clock.advance(60)
    rt.cycle()
    new = top(slack)[-1]
    assert new["ts"] != first["ts"]
    assert new["text"].startswith("Back again")
    assert f"previous one was resolved {clock_text(resolved_at)}" in shown(new)
    dify.add_log(app, at=int(clock.now) + 5)  # an edit keeps saying so
    clock.advance(60)
    rt.cycle()
    assert "This error is back" in shown(new) and slack.calls_to("chat.update")
