"""The SQL side: tables, their ORM rows, engines and sessions.

Storage stays dumb: rows hold what the models and the state mirror put in them;
validation and the lifecycle rules live above (``broker.models``,
``broker.models.lifecycle``). The session returned by ``open_session`` is the seed's
transaction manager: models add and change rows in it, the caller commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from broker.errors import ConfigurationError
from broker.storage import job_counts

__all__ = [
    "JobAttemptRow",
    "JobCountRow",
    "JobHolderRow",
    "JobRow",
    "JobTransitionRow",
    "RunProvenanceRow",
    "ServiceRow",
    "WorkerCredentialRow",
    "create_schema",
    "database_now",
    "engine_for",
    "forget_engine",
    "metadata",
    "open_session",
]

#: JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type and hands back naive datetimes; TopChef's users
    compare these with aware ones, so every value is normalised to UTC on both
    ways through.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: TopChef stores aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base of every TopChef table."""


metadata = Base.metadata


class ServiceRow(Base):
    """One service: an instrument or simulation, with its contract and liveness."""

    __tablename__ = "services"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    job_registration_schema: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    job_result_schema: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    timeout: Mapped[float] = mapped_column(sa.Float)
    is_service_available: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    last_checked_in: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When beat last found the service timed out; cleared by a check-in.
    timed_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_loss_policy: Mapped[str] = mapped_column(sa.String(16), default="fail")
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=3)
    #: Whether a handler may ask for its job to run again (``broker.worker.Retry``),
    #: up to ``max_attempts`` runs in all; off, a retry asked for ends the job ERROR.
    retries: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    #: Names of exception types that ask for a retry when a handler raises them.
    retry_on: Mapped[list[str]] = mapped_column(JSONDocument, server_default=sa.text("'[]'"))
    #: The first retry's wait (s) when the handler names none; it doubles each attempt.
    #: (These three have server defaults only, so rows written without them get them.)
    retry_backoff: Mapped[float] = mapped_column(sa.Float, server_default=sa.text("1.0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: A hold (``Producer.hold_service``): while ``held_at`` is set, no job of the
    #: service starts; who held it and why, for ``topchef status``.
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    held_by: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    held_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    #: At most this many of the service's jobs WORKING at once (NULL: no limit).
    max_running: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    #: Jobs of a ``submit_many`` per Celery message; NULL: chosen from run times.
    jobs_per_message: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    #: A digest of both schemas (``broker.contract.schema_fingerprint``):
    #: schemas never change, so every job of the service was validated against it.
    schema_fingerprint: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)


class JobRow(Base):
    """One job: its parameters, lifecycle timestamps and outcome."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    service_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("services.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(sa.String(16))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    #: Why the job ended in ERROR (the exception, the schema violation, the lost worker).
    detail: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    progress: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    #: Higher starts first (``broker.messaging.priorities``); kept so that a
    #: re-publish goes to the same priority list as the first publish.
    priority: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("5"))
    #: Which delivery of the job is (or was last) running; > 1 after a requeue.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    worker: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    date_submitted: Mapped[datetime] = mapped_column(UTCDateTime)
    date_started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    date_finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Set once the job's message left for its queue; NULL rows are the outbox.
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When beat ended the job ERROR because its worker's lease lapsed. Such an
    #: ERROR is a presumption, the one terminal state that a late report of the
    #: same attempt may still correct (``lifecycle.correct_presumed_loss``).
    presumed_lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The job waits in the outbox until then (a producer's ``not_before``, or a
    #: retry's backoff); beat publishes it once due (``broker.beat.recovery``).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The job this one was resubmitted from (``Producer.resubmit``), if any.
    #: A record of where the job came from, not a constraint on deleting the original.
    resubmitted_from: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    #: Optimistic-concurrency counter: every write checks it, so two writers
    #: racing on one job cannot both win.
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    #: Who submitted the job: ``user@host:pid`` (Python, the CLI) or the HTTP caller.
    submitted_by: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    #: What ran the current attempt: the digest of a ``RunProvenanceRow``.
    run_provenance: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    #: The last take of the job's claim its holder gave back (``lifecycle.release``):
    #: a report of that take or an earlier one, arriving after, moves nothing.
    released_take: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy's API)
    __table_args__ = (
        # "REGISTERED jobs of one service, oldest first" is an index scan.
        sa.Index("ix_jobs_service_status_submitted", "service_id", "status", "date_submitted"),
        sa.Index("ix_jobs_status_submitted", "status", "date_submitted"),
        sa.Index("ix_jobs_submitted", "date_submitted"),
        # A service's waiting jobs by priority, then oldest: the HTTP claim's
        # next job is the oldest of the highest priority. Waiting jobs only.
        sa.Index(
            "ix_jobs_waiting",
            "service_id",
            "priority",
            "date_submitted",
            "id",
            postgresql_where=sa.text("status = 'REGISTERED'"),
            sqlite_where=sa.text("status = 'REGISTERED'"),
        ),
        # An original's resubmissions; only resubmitted jobs are in it.
        sa.Index(
            "ix_jobs_resubmitted_from",
            "resubmitted_from",
            postgresql_where=sa.text("resubmitted_from IS NOT NULL"),
            sqlite_where=sa.text("resubmitted_from IS NOT NULL"),
        ),
        # The outbox: committed jobs whose message has not left yet, and may now.
        sa.Index(
            "ix_jobs_unpublished",
            "date_submitted",
            postgresql_where=sa.text("published_at IS NULL AND not_before IS NULL"),
            sqlite_where=sa.text("published_at IS NULL AND not_before IS NULL"),
        ),
        # Jobs that wait for their time: beat reads only the due ones.
        sa.Index(
            "ix_jobs_due",
            "not_before",
            postgresql_where=sa.text("published_at IS NULL AND not_before IS NOT NULL"),
            sqlite_where=sa.text("published_at IS NULL AND not_before IS NOT NULL"),
        ),
    )


class JobAttemptRow(Base):
    """An attempt of a job that a later attempt superseded (the ``requeue`` policy).

    The job's own row describes its current attempt. When beat hands a job whose
    worker was presumed lost to another worker, the attempt it gave up is kept
    here; if that worker was only frozen and reports after all, its outcome is
    stored on this row, never on the job, whose current attempt owns the job's
    outcome.
    """

    __tablename__ = "job_attempts"

    job_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    worker: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    date_started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the attempt was given up for lost (a later one started).
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: COMPLETED or ERROR if the attempt's worker reported after all; NULL if it never did.
    status: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    detail: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    date_finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: What ran this attempt (a ``RunProvenanceRow`` digest).
    run_provenance: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)


class JobTransitionRow(Base):
    """One move of one job, appended by the compare-and-set that made it (``lifecycle``).

    Append-only: nothing updates or deletes a row, and no foreign key ties it
    to its job, so the record of what ran outlives a job deleted through the
    models, and appending costs no lookup of the job. A job's REGISTERED entry
    is not a row: it is the job's own ``date_submitted`` and ``submitted_by``,
    so a bulk submission writes nothing here.
    """

    __tablename__ = "job_transitions"

    #: The order the moves were made in (a job's times never run backwards either).
    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    from_status: Mapped[str] = mapped_column(sa.String(16))
    to_status: Mapped[str] = mapped_column(sa.String(16))
    #: When it happened at its source: the time the job's row records for the move.
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Who made it (``broker.actors``): a worker's host:pid, beat, a person, an HTTP caller.
    by: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    attempt: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class RunProvenanceRow(Base):
    """What ran a job: one row per worker process and handler module, keyed by its digest.

    The same for every job a process runs, so it is stored once and jobs refer
    to it (``JobRow.run_provenance``), instead of repeating it on each job.
    """

    __tablename__ = "run_provenance"

    digest: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    worker: Mapped[str] = mapped_column(sa.String(255))
    module: Mapped[str] = mapped_column(sa.String(255))
    #: The distribution's version, or the git commit of a worker run from a checkout.
    code_version: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    python: Mapped[str] = mapped_column(sa.String(100))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerCredentialRow(Base):
    """A worker's credential: the name and secret key an operator enrolled (``broker.trust``).

    The mirror applies a report only if an enrolled credential that is not
    revoked authenticated it. Rows are never deleted, so that a revoked name
    cannot be enrolled again and take over what its reports said. The core's
    own credential (the HTTP gateway's reports) is a row like the others.
    """

    __tablename__ = "worker_credentials"

    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    #: The credential's secret key (``broker.trust.reports.ReportKey``'s text):
    #: the mirror checks its reports with it. The database is the core's; no lab PC reaches it.
    report_key: Mapped[str] = mapped_column(sa.String(64))
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobHolderRow(Base):
    """Which credential holds each attempt of a job: the one whose WORKING report started it.

    Written by the mirror with the WORKING move it verified (and by the HTTP
    gateway, which moves its claims itself); every later report on that
    attempt must be signed by the same credential (``broker.mirror.holders``).
    """

    __tablename__ = "job_holders"

    job_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    credential: Mapped[str] = mapped_column(sa.String(100))


class JobCountRow(Base):
    """How many jobs a service has; only the triggers of ``broker.storage.job_counts`` write it."""

    __tablename__ = "job_counts"

    service_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("services.id", ondelete="CASCADE"), primary_key=True
    )
    #: Which of the service's rows (``job_counts.SLOTS``): ``len`` sums them.
    slot: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, server_default="0")
    jobs: Mapped[int] = mapped_column(sa.BigInteger)


job_counts.install(metadata.tables["job_counts"], metadata.tables["jobs"])


def _binary_arrays(dbapi_connection: Any, _record: Any) -> None:
    """Send Python lists to PostgreSQL as binary arrays.

    psycopg's default for a list is the text form of an array, built and
    quoted element by element in Python; the binary form is far cheaper, and
    the state mirror moves every batch of jobs as arrays (``models.moves``).
    """
    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Make SQLite behave like a server database for several processes."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_SQLITE_BUSY_MS = 30_000


def _switch_to_wal(cursor: Any) -> None:
    """Switch a new file to WAL, waiting for others that switch it at the same moment.

    Two processes switching one fresh file each hold a shared lock and want an
    exclusive one; SQLite answers one of them "database is locked" at once,
    without calling the busy handler (waiting could deadlock). The loser's
    statement has then let its lock go, so trying again is what the busy handler
    would have done. Once the file is in WAL the pragma takes no lock at all.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_MS / 1000
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Give a forked child pools of its own (SQLAlchemy's documented pattern).

    A connection inherited from the parent shares its socket with the parent's
    copy: using it from both corrupts the session of each (psycopg then sees
    the other's transaction). ``dispose(close=False)`` drops the child's
    references without closing the parent's sockets, so each process opens its own.
    """
    global _engines_lock
    _engines_lock = threading.Lock()  # another thread may have held it at the fork
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def engine_for(url: str) -> Engine:
    """One engine (and so one connection pool) per database URL per process.

    Engines are kept until ``forget_engine``: a cache that evicted one on its
    own would drop a pool whose connections are still checked out.
    """
    if not url:
        raise ConfigurationError("no database is configured: set TOPCHEF_DATABASE_URL")
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            driver_url = url
            if url.startswith("postgresql://"):
                driver_url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            engine = sa.create_engine(driver_url, pool_pre_ping=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _configure_sqlite)
            else:
                event.listen(engine, "connect", _binary_arrays)
            _engines[url] = engine
        return engine


def forget_engine(url: str) -> None:
    """Close the pool of ``url``'s engine and drop it (a database that is going away)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def open_session(url: str) -> Session:
    """A new session on ``url``; the caller commits."""
    return Session(bind=engine_for(url))


def create_schema(url: str) -> None:
    """Create every table that does not exist yet."""
    metadata.create_all(engine_for(url))


#: Ids in one SQLite ``IN`` list (``ids_among``).
IDS_PER_CONDITION = 500


def ids_among(
    dialect: str, column: sa.orm.InstrumentedAttribute[uuid.UUID], ids: Sequence[uuid.UUID]
) -> Iterator[sa.ColumnElement[bool]]:
    """``column`` among ``ids``, as few conditions as the database ``dialect`` takes.

    PostgreSQL takes them all as one array parameter (``= ANY``): ten thousand
    ids bound one by one in ``IN`` lists cost more than the statement itself.
    SQLite binds at most a few thousand parameters, so it is asked in chunks.
    """
    if dialect == "postgresql":
        yield column == sa.any_(sa.bindparam("ids", list(ids), type_=ARRAY(sa.Uuid)))
        return
    for start in range(0, len(ids), IDS_PER_CONDITION):
        yield column.in_(ids[start : start + IDS_PER_CONDITION])


def database_now(session: Session) -> datetime:
    """The one clock that check-ins and timeouts are judged by: the database's.

    Lab machines' clocks may be off by minutes; every SQL writer asks the
    database instead. SQLite is a file on this machine, so its clock is ours.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        value = session.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    return datetime.now(UTC)
