"""A facility's thousand services: what a beat tick and a metrics scrape cost.

``services`` services are created, the first ``FLEET_SERVED`` of them served
by a worker process that ran a few jobs of each. Then beat's tick
(``broker.beat.tick.run_tick``, in this process, keeping its directory between
ticks as the beat process does) is timed over ``ticks`` ticks after its first
(which publishes every service), beside the tick as it was before, publishing
every service each time (``recovery.tick`` without a directory); and a
Prometheus scrape of the metrics endpoint (``broker.ops.metrics.serve``) over
``scrapes`` scrapes. The fleet is deleted at the end.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

import sqlalchemy as sa

from bench.ours import OurStack
from bench.payload import FLEET_SERVED, PARAMETERS_SCHEMA, RESULTS_SCHEMA, fleet_name, parameters
from broker.app import make_app
from broker.beat import tick as beat
from broker.beat.directory import Directory
from broker.beat.recovery import tick
from broker.messaging.batches import Batches
from broker.messaging.claims import Claims
from broker.messaging.connections import redis_client
from broker.ops import metrics
from broker.storage.tables import JobRow, ServiceRow, open_session

JOBS_PER_SERVED = 20


@dataclass(frozen=True)
class Fleet:
    tick_ms: list[float]
    first_tick_ms: float
    full_tick_ms: list[float]
    #: The tick that also looks for lost messages (once per redelivery window).
    overtaken_tick_ms: list[float]
    scrape_ms: list[float]
    scrape_bytes: int


def measure(ours: OurStack, services: int, ticks: int, scrapes: int) -> Fleet:
    names = [fleet_name(index) for index in range(services)]
    ids = [
        ours.producer.ensure_service(name, "fleet", PARAMETERS_SCHEMA, RESULTS_SCHEMA, timeout=60)
        for name in names
    ]
    ours.purge()
    child = ours._start(
        "fleet-worker",
        "worker",
        "bench.jobs",
        "bench.fleet_jobs",
        "--pool",
        "threads",
        "--concurrency",
        "2",
        "--loglevel",
        "WARNING",
    )
    ours.workers = [child]
    server = None
    try:
        ours.run_probe(0, timeout=60)
        jobs = []
        for name in names[:FLEET_SERVED]:
            jobs += ours.producer.submit_many(name, [parameters(i) for i in range(JOBS_PER_SERVED)])
        ours.producer.outcomes(jobs, timeout=120)
        settings = ours.settings
        app = make_app(settings)
        started = time.perf_counter()
        beat.run_tick(app, settings)
        first = (time.perf_counter() - started) * 1000
        tick_ms = [_timed(lambda: beat.run_tick(app, settings)) for _ in range(ticks)]
        full_ms = [_timed(lambda: _tick(ours)) for _ in range(ticks)]
        directory = Directory(redis_client(settings.broker_url))
        _tick(ours, directory)
        overtaken_ms = [
            _timed(lambda: _tick(ours, directory, settings.redelivery_window)) for _ in range(ticks)
        ]
        server = metrics.serve(settings, 0)
        url = f"http://127.0.0.1:{server.port}/metrics"
        size = len(urllib.request.urlopen(url, timeout=30).read())
        scrape_ms = [
            _timed(lambda: urllib.request.urlopen(url, timeout=30).read()) for _ in range(scrapes)
        ]
        return Fleet(tick_ms, first, full_ms, overtaken_ms, scrape_ms, size)
    finally:
        if server is not None:
            server.close()
        ours.stop_workers()
        _delete(ours, ids)


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _tick(ours: OurStack, directory: Directory | None = None, overtaken: float | None = None):
    """``recovery.tick`` as beat runs it; without a directory, publishing every service."""
    settings = ours.settings
    client = redis_client(settings.broker_url)
    claims = Claims.configured(client, settings)
    with open_session(settings.database_url) as session:
        tick(
            session,
            claims,
            Batches(client, settings.lease_seconds),
            ours.producer.publisher,
            settings.outbox_grace_seconds,
            overtaken_after=overtaken,
            directory=directory,
        )


def _delete(ours: OurStack, ids) -> None:
    with open_session(ours.settings.database_url) as session:
        session.execute(sa.delete(JobRow).where(JobRow.service_id.in_(ids)))
        session.execute(sa.delete(ServiceRow).where(ServiceRow.id.in_(ids)))
        session.commit()
