"""The state mirror: state messages from the broker, written into SQL in batches.

Workers append state changes to a Redis stream; the mirror reads them as a
consumer group, applies a whole reading in one transaction, commits, and only
then acknowledges (and deletes) the entries. A crash before the commit leaves
the entries pending; a restarted mirror reads its own pending entries first
and takes over those of a mirror that died elsewhere. Applying is idempotent:
every status change is ``lifecycle.advance``'s compare-and-set, so a
redelivered or out-of-order entry never moves a job backwards, and the mirror
only ever updates rows, so it never duplicates one.

The stream is not trusted: every lab PC can write to it. Each entry is read
strictly and bounded first (``broker.mirror.admission``); an entry that breaks a
rule, reports on a job SQL does not know, names another service than the job's
own, or that the database refuses, is dead-lettered with its reason and never
applied, and nothing in an entry can make the mirror's loop raise; results are
checked against the job's own service's schema; an entry id ahead of Redis's
clock is restamped (``broker.mirror.dead_letters``, which also says how no
single write stops other workers from reporting).

Every transition is stamped with when it happened: the stream entry's id is
Redis's clock at the report, translated to the database's clock (the one clock
check-ins and timeouts are judged by) with the offset between the two measured
at each reading, never the time the mirror got round to applying it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.contract import Contract, compile_contract
from broker.errors import DeserializationError
from broker.messaging import keys
from broker.messaging.claims import Claims
from broker.messaging.connections import redis_client
from broker.messaging.messages import StateMessage
from broker.messaging.presence import Presence
from broker.messaging.provenance import RunProvenance
from broker.mirror import holders
from broker.mirror.admission import Reason
from broker.mirror.dead_letters import DeadLetters
from broker.mirror.entries import Changes, DeadLetter, Reading, Report, SourceClock
from broker.models import attempts, lifecycle
from broker.models.moves import Move
from broker.settings import Settings
from broker.storage.tables import (
    JobRow,
    RunProvenanceRow,
    ServiceRow,
    database_now,
    engine_for,
)

log = logging.getLogger(__name__)
Status = lifecycle.Status

#: Errors that mean the database is unreachable, not that the reading is wrong.
_OUTAGE = (sa.exc.OperationalError, sa.exc.InterfaceError)

#: A reading at least this big means load: the mirror then waits ``linger_ms`` for the next.
LINGER_ABOVE = 10

#: Entries idle this long in another consumer's pending list belong to a dead mirror.
ABANDONED_AFTER_MS = 30_000

#: Lateness of a report whose attempt is still the job's own (``Claims.finish``).
_SAME_ATTEMPT = frozenset({"lost", "requeued", "unknown"})


class Mirror:
    """Consumes the state stream into the database at ``settings.database_url``."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int = 1000,
        block_ms: int = 200,
        linger_ms: int = 50,
        consumer: str | None = None,
        abandoned_after_ms: int = ABANDONED_AFTER_MS,
    ) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.linger_ms = linger_ms
        self.consumer = consumer or f"mirror@{socket.gethostname()}"
        self._client = redis_client(settings.broker_url)
        self._claims = Claims.configured(self._client, settings)
        self._presence = Presence(self._client)
        self._dead_letters = DeadLetters(self._client)
        self._engine = engine_for(settings.database_url)
        self._contracts: dict[uuid.UUID, Contract] = {}
        #: Provenance digests this process has stored already.
        self._provenances: set[str] = set()
        self._pending_first = True
        #: Entries idle this long in another consumer's pending list are taken over.
        self.abandoned_after_ms = abandoned_after_ms
        self._taken_over_at = time.monotonic()
        self.applied = 0

    def ensure_group(self) -> None:
        try:
            self._client.xgroup_create(keys.STATE_STREAM, keys.MIRROR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self) -> Reading:
        """The next reading: this consumer's pending entries first, then abandoned, then new."""
        reading = Reading()
        entries = []
        if self._pending_first:
            entries = self._read("0")
            if not entries:
                self._pending_first = False
                _next, claimed, *_ = self._client.xautoclaim(
                    keys.STATE_STREAM,
                    keys.MIRROR_GROUP,
                    self.consumer,
                    min_idle_time=self.abandoned_after_ms,
                    count=self.batch_size,
                )
                entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if not entries:
            entries = self._read(">")
        if entries:
            reading.clock_ms = _redis_ms(self._client)
        for entry_id, fields in entries:
            reading.add(entry_id, fields)
        return reading

    def _read(self, start: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        response: Any = self._client.xreadgroup(
            keys.MIRROR_GROUP,
            self.consumer,
            {keys.STATE_STREAM: start},
            count=self.batch_size,
            block=None if start == "0" else self.block_ms,
        )
        if not response:
            return []
        _stream, entries = response[0]
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def step(self) -> int:
        """Read, apply and acknowledge one reading; return how many entries it held.

        A database outage raises (the reading stays pending, to be read again),
        and so does a Redis one. Anything else that goes wrong applying a
        reading is the fault of an entry in it, whatever the exception (the
        database refusing a value, an encoding error, a value no rule of
        ``admission`` foresaw): its entries are then applied one by one and
        those that still fail are dead-lettered. Entries ahead of Redis's
        clock are restamped first (``DeadLetters.restamp``).
        """
        self._dead_letters.restamp(self._client)
        if time.monotonic() - self._taken_over_at > self.abandoned_after_ms / 1000:
            # Not only at a start: a "consumer" that read entries and sits on
            # them (any Redis writer can make one) must not keep them for ever.
            self._taken_over_at = time.monotonic()
            self._pending_first = True
        reading = self.read()
        moved = self._dead_letters.restamp(self._client, read_ahead=bool(reading.ahead))
        for entry_id, fields in reading.ahead:
            if entry_id not in moved:  # no longer ahead when the script looked
                reading.admit(entry_id, fields)
        if not reading.ids:
            return 0
        unread = list(reading.refused)
        try:
            self._commit(reading)
        except (*_OUTAGE, redis.RedisError):
            self._pending_first = True
            raise
        except Exception:
            log.exception("a reading of %d entries failed; applying one by one", len(reading.ids))
            reading = self._apply_singly(reading, unread)
        pipeline = self._client.pipeline(transaction=False)
        pipeline.xack(keys.STATE_STREAM, keys.MIRROR_GROUP, *reading.ids)
        pipeline.xdel(keys.STATE_STREAM, *reading.ids)
        finished = reading.finished
        if finished:
            pipeline.publish(keys.FINISHED_CHANNEL, json.dumps([str(job) for job in finished]))
        self._dead_letters.queue(pipeline, reading.refused)
        replies = pipeline.execute(raise_on_error=False)
        for reply in replies[:2]:
            if isinstance(reply, Exception):
                raise reply  # not acknowledged: read again
        for reply in replies[2:]:
            if isinstance(reply, Exception):
                # The dead-letter keys are not what they should be (someone wrote
                # there): the entries are kept in the log above, and the mirror goes on.
                log.error("could not dead-letter or count an entry: %s", reply)
        if finished:
            self._claims.settle(finished)
        self.applied += len(reading.ids)
        return len(reading.ids)

    def _commit(self, reading: Reading) -> None:
        with Session(bind=self._engine) as session, session.begin():
            self.apply(session, reading)

    def _apply_singly(self, reading: Reading, unread: list[DeadLetter]) -> Reading:
        """Apply a failed reading's entries one by one; return what was applied and refused.

        ``unread`` are the reading's entries refused before it was applied.
        """
        applied = Reading(ids=list(reading.ids), refused=list(unread))
        for report in [*reading.provenances, *reading.reports, *reading.check_ins.values()]:
            single = Reading(ids=[report.entry_id], clock_ms=reading.clock_ms)
            single.place(report)
            try:
                self._commit(single)
            except (*_OUTAGE, redis.RedisError):
                self._pending_first = True
                raise
            except Exception as error:
                detail = f"cannot be applied: {type(error).__name__}: {error}"
                applied.refused.append(
                    DeadLetter(report.entry_id, report.fields, Reason.UNAPPLIABLE, detail)
                )
                continue
            applied.refused += single.refused
            applied.finished += single.finished
        return applied

    def apply(self, session: Session, reading: Reading) -> None:
        """Write one reading in ``session``'s transaction (the caller commits)."""
        clock = SourceClock(_redis_ms(self._client), database_now(session))
        # Only what a credential that may report on it signed goes on (broker.mirror.holders).
        services = holders.screen(session, reading, self._claims)
        self._apply_check_ins(session, reading, clock)
        self._apply_provenances(session, reading, clock)
        self._verify(reading, services)
        changes = Changes.of(self._accepted(reading))
        started_here = _started_and_ended(changes)
        working = [
            report
            for job, report in changes.statuses.get(Status.WORKING, {}).items()
            if job not in started_here
        ]
        lifecycle.advance(session, Status.WORKING, [_working(r, clock) for r in working])
        restarts = [
            attempts.Restart(
                r.message.job_id,  # type: ignore[arg-type]
                r.message.attempt,
                r.message.worker,
                clock.at(r.at_ms),
                r.message.provenance,
            )
            for r in working
            if r.message.attempt > 1
        ]
        attempts.restart(session, restarts)
        # After the WORKING moves: a release always follows the claim it gives back.
        releases = [
            Move(
                r.message.job_id,  # type: ignore[arg-type]
                clock.at(r.at_ms),
                {"worker": r.message.worker},
                by=r.message.worker,
                take=r.take,
            )
            for r in changes.releases
        ]
        lifecycle.release(session, releases)
        self._apply_retries(session, changes, clock)
        self._apply_progress(session, changes)
        for status in (Status.COMPLETED, Status.ERROR, Status.CANCELLED):
            reports = changes.statuses.get(status, {})
            if status is Status.COMPLETED:
                reports, invalid = self._check_results(session, reports, services)
                changes.statuses[Status.ERROR].update(invalid)
            moves = [_final(r, clock, started_here.get(job)) for job, r in reports.items()]
            lifecycle.advance(session, status, moves)
            if status is Status.CANCELLED:
                # Only a run that saw its abort ends CANCELLED from WORKING.
                pairs = zip(reports.values(), moves, strict=True)
                lifecycle.abort_run(session, [move for r, move in pairs if _aborted(r)])
        self._apply_late(session, changes, services, clock)
        reading.finished = changes.finished

    def _apply_retries(self, session: Session, changes: Changes, clock: SourceClock) -> None:
        """Keep each attempt that asked for a retry, then send its job back to wait.

        The next attempt's time is the report's own (on the source clock) plus
        the wait it asked for, not the time this reading was applied.
        """
        if not changes.retries:
            return
        retried, moves = [], []
        for report in changes.retries:
            message = report.message
            job: uuid.UUID = message.job_id  # type: ignore[assignment]
            at = clock.at(report.at_ms)
            after = _seconds(message.extra.get("after"))
            detail = message.detail or "the handler asked for a retry"
            retried.append(attempts.Retried(job, message.attempt, detail, at))
            columns = {"not_before": at + timedelta(seconds=after), "detail": detail}
            moves.append(Move(job, at, columns, attempt=message.attempt, by=message.worker))
        attempts.keep_retried(session, retried)
        lifecycle.retry(session, moves)

    @staticmethod
    def _verify(reading: Reading, services: dict[uuid.UUID, uuid.UUID]) -> None:
        """Refuse reports of unknown or misattributed jobs (``services``: each job's own)."""
        for report in reading.reports:
            job, claimed = report.message.job_id, report.message.service_id
            actual = services.get(job)  # type: ignore[arg-type]
            if actual is None:
                reading.refuse(report, Reason.UNKNOWN_JOB, f"no job {job} exists")
            elif actual != claimed:
                detail = f"job {job} belongs to service {actual}, not {claimed}"
                reading.refuse(report, Reason.MISATTRIBUTED, detail)

    @staticmethod
    def _accepted(reading: Reading) -> list[Report]:
        refused = {dead.entry_id for dead in reading.refused}
        return [report for report in reading.reports if report.entry_id not in refused]

    def _apply_progress(self, session: Session, changes: Changes) -> None:
        if not changes.progress:
            return
        session.connection().execute(
            sa.update(JobRow)
            .where(JobRow.id == sa.bindparam("b_id"))
            .where(lifecycle.status_in([Status.REGISTERED, Status.WORKING]))
            .values(progress=sa.bindparam("b_progress"), progress_message=sa.bindparam("b_note"))
            .execution_options(synchronize_session=False),
            [
                {"b_id": job, "b_progress": r.message.progress, "b_note": r.message.message}
                for job, r in changes.progress.items()
            ],
        )

    def _apply_late(
        self,
        session: Session,
        changes: Changes,
        services: dict[uuid.UUID, uuid.UUID],
        clock: SourceClock,
    ) -> None:
        """Record every report that came after beat presumed its worker lost.

        A report of the job's own attempt (beat failed it, or re-queued it but
        nothing ran again) is the job's outcome: it moves a job still WORKING,
        or replaces the "worker lost" presumption (``correct_presumed_loss``).
        A superseded attempt's report is kept with that attempt.
        """
        for report in changes.late:
            job: uuid.UUID = report.message.job_id  # type: ignore[assignment]
            message = report.message
            status = Status(message.status or Status.ERROR.value)
            if status is Status.COMPLETED:
                _valid, invalid = self._check_results(session, {job: report}, services)
                if invalid:
                    message, status = invalid[job].message, Status.ERROR
            at = clock.at(report.at_ms)
            note = _late_note(report, clock, at)
            detail = f"{message.detail}; {note}" if message.detail else note
            columns = {
                "results": message.results,
                "detail": detail,
                "worker": message.worker,
                "run_provenance": message.provenance,
            }
            move = Move(job, at, columns, attempt=message.attempt, by=message.worker)
            # Only a run that saw its abort may end CANCELLED once it had started.
            may_end = status is not Status.CANCELLED or _aborted(report)
            if report.late in _SAME_ATTEMPT and (
                lifecycle.advance(session, status, [move])
                or (may_end and status is Status.CANCELLED and lifecycle.abort_run(session, [move]))
                or (may_end and lifecycle.correct_presumed_loss(session, status, [move]))
            ):
                log.warning("recorded a late outcome as job %s's own: %s", job, note)
                continue
            late = attempts.LateOutcome(
                job, message.attempt, status, message.results, detail, message.worker, at
            )
            if attempts.keep_late(session, [late]):
                log.warning(
                    "kept the late outcome of job %s's attempt %d: %s", job, late.attempt, note
                )
            else:
                log.info("a late report of job %s changes nothing (a duplicate): %s", job, note)

    def _apply_provenances(self, session: Session, reading: Reading, clock: SourceClock) -> None:
        """Store each new run provenance once; refuse one whose digest does not match it."""
        rows = {}
        for report in reading.provenances:
            try:
                record = RunProvenance.from_dict(report.message.extra)
            except ValueError as error:
                reading.refuse(report, Reason.INVALID_PROVENANCE, f"invalid provenance: {error}")
                continue
            if record.digest not in self._provenances:
                rows[record.digest] = {
                    **record.as_dict(),
                    "digest": record.digest,
                    "recorded_at": clock.at(report.at_ms),
                }
        if not rows:
            return
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        insert = dialect.insert(RunProvenanceRow).on_conflict_do_nothing()
        session.connection().execute(insert, list(rows.values()))
        # Known only once committed: a reading rolled back is read again.
        new = set(rows)
        remember = lambda _session: self._provenances.update(new)  # noqa: E731
        sa.event.listen(session, "after_commit", remember, once=True)

    def _apply_check_ins(self, session: Session, reading: Reading, clock: SourceClock) -> None:
        """Reset each service's timeout; a leave keeps it available while another worker serves it.

        A worker that arrives is live, so its word stands. A worker that
        leaves speaks only for itself: whether the service stays available is
        read from the presences left now (``broker.messaging.presence``), which
        its leave withdrew from before its entry reached the stream.
        """
        leaving = [s for s, r in reading.check_ins.items() if r.message.available is False]
        remaining = self._presence.live(leaving)
        for service, report in reading.check_ins.items():
            values: dict[str, Any] = {
                "last_checked_in": clock.at(report.at_ms),
                "timed_out_at": None,
            }
            if report.message.available is not None:
                values["is_service_available"] = bool(
                    report.message.available or remaining.get(service, 0)
                )
            session.execute(sa.update(ServiceRow).where(ServiceRow.id == service).values(values))

    def _check_results(
        self,
        session: Session,
        reports: dict[uuid.UUID, Report],
        services: dict[uuid.UUID, uuid.UUID],
    ) -> tuple[dict[uuid.UUID, Report], dict[uuid.UUID, Report]]:
        """Validate results once more, against the job's own service: the stream is not trusted."""
        valid: dict[uuid.UUID, Report] = {}
        invalid: dict[uuid.UUID, Report] = {}
        for job, report in reports.items():
            message = report.message
            try:
                # A schema stored before a limit existed is refused here, as invalid results.
                contract = self._contract(session, services.get(job, message.service_id))
                if contract is None:
                    raise DeserializationError("results", "the job's service does not exist")
                contract.validate(message.results, source="results")
            except DeserializationError as violation:
                error = StateMessage(
                    "status",
                    message.service_id,
                    job,
                    Status.ERROR.value,
                    detail=f"invalid results: {violation.detail}",
                    attempt=message.attempt,
                    worker=message.worker,
                    provenance=message.provenance,
                )
                invalid[job] = dataclasses.replace(report, message=error)
            else:
                valid[job] = report
        return valid, invalid

    def _contract(self, session: Session, service: uuid.UUID) -> Contract | None:
        # Result schemas are immutable, so a compiled one is good for the process's life.
        contract = self._contracts.get(service)
        if contract is None:
            schema = session.scalar(
                sa.select(ServiceRow.job_result_schema).where(ServiceRow.id == service)
            )
            if schema is None:
                return None
            contract = self._contracts[service] = compile_contract(
                schema, source="job_result_schema"
            )
        return contract

    def run(self, stop: threading.Event, retry_seconds: float = 1.0) -> None:
        """Mirror until ``stop`` is set; while the database is down, wait and retry."""
        self._ensure_group_again()
        while not stop.is_set():
            try:
                applied = self.step()
                if LINGER_ABOVE <= applied < self.batch_size and self.linger_ms:
                    # Busy but not saturated: let the next reading fill. A commit for
                    # every few entries costs ~1 ms of CPU a job; lingering delays each
                    # state change by at most ``linger_ms``, and only under load.
                    stop.wait(self.linger_ms / 1000)
            except _OUTAGE as error:
                log.warning("database unavailable (%s); reading kept in the broker", error)
                stop.wait(retry_seconds)
            except redis.RedisError as error:
                if isinstance(error, redis.ResponseError) and "NOGROUP" in str(error):
                    # Someone destroyed the mirrors' group: what is still in the
                    # stream was not applied (applied entries are deleted).
                    log.error("the mirrors' consumer group is gone; creating it again")
                    self._ensure_group_again()
                else:
                    log.warning("message broker unavailable (%s); retrying", error)
                # Entries read but not acknowledged are this consumer's pending
                # ones: read them again first, or they would wait for ever.
                self._pending_first = True
                stop.wait(retry_seconds)

    def _ensure_group_again(self) -> None:
        try:
            self.ensure_group()
        except redis.RedisError as error:
            log.warning("cannot create the consumer group yet (%s)", error)

    def lag(self) -> int:
        """Entries not yet applied (pending or unread): the mirror's backlog."""
        return int(self._client.xlen(keys.STATE_STREAM))


def _started_and_ended(changes: Changes) -> dict[uuid.UUID, Report]:
    """Jobs whose first attempt both started and ended within this reading, with the start.

    Under load nearly every job is one of these (the mirror lingers for its
    batches to fill); each is then written by one UPDATE instead of two.
    """
    working = changes.statuses.get(Status.WORKING, {})
    return {
        job: working[job]
        for status in lifecycle.TERMINAL
        for job, report in changes.statuses.get(status, {}).items()
        if report.message.attempt == 1 and job in working and working[job].message.attempt == 1
    }


def _aborted(report: Report) -> bool:
    return bool(report.message.extra.get("aborted"))


def _seconds(value: object) -> float:
    """A retry's wait as its report gives it; anything unreadable waits not at all."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return min(max(float(value), 0.0), 86_400.0)


def _working(report: Report, clock: SourceClock) -> Move:
    message = report.message
    columns = {
        "worker": message.worker,
        "attempts": message.attempt,
        "run_provenance": message.provenance,
    }
    return Move(
        message.job_id,  # type: ignore[arg-type]
        clock.at(report.at_ms),
        columns,
        by=message.worker,
        take=report.take,
    )


def _final(report: Report, clock: SourceClock, start: Report | None) -> Move:
    message = report.message
    columns = {
        "results": message.results,
        "detail": message.detail,
        "worker": message.worker,
        "attempts": message.attempt,
        "run_provenance": message.provenance,
    }
    return Move(
        message.job_id,  # type: ignore[arg-type]
        clock.at(report.at_ms),
        columns,
        started_at=clock.at(start.at_ms) if start is not None else None,
        attempt=message.attempt,
        by=message.worker,
    )


def _late_note(report: Report, clock: SourceClock, at: datetime) -> str:
    reported = f"reported at {at.isoformat()} by {report.message.worker or 'its worker'}"
    if report.since_ms is not None:
        presumed = clock.at(report.since_ms).isoformat()
        return f"the worker was presumed lost at {presumed} (its lease lapsed) and {reported}"
    if report.late == "superseded":
        return f"{reported} after a later attempt had taken the job over"
    return f"{reported} after beat had presumed its worker lost"


def _redis_ms(client: redis.Redis) -> int:
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000
