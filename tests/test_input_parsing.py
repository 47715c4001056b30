"""What a user types for an id or a time: every form it may take, and nothing else.

Fuzzed: whatever text comes in, the answer is the value meant or a TopChef
error naming what was given, never another exception.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.contract import times
from broker.contract.ids import as_uuid
from broker.errors import DeserializationError, NotUUIDError

# -- ids ---------------------------------------------------------------------------


@given(st.uuids(), st.sampled_from([str, lambda u: u.hex, lambda u: str(u).upper()]), st.text(" "))
def test_an_id_is_taken_as_a_uuid_or_as_its_text(job, spelling, spaces):
    assert as_uuid(job) is job
    assert as_uuid(spaces + spelling(job) + "\n") == job  # as a line copied from a terminal


@settings(max_examples=300)
@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats()))
def test_anything_else_is_not_a_uuid_and_the_error_names_it(value):
    try:
        parsed = as_uuid(value)
    except NotUUIDError as error:
        refused = error
    else:
        assert isinstance(value, str)
        assert parsed == uuid.UUID(value.strip())
        return
    assert refused.value is value
    assert refused.status_code == 404
    assert repr(value)[:20] in refused.detail


def test_a_long_bad_id_is_quoted_clipped():
    with pytest.raises(NotUUIDError) as caught:
        as_uuid("x" * 10_000)
    assert len(caught.value.detail) < 120
    assert caught.value.value == "x" * 10_000


# -- times -------------------------------------------------------------------------

zones = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(
    min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones | st.just(UTC)
)


@settings(max_examples=300)
@given(instants, st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
def test_iso_8601_with_its_zone_parses_to_the_same_instant(when, precision):
    shown = when.replace(second=0, microsecond=0) if precision == "minutes" else when
    if precision == "seconds":
        shown = when.replace(microsecond=0)
    if precision == "milliseconds":
        shown = when.replace(microsecond=when.microsecond // 1000 * 1000)
    text = shown.isoformat(timespec=precision)
    if shown.utcoffset() == timedelta(0):
        text = text.replace("+00:00", "Z")
    assert times.parse_time(text) == shown
    assert times.parse_time(text).tzinfo is UTC
    assert times.parse_when(text) == shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T08:00Z", datetime(2030, 1, 1, 8, tzinfo=UTC)),  # the issue's own example
        ("2030-01-01T08:00:00Z", datetime(2030, 1, 1, 8, tzinfo=UTC)),
        ("2030-01-01t08:00z", datetime(2030, 1, 1, 8, tzinfo=UTC)),
        ("2030-01-01 08:00+01:00", datetime(2030, 1, 1, 7, tzinfo=UTC)),
        ("2030-01-01T08:00:00.5-02:30", datetime(2030, 1, 1, 10, 30, 0, 500000, tzinfo=UTC)),
        ("2030-01-01T08:00:00.123456789Z", datetime(2030, 1, 1, 8, 0, 0, 123456, tzinfo=UTC)),
        (" 2030-01-01T08:00Z\n", datetime(2030, 1, 1, 8, tzinfo=UTC)),
    ],
)
def test_the_forms_a_person_types(text, expected):
    assert times.parse_time(text) == expected


@pytest.mark.parametrize("text", ["2030-01-01T08:00", "2030-01-01T08:00:00.5", "2030-01-01"])
def test_a_time_without_its_zone_is_refused_saying_why(text):
    with pytest.raises(DeserializationError) as caught:
        times.parse_when(text, "--not-before")
    assert caught.value.source == "--not-before"
    assert "has no zone: add Z for UTC or its offset" in caught.value.detail
    assert "\n" not in caught.value.detail


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("+30s", 30), ("+10m", 600), ("+2h", 7200), ("+1d", 86400), ("+1h30m", 5400), ("+1.5h", 5400)],
)
def test_a_delay_from_now(text, seconds):
    assert times.parse_when(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["+", "+10", "+10x", "+-5m", "+ 10m", "+10m ago", "+3654d"])
def test_what_is_not_a_delay_is_refused(text):
    with pytest.raises(DeserializationError) as caught:
        times.parse_when(text)
    assert "delay" in caught.value.detail or "days" in caught.value.detail


def test_a_delay_is_for_the_command_line_only():
    with pytest.raises(DeserializationError, match="is not a time"):
        times.parse_time("+10m")


@settings(max_examples=500)
@given(st.text(st.characters(codec="utf-8"), max_size=40) | st.from_regex(r"\+[0-9.smhd]{0,8}"))
def test_any_text_is_a_time_a_delay_or_one_clear_error(text):
    try:
        parsed = times.parse_when(text)
    except DeserializationError as error:
        refused = error
    else:
        if isinstance(parsed, datetime):
            assert parsed.tzinfo is UTC
        else:
            assert timedelta(0) <= parsed <= times.MAX_DELAY
        return
    assert refused.source == "--not-before"
    assert "\n" not in refused.detail


def test_a_time_past_the_last_date_is_refused_not_crashed():
    with pytest.raises(DeserializationError, match="out of range"):
        times.parse_time("9999-12-31T23:59:59-23:59")
    with pytest.raises(DeserializationError):
        times.aware(datetime(2030, 1, 1))  # naive
    with pytest.raises(DeserializationError):
        times.delay(timedelta(days=100_000))
