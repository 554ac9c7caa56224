"""Terminal mode (no Slack token) prints plain text: no Slack markup (bold, code fences, <links>) and
the terminal's own commands (issue 18 item 8)."""

from __future__ import annotations

import io

from tests.conftest import build_runtime, make_settings


def test_an_incident_in_the_terminal_is_plain_text_with_wflogs_search_commands(tmp_path, dify, clock):
    app = dify.add_app("Support Bot")
    out = io.StringIO()
    rt = build_runtime(make_settings(tmp_path, {"DIFY_API_KEY": app.key}), dify, clock, stream=out)
    runs = [
        dify.add_log(
            app, at=int(clock.now) - 30 + i, error=f"model *overloaded* after {i}s", session="user_7"
        )
        for i in range(3)
    ]
    dify.add_log(app, at=int(clock.now) - 5, error="tool `search` failed", session="sess 9")
    assert rt.cycle().ok
    text = out.getvalue()
    assert "Support Bot: 3 runs failed" in text
    assert "```" not in text and "*Open*" not in text and "*Run ID*" not in text
    assert "/wflogs" not in text
    assert "Next: wflogs search session:user_7" in text
    assert f"wflogs search run:{runs[-1].run_id}" in text
    assert "model *overloaded* after 2s" in text  # the error's own characters are kept
    assert "Next: wflogs search session:'sess 9'" in text  # quoted for a shell
