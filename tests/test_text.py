"""Error texts: tracebacks read by their exception line, shapes that group alike errors only."""

from __future__ import annotations

import pytest

from bot.text import error_summary, normalize_error

FRAMES = "".join(
    f'  File "/var/sandbox/tmp/{n}.py", line {40 + n}, in step_{n}\n    value = step_{n + 1}(value)\n'
    for n in range(6)
)


def traceback(last: str, prefix: str = "") -> str:
    return f"{prefix}Traceback (most recent call last):\n{FRAMES}{last}\n"


JSON_ERROR = "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)"


def test_a_traceback_reads_as_its_exception_line():
    assert error_summary(traceback(JSON_ERROR)) == JSON_ERROR
    assert error_summary(traceback("KeyError: 'user_id'", "Node 'Code' run failed: ")) == (
        "Node 'Code' run failed: KeyError: 'user_id'"
    )


def test_chained_exceptions_read_as_the_last_one():
    text = (
        traceback("KeyError: 'a'")
        + "\nDuring handling of the above exception, another exception occurred:\n\n"
        + traceback("ValueError: bad input")
    )
    assert error_summary(text) == "ValueError: bad input"


def test_a_traceback_that_lost_its_new_lines_still_reads_as_its_exception():
    flat = traceback("ValueError: bad input 42").replace("\n", " ")
    assert error_summary(flat) == "ValueError: bad input 42"
    assert normalize_error(flat) == "ValueError: bad input <n>"


def test_other_errors_are_one_line_and_unchanged():
    assert error_summary("[Errno 111]\n Connection refused") == "[Errno 111] Connection refused"
    assert error_summary(None) == ""


def test_two_different_exceptions_never_share_a_shape():
    # The frames alone are longer than a shape: the old shape was the frames, cut.
    shapes = {
        normalize_error(traceback(last))
        for last in (JSON_ERROR, "KeyError: 'user_id'", "ValueError: 3", "TypeError: 3", "StopIteration")
    }
    assert len(shapes) == 5
    assert normalize_error(traceback(JSON_ERROR)) == (
        "json.decoder.JSONDecodeError: Expecting value: line <n> column <n> (char <n>)"
    )
    # Names with digits are names, not numbers.
    assert normalize_error("Http2ProtocolError: x") != normalize_error("Http3ProtocolError: x")
    assert normalize_error(traceback("Http2Error: x")) != normalize_error(traceback("Http3Error: x"))


def test_the_same_exception_with_other_values_shares_a_shape():
    assert normalize_error(traceback("KeyError: 'a'")) == normalize_error(traceback("KeyError: 'b'"))
    assert normalize_error("timed out after 31s") == normalize_error("timed out after 32s")


@pytest.mark.parametrize(
    "prefix", ["Node 'Code 2' run failed: ", "Node LLM 1 run failed: ", 'Node "Fetch" run failed: ']
)
def test_difys_node_prefix_keeps_the_nodes_name(prefix):
    a = normalize_error(prefix + "timed out after 31s")
    assert a.startswith(prefix.strip())
    assert a != normalize_error("Node 'Other' run failed: timed out after 31s")
    assert normalize_error(traceback("KeyError: 'x'", prefix)) == prefix + "KeyError: <v>"


def test_no_error_has_a_shape_of_its_own():
    assert normalize_error(None) == normalize_error("  ") == "(no error message)"
