"""SQL at scale: the producer's everyday queries over a table of a million jobs.

Rows go in with one ``INSERT ... SELECT generate_series`` per service (the
models would take minutes), spread over ten services with a realistic mix
of statuses and priorities (routine work at 5, a tenth at 1, one in a
hundred urgent at 9), then the table is vacuumed and analysed as autovacuum
would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from bench.servers import PostgresSchema
from broker.gateway.dispatch import due_registered
from broker.models.interfaces.job import Job
from broker.models.job_list import JobList
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.storage.tables import database_now, open_session

Status = Job.JobStatus
SERVICES = 10

#: Of every 100 jobs: 5 REGISTERED, 1 WORKING, 7 ERROR, the rest COMPLETED.
_STATUS_SQL = """CASE WHEN i %% 100 < 5 THEN 'REGISTERED' WHEN i %% 100 = 5 THEN 'WORKING'
  WHEN i %% 100 < 13 THEN 'ERROR' ELSE 'COMPLETED' END"""
#: Of every 100 jobs, by their index's last digits: one at 9, ten at 1, the rest at 5.
_PRIORITY_SQL = "CASE WHEN i %% 100 = 50 THEN 9 WHEN i %% 10 = 7 THEN 1 ELSE 5 END"


def fill(schema: PostgresSchema, total: int, service_id: uuid.UUID) -> float:
    """Insert ``total`` jobs (a tenth of them for ``service_id``); returns seconds taken."""
    started = time.perf_counter()
    per_service = total // SERVICES
    with schema.connect() as connection:
        ids = [service_id]
        for index in range(1, SERVICES):
            row = connection.execute(
                "INSERT INTO services (id, name, description, job_registration_schema,"
                " job_result_schema, timeout, is_service_available, last_checked_in,"
                " worker_loss_policy, max_attempts, created_at) VALUES (%s, %s, '', '{}', '{}',"
                " 60, false, now(), 'fail', 3, now()) RETURNING id",
                (uuid.uuid4(), f"BenchFill{index}"),
            ).fetchone()
            assert row is not None
            ids.append(row[0])
        for service in ids:
            connection.execute(
                f"""INSERT INTO jobs (id, service_id, status, parameters, results, attempts,
                  date_submitted, date_started, date_finished, published_at, version, priority)
                SELECT gen_random_uuid(), %s, {_STATUS_SQL},
                  jsonb_build_object('sample', 'Si-28 wafer 7', 'frequency_hz', 5.1e9 + i,
                    'amplitude', 0.25, 'repetitions', 200, 'index', i),
                  CASE WHEN i %% 100 >= 13 THEN '{{"ok": true}}'::jsonb END, 1,
                  now() - interval '30 days' + i * interval '1 second',
                  now() - interval '30 days' + i * interval '1 second',
                  now() - interval '30 days' + i * interval '1 second', now(), 1,
                  {_PRIORITY_SQL}
                FROM generate_series(1, %s) AS i""",
                (service, per_service),
            )
        connection.execute("VACUUM ANALYZE jobs")
    return time.perf_counter() - started


def queries(url: str, service_name: str) -> dict[str, Callable[[], object]]:
    """The queries a producer or the gateway runs, as the models run them."""

    def on_service(use: Callable[[Service], object]) -> Callable[[], object]:
        def run() -> object:
            with open_session(url) as session:
                return use(ServiceList(session).by_name(service_name))

        return run

    def listing() -> object:
        with open_session(url) as session:
            return JobList(session).with_status(Status.ERROR).page(0, 50)

    def http_next() -> object:
        """The gateway's search for the job an HTTP worker takes next (its first page)."""
        with open_session(url) as session:
            service = ServiceList(session).by_name(service_name)
            return next(due_registered(session, service.id, database_now(session)), [])

    return {
        "next REGISTERED job of a service": on_service(
            lambda s: s.jobs.with_status(Status.REGISTERED).oldest(1)
        ),
        "10-job queue of a service": on_service(
            lambda s: s.jobs.with_status(Status.REGISTERED).oldest(10)
        ),
        "len(service.jobs)": on_service(lambda s: len(s.jobs)),
        "next job an HTTP worker takes (priority, then age)": http_next,
        "listing: 50 newest ERROR jobs": listing,
    }


def time_query(query: Callable[[], object], repetitions: int) -> list[float]:
    """Milliseconds per call (a session of its own each, as a request would have)."""
    query()  # plans and connections are warm
    timings = []
    for _ in range(repetitions):
        started = time.perf_counter()
        query()
        timings.append((time.perf_counter() - started) * 1000)
    return timings
