"""The state mirror: state messages from the broker, written into SQL in batches.

Workers append state changes to a Redis stream; the mirror reads them as a
consumer group, applies a whole batch in one transaction, commits, and only
then acknowledges (and deletes) the entries. A crash before the commit leaves
the entries pending; a restarted mirror reads its own pending entries first
and takes over those of a mirror that died elsewhere. Applying is idempotent:
every status change is ``lifecycle.advance``'s compare-and-set, so a
redelivered or out-of-order entry never moves a job backwards, and the mirror
only ever updates rows, so it never duplicates one.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker import keys, lifecycle
from broker.connections import redis_client
from broker.contract import Contract, compile_contract
from broker.database import JobRow, ServiceRow, database_now, engine_for
from broker.messages import StateMessage
from broker.models.errors import DeserializationError
from broker.settings import Settings

log = logging.getLogger(__name__)
Status = lifecycle.Status

#: Errors that mean the database is unreachable, not that the batch is wrong.
_OUTAGE = (sa.exc.OperationalError, sa.exc.InterfaceError)

#: A batch at least this big means load: the mirror then waits ``linger_ms`` for the next.
LINGER_ABOVE = 10

#: Entries idle this long in another consumer's pending list belong to a dead mirror.
ABANDONED_AFTER_MS = 30_000


@dataclass
class Batch:
    """One read's worth of state messages, sorted into what SQL needs."""

    ids: list[bytes] = field(default_factory=list)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)
    statuses: dict[Status, dict[uuid.UUID, StateMessage]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    progress: dict[uuid.UUID, StateMessage] = field(default_factory=dict)
    check_ins: dict[uuid.UUID, StateMessage] = field(default_factory=dict)
    unreadable: int = 0

    def add(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.ids.append(entry_id)
        self.entries.append((entry_id, fields))
        try:
            message = StateMessage.from_fields(fields)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError):
            log.error("dropping unreadable state entry %r: %r", entry_id, fields)
            self.unreadable += 1
            return
        if message.kind == "status" and message.job_id is not None and message.status:
            status = Status(message.status)
            current = self.statuses[status].get(message.job_id)
            if current is None or message.attempt >= current.attempt:
                self.statuses[status][message.job_id] = message
        elif message.kind == "progress" and message.job_id is not None:
            self.progress[message.job_id] = message
        elif message.kind == "checkin":
            previous = self.check_ins.get(message.service_id)
            # The last word on availability wins; a bare check-in keeps the earlier word.
            if previous is not None and message.available is None:
                message = StateMessage("checkin", message.service_id, available=previous.available)
            self.check_ins[message.service_id] = message

    @property
    def finished(self) -> list[uuid.UUID]:
        return [job for status in lifecycle.TERMINAL for job in self.statuses.get(status, {})]


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
    ) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.linger_ms = linger_ms
        self.consumer = consumer or f"mirror@{socket.gethostname()}"
        self._client = redis_client(settings.broker_url)
        self._engine = engine_for(settings.database_url)
        self._contracts: dict[uuid.UUID, Contract] = {}
        self._pending_first = True
        self.applied = 0

    def ensure_group(self) -> None:
        try:
            self._client.xgroup_create(keys.STATE_STREAM, keys.MIRROR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self) -> Batch:
        """The next batch: this consumer's pending entries first, then abandoned, then new."""
        batch = Batch()
        entries = []
        if self._pending_first:
            entries = self._read("0")
            if not entries:
                self._pending_first = False
                _next, claimed, *_ = self._client.xautoclaim(
                    keys.STATE_STREAM,
                    keys.MIRROR_GROUP,
                    self.consumer,
                    min_idle_time=ABANDONED_AFTER_MS,
                    count=self.batch_size,
                )
                entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if not entries:
            entries = self._read(">")
        for entry_id, fields in entries:
            batch.add(entry_id, fields)
        return batch

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
        """Read, apply and acknowledge one batch; return how many entries it held.

        A database outage raises (the batch stays pending, to be read again);
        any other database error is the batch's own fault, so its entries are
        applied one by one and those that still fail go to the dead-letter stream.
        """
        batch = self.read()
        if not batch.ids:
            return 0
        try:
            self._commit(batch)
        except _OUTAGE:
            self._pending_first = True
            raise
        except sa.exc.SQLAlchemyError:
            log.exception("a batch of %d entries failed; applying one by one", len(batch.ids))
            self._apply_singly(batch)
        pipeline = self._client.pipeline(transaction=False)
        pipeline.xack(keys.STATE_STREAM, keys.MIRROR_GROUP, *batch.ids)
        pipeline.xdel(keys.STATE_STREAM, *batch.ids)
        finished = batch.finished
        if finished:
            pipeline.publish(keys.FINISHED_CHANNEL, json.dumps([str(job) for job in finished]))
        pipeline.execute()
        self.applied += len(batch.ids)
        return len(batch.ids)

    def _commit(self, batch: Batch) -> None:
        with Session(bind=self._engine) as session, session.begin():
            self.apply(session, batch)

    def _apply_singly(self, batch: Batch) -> None:
        for entry_id, fields in batch.entries:
            single = Batch()
            single.add(entry_id, fields)
            try:
                self._commit(single)
            except _OUTAGE:
                self._pending_first = True
                raise
            except sa.exc.SQLAlchemyError as error:
                log.error("state entry %r cannot be applied (%s); dead-lettered", entry_id, error)
                dead: dict[Any, Any] = {**fields, b"error": str(error)[:2000]}
                self._client.xadd(keys.DEAD_STATE_STREAM, dead)

    def apply(self, session: Session, batch: Batch) -> None:
        """Write one batch in ``session``'s transaction (the caller commits)."""
        now = database_now(session)
        self._apply_check_ins(session, batch, now)
        started_here = _started_and_ended(batch)
        working = {
            job: message
            for job, message in batch.statuses.get(Status.WORKING, {}).items()
            if job not in started_here
        }
        if working:
            changes = [_change(m, worker=m.worker, attempts=m.attempt) for m in working.values()]
            lifecycle.advance(session, Status.WORKING, changes, now)
            _restart_attempts(session, working.values(), now)
        if batch.progress:
            session.connection().execute(
                sa.update(JobRow)
                .where(JobRow.id == sa.bindparam("b_id"))
                .where(lifecycle.status_in([Status.REGISTERED, Status.WORKING]))
                .values(
                    progress=sa.bindparam("b_progress"), progress_message=sa.bindparam("b_note")
                )
                .execution_options(synchronize_session=False),
                [
                    {"b_id": job, "b_progress": m.progress, "b_note": m.message}
                    for job, m in batch.progress.items()
                ],
            )
        for status in (Status.COMPLETED, Status.ERROR, Status.CANCELLED):
            messages = batch.statuses.get(status, {})
            if status is Status.COMPLETED:
                messages, invalid = self._check_results(session, messages)
                batch.statuses[Status.ERROR].update(invalid)
            ended = [self._final(m) for job, m in messages.items() if job not in started_here]
            lifecycle.advance(session, status, ended, now)
            started = [self._final(m) for job, m in messages.items() if job in started_here]
            _start_and_end(session, status, started, now)

    @staticmethod
    def _final(message: StateMessage) -> dict[str, Any]:
        return _change(
            message,
            results=message.results,
            detail=message.detail,
            worker=message.worker,
            attempts=message.attempt,
        )

    def _apply_check_ins(self, session: Session, batch: Batch, now: Any) -> None:
        for service, message in batch.check_ins.items():
            values: dict[str, Any] = {"last_checked_in": now, "timed_out_at": None}
            if message.available is not None:
                values["is_service_available"] = message.available
            session.execute(sa.update(ServiceRow).where(ServiceRow.id == service).values(values))

    def _check_results(
        self, session: Session, messages: dict[uuid.UUID, StateMessage]
    ) -> tuple[dict[uuid.UUID, StateMessage], dict[uuid.UUID, StateMessage]]:
        """Validate results once more before storing them: the stream is not trusted."""
        valid: dict[uuid.UUID, StateMessage] = {}
        invalid: dict[uuid.UUID, StateMessage] = {}
        for job, message in messages.items():
            contract = self._contract(session, message.service_id)
            try:
                if contract is None:
                    raise DeserializationError("results", "the job's service does not exist")
                contract.validate(message.results, source="results")
            except DeserializationError as violation:
                invalid[job] = StateMessage(
                    "status",
                    message.service_id,
                    job,
                    Status.ERROR.value,
                    detail=f"invalid results: {violation.detail}",
                    attempt=message.attempt,
                    worker=message.worker,
                )
            else:
                valid[job] = message
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
        self.ensure_group()
        while not stop.is_set():
            try:
                applied = self.step()
                if LINGER_ABOVE <= applied < self.batch_size and self.linger_ms:
                    # Busy but not saturated: let the next batch fill. A commit for
                    # every few entries costs ~1 ms of CPU a job; lingering delays each
                    # state change by at most ``linger_ms``, and only under load.
                    stop.wait(self.linger_ms / 1000)
            except _OUTAGE as error:
                log.warning("database unavailable (%s); batch kept in the broker", error)
                stop.wait(retry_seconds)
            except redis.RedisError as error:
                log.warning("message broker unavailable (%s); retrying", error)
                stop.wait(retry_seconds)

    def lag(self) -> int:
        """Entries not yet applied (pending or unread): the mirror's backlog."""
        return int(self._client.xlen(keys.STATE_STREAM))


