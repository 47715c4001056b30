"""The job counts the database keeps agree with ``COUNT(*)``, whoever writes the jobs.

Every test compares three readings: ``len(service.jobs)`` (the kept count),
the ``job_counts`` table, and a ``COUNT(*)`` grouped by service.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.models.job import Job
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.producer.submission import add_jobs
from broker.storage import job_counts
from broker.storage.tables import (
    JobCountRow,
    JobRow,
    ServiceRow,
    database_now,
    engine_for,
    open_session,
)

Status = Job.JobStatus
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def make_service(session: Session, name: str) -> Service:
    service = Service.new(name, "", SCHEMA, {"type": "object"}, session)
    session.flush()
    return service


def kept(session: Session) -> dict[uuid.UUID, int]:
    """The counts the triggers keep, by service: the sum of its rows."""
    query = sa.select(JobCountRow.service_id, sa.func.sum(JobCountRow.jobs)).group_by(
        JobCountRow.service_id
    )
    return {service_id: int(jobs) for service_id, jobs in session.execute(query).all()}


def counted(session: Session) -> dict[uuid.UUID, int]:
    """The counts ``COUNT(*)`` finds, by service."""
    query = sa.select(JobRow.service_id, sa.func.count()).group_by(JobRow.service_id)
    return {service_id: jobs for service_id, jobs in session.execute(query).all()}


def assert_exact(session: Session, expected: dict[Service, int]) -> None:
    """Every reading agrees with ``expected`` (services with no jobs may have no row)."""
    assert {service: len(service.jobs) for service in expected} == expected
    found = {service_id: jobs for service_id, jobs in kept(session).items() if jobs}
    assert found == counted(session) == {s.id: n for s, n in expected.items() if n}


def assert_exact_elsewhere(database_url: str, expected: dict[uuid.UUID, int]) -> None:
    """What another session sees, once committed."""
    with open_session(database_url) as other:
        services = {ServiceList(other)[service_id]: n for service_id, n in expected.items()}
        assert_exact(other, services)


def job_rows(service_id: uuid.UUID, count: int) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        {
            "id": uuid.uuid4(),
            "service_id": service_id,
            "status": Status.REGISTERED.value,
            "parameters": {"a": index},
            "attempts": 0,
            "date_submitted": now,
            "version": 1,
        }
        for index in range(count)
    ]


# -- every writer -----------------------------------------------------------------


def test_jobs_added_one_at_a_time_are_counted_before_and_after_commit(session, database_url):
    oven = make_service(session, "oven")
    assert len(oven.jobs) == 0  # no count row yet
    for a in range(3):
        oven.new_job({"a": a})
        assert len(oven.jobs) == a + 1  # the pending job is flushed, then counted
    assert_exact(session, {oven: 3})
    session.commit()
    assert_exact_elsewhere(database_url, {oven.id: 3})


def test_a_bulk_insert_is_counted(session, database_url):
    """The producer's ``submit_many`` path: one Core ``INSERT`` of many rows."""
    oven = make_service(session, "oven")
    oven.new_job({"a": 0})
    add_jobs(session, oven, database_now(session), [{"a": a} for a in range(2500)])
    assert_exact(session, {oven: 2501})
    session.commit()
    assert_exact_elsewhere(database_url, {oven.id: 2501})


def test_one_multi_row_insert_over_several_services_counts_each(session, database_url):
    oven, fridge, lamp = (make_service(session, name) for name in ("oven", "fridge", "lamp"))
    rows = job_rows(oven.id, 4) + job_rows(fridge.id, 7) + job_rows(oven.id, 2)
    session.execute(sa.insert(JobRow).values(rows))  # one statement, eleven rows
    assert_exact(session, {oven: 6, fridge: 7, lamp: 0})
    session.commit()
    assert_exact_elsewhere(database_url, {oven.id: 6, fridge.id: 7, lamp.id: 0})


@POSTGRES_ONLY
def test_insert_select_generate_series_is_counted_by_one_trigger_run(session, database_url):
    """The benchmark's fill, split over two services in one statement."""
    oven, fridge = make_service(session, "oven"), make_service(session, "fridge")
    session.execute(
        sa.text(
            "INSERT INTO jobs (id, service_id, status, parameters, attempts, date_submitted,"
            " version) SELECT gen_random_uuid(), CASE WHEN i <= 300 THEN :oven ELSE :fridge END,"
            " 'REGISTERED', jsonb_build_object('a', i), 0, now(), 1"
            " FROM generate_series(1, 1000) AS i"
        ),
        {"oven": oven.id, "fridge": fridge.id},
    )
    assert_exact(session, {oven: 300, fridge: 700})


def test_a_rolled_back_insert_is_not_counted(session, database_url):
    oven = make_service(session, "oven")
    oven.new_job({"a": 0})
    session.commit()
    for a in range(3):
        oven.new_job({"a": a})
    add_jobs(session, oven, database_now(session), [{"a": 9}] * 5)
    assert len(oven.jobs) == 9
    session.rollback()
    assert_exact(session, {oven: 1})
    assert_exact_elsewhere(database_url, {oven.id: 1})


def test_a_rolled_back_first_job_leaves_no_count(session, database_url):
    oven = make_service(session, "oven")
    session.commit()
    oven.new_job({"a": 0})
    assert len(oven.jobs) == 1
    session.rollback()
    assert kept(session) == {}
    assert len(oven.jobs) == 0


