"""The state stream's entries as the mirror reads them: what a lab PC may write there."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from broker.messaging.messages import StateMessage
from broker.mirror.entries import Reading

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
