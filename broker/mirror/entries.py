"""The state stream's entries as the mirror reads them, and the clock they carry.

An entry's id is Redis's clock when the report was added; ``SourceClock``
turns that into the database's clock, so every transition is stamped with
when it happened rather than when the mirror applied it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.messaging.messages import StateMessage
from broker.models import lifecycle

log = logging.getLogger(__name__)
Status = lifecycle.Status


#: The kinds of state entry that report on one job.
JOB_REPORTS = ("status", "progress", "release", "retry")


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


@dataclass
class Reading:
    """The entries of one read of the state stream: the job reports and the check-ins."""

    ids: list[bytes] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    check_ins: dict[uuid.UUID, Report] = field(default_factory=dict)
    #: Entries refused with their reason, for the dead-letter stream.
    refused: list[tuple[Report, str]] = field(default_factory=list)
    #: Jobs whose run ended in this reading and whose claims ended with it (set by ``apply``).
    finished: list[uuid.UUID] = field(default_factory=list)
    unreadable: int = 0
    #: What runs the jobs of the reports (``broker.messaging.provenance``), once per process.
    provenances: list[Report] = field(default_factory=list)
    #: Every check-in, in order, before ``check_ins`` merged them (``broker.mirror.holders``).
    every_check_in: list[Report] = field(default_factory=list)

    def add(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.ids.append(entry_id)
        try:
            message = StateMessage.from_fields(fields)
            report = Report(
                entry_id, fields, message, entry_ms(entry_id), *_lateness(fields), _take(fields)
            )
        except (ValueError, TypeError, KeyError, json.JSONDecodeError):
            log.error("dropping unreadable state entry %r: %r", entry_id, fields)
            self.unreadable += 1
            return
        if message.kind in JOB_REPORTS and message.job_id is not None:
            self.reports.append(report)
        elif message.kind == "provenance":
            self.provenances.append(report)
        elif message.kind == "checkin":
            self.every_check_in.append(report)
            self.check_ins[message.service_id] = merged(
                self.check_ins.get(message.service_id), report
            )


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


def _lateness(fields: dict[bytes, bytes]) -> tuple[str | None, int | None]:
    late = fields.get(b"late", fields.get("late"))  # type: ignore[call-overload]
    if not late:
        return None, None
    since = fields.get(b"since", fields.get("since"))  # type: ignore[call-overload]
    text = late.decode() if isinstance(late, bytes) else str(late)
    since_text = since.decode() if isinstance(since, bytes) else (since or "")
    return text, int(since_text) if since_text else None


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
