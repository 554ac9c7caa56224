"""The digest formatter is pure: data in, Block Kit within Slack's limits and escaped text out."""

from __future__ import annotations

import ast
from pathlib import Path

from slack_sdk.models.blocks import Block

from bot.digest_format import delta, rate, rate_delta, render, sparkline
from bot.records import AppDigest, Counts, ErrorLine, RunLine, Window
from tests.fakes.slack import check_blocks
from tests.fakes.slack import mrkdwn_texts as slack_mrkdwn

S = 1_795_017_600  # 2026-11-18T16:00:00Z
EVIL = "<!channel> <@U123> <https://evil.example|click> & `x` " * 200


def digest(**overrides: object) -> AppDigest:
    base = AppDigest(
        app_id="a1",
        app_name="Bot <!here>",
        scheduled_at=S,
        window=Window.ending_at(S),
        previous=Window.ending_at(S, 1),
        tz="Europe/Berlin",
        posted_at=S,
        current=Counts(total=1000, succeeded=800, failed=150, stopped=40),
        before=Counts(total=900, succeeded=850, failed=30, stopped=20),
        hourly=[i % 5 for i in range(24)],
    )
    for key, value in overrides.items():
        setattr(base, key, value)
    return base


def mrkdwn_texts(text: str, blocks: list[dict]) -> list[str]:
    return [text, *slack_mrkdwn(blocks)]


def test_failure_rate_rounds_half_up_to_one_decimal() -> None:
    assert rate(Counts(8, 7, 1, 0)) == "12.5%"
    assert rate(Counts(16, 15, 1, 0)) == "6.3%"  # 6.25
    assert rate(Counts(3, 2, 1, 0)) == "33.3%"
    assert rate(Counts(0, 0, 0, 0)) == "–"


def test_rate_change_is_the_difference_of_the_rates_shown() -> None:
    # 33.3% and 6.3% are shown; the exact change would be 27.08 -> 27.1, which would not add up.
    assert rate_delta(Counts(3, 2, 1, 0), Counts(16, 15, 1, 0)) == "+27.0 pts"
    assert rate_delta(Counts(16, 15, 1, 0), Counts(3, 2, 1, 0)) == "−27.0 pts"
    assert rate_delta(Counts(10, 9, 1, 0), Counts(20, 18, 2, 0)) == "±0.0 pts"
    assert rate_delta(Counts(10, 9, 1, 0), Counts(0, 0, 0, 0)) == "no runs the day before"


def test_count_changes_are_signed() -> None:
    assert (delta(1234, 1178), delta(3, 7), delta(5, 5), delta(5, None)) == ("+56", "−4", "±0", "")


def test_sparkline_shows_any_failure_and_marks_empty_hours() -> None:
    assert sparkline([0, 1, 4, 8]) == "·▁▄█"
    assert sparkline([0, 0, 0]) == "···"
    assert sparkline([1, 1000]) == "▁█"


def test_a_huge_digest_stays_within_slack_limits_and_escapes_everything() -> None:
    errors = [
        ErrorLine(
            shape=f"shape {i}",
            count=10 - i,
            example=EVIL,
            newest_run_id=EVIL,
            newest_at=S - 100,
            status="failed",
            new=i % 2 == 0,
            approx=i < 3,
        )
        for i in range(5)
    ]
    d = digest(
        errors=errors,
        error_shapes=400,
        sessions=[(EVIL, 9), (EVIL + "2", 4)],
        slowest=[RunLine(EVIL, "succeeded", 999.0, EVIL, S - 5)] * 3,
        tokens=123_456,
        partial=7,
        running=3,
        failures_sampled=True,
        failures_read=500,
        runs_sampled=True,
        runs_read=500,
        late=True,
        posted_at=S + 7000,
        app_name=EVIL,
    )
    text, blocks = render(d)
    assert check_blocks(blocks) is None
    for block in blocks:
        Block.parse(block).validate_json()  # type: ignore[union-attr]
    assert len(text) <= 3000
    for part in mrkdwn_texts(text, blocks):
        assert "<!channel>" not in part and "<@U123>" not in part and "<https://" not in part
        assert "&amp;lt;" not in part  # escaped once, not twice
    joined = "\n".join(mrkdwn_texts(text, blocks))
    assert "≈×10" in joined and "🆕" in joined and "Sampled to keep a busy day cheap" in joined
    assert "⏰ Late" in joined


def test_unreachable_app_message_escapes_the_error() -> None:
    text, blocks = render(digest(error="Dify said <!channel> & left", current=None))
    assert check_blocks(blocks) is None
    assert "Could not read this app from Dify" in text
    assert "&lt;!channel&gt; &amp; left" in text and "<!channel>" not in text


def test_formatters_import_neither_httpx_nor_slack_sdk() -> None:
    source = Path(__file__).parent.parent / "bot" / "digest_format.py"
    tree = ast.parse(source.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {n for n in names if n.split(".")[0] in {"httpx", "slack_sdk", "slack_bolt"}}


def test_the_hourly_chart_says_which_hours_it_spans() -> None:
    _, blocks = render(digest())
    (chart,) = [t for t in slack_mrkdwn(blocks) if "Failed runs per hour" in t]
    # 24 hours ending Wed 18 Nov 17:00 in Berlin: the two ends are told apart by their day.
    assert "24 hours from Tue 17:00 to Wed 17:00" in chart
    assert "17:00 → 17:00" not in chart


def test_top_errors_show_a_traceback_by_its_exception_line() -> None:
    from bot.records import ErrorLine

    tb = (
        "Node 'Code' run failed: Traceback (most recent call last):\n"
        '  File "/var/sandbox/a.py", line 48, in <module>\n    main()\n'
        "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n"
    )
    line = ErrorLine(shape="s", count=3, example=tb, newest_run_id="r1", newest_at=S, status="failed")
    text, blocks = render(digest(errors=[line], error_shapes=1))
    shown = "\n".join(slack_mrkdwn(blocks))
    assert "Node 'Code' run failed: json.decoder.JSONDecodeError: Expecting value" in shown
    assert "Traceback" not in shown and "Traceback" not in text
