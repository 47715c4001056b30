"""The state stream's entries as the mirror reads them, and the clock they carry.

An entry's id is Redis's clock when the report was added; ``SourceClock``
turns that into the database's clock, so every transition is stamped with
when it happened rather than when the mirror applied it.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.messaging.messages import StateMessage
from broker.mirror.admission import (
    JOB_REPORTS,
    Reason,
    RefusedEntry,
    read_lateness,
    read_message,
)
from broker.models import lifecycle

log = logging.getLogger(__name__)
Status = lifecycle.Status


#: How far ahead of Redis's clock an entry's id may be and still be taken as
#: the time of its report. Redis gives an entry an id ahead of its clock only
#: when the stream's last id is ahead: after its host's clock stepped back
#: (NTP steps are well under a second), after a failover to a replica whose
#: clock is behind, or after someone wrote an id of their choosing. A minute
#: covers the first two by far, and bounds what the third can do: a transition
#: stamped at most a minute ahead, and nothing ahead once the clock passes it.
FUTURE_BOUND_MS = 60_000


@dataclass(frozen=True, slots=True)
class Report:
    """One state entry: the message, when Redis stamped it, and how late it came."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    message: StateMessage
    #: Redis's clock at the report, in ms (the entry id's first part).
    at_ms: int
    #: ``Claims.finish``'s lateness: None for a report on time.
    late: str | None = None
    #: When beat presumed the worker lost (Redis ms), for a late report.
    since_ms: int | None = None
    #: The take of the job's claim that a WORKING or release report is of (claim.lua).
    take: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry the mirror will not apply: the entry as it was, and why (``admission.Reason``)."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: Reason
    detail: str


@dataclass
class Reading:
    """The entries of one read of the state stream: the job reports and the check-ins.

    ``clock_ms`` is Redis's clock when the entries were read: an entry whose
    id is more than ``FUTURE_BOUND_MS`` ahead of it goes to ``ahead``, for the
    mirror to restamp (``broker.mirror.dead_letters``), and is applied only
    once it has an id Redis's clock could have given.
    """

    ids: list[bytes] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    check_ins: dict[uuid.UUID, Report] = field(default_factory=dict)
    #: Entries refused with their reason, for the dead-letter stream.
    refused: list[DeadLetter] = field(default_factory=list)
    #: Jobs whose run ended in this reading and whose claims ended with it (set by ``apply``).
    finished: list[uuid.UUID] = field(default_factory=list)
    #: What runs the jobs of the reports (``broker.messaging.provenance``), once per process.
    provenances: list[Report] = field(default_factory=list)
    #: Every check-in, in order, before ``check_ins`` merged them (``broker.mirror.holders``).
    every_check_in: list[Report] = field(default_factory=list)
    clock_ms: int | None = None
    #: Entries whose id is ahead of Redis's clock.
    ahead: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)

    def add(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Read one entry into its place, or refuse it with its reason; never raises for it."""
        self.ids.append(entry_id)
        if self.clock_ms is not None and entry_ms(entry_id) > self.clock_ms + FUTURE_BOUND_MS:
            self.ahead.append((entry_id, fields))
            return
        self.admit(entry_id, fields)

    def admit(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Read an entry whose id is the time of its report (``add`` has its id already)."""
        at_ms = entry_ms(entry_id)
        try:
            message = read_message(fields)
            late, since = read_lateness(fields, at_ms)
        except RefusedEntry as refusal:
            self.refused.append(DeadLetter(entry_id, fields, refusal.reason, refusal.detail))
            return
        except Exception as error:  # a rule's own failure: the entry is still refused
            log.exception("state entry %r could not be read", entry_id)
            detail = f"cannot be read: {type(error).__name__}"
            self.refused.append(DeadLetter(entry_id, fields, Reason.UNREADABLE, detail))
            return
        report = Report(entry_id, fields, message, at_ms, late, since, _take(fields))
        # Who may have written an entry (a signature, the job's claim) is a
        # question for the report read here, before it takes its place.
        self.place(report)

    def place(self, report: Report) -> None:
        """Sort a report that was read into what the mirror applies of it."""
        message = report.message
        if message.kind in JOB_REPORTS:
            self.reports.append(report)
        elif message.kind == "provenance":
            self.provenances.append(report)
        elif message.kind == "checkin":
            self.every_check_in.append(report)
            self.check_ins[message.service_id] = merged(
                self.check_ins.get(message.service_id), report
            )

    def refuse(self, report: Report, reason: Reason, detail: str) -> None:
        """Refuse a report that was read: it is dead-lettered instead of applied."""
        self.refused.append(DeadLetter(report.entry_id, report.fields, reason, detail))


def merged(previous: Report | None, check_in: Report) -> Report:
    """A service's check-ins of one reading so far, with one more: what the mirror applies.

    The last word on availability wins; a bare check-in keeps the earlier word.
    """
    message = check_in.message
    if previous is None or message.available is not None:
        return check_in
    kept = StateMessage("checkin", message.service_id, available=previous.message.available)
    return Report(check_in.entry_id, check_in.fields, kept, check_in.at_ms)


@dataclass
class Changes:
    """A reading's verified job reports, sorted into what SQL needs."""

    statuses: dict[Status, dict[uuid.UUID, Report]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    #: Reports that came after beat presumed their worker lost: each is kept.
    late: list[Report] = field(default_factory=list)
    progress: dict[uuid.UUID, Report] = field(default_factory=dict)
    #: Claims their HTTP holders gave back, in the order given.
    releases: list[Report] = field(default_factory=list)
    #: Runs that asked for another attempt (``lifecycle.retry``).
    retries: list[Report] = field(default_factory=list)

    @classmethod
    def of(cls, reports: Iterable[Report]) -> Changes:
        changes = cls()
        for report in reports:
            message = report.message
            job: uuid.UUID = message.job_id  # type: ignore[assignment]
            if message.kind == "progress":
                changes.progress[job] = report
            elif message.kind == "release":
                changes.releases.append(report)
            elif message.kind == "retry":
                changes.retries.append(report)
            elif not message.status:
                continue
            elif report.late is not None:
                changes.late.append(report)
            else:
                status = Status(message.status)
                current = changes.statuses[status].get(job)
                if current is None or message.attempt >= current.message.attempt:
                    changes.statuses[status][job] = report
        return changes

    @property
    def finished(self) -> list[uuid.UUID]:
        ended = [job for status in lifecycle.TERMINAL for job in self.statuses.get(status, {})]
        ended += [r.message.job_id for r in self.late if r.late in ("lost", "requeued")]  # type: ignore[misc]
        return ended


class SourceClock:
    """Translates Redis's clock (stream entry ids) to the database's.

    The offset is measured at each reading, from Redis's ``TIME`` and the
    database's clock read one after the other: its error is one round trip,
    and the lifecycle never lets a later transition be stamped before an
    earlier one of the same job.
    """

    def __init__(self, redis_now_ms: int, database_now: datetime) -> None:
        self.offset = database_now - from_ms(redis_now_ms)

    def at(self, ms: int) -> datetime:
        return from_ms(ms) + self.offset


def entry_ms(entry_id: bytes | str) -> int:
    """Redis's clock when the entry was added: the first part of its id."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def _take(fields: dict[bytes, bytes]) -> int | None:
    """The claim's take a report names, if it names one that is a positive number."""
    raw: object = fields.get(b"take", fields.get("take"))  # type: ignore[call-overload]
    if not isinstance(raw, bytes | str):
        return None
    try:
        take = int(raw)
    except ValueError:
        return None
    return take if 0 < take < 2**31 else None


def from_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
