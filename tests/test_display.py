"""What a person reads of results and progress: whole when it fits, bounded when not.

Plain functions (``broker/cli/display.py``, ``broker/ops/progress_bar.py``),
given the values a handler may return or report, large and hostile ones too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.cli import display
from broker.models.lifecycle import Status
from broker.ops.progress_bar import bar_line, describe, printable
from broker.producer.reader import Standing

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=200,
)


def _big(points: int = 57_034) -> dict[str, Any]:
    return {
        "pulse_us": [index * 0.05 for index in range(points)],
        "log": "x" * 100_000,
        "fit": {"frequency_mhz": 2.31, "residual": 0.01},
        "rows": [{"x": index, "y": index * index} for index in range(500)],
    }


@pytest.mark.parametrize(
    "value",
    [
        {"message": "hello"},
        {"square": 4},
        [1, 2, 3],
        "a string",
        None,
        {"nested": {"a": [1, {"b": 2}]}, "detail": "d" * 150},
    ],
)
def test_what_fits_a_screen_is_printed_as_before(value):
    shown = display.block(value)
    assert shown.text == json.dumps(value, indent=2)
    assert not shown.summarised


def test_large_results_fit_a_screen_and_say_what_they_left_out():
    shown = display.block(_big())
    assert shown.summarised
    assert len(shown.lines) <= display.LINES
    assert max(len(line) for line in shown.lines) == display.LONGEST
    assert shown.lines == [
        "{",
        '  "pulse_us": <57,034 numbers: 0.0, 0.05, 0.1, 0.15000000000000002, 0.2, 0.25, …>,',
        '  "log": "' + "x" * 166 + '…" <100,000 characters>,',
        '  "fit": {"frequency_mhz": 2.31, "residual": 0.01},',
        '  "rows": [',
        *[f'    {{"x": {index}, "y": {index * index}}},' for index in range(display.ITEMS)],
        "    <490 more items>",
        "  ]",
        "}",
    ]
    with pytest.raises(json.JSONDecodeError):  # a program never takes a summary for data
        json.loads(shown.text)


def test_each_key_gets_its_share_of_the_screen():
    crowded = {f"key{index}": {"values": list(range(index * 50))} for index in range(80)}
    shown = display.block({"parameters": {"x": 1}, "results": crowded, "status": "COMPLETED"})
    assert len(shown.lines) <= display.LINES
    assert shown.lines[1] == '  "parameters": {"x": 1},'
    assert shown.lines[-2] == '  "status": "COMPLETED"'  # the keys after a large one still show
    assert any("more keys>" in line for line in shown.lines)


def test_one_line_keeps_small_results_and_cuts_large_ones():
    assert display.one_line({"square": 4}, 60) == display.Shown(['{"square": 4}'], False)
    cut = display.one_line(_big(), 120)
    assert cut.summarised
    assert cut.text.startswith('{"pulse_us": <57,034 numbers: 0.0, 0.05, ')
    assert cut.text.endswith("more keys>}")
    assert len(cut.text) <= 120


def test_a_long_key_and_a_huge_number_are_cut_too():
    shown = display.block({"k" * 5_000: list(range(100)), "n": 10**500, "more": "x" * 40})
    assert max(len(line) for line in shown.lines) <= display.LONGEST
    assert '"n": <number of 501 digits>,' in [line.strip() for line in shown.lines]


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_fits_its_lines_and_is_json_whenever_nothing_was_left_out(value):
    whole = json.dumps(value, indent=2).splitlines()
    shown = display.block(value, lines=12)
    assert shown.lines == whole or len(shown.lines) <= 12
    if shown.summarised:
        assert max(len(line) for line in shown.lines) <= display.LONGEST
        with pytest.raises(json.JSONDecodeError):
            json.loads(shown.text)
    else:
        assert json.loads(shown.text) == value  # laid out anew, perhaps, but all there
    line = display.one_line(value, 60)
    assert len(line.text) <= 60
    assert line.summarised or line.text == json.dumps(value)


# -- the progress bar --------------------------------------------------------------


def test_one_job_s_bar_shows_its_progress_and_message():
    working = Standing(1, 0, status=Status.WORKING, progress=0.4, progress_message="point 81/200")
    assert describe(working) == (0.4, "point 81/200")
    assert describe(Standing(1, 0, status=Status.REGISTERED)) == (0.0, "waiting to start")
    assert describe(Standing(1, 0, status=Status.WORKING)) == (0.0, "running")
    assert describe(Standing(1, 1, 1, status=Status.ERROR)) == (1.0, "ERROR")
    line = bar_line("Waiting", 0.4, "point 81/200", 72.5, 80)
    assert line == "Waiting  [########            ]  40%  1:12  point 81/200"


def test_a_sweep_s_bar_counts_jobs_done_failed_and_cancelled():
    assert describe(Standing(20, 8, 1)) == (0.4, "8/20 jobs done, 1 failed")
    assert describe(Standing(4, 4, 0, 2)) == (1.0, "4/4 jobs done, 0 failed, 2 cancelled")


@pytest.mark.parametrize(
    ("message", "columns", "shown"),
    [
        ("point 81/200", 40, "point 81/200"),
        ("two\nlines\tand\x1b[2Jclear", 40, "two lines and [2Jclear"),
        ("x" * 5_000, 10, "xxxxxxxxx…"),
        ("測" * 10, 9, "測測測測…"),  # wide characters take two columns
        ("\u200b\u202e\x00", 10, ""),  # invisible and control characters: nothing to show
    ],
)
def test_a_handler_s_message_stays_one_line_of_its_columns(message, columns, shown):
    assert printable(message, columns) == shown


def test_the_bar_never_wraps_however_narrow_the_terminal():
    for columns in (10, 30, 45, 80):
        assert len(bar_line("Waiting", 1.7, "m" * 500, 3_700, columns)) == columns - 1
    assert bar_line("Waiting", -1, "", 0, 80) == "Waiting  [                    ]   0%  0:00  "
    assert "1:01:40" in bar_line("Waiting", 1.0, "", 3_700, 80)
