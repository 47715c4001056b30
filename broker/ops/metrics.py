"""Prometheus metrics: jobs, queues, service liveness and the mirror's backlog.

Every value is read when Prometheus scrapes, never kept up to date by a loop of
our own: such a loop goes stale exactly when it matters, stuck on the outage an
operator is looking at. A scrape costs the census's SQL queries
(``broker.ops.census``) and one pipelined Redis round trip, in which one script
counts every service's queue (``depths.lua``). When one source is down the
scrape still answers with what the other gave, and says which source failed in
``topchef_source_up``, so an alert can tell "no jobs" from "cannot see jobs".
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.messaging import keys
from broker.messaging.claims import Claims
from broker.messaging.connections import redis_url, text
from broker.messaging.presence import COUNT, Presence
from broker.models.lifecycle import Status
from broker.ops.census import Census, ServiceReading, take_census
from broker.settings import Settings
from broker.storage.tables import open_session

__all__ = ["BrokerCollector", "MetricsServer", "serve"]

log = logging.getLogger(__name__)

DATABASE = "database"
REDIS = "redis"
SOURCES = (DATABASE, REDIS)

#: A scrape must answer within Prometheus's scrape timeout (10 s by default),
#: so a hung Redis is given up on long before ``connections.SOCKET_TIMEOUT``.
REDIS_TIMEOUT = 3.0

SERVICE_LABELS = ("service", "service_id")


@dataclass(frozen=True, slots=True)
class _RedisReading:
    queue_depths: dict[uuid.UUID, int]
    #: Jobs parked until their service may start them (held, or at its max_running).
    parked: dict[uuid.UUID, int]
    #: Live workers (Celery and HTTP) serving each service.
    workers: dict[uuid.UUID, int]
    #: Entries in the state stream: the mirror deletes an entry once applied.
    mirror_lag: int
    #: Of those, entries a mirror has read but not yet committed and acknowledged.
    mirror_pending: int
    dead_letters: int
    #: Jobs published whose publication beat has not yet marked in SQL.
    unmarked: int
    #: Deliveries workers refused as not registered work, by reason.
    refused: dict[str, int]
    #: State entries the mirror dead-lettered, by reason (``admission.Reason``).
    dead_reasons: dict[str, int]


class BrokerCollector(Collector):
    """Reads SQL and Redis at each scrape; one instance per registry."""

    def __init__(self, settings: Settings) -> None:
        self._database_url = settings.database_url
        # Its own client: the shared one retries for seconds, longer than a scrape.
        self._redis = redis.Redis.from_url(
            redis_url(settings.broker_url),
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 1),  # one retry: a pooled connection Redis closed
        )
        self._presence = Presence(self._redis)
        self._claims = Claims.configured(self._redis, settings)
        self._errors = dict.fromkeys(SOURCES, 0)
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        database = self._read_database()
        # With the database down, the broker's own directory still names the queues.
        services = database.services if database is not None else self._directory()
        broker = self._read_redis(services)

        up = GaugeMetricFamily(
            "topchef_source_up",
            "Whether the last scrape could read this source.",
            labels=["source"],
        )
        up.add_metric([DATABASE], float(database is not None))
        up.add_metric([REDIS], float(broker is not None))
        yield up
        errors = CounterMetricFamily(
            "topchef_scrape_errors", "Scrapes that could not read this source.", labels=["source"]
        )
        with self._lock:
            for source in SOURCES:
                errors.add_metric([source], self._errors[source])
        yield errors
        if database is not None:
            yield from _database_metrics(database)
        if broker is not None:
            yield from _redis_metrics(broker, services)

    # -- sources ------------------------------------------------------------

    def _read_database(self) -> Census | None:
        try:
            with open_session(self._database_url) as session:
                return take_census(session)
        except sa.exc.SQLAlchemyError as error:
            self._failed(DATABASE, error)
            return None

    def _read_redis(self, services: Sequence[ServiceReading]) -> _RedisReading | None:
        try:
            pipeline = self._redis.pipeline(transaction=False)
            ids = [service.id for service in services]
            if ids:
                self._claims.queue_depths(pipeline, ids)
                self._presence.queue(pipeline, "", COUNT, ids)
            pipeline.xlen(keys.STATE_STREAM)
            pipeline.xlen(keys.DEAD_STATE_STREAM)
            pipeline.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)
            pipeline.scard(keys.PUBLISHED)
            pipeline.hgetall(keys.REFUSED)
            pipeline.hgetall(keys.DEAD_STATE_REASONS)
            replies = pipeline.execute(raise_on_error=False)
            counted, workers = replies[:2] if ids else ([], [])
            lag, dead, pending, unmarked, refused, reasons = replies[2 if ids else 0 :]
            if isinstance(pending, redis.ResponseError) and "NOGROUP" in str(pending):
                pending = {"pending": 0}  # no mirror has ever run: nothing is pending
            for reply in (counted, workers, lag, dead, pending, unmarked, refused, reasons):
                if isinstance(reply, Exception):
                    raise reply
        except redis.RedisError as error:
            self._failed(REDIS, error)
            return None
        return _RedisReading(
            {service_id: int(depth) for service_id, depth in zip(ids, counted[::2], strict=True)},
            {service_id: int(count) for service_id, count in zip(ids, counted[1::2], strict=True)},
            {service_id: int(count) for service_id, count in zip(ids, workers, strict=True)},
            int(lag),
            int(pending["pending"]),
            int(dead),
            int(unmarked),
            {text(reason): int(count) for reason, count in refused.items()},
            _counts(reasons),
        )

    def _directory(self) -> list[ServiceReading]:
        """The services workers resolve names with (name → id), read from Redis."""
        try:
            directory: dict[Any, Any] = self._redis.hgetall(keys.SERVICE_IDS)
        except redis.RedisError:
            return []  # _read_redis reports the outage
        services = []
        for name, service_id in sorted(directory.items()):
            try:
                services.append(ServiceReading(uuid.UUID(service_id.decode()), name.decode()))
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring a malformed service directory entry %r", name)
        return services

    def _failed(self, source: str, error: Exception) -> None:
        log.warning("metrics: cannot read the %s: %s", source, error)
        with self._lock:
            self._errors[source] += 1


def _service_gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=SERVICE_LABELS)


def _database_metrics(reading: Census) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "topchef_jobs", "Jobs by service and status.", labels=[*SERVICE_LABELS, "status"]
    )
    available = _service_gauge(
        "topchef_service_available", "1 if the service is marked available, else 0."
    )
    timed_out = _service_gauge(
        "topchef_service_timed_out", "1 if the service's last check-in is older than its timeout."
    )
    age = _service_gauge(
        "topchef_seconds_since_check_in", "Seconds since the service last checked in (DB clock)."
    )
    held = _service_gauge("topchef_service_held", "1 while the service is held, else 0.")
    scheduled = _service_gauge(
        "topchef_jobs_scheduled",
        "REGISTERED jobs held until a later time (not_before, or a retry's backoff); "
        'they are counted in topchef_jobs{status="REGISTERED"} too.',
    )
    for service in reading.services:
        for status in Status:
            count = reading.jobs.get((service.id, status.value), 0)
            jobs.add_metric([*service.labels, status.value], count)
        available.add_metric(service.labels, float(service.available))
        timed_out.add_metric(service.labels, float(service.timed_out))
        age.add_metric(service.labels, service.seconds_since_check_in)
        held.add_metric(service.labels, float(service.held_at is not None))
        scheduled.add_metric(service.labels, service.scheduled)
    yield from (jobs, available, timed_out, age, held, scheduled)


def _redis_metrics(reading: _RedisReading, services: Sequence[ServiceReading]) -> Iterator[Metric]:
    depth = _service_gauge(
        "topchef_queue_depth",
        "Job messages in the service's Redis queue, all priorities (a batch of jobs counts "
        "once; messages "
        "of jobs cancelled or claimed over HTTP stay until a worker discards them). "
        'Jobs waiting to run: topchef_jobs{status="REGISTERED"}.',
    )
    workers = _service_gauge(
        "topchef_service_workers",
        "Live workers (Celery and HTTP) serving the service; 0 with REGISTERED jobs "
        "means nothing will run them.",
    )
    parked = _service_gauge(
        "topchef_parked_jobs",
        "Jobs delivered but parked until their service may start them (held, or at its "
        "max_running).",
    )
    for service in services:
        if service.id in reading.queue_depths:
            depth.add_metric(service.labels, reading.queue_depths[service.id])
        if service.id in reading.workers:
            workers.add_metric(service.labels, reading.workers[service.id])
        if service.id in reading.parked:
            parked.add_metric(service.labels, reading.parked[service.id])
    yield depth
    yield workers
    yield parked
    yield GaugeMetricFamily(
        "topchef_mirror_lag_entries",
        "State entries not yet applied to SQL by the mirror.",
        value=reading.mirror_lag,
    )
    yield GaugeMetricFamily(
        "topchef_mirror_pending_entries",
        "State entries a mirror has read but not yet committed.",
        value=reading.mirror_pending,
    )
    yield GaugeMetricFamily(
        "topchef_mirror_dead_entries",
        "State entries the mirror could not apply, kept in the dead-letter stream "
        "(the latest 10,000).",
        value=reading.dead_letters,
    )
    dead = CounterMetricFamily(
        "topchef_mirror_dead_letters",
        "State entries the mirror dead-lettered instead of applying, by reason "
        "(unreadable, too_large, too_deep, unknown_kind, unknown_status, invalid, future, "
        "unknown_job, misattributed, invalid_provenance, unappliable, unsigned, forged, "
        "unknown_credential, revoked, not_holder).",
        labels=["reason"],
    )
    for reason, count in sorted(reading.dead_reasons.items()):
        dead.add_metric([reason], count)
    yield dead
    refused = CounterMetricFamily(
        "topchef_refused_deliveries",
        "Job deliveries workers refused without running them, as not registered work "
        "(forged, unregistered, altered, misrouted, invalid, malformed).",
        labels=["reason"],
    )
    for reason, count in sorted(reading.refused.items()):
        refused.add_metric([reason], count)
    yield refused
    yield GaugeMetricFamily(
        "topchef_unmarked_publications",
        "Jobs published but not yet marked so in SQL; beat marks them each tick, "
        "so a count that only grows means beat is not running.",
        value=reading.unmarked,
    )


def _counts(reply: dict[bytes, bytes]) -> dict[str, int]:
    """A hash of counts as Redis has it; a count someone made unreadable is left out."""
    counts = {}
    for name, count in reply.items():
        try:
            counts[text(name)[:64]] = int(count)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring a malformed count %r", name)
    return counts


@dataclass
class MetricsServer:
    """The running HTTP endpoint; ``port`` is the real one (also when asked for 0)."""

    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(settings: Settings, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics at ``http://host:port/metrics`` from a background thread.

    Each call has its own registry, so several stacks (tests, embedded) can
    each serve theirs in one process.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(settings))
    server, thread = start_http_server(port, host, registry=registry)
    log.info("metrics at http://%s:%d/metrics", host, server.server_port)
    return MetricsServer(server, thread)
