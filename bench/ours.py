"""TopChef under load: its producer, its workers and its mirror as separate processes."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

from bench.jobs import STARTED
from bench.payload import PARAMETERS_SCHEMA, PROBE_SERVICE, RESULTS_SCHEMA, SERVICE, parameters
from bench.servers import PYTHON, Child, PostgresSchema, python_env, registration_keys
from bench.stats import percentile
from broker.messaging import keys, outbox, priorities
from broker.models.credentials import stack_credential
from broker.producer import Producer
from broker.settings import WORKER_KEY_FILE, Settings
from broker.storage.tables import JobRow, engine_for, open_session

#: How many jobs one ``submit_many`` call takes while draining: the worker starts
#: on the first chunk while the producer validates and records the next.
DRAIN_CHUNK = 1000


class OurStack:
    """A producer in this process; workers and a mirror as ``topchef`` children."""

    def __init__(self, redis_url: str, schema: PostgresSchema, log_dir: Path) -> None:
        self.schema = schema
        self.log_dir = log_dir
        self.settings = Settings(
            database_url=schema.url, broker_url=redis_url, **registration_keys()
        )
        self.producer = Producer(self.settings)
        with open_session(schema.url) as session, session.begin():
            #: The credential the workers sign their reports with, as ``topchef up``'s.
            self.worker_key = stack_credential(session, log_dir / WORKER_KEY_FILE)
        self.redis = redis.Redis.from_url(redis_url)
        self.service_ids = {}
        for name in (SERVICE, PROBE_SERVICE):
            self.service_ids[name] = self.producer.create_service(
                name, "benchmark no-op", PARAMETERS_SCHEMA, RESULTS_SCHEMA, timeout=60
            )
        self.children: list[Child] = []
        self.mirror: Child | None = None
        self.workers: list[Child] = []
        #: More settings for the children started from now on (``bench.footprint``).
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return python_env(
            TOPCHEF_BROKER_URL=self.settings.broker_url,
            TOPCHEF_DATABASE_URL=self.settings.database_url,
            TOPCHEF_WORKER_KEY=str(self.worker_key),
            **self.extra_env,
        )

    def _start(self, name: str, *args: str) -> Child:
        child = Child([PYTHON, "-m", "broker", *args], self.env(), self.log_dir, name)
        self.children.append(child)
        return child

    def start_mirror(self) -> Child:
        self.mirror = self._start("ours-mirror", "mirror", "--loglevel", "WARNING")
        return self.mirror

    def start_beat(self) -> Child:
        return self._start("ours-beat", "beat", "--loglevel", "WARNING")

    def start_workers(self, processes: int, pool: str, concurrency: int) -> list[Child]:
        label = f"ours-worker-{pool}{concurrency}"
        args = ["worker", "bench.jobs", "--pool", pool, "--concurrency", str(concurrency)]
        args += ["--loglevel", "WARNING"]
        self.workers = [self._start(f"{label}-{index}", *args) for index in range(processes)]
        # Ready when each worker has checked in, and a probe job round-trips.
        self.run_probe(0, timeout=60)
        return self.workers

    def stop_workers(self) -> None:
        for child in self.workers:
            child.stop()
        self.workers = []

    def close(self) -> None:
        for child in self.children:
            child.stop()

    # -- workloads ------------------------------------------------------------

    def purge(self) -> None:
        """Empty the queues, the jobs' claims and the jobs table between repetitions."""
        self.delete_queues()
        self.redis.delete(keys.PUBLISHED)  # no beat runs here to take these records
        stale = list(self.redis.scan_iter(match=keys.claim("*"), count=1000))
        for start in range(0, len(stale), 1000):
            self.redis.delete(*stale[start : start + 1000])
        self.schema.truncate_jobs()

    def delete_queues(self) -> None:
        """Every queue's messages, on all its priority lists."""
        for service_id in self.service_ids.values():
            self.redis.delete(*priorities.queue_lists(keys.service_queue(service_id)))

    def enqueue_single(self, n: int) -> float:
        """Jobs per second submitted one ``submit`` call at a time."""
        self.purge()
        started = time.perf_counter()
        for index in range(n):
            self.producer.submit(SERVICE, parameters(index))
        self.mark_published()
        rate = n / (time.perf_counter() - started)
        self.purge()
        return rate

    def enqueue_bulk(self, n: int, per_message: int | None = 1) -> float:
        """Jobs per second submitted in one ``submit_many`` call (one transaction)."""
        self.purge()
        started = time.perf_counter()
        points = [parameters(index) for index in range(n)]
        self.producer.submit_many(SERVICE, points, jobs_per_message=per_message)
        self.mark_published()
        rate = n / (time.perf_counter() - started)
        self.purge()
        return rate

    def mark_published(self) -> None:
        """Beat's share of a submit, timed with it: marking the jobs published in SQL."""
        engine = engine_for(self.settings.database_url)
        outbox.mark_taken(engine, self.producer.publisher)

    def drain(
        self, n: int, keep: bool = False, per_message: int | None = 1, chunk: int = DRAIN_CHUNK
    ) -> float:
        """Seconds from the first submit until all ``n`` jobs are COMPLETED in SQL.

        The jobs table is emptied first, unless ``keep`` (the memory workload
        drains beside a million rows). ``per_message`` None submits with no
        option, as a scientist would (``broker.producer.packing`` chooses);
        ``chunk`` is how many jobs each ``submit_many`` call takes.
        """
        if keep:
            self.delete_queues()
        else:
            self.purge()
        submitted: list[uuid.UUID] = []
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.FINISHED_CHANNEL)
        finished: set[str] = set()
        started = time.perf_counter()
        for start in range(0, n, chunk):
            points = [parameters(i) for i in range(start, min(n, start + chunk))]
            submitted += self.producer.submit_many(SERVICE, points, jobs_per_message=per_message)
            _collect(pubsub, finished, 0.0)
        deadline = time.monotonic() + max(120.0, n / 50)
        while len(finished) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"drain: {len(finished)} of {n} jobs finished")
            _collect(pubsub, finished, 0.5)
        elapsed = time.perf_counter() - started
        completed = self.completed(submitted)
        pubsub.close()
        if completed != n:
            raise RuntimeError(f"drain: {completed} of {n} jobs COMPLETED in SQL")
        return elapsed

    def completed(self, job_ids: list[uuid.UUID]) -> int:
        with open_session(self.settings.database_url) as session:
            total = 0
            for start in range(0, len(job_ids), 1000):
                query = (
                    sa.select(sa.func.count())
                    .select_from(JobRow)
                    .where(JobRow.id.in_(job_ids[start : start + 1000]))
                    .where(JobRow.status == "COMPLETED")
                )
                total += int(session.scalar(query) or 0)
            return total

    def count(self, **where: str) -> int:
        with open_session(self.settings.database_url) as session:
            query = sa.select(sa.func.count()).select_from(JobRow).filter_by(**where)
            return int(session.scalar(query) or 0)

    def run_probe(self, index: int, timeout: float = 10.0) -> tuple[float, float]:
        """Submit one probe job; return (submit → handler start, submit → COMPLETED in SQL)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.FINISHED_CHANNEL)
        self.redis.delete(STARTED)
        submitted = time.monotonic()
        job = str(self.producer.submit(PROBE_SERVICE, parameters(index)))
        finished: set[str] = set()
        deadline = submitted + timeout
        while job not in finished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"probe job {job} did not finish in {timeout} s")
            _collect(pubsub, finished, 0.2)
        done = self._completed_seen(uuid.UUID(job), deadline)
        pubsub.close()
        raw = self.redis.lpop(STARTED)
        if raw is None:
            raise RuntimeError(f"probe job {job} finished without starting")
        _index, start = raw.decode().split()
        return float(start) - submitted, done - submitted

    def _completed_seen(self, job: uuid.UUID, deadline: float) -> float:
        with open_session(self.settings.database_url) as session:
            while True:
                status = session.scalar(sa.select(JobRow.status).where(JobRow.id == job))
                if status == "COMPLETED":
                    return time.monotonic()
                if status == "ERROR" or time.monotonic() > deadline:
                    detail = self.producer.job(job)["detail"]
                    raise RuntimeError(f"probe job {job} is {status} in SQL: {detail}")
                session.rollback()

    def latency(self, n: int) -> dict[str, float]:
        """p50/p99 over ``n`` sequential probe jobs, in milliseconds."""
        self.purge()
        starts, completions = [], []
        for index in range(n):
            start, done = self.run_probe(index)
            starts.append(start * 1000)
            completions.append(done * 1000)
        return {
            "start_p50": percentile(starts, 0.5),
            "start_p99": percentile(starts, 0.99),
            "completed_p50": percentile(completions, 0.5),
            "completed_p99": percentile(completions, 0.99),
        }


def _collect(pubsub: redis.client.PubSub, finished: set[str], timeout: float) -> None:
    """Add every job the mirror announced as finished (blocking up to ``timeout``)."""
    message = pubsub.get_message(timeout=timeout)
    while message is not None:
        if message["type"] == "message":
            finished.update(json.loads(message["data"]))
        message = pubsub.get_message(timeout=0.0)
