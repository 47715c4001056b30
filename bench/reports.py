"""What authenticating a report costs a worker, and checking it the mirror (``broker.trust``).

Each job's run sends two authenticated reports (WORKING and its outcome): a
worker computes both MACs, and the mirror checks both before it applies them.
Measured on a no-op job's COMPLETED report, the kind a drain is made of.
"""

from __future__ import annotations

import time
import uuid

from broker.messaging.messages import StateMessage
from broker.trust.credentials import Credential
from broker.trust.reports import ReportKey, Signed, signed

#: Reports authenticated and checked per measurement.
REPORTS = 20_000


def _report() -> StateMessage:
    return StateMessage(
        "status",
        uuid.uuid4(),
        uuid.uuid4(),
        "COMPLETED",
        results={"ok": True, "index": 1234},
        worker="bench-pc:12345",
        provenance="0" * 32,
    )


def sign_microseconds(n: int = REPORTS) -> float:
    """A worker's cost per report: the report's entry, with its MAC."""
    credential = Credential("bench", ReportKey.generate())
    message = _report()
    started = time.perf_counter()
    for _ in range(n):
        credential.fields(message.to_fields()["m"])
    return (time.perf_counter() - started) / n * 1e6


def verify_microseconds(n: int = REPORTS) -> float:
    """The mirror's cost per report: its MAC read from the entry and checked."""
    credential = Credential("bench", ReportKey.generate())
    key = credential.key
    entry = {
        name.encode(): value.encode()
        for name, value in credential.fields(_report().to_fields()["m"]).items()
    }
    started = time.perf_counter()
    for _ in range(n):
        claim = signed(entry)
        assert isinstance(claim, Signed)
        assert claim.verifies(key)
    return (time.perf_counter() - started) / n * 1e6