def test_deleted_jobs_are_uncounted(session, database_url):
    oven, fridge = make_service(session, "oven"), make_service(session, "fridge")
    jobs = [oven.new_job({"a": a}) for a in range(5)]
    fridge.new_job({"a": 0})
    session.flush()
    del oven.jobs[jobs[0].id]  # through the ORM
    session.execute(sa.delete(JobRow).where(JobRow.id.in_([jobs[1].id, jobs[2].id])))
    assert_exact(session, {oven: 2, fridge: 1})
    session.execute(sa.delete(JobRow))  # every service at once
    assert_exact(session, {oven: 0, fridge: 0})
    session.commit()
    assert_exact_elsewhere(database_url, {oven.id: 0, fridge.id: 0})


def test_a_deleted_service_takes_its_count_row_along(session, database_url):
    oven, fridge = make_service(session, "oven"), make_service(session, "fridge")
    for service in (oven, fridge):
        service.new_job({"a": 0})
    session.commit()
    session.execute(sa.delete(ServiceRow).where(ServiceRow.id == oven.id))  # cascades
    assert set(kept(session)) == {fridge.id}
    assert_exact(session, {fridge: 1})


def test_a_job_moved_to_another_service_moves_its_count(session, database_url):
    """TopChef never moves jobs; raw SQL that does keeps the counts right."""
    oven, fridge = make_service(session, "oven"), make_service(session, "fridge")
    jobs = [oven.new_job({"a": a}) for a in range(3)]
    session.flush()
    moved = [jobs[0].id, jobs[1].id]
    session.execute(sa.update(JobRow).where(JobRow.id.in_(moved)).values(service_id=fridge.id))
    assert_exact(session, {oven: 1, fridge: 2})
    session.execute(sa.update(JobRow).values(status=Status.CANCELLED.value))  # not a move
    assert_exact(session, {oven: 1, fridge: 2})


def test_narrower_lists_are_still_counted_row_by_row(session, database_url):
    oven = make_service(session, "oven")
    for a in range(4):
        oven.new_job({"a": a})
    session.flush()
    session.execute(sa.update(JobCountRow).values(jobs=42))  # a count gone wrong on purpose
    assert len(oven.jobs) == 42  # the whole service: the kept count, not the rows
    assert len(oven.jobs.with_status(Status.REGISTERED)) == 4
    assert len(oven.jobs.with_status(Status.COMPLETED)) == 0


@POSTGRES_ONLY
def test_truncating_the_jobs_clears_the_counts(session, database_url):
    oven = make_service(session, "oven")
    oven.new_job({"a": 0})
    session.flush()
    session.execute(sa.text("TRUNCATE jobs CASCADE"))
    assert kept(session) == {}
    assert len(oven.jobs) == 0


# -- concurrency (PostgreSQL) ---------------------------------------------------------


def _backend_of_another_slot(database_url: str, taken: int) -> tuple[sa.Connection, list]:
    """A connection whose backend adds to another count row than backend ``taken``'s.

    Returns it with the connections tried before it, for the caller to close.
    """
    engine, tried = engine_for(database_url), []
    while len(tried) < 4 * job_counts.SLOTS:
        connection = engine.connect()
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        if pid % job_counts.SLOTS != taken % job_counts.SLOTS:
            return connection, tried
        tried.append(connection)
    pytest.fail("every backend tried shares one count row")


@POSTGRES_ONLY
@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("first_jobs", [True, False], ids=["no-row-yet", "row-exists"])
def test_a_second_producer_of_one_service_does_not_wait_for_the_first_and_both_count(
    session, database_url, first_commits, first_jobs
):
    """Two producers of one service add to two of its count rows, each locking its own."""
    with open_session(database_url) as setup:
        oven = make_service(setup, "oven")
        if not first_jobs:
            oven.new_job({"a": 0})
        setup.commit()
        oven_id, before = oven.id, 0 if first_jobs else 1
    first = ServiceList(session)[oven_id]
    add_jobs(session, first, database_now(session), [{"a": 1}] * 10)
    session.flush()
    taken = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    connection, tried = _backend_of_another_slot(database_url, taken)
    try:
        with Session(bind=connection) as second:
            connection.execute(sa.text("SET lock_timeout = '5s'"))  # a wait fails, not hangs
            service = ServiceList(second)[oven_id]
            add_jobs(second, service, database_now(second), [{"a": a} for a in range(5)])
            second.commit()
        connection.commit()  # while the first is open: it never waited for it
    finally:
        for other in [connection, *tried]:
            other.close()
    if first_commits:
        session.commit()
    else:
        session.rollback()
    expected = before + 5 + (10 if first_commits else 0)
    assert_exact_elsewhere(database_url, {oven_id: expected})


@POSTGRES_ONLY
def test_two_threads_submitting_to_the_same_services_lose_no_count(session, database_url):
    """Single-service submits, and single statements over both services, in either order.

    One statement locks its services' count rows in one order (the
    trigger's ``ORDER BY``), so these never deadlock each other.
    """
    services = [make_service(session, name) for name in ("oven", "fridge")]
    session.commit()
    ids = [service.id for service in services]
    start = threading.Barrier(2)

    def producer(seed: int) -> None:
        start.wait(timeout=10)
        for round_ in range(20):
            with open_session(database_url) as own:
                first, second = ids if (seed + round_) % 2 else ids[::-1]
                if round_ % 4 == 0:
                    rows = job_rows(first, 3) + job_rows(second, 4) + job_rows(first, 2)
                    own.execute(sa.insert(JobRow).values(rows))
                else:
                    service = ServiceList(own)[first]
                    add_jobs(own, service, database_now(own), [{"a": round_}] * 9)
                own.commit()

    with ThreadPoolExecutor(2) as pool:
        for outcome in [pool.submit(producer, seed) for seed in range(2)]:
            outcome.result(timeout=120)
    with open_session(database_url) as other:
        assert kept(other) == counted(other)
        assert sum(kept(other).values()) == 2 * (5 * 9 + 15 * 9)
