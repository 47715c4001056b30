"""The state stream's entries as the mirror reads them: what a lab PC may write there."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from broker.messaging.messages import StateMessage
from broker.mirror.admission import (
    _RULES,
    KINDS,
    Reason,
    RefusedEntry,
    read_lateness,
    read_message,
)
from broker.mirror.entries import FUTURE_BOUND_MS, Reading

SERVICE, JOB = uuid.uuid4(), uuid.uuid4()
WORKING = StateMessage("status", SERVICE, JOB, status="WORKING", worker="w").to_fields()


@given(take=st.binary(max_size=30) | st.text(max_size=30).map(str.encode))
def test_any_take_a_writer_puts_beside_a_report_is_a_take_or_none(take):
    """``take`` numbers a claim's take (claim.lua); anything else in its place is no take."""
    reading = Reading()
    reading.add(b"1-0", {b"m": WORKING["m"].encode(), b"take": take})
    (report,) = reading.reports
    assert report.take is None or (0 < report.take < 2**31 and report.take == int(take))


def test_a_take_is_read_from_the_entry():
    reading = Reading()
    reading.add(b"1-0", {b"m": WORKING["m"].encode(), b"take": b"3"})
    reading.add(b"1-1", {b"m": WORKING["m"].encode()})
    assert [report.take for report in reading.reports] == [3, None]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=10)
    | st.uuids().map(str),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(sorted(_RULES)) | st.text(max_size=8)
messages = st.dictionaries(field_names, json_values, max_size=8).map(
    lambda data: json.dumps(data, allow_nan=True).encode()
)
entry_fields = st.dictionaries(
    st.sampled_from([b"m", b"late", b"since", b"take"]) | st.binary(max_size=6),
    st.binary(max_size=30) | messages,
    max_size=5,
)


@given(fields=entry_fields)
def test_an_entry_is_read_or_refused_with_a_reason_and_nothing_else(fields):
    """The rules never fail on an entry themselves (``Reading.add`` would refuse it anyway)."""
    try:
        message = read_message(fields)
        read_lateness(fields, 1)
    except RefusedEntry as refusal:
        reason = refusal.reason
    else:
        reason = None
        assert message.kind in KINDS
    assert reason is None or reason in Reason


@given(
    kind=st.sampled_from(sorted(KINDS)),
    data=st.dictionaries(st.sampled_from(sorted(_RULES)), json_values, max_size=6),
)
def test_a_message_of_a_known_kind_with_any_values_is_read_or_refused(kind, data):
    data = {**data, "kind": kind, "service_id": str(SERVICE)}
    try:
        message = read_message({b"m": json.dumps(data).encode()})
    except RefusedEntry as refusal:
        reason = refusal.reason
    else:
        reason = None
        assert isinstance(message.attempt, int)
        assert 1 <= message.attempt < 2**31
        assert message.results is None or isinstance(message.results, dict)
    assert reason is None or reason in Reason


def test_every_field_of_a_state_message_has_a_reading_rule():
    """A field added to ``StateMessage`` without a rule would have every entry refused."""
    assert set(_RULES) == set(StateMessage.__slots__)


def test_an_entry_id_ahead_of_the_clock_waits_to_be_restamped():
    reading = Reading(clock_ms=1_000_000)
    reading.add(f"{1_000_000 + FUTURE_BOUND_MS}-0".encode(), {b"m": WORKING["m"].encode()})
    reading.add(f"{1_000_001 + FUTURE_BOUND_MS}-0".encode(), {b"m": WORKING["m"].encode()})
    assert [report.at_ms for report in reading.reports] == [1_000_000 + FUTURE_BOUND_MS]
    assert [entry_id for entry_id, _fields in reading.ahead] == [b"1060001-0"]
