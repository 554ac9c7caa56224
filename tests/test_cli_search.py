"""``wflogs search``: the /wflogs grammar on the command line, against Dify over real HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from tests.fakes.dify import DifyServer, FakeApp, FakeDify


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[FakeDify, FakeApp]]:
    dify = FakeDify()  # real time: the CLI searches up to now
    app = dify.add_app("Support Bot")
    with DifyServer(dify) as server:
        for name in ("WFLOGS_CONFIG", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("DIFY_API_URL", server.url)
        monkeypatch.setenv("DIFY_API_KEY", app.key)
        monkeypatch.setenv("WFLOGS_DB", str(tmp_path / "wflogs.db"))
        monkeypatch.chdir(tmp_path)
        yield dify, app


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["search", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def now() -> int:
    import time

    return int(time.time())


def test_prints_a_table_of_matching_runs(served):
    dify, app = served
    hit = dify.add_log(app, at=now() - 60, session="user_1", error="boom\x1b[31m red")
    dify.add_log(app, status="succeeded", at=now() - 30)
    code, out, err = run("failed", "since:1h")
    assert (code, err) == (0, "")
    header, row, summary = out.splitlines()
    assert header.split() == ["APP", "STATUS", "RUN", "ID", "STARTED", "RAN", "FOR", "WHO", "ERROR"]
    assert hit.run_id in row and "user_1" in row and "Support Bot" in row
    assert "\x1b" not in out  # terminal escapes from Dify are dropped
    assert summary.startswith("1 run: failed runs since")


def test_quoted_words_survive_the_shell(served):
    dify, app = served
    hit = dify.add_log(app, at=now() - 60, inputs={"q": "timed out twice"})
    dify.add_log(app, at=now() - 61, inputs={"q": "fine"})
    code, out, _ = run("failed", "timed out")  # the shell removed the quotes: one argument with a space
    assert code == 0 and hit.run_id in out and out.count("\n") == 3
    code, out, _ = run('failed "timed out"')  # or the whole query quoted once
    assert code == 0 and hit.run_id in out


def test_run_detail(served):
    dify, app = served
    run_ = dify.add_log(app, at=now() - 60, inputs={"q": "hi", "password": "hunter2"})
    code, out, _ = run("run", run_.run_id)
    assert code == 0 and f"run:       {run_.run_id}" in out and '"q": "hi"' in out
    assert "hunter2" not in out


@pytest.mark.parametrize(
    ("argv", "says", "code"),
    [
        (("limit:0",), "limit:0 is not a number of runs", 2),
        (("app:nope",), "no app called 'nope'", 2),
        (("failed", "page:9"), "page 9 is out of range", 2),
        (("account:x@example.com",), "Account not found: x@example.com", 1),
    ],
)
def test_errors_come_first_on_stderr_and_a_mistyped_query_gets_the_usage_below(served, argv, says, code):
    got, _, err = run(*argv)
    assert got == code
    first, *rest = err.splitlines()
    assert first.startswith("wflogs: ") and says in first and len(first) < 200  # the error alone
    if code == 2:
        assert "Usage: wflogs search" not in first and rest[0].startswith("Usage: wflogs search")
        assert "wflogs search help" in err
    else:
        assert rest == []


def test_dify_down_is_reported(served):
    dify, _ = served
    dify.fail_next(10, "500")
    code, out, err = run("failed")
    assert code == 1 and "answered HTTP 500" in err
    assert "0 runs" not in out


def test_dify_unreachable_is_not_zero_runs(served, monkeypatch):
    monkeypatch.setenv("DIFY_API_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    code, out, err = run("failed", "since:1h")
    assert code == 1
    assert out == ""  # no table, no "0 runs"
    assert "cannot reach Dify at http://127.0.0.1:9/v1" in err


def test_an_unknown_run_is_named_without_the_usage_text(served):
    missing = "00000000-0000-4000-8000-000000000000"
    code, out, err = run("run", missing)
    assert (code, out) == (1, "")
    assert err == f"wflogs: no run {missing} in Support Bot\n"


def test_an_empty_result_says_no_runs_match(served):
    code, out, err = run("failed", "since:1h")
    assert (code, err) == (0, "")
    assert out.startswith("No failed runs since ") and "APP" not in out


def test_error_text_and_similar_runs_on_the_terminal(served):
    dify, app = served
    tb = (
        'Traceback (most recent call last):\n  File "/x.py", line {n}, in main\n    json.loads(s)\n'
        "json.decoder.JSONDecodeError: Expecting value: line 1 column {n} (char 0)\n"
    )
    runs = [dify.add_log(app, at=now() - 60 * (i + 1), error=tb.format(n=i)) for i in range(2)]
    dify.add_log(app, at=now() - 30, error="KeyError: 'x'")
    code, out, _ = run("error:JSONDecodeError")
    assert code == 0 and all(r.run_id in out for r in runs) and "Traceback" not in out
    assert "FOUND IN" in out and "json.decoder.JSONDecodeError: Expecting value" in out
    code, out, _ = run(f"similar:{runs[0].run_id}")
    assert code == 0 and out.count("json.decoder.JSONDecodeError") >= 3
    assert "per day: " in out and "2 runs" in out


def test_help_is_a_real_help(served):
    code, out, _ = run("help")
    assert code == 0 and out.startswith("Usage: wflogs search")
    assert len(out.splitlines()) > 10
    for part in ("since:", "before:", "error:", "similar:", "page:", "paused", "run RUN_ID", "Exit status"):
        assert part in out, part
    assert "wflogs search failed since:2h" in out and "/wflogs" not in out and "`" not in out


def test_search_help_needs_no_configuration(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFY_", "SLACK_", "WFLOGS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "search", "help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("Usage: wflogs search"), done.stderr


def test_a_run_looked_up_while_dify_is_unreachable_is_not_called_missing(served, monkeypatch):
    monkeypatch.setenv("DIFY_API_URL", "http://127.0.0.1:9/v1")
    code, out, err = run("run", "00000000-0000-4000-8000-000000000000")
    assert (code, out) == (1, "")
    assert "could not look for run 00000000-0000-4000-8000-000000000000 in" in err and "no run" not in err


@pytest.mark.parametrize(
    "text", ["mutes", "subscriptions", "subscribe app:x", "mute app:support 2h x", "unmute 3"]
)
def test_slack_only_commands_are_named_as_such_on_the_terminal(served, text):
    code, out, err = run(*text.split())
    assert code == 2 and not out
    first = err.splitlines()[0]
    assert f"`{text.split()[0]}` is a Slack command" in first and f"/wflogs {text.split()[0]}" in first