def _started_and_ended(batch: Batch) -> set[uuid.UUID]:
    """Jobs whose first attempt both started and ended within this batch.

    Under load nearly every job is one of these (the mirror lingers for its
    batches to fill); each is then written by one UPDATE instead of two.
    """
    working = batch.statuses.get(Status.WORKING, {})
    return {
        job
        for status in lifecycle.TERMINAL
        for job, message in batch.statuses.get(status, {}).items()
        if message.attempt == 1 and job in working and working[job].attempt == 1
    }


def _start_and_end(
    session: Session, new: Status, changes: Sequence[dict[str, Any]], at: Any
) -> None:
    """``lifecycle.advance`` to a final status that records the start too.

    The same compare-and-set (``WHERE status IN`` the predecessors of ``new``)
    and the same columns as the WORKING update followed by the final one would
    write; ``date_started`` is kept if a WORKING report was applied before
    (a redelivered batch).
    """
    if not changes:
        return
    columns = sorted({key for change in changes for key in change} - {"id"})
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}") for name in columns}
    values["status"] = new.value
    values[lifecycle.TIMESTAMP_COLUMN[new]] = at
    values["date_started"] = sa.func.coalesce(JobRow.date_started, at)
    values["version"] = JobRow.version + 1
    values["published_at"] = sa.func.coalesce(JobRow.published_at, at)
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("v_id"))
        .where(lifecycle.status_in(lifecycle.PREDECESSORS[new]))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    rows = [{f"v_{key}": change.get(key) for key in ["id", *columns]} for change in changes]
    session.connection().execute(statement, rows)


def _change(message: StateMessage, **columns: Any) -> dict[str, Any]:
    return {"id": message.job_id, **columns}


def _restart_attempts(session: Session, messages: Any, now: Any) -> None:
    """A WORKING report of a later attempt (after a requeue) updates a WORKING job."""
    rows: Sequence[dict[str, Any]] = [
        {"r_id": m.job_id, "r_attempt": m.attempt, "r_worker": m.worker}
        for m in messages
        if m.attempt > 1
    ]
    if not rows:
        return
    session.connection().execute(
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("r_id"))
        .where(JobRow.status == Status.WORKING.value)
        .where(JobRow.attempts < sa.bindparam("r_attempt"))
        .values(
            attempts=sa.bindparam("r_attempt"),
            worker=sa.bindparam("r_worker"),
            date_started=now,
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False),
        rows,
    )
