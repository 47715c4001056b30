"""``python -m bench [--smoke] [--json PATH]``: every workload, every peer, one table.

The run owns what it measures with: a redis-server of its own on a free port
and a schema of its own on the configured PostgreSQL
(``TOPCHEF_BENCH_POSTGRES_URL``, else ``TOPCHEF_TEST_POSTGRES_URL``, else
``postgresql://postgres@127.0.0.1:5432/test``); both are removed at the end,
whatever happens. Each figure is the median of ``--repeat`` repetitions
(at least 3 in a full run), with their min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import (
    controls,
    cpu,
    fleet,
    footprint,
    http_loop,
    producers,
    report,
    signing,
    sql,
    sweeps,
)
from bench import not_before as held
from bench import reports as signed_reports
from bench.ours import DRAIN_CHUNK, OurStack
from bench.payload import FLEET_SERVED, SERVICE
from bench.rivals import RQ, Dramatiq, Peer, RawCelery, WorkerSetup
from bench.servers import PostgresSchema, RedisServer
from bench.stats import Figure, fmt

WORKLOADS = (
    "enqueue",
    "drain",
    "latency",
    "footprint",
    "sql",
    "memory",
    "not_before",
    "priority",
    "exclusive",
    "sweep",
    "fleet",
    "producers",
    "http",
    "signing",
    "reports",
    "cpu",
)


@dataclass(frozen=True)
class Plan:
    """How big each workload is."""

    jobs: int = 10_000
    repeat: int = 3
    #: ``submit`` one at a time is slow; its rate is measured over fewer jobs.
    single_jobs: int = 2_000
    #: RQ's forking worker runs ~60 jobs/s: its drain is measured over fewer jobs.
    forking_jobs: int = 1_000
    latency_jobs: int = 500
    #: Jobs held until scattered times a few seconds ahead (``bench.not_before``).
    held_jobs: int = 200
    sql_jobs: int = 1_000_000
    sql_calls: int = 21
    #: TopChef's worker pool, concurrency and processes, recommended for 2 cores.
    pool: str = "threads"
    concurrency: int = 2
    processes: int = 2
    #: Jobs per Celery message recommended for sweeps of short jobs (``jobs_per_message``).
    per_message: int = 50
    #: Low-priority jobs queued ahead of the urgent one (``bench.controls``).
    priority_low_jobs: int = 1_000
    #: Jobs through the ``max_running=1`` service.
    exclusive_jobs: int = 200
    #: A sweep of long jobs submitted with no options (``bench.sweeps``).
    sweep_jobs: int = 40
    sweep_seconds: float = 1.0
    #: Services in the fleet workload (``bench.fleet``); ticks and scrapes timed.
    fleet_services: int = 1_000
    fleet_ticks: int = 20
    fleet_scrapes: int = 10
    #: Producer processes at once (``bench.producers``), and each one's jobs.
    producers: int = 8
    producer_single_jobs: int = 250
    producer_bulk_jobs: int = 5_000
    #: The HTTP worker loop (``bench.http_loop``): jobs, client threads, server threads.
    http_jobs: int = 1_000
    http_clients: int = 20
    http_threads: tuple[int, ...] = (8, 16)


SMOKE = Plan(
    jobs=200,
    repeat=1,
    single_jobs=50,
    forking_jobs=30,
    latency_jobs=20,
    held_jobs=20,
    sql_jobs=2_000,
    sql_calls=3,
    priority_low_jobs=100,
    exclusive_jobs=30,
    sweep_jobs=8,
    sweep_seconds=0.2,
    fleet_services=40,
    fleet_ticks=3,
    fleet_scrapes=3,
    producers=2,
    producer_single_jobs=20,
    producer_bulk_jobs=500,
    http_jobs=100,
    http_clients=4,
    http_threads=(16,),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--jobs", type=int, help="N of the enqueue, drain and memory workloads")
    parser.add_argument("--repeat", type=int, help="repetitions of each figure")
    parser.add_argument("--sql-jobs", type=int, help="jobs in PostgreSQL for the SQL workload")
    parser.add_argument("--render", type=Path, help="print a saved run's JSON as Markdown")
    args = parser.parse_args(argv)
    if args.render:
        print(report.markdown(json.loads(args.render.read_text())))
        return 0
    plan = SMOKE if args.smoke else Plan()
    overrides = {
        "jobs": args.jobs,
        "repeat": args.repeat,
        "sql_jobs": args.sql_jobs,
    }
    plan = Plan(**{**asdict(plan), **{k: v for k, v in overrides.items() if v is not None}})
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")

    # A run stopped by SIGTERM (or SIGINT, which a background job ignores) still
    # stops its children and drops its Redis and its schema.
    signal.signal(signal.SIGTERM, _interrupt)
    run = Run(plan, only)
    started = time.monotonic()
    try:
        run.execute()
    finally:
        run.close()
    result = {
        "machine": run.machine,
        "plan": asdict(plan),
        "smoke": args.smoke,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_at_end": os.getloadavg(),
        "figures": [figure.as_dict() for figure in run.figures],
        "targets": run.targets(),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(report.table(run.figures))
    print()
    print(report.targets_table(result["targets"]))
    print(f"\n{len(run.figures)} figures in {result['seconds']} s; JSON in {args.json}")
    return 0


class Run:
    """One benchmark run: its servers, its figures, and what they say of the targets."""

    def __init__(self, plan: Plan, only: list[str]) -> None:
        self.plan = plan
        self.only = only
        self.figures: list[Figure] = []
        self.machine = report.machine()
        self.log_dir = Path(tempfile.mkdtemp(prefix="topchef-bench-logs-"))
        self.redis = RedisServer()
        self.schema = PostgresSchema()
        with self.schema.connect() as connection:
            version = connection.execute("SHOW server_version").fetchone()
        self.machine["versions"]["postgresql"] = version[0] if version else "unknown"
        self.ours: OurStack | None = None
        self.peers: list[Peer] = []

    def close(self) -> None:
        if self.ours is not None:
            self.ours.close()
        for peer in self.peers:
            peer.stop_workers()
        self.schema.close()
        self.redis.close()

    def figure(self, workload: str, name: str, unit: str, note: str = "") -> Figure:
        figure = Figure(workload, name, unit, note=note)
        self.figures.append(figure)
        return figure

    def repeat(self, figure: Figure, measure: Any) -> Figure:
        for _ in range(self.plan.repeat):
            figure.values.append(measure())
        say(f"{figure.workload}: {figure.name}: {fmt(figure.median)} {figure.unit}")
        return figure

    def execute(self) -> None:
        self.ours = OurStack(self.redis.url(0), self.schema, self.log_dir)
        self.peers = [
            RawCelery(self.redis.url, self.log_dir),
            RQ(self.redis.url, self.log_dir),
            Dramatiq(self.redis.url, self.log_dir),
        ]
        for workload in ("enqueue", "drain", "latency", "footprint"):
            if workload in self.only:
                say(f"== {workload}")
                getattr(self, workload)()
        if "not_before" in self.only:
            say("== not_before")
            self.not_before()
        if "memory" in self.only:
            say("== memory, few jobs in SQL")
            self.memory(many=False)
        for workload in ("priority", "exclusive", "sweep", "fleet", "producers", "http", "signing"):
            if workload in self.only:
                say(f"== {workload}")
                getattr(self, workload)()
        if "reports" in self.only:
            say("== reports")
            self.reports()
        if "cpu" in self.only:
            say("== cpu")
            self.cpu()
        if "sql" in self.only:
            say("== sql")
            self.sql()
            if "memory" in self.only:
                say("== memory, many jobs in SQL")
                self.memory(many=True)

    # -- 1. enqueue ----------------------------------------------------------------

    def enqueue(self) -> None:
        assert self.ours is not None
        ours, n, single = self.ours, self.plan.jobs, self.plan.single_jobs
        note = f"over {single:,} jobs"
        self.repeat(
            self.figure("enqueue", "topchef submit (one at a time)", "jobs/s", note),
            lambda: ours.enqueue_single(single),
        )
        for per_message in (1, self.plan.per_message):
            self.repeat(
                self.figure(
                    "enqueue",
                    f"topchef submit_many (bulk, {_per(per_message)})",
                    "jobs/s",
                    f"{n:,} in one call",
                ),
                lambda per_message=per_message: ours.enqueue_bulk(n, per_message),
            )
        for peer in self.peers:
            self.repeat(
                self.figure("enqueue", f"{peer.name} (one at a time)", "jobs/s"),
                lambda peer=peer: peer.enqueue(n),
            )

    # -- 2. drain ------------------------------------------------------------------

    def drain(self) -> None:
        assert self.ours is not None
        ours, plan = self.ours, self.plan
        ours.start_mirror()
        celery, rq, dramatiq = self.peers
        assert isinstance(celery, RawCelery)
        assert isinstance(rq, RQ)
        assert isinstance(dramatiq, Dramatiq)
        configs = [(plan.pool, plan.concurrency, plan.processes), ("threads", 8, 1)]
        configs += [("prefork", 2, 1), ("solo", 1, 2)]
        for pool, concurrency, processes in configs:
            label = _label(pool, concurrency, processes)
            recommended = (pool, concurrency, processes) == configs[0]
            batch_sizes: tuple[int | None, ...] = (plan.per_message,)
            if recommended:
                batch_sizes = (None, plan.per_message, 1)
            ours.start_workers(processes, pool, concurrency)
            try:
                for per_message in batch_sizes:
                    note = "COMPLETED in SQL"
                    if per_message is None:
                        note += f"; one submit_many of {plan.jobs:,}, no options"
                    self.repeat(
                        self.figure(
                            "drain", f"topchef ({label}; {_per(per_message)})", "jobs/s", note
                        ),
                        lambda per_message=per_message: (
                            plan.jobs
                            / ours.drain(
                                plan.jobs,
                                per_message=per_message,
                                chunk=plan.jobs if per_message is None else DRAIN_CHUNK,
                            )
                        ),
                    )
            finally:
                ours.stop_workers()
            self._drain_peer(celery, celery.worker(pool, concurrency, processes), f"({label})")
        self._drain_peer(rq, rq.worker("SimpleWorker"), "SimpleWorker, 1 process")
        self._drain_peer(rq, rq.worker("Worker"), "Worker (fork per job)", plan.forking_jobs)
        self._drain_peer(dramatiq, dramatiq.worker(1), "1 process, 1 thread")
        self._drain_peer(dramatiq, dramatiq.worker(8), "1 process, 8 threads")

    def _drain_peer(self, peer: Peer, setup: WorkerSetup, label: str, n: int = 0) -> None:
        n = n or self.plan.jobs
        note = "" if n == self.plan.jobs else f"over {n:,} jobs"
        peer.start_workers(setup)
        try:
            name = f"{peer.name} {label}" if label.startswith("(") else f"{peer.name} ({label})"
            self.repeat(
                self.figure("drain", name, "jobs/s", note),
                lambda: n / peer.drain(n),
            )
        finally:
            peer.stop_workers()

    # -- held jobs: how late after their not_before they start -----------------------

    def not_before(self) -> None:
        assert self.ours is not None
        ours, plan = self.ours, self.plan
        if ours.mirror is None:
            ours.start_mirror()
        beat = ours.start_beat()
        ours.start_workers(plan.processes, plan.pool, plan.concurrency)
        try:
            samples = [held.lateness(ours, plan.held_jobs) for _ in range(plan.repeat)]
        finally:
            ours.stop_workers()
            beat.stop()
        note = f"{plan.held_jobs} jobs due at scattered times 2-10 s ahead; beat, mirror, workers"
        for key, name in [
            ("p50", "not_before → handler starts (date_started), p50"),
            ("p99", "not_before → handler starts (date_started), p99"),
            ("early", "jobs started before their time"),
        ]:
            figure = self.figure("not_before", name, "jobs" if key == "early" else "ms", note)
            figure.values = [sample[key] for sample in samples]
            say(f"not_before: {name}: {fmt(figure.median)} {figure.unit}")

    # -- 3. latency ----------------------------------------------------------------

    def latency(self) -> None:
        assert self.ours is not None
        ours, plan = self.ours, self.plan
        if ours.mirror is None:
            ours.start_mirror()
        ours.start_workers(plan.processes, plan.pool, plan.concurrency)
        try:
            samples = [ours.latency(plan.latency_jobs) for _ in range(plan.repeat)]
        finally:
            ours.stop_workers()
        note = f"{plan.latency_jobs} sequential jobs, warm worker"
        for key, name in [
            ("start_p50", "submit → handler starts, p50"),
            ("start_p99", "submit → handler starts, p99"),
            ("completed_p50", "submit → COMPLETED in SQL, p50"),
            ("completed_p99", "submit → COMPLETED in SQL, p99"),
        ]:
            figure = self.figure("latency", name, "ms", note)
            figure.values = [sample[key] for sample in samples]
            say(f"latency: {name}: {fmt(figure.median)} ms")

    # -- 4. Redis per job -----------------------------------------------------------

    def footprint(self) -> None:
        assert self.ours is not None
        plan = self.plan
        if self.ours.mirror is not None:
            self.ours.mirror.stop()
            self.ours.mirror = None
        queued = self.figure("footprint", "Redis bytes per queued job", "B", f"{plan.jobs:,} jobs")
        finished = self.figure("footprint", "Redis bytes per finished job", "B")
        for _ in range(plan.repeat):
            found = footprint.measure(
                self.ours, plan.jobs, plan.processes, plan.pool, plan.concurrency
            )
            queued.values.append(found.queued_bytes_per_job)
            finished.values.append(found.finished_bytes_per_job)
            finished.note = (
                f"after the duplicate window ({found.window_seconds:g} s with the windows "
                f"shortened); {found.claims_left} claims left"
            )
        say(f"footprint: {fmt(queued.median)} B per queued job, {fmt(finished.median)} B finished")

    # -- authenticated reports ---------------------------------------------------------

    def reports(self) -> None:
        """Each job's two reports are authenticated by its worker and checked by the mirror."""
        note = "per report (a job sends two); HMAC-SHA256, hmac"
        self.repeat(
            self.figure("reports", "MAC a report (worker)", "µs", note),
            signed_reports.sign_microseconds,
        )
        self.repeat(
            self.figure("reports", "verify a report (mirror)", "µs", note),
            signed_reports.verify_microseconds,
        )

    def cpu(self) -> None:
        """Each process's CPU per job over a packed drain (``bench.cpu``)."""
        assert self.ours is not None
        ours, plan = self.ours, self.plan
        if ours.mirror is None:
            ours.start_mirror()
        workers = ours.start_workers(plan.processes, plan.pool, plan.concurrency)
        label = _label(plan.pool, plan.concurrency, plan.processes)
        note = f"{label}; {_per(None)}; one submit_many of {plan.jobs:,}"
        mirror = ours.mirror
        assert mirror is not None
        parts: cpu.Parts = {
            "workers": lambda: [worker.pid for worker in workers],
            "mirror": lambda: [mirror.pid],
            "redis": lambda: [self.redis.popen.pid],
            "postgresql": lambda: cpu.named("postgres"),
            "producer": lambda: [os.getpid()],
        }
        figures = {name: self.figure("cpu", name, "µs/job", note) for name in [*parts, "total"]}
        try:
            for _ in range(plan.repeat):
                before = cpu.sample(parts)
                ours.drain(plan.jobs, per_message=None, chunk=plan.jobs)
                spent = cpu.per_job(before, cpu.sample(parts), plan.jobs)
                for name, figure in figures.items():
                    figure.values.append(spent[name])
        finally:
            ours.stop_workers()
        for figure in figures.values():
            say(f"cpu: {figure.name}: {fmt(figure.median)} {figure.unit}")

    # -- 5. SQL at scale -------------------------------------------------------------

    def sql(self) -> None:
        assert self.ours is not None
        ours, plan = self.ours, self.plan
        ours.purge()
        seconds = sql.fill(self.schema, plan.sql_jobs, ours.service_ids[SERVICE])
        note = f"{plan.sql_jobs:,} jobs, 10 services"
        self.figure("sql", "fill (INSERT … generate_series, VACUUM)", "s", note).values = [seconds]
        say(f"sql: {plan.sql_jobs:,} jobs inserted in {seconds:.1f} s")
        for name, query in sql.queries(self.schema.url, SERVICE).items():
            figure = self.figure("sql", name, "ms", f"{note}; {plan.sql_calls} calls")
            figure.values = sql.time_query(query, plan.sql_calls)
            say(f"sql: {name}: {fmt(figure.median)} ms")

    # -- 6. memory -------------------------------------------------------------------

    def memory(self, many: bool) -> None:
        """Peak RSS of a fresh mirror and worker draining N jobs, beside few or many rows."""
        assert self.ours is not None
        ours, plan = self.ours, self.plan
        if ours.mirror is not None:
            ours.mirror.stop()
            ours.mirror = None
        if not many:
            ours.purge()
        rows = ours.count() + plan.jobs
        label = f"{rows:,} jobs in SQL"
        mirror = self.figure("memory", f"mirror peak RSS ({label})", "MiB")
        worker = self.figure("memory", f"worker peak RSS, per process ({label})", "MiB")
        note = f"fresh processes, each drained {plan.jobs:,} jobs"
        mirror.note = worker.note = note
        for _ in range(plan.repeat):
            ours.start_mirror()
            ours.start_workers(plan.processes, plan.pool, plan.concurrency)
            try:
                ours.drain(plan.jobs, keep=many)
                assert ours.mirror is not None
                mirror.values.append(ours.mirror.peak_rss_mib())
                worker.values.append(statistics.fmean(w.peak_rss_mib() for w in ours.workers))
            finally:
                ours.stop_workers()
                if ours.mirror is not None:
                    ours.mirror.stop()
                    ours.mirror = None
        say(f"memory: mirror {fmt(mirror.median)} MiB, worker {fmt(worker.median)} MiB ({label})")

    # -- signed registrations (``bench.signing``) --------------------------------------

    def signing(self) -> None:
        rounds = max(200, self.plan.jobs // 10)
        for jobs in (1, self.plan.per_message):
            what = "a job sent alone" if jobs == 1 else f"a packed message of {jobs} jobs"
            note = f"{rounds:,} messages, in the bench process"
            sign = self.figure("signing", f"sign {what}", "µs", note)
            verify = self.figure("signing", f"verify {what}", "µs", note)
            for _ in range(self.plan.repeat):
                measured = signing.cost(jobs, rounds)
                sign.values.append(measured.sign_us)
                verify.values.append(measured.verify_us)
            say(
                f"signing: {what}: sign {fmt(sign.median)} µs, verify {fmt(verify.median)} µs; "
                f"per job {fmt(sign.median / jobs)} and {fmt(verify.median / jobs)} µs"
            )

    # -- 7. service controls (``bench.controls``) ------------------------------------

    def priority(self) -> None:
        assert self.ours is not None
        n = self.plan.priority_low_jobs
        note = f"{n:,} queued jobs of priority 1, one worker thread; then one of priority 9"
        jumped = self.figure(
            "priority", "low jobs started after the urgent one, before it", "jobs", note
        )
        waited = self.figure("priority", "urgent job: submit → start", "ms", note)
        if self.ours.mirror is None:
            self.ours.start_mirror()
        for _ in range(self.plan.repeat):
            jump = controls.priority_jump(self.ours, n)
            jumped.values.append(jump.overtaken_by)
            waited.values.append(jump.wait_seconds * 1000)
        say(
            f"priority: {fmt(jumped.median)} low jobs started in between; "
            f"waited {fmt(waited.median)} ms"
        )
        for pool in ("solo", "threads", "prefork"):
            held = f"{n:,} of priority 1 then one of 9, parked while held; one {pool} worker"
            first = self.figure(
                "priority",
                f"low jobs started before the urgent one, after a resume ({pool})",
                "jobs",
                held,
            )
            for _ in range(self.plan.repeat):
                first.values.append(controls.priority_after_resume(self.ours, n, pool).overtaken_by)
            say(f"priority after a resume ({pool}): {fmt(first.median)} low jobs started first")

    def exclusive(self) -> None:
        assert self.ours is not None
        n = self.plan.exclusive_jobs
        note = f"max_running=1, 3 worker processes x 2 threads, {n} jobs of 5 ms"
        most = self.figure("exclusive", "most jobs WORKING at once (claims)", "jobs", note)
        handlers = self.figure("exclusive", "most runs at once (handlers' count)", "jobs", note)
        in_sql = self.figure("exclusive", "most jobs WORKING at once (SQL intervals)", "jobs", note)
        overlap = self.figure("exclusive", "longest overlap of two runs in SQL", "ms", note)
        done = self.figure("exclusive", "jobs completed", "jobs", note)
        rate = self.figure("exclusive", "throughput", "jobs/s", note)
        for _ in range(self.plan.repeat):
            found = controls.exclusive(self.ours, n)
            most.values.append(found.most_at_once)
            handlers.values.append(found.most_in_handlers)
            in_sql.values.append(found.most_at_once_in_sql)
            overlap.values.append(found.overlap_in_sql_ms)
            done.values.append(found.completed)
            rate.values.append(found.completed / found.seconds)
        say(f"exclusive: at most {fmt(most.median)} at once; {fmt(done.median)} of {n} completed")

    # -- 8. a sweep of long jobs, no options (``bench.sweeps``) ----------------------

    def sweep(self) -> None:
        assert self.ours is not None
        plan = self.plan
        threads = plan.processes * plan.concurrency
        note = (
            f"{plan.sweep_jobs} jobs of {plan.sweep_seconds:g} s, submit_many with no options, "
            f"service with no history; {_label(plan.pool, plan.concurrency, plan.processes)}"
        )
        took = self.figure("sweep", "long sweep: submit → last COMPLETED in SQL", "s", note)
        ratio = self.figure("sweep", "long sweep: time / ideal (every thread busy)", "x", note)
        if self.ours.mirror is None:
            self.ours.start_mirror()
        sweeps.create_service(self.ours)  # before the workers: none waits to learn of it
        self.ours.start_workers(plan.processes, plan.pool, plan.concurrency)
        try:
            for _ in range(plan.repeat):
                found = sweeps.long_jobs(self.ours, plan.sweep_jobs, plan.sweep_seconds, threads)
                if found.completed != plan.sweep_jobs:
                    raise RuntimeError(f"long sweep: {found.completed} completed")
                took.values.append(found.seconds)
                ratio.values.append(found.seconds / found.ideal_seconds)
        finally:
            self.ours.stop_workers()
        say(f"sweep: {fmt(took.median)} s, {fmt(ratio.median)} x its ideal")

    # -- 9. a thousand services (``bench.fleet``) -------------------------------------

    def fleet(self) -> None:
        assert self.ours is not None
        plan = self.plan
        note = f"{plan.fleet_services:,} services, {FLEET_SERVED} served by a worker"
        if self.ours.mirror is None:
            self.ours.start_mirror()
        found = fleet.measure(self.ours, plan.fleet_services, plan.fleet_ticks, plan.fleet_scrapes)
        for name, values in [
            ("beat tick (directory: what changed)", found.tick_ms),
            ("beat tick publishing every service (before)", found.full_tick_ms),
            ("beat tick that also looks for lost messages", found.overtaken_tick_ms),
            ("metrics scrape", found.scrape_ms),
        ]:
            figure = self.figure("fleet", name, "ms", note)
            figure.values = values
            say(f"fleet: {name}: {fmt(figure.median)} ms (max {fmt(figure.high)})")
        first = self.figure("fleet", "beat's first tick (publishes every service)", "ms", note)
        first.values = [found.first_tick_ms]
        size = self.figure("fleet", "metrics page", "KiB", note)
        size.values = [found.scrape_bytes / 1024]

    # -- 10. many producers at once (``bench.producers``) ------------------------------

    def producers(self) -> None:
        assert self.ours is not None
        plan, ours = self.plan, self.ours
        for mode, jobs in (
            ("single", plan.producer_single_jobs),
            ("bulk", plan.producer_bulk_jobs),
        ):
            how = "submit, one at a time" if mode == "single" else "submit_many, no options"
            note = f"{plan.producers} processes x {jobs:,} jobs ({how}); no worker"
            for one_service in (True, False):
                where = "one service" if one_service else f"{plan.producers} services"
                self.repeat(
                    self.figure(
                        "producers", f"{plan.producers} producers, {mode}, {where}", "jobs/s", note
                    ),
                    lambda mode=mode, jobs=jobs, one_service=one_service: producers.rate(
                        ours, plan.producers, one_service, mode, jobs
                    ),
                )

    # -- 11. the HTTP worker loop (``bench.http_loop``) ---------------------------------

    def http(self) -> None:
        assert self.ours is not None
        plan = self.plan
        for threads in plan.http_threads:
            label = f"topchef api --threads {threads}, {plan.http_clients} clients"
            note = f"{plan.http_jobs:,} jobs, claim → PATCH COMPLETED, PostgreSQL; no Celery worker"
            rate = self.figure("http", f"HTTP worker loop ({label})", "jobs/s", note)
            p99 = self.figure("http", f"HTTP claim → COMPLETED, p99 ({label})", "ms", note)
            failed = self.figure("http", f"HTTP failed requests ({label})", "requests", note)
            for _ in range(plan.repeat):
                found = http_loop.measure(self.ours, plan.http_jobs, plan.http_clients, threads)
                if found.completed_in_sql != plan.http_jobs:
                    raise RuntimeError(f"http: {found.completed_in_sql} COMPLETED in SQL")
                rate.values.append(found.rate)
                p99.values.append(found.p99_ms)
                failed.values.append(found.failures)
            say(f"http: {label}: {fmt(rate.median)} jobs/s, p99 {fmt(p99.median)} ms")
        jobs = max(1, plan.http_jobs // plan.http_clients)
        note = f"{plan.http_clients} clients x {jobs} jobs, POST /services/<id>/jobs; --threads 8"
        for one_service in (True, False):
            where = "one service" if one_service else f"{plan.http_clients} services"
            figure = self.figure("http", f"HTTP submits, {where}", "jobs/s", note)
            failed = self.figure("http", f"HTTP submits failed, {where}", "requests", note)
            for _ in range(plan.repeat):
                found_rate, failures = http_loop.submit_rate(
                    self.ours, plan.http_clients, jobs, one_service
                )
                figure.values.append(found_rate)
                failed.values.append(failures)
            say(f"http: submits, {where}: {fmt(figure.median)} jobs/s")

    # -- targets ---------------------------------------------------------------------

    def _find(self, workload: str, startswith: str) -> Figure | None:
        for figure in self.figures:
            if figure.workload == workload and figure.name.startswith(startswith):
                return figure
        return None

    def targets(self) -> list[dict[str, Any]]:
        """Each of the issue's targets, with the figures it compares."""
        found: list[dict[str, Any]] = []

        def target(text: str, measured: str, met: bool) -> None:
            found.append({"target": text, "measured": measured, "met": bool(met)})

        def ratio(text: str, ours: Figure | None, theirs: Figure | None, at_least: float) -> None:
            if ours and theirs:
                times = ours.median / theirs.median
                unit = ours.unit
                measured = f"{fmt(ours.median)} vs {fmt(theirs.median)} {unit} = {times:.2f}x"
                target(text, measured, times >= at_least)

        plan = self.plan
        label = _label(plan.pool, plan.concurrency, plan.processes)
        celery = self._find("drain", f"celery ({label})")
        for per_message in (plan.per_message, 1):
            ratio(
                f"drain ≥ 0.9 x raw Celery's (both {label}; ours {_per(per_message)})",
                self._find("drain", f"topchef ({label}; {_per(per_message)})"),
                celery,
                0.9,
            )
        best = max(
            (f for f in self.figures if f.workload == "drain" and f.name.startswith("topchef")),
            key=lambda f: f.median,
            default=None,
        )
        fastest = max(
            (f for f in self.figures if f.workload == "drain" and not f.name.startswith("topchef")),
            key=lambda f: f.median,
            default=None,
        )
        if best and fastest:
            target(
                "drain ahead of the fastest peer's",
                f"{best.name} {fmt(best.median)} vs {fastest.name} {fmt(fastest.median)} jobs/s",
                best.median > fastest.median,
            )
        ratio(
            "a no-op sweep with no options drains ≥ 3 x raw Celery's (same pool, concurrency)",
            self._find("drain", f"topchef ({label}; {_per(None)})"),
            celery,
            3,
        )
        spread = self._find("sweep", "long sweep: time / ideal")
        if spread:
            target(
                "a sweep of long jobs with no options ends within 1.2 x its ideal time",
                f"{fmt(spread.median)} x (worst {fmt(spread.high)} x)",
                spread.high <= 1.2,
            )
        for name, limit in [("beat tick (directory", 50.0), ("metrics scrape", 200.0)]:
            figure = self._find("fleet", name)
            if figure:
                target(
                    f"with {plan.fleet_services:,} services, {figure.name} ≤ {limit:g} ms",
                    f"{fmt(figure.median)} ms (max {fmt(figure.high)})",
                    figure.median <= limit,
                )
        for mode in ("single", "bulk"):
            ratio(
                f"{plan.producers} producers ({mode}) on one service ≥ 0.9 x on one service each",
                self._find("producers", f"{plan.producers} producers, {mode}, one service"),
                self._find(
                    "producers", f"{plan.producers} producers, {mode}, {plan.producers} services"
                ),
                0.9,
            )
        for figure in self.figures:
            if figure.workload == "http" and figure.name.startswith("HTTP worker loop"):
                label = figure.name[len("HTTP worker loop ") :]
                p99 = self._find("http", f"HTTP claim → COMPLETED, p99 {label}")
                failed = self._find("http", f"HTTP failed requests {label}")
                assert p99 is not None
                assert failed is not None
                target(
                    f"HTTP worker loop {label}: ≥ 500 jobs/s, p99 ≤ 100 ms, 0 failures",
                    f"{fmt(figure.median)} jobs/s, p99 {fmt(p99.median)} ms, "
                    f"{fmt(failed.high)} failed",
                    figure.median >= 500 and p99.median <= 100 and failed.high == 0,
                )
        ratio(
            f"{plan.http_clients} HTTP clients submitting to one service ≥ 0.9 x to one each",
            self._find("http", "HTTP submits, one service"),
            self._find("http", f"HTTP submits, {plan.http_clients} services"),
            0.9,
        )
        dramatiq = self._find("enqueue", "dramatiq")
        for per_message in (plan.per_message, 1):
            ratio(
                f"bulk submit ({_per(per_message)}) ≥ 3 x Dramatiq's enqueue rate",
                self._find("enqueue", f"topchef submit_many (bulk, {_per(per_message)})"),
                dramatiq,
                3,
            )
        for name, limit in [
            ("submit → handler starts, p99", 5.0),
            ("submit → COMPLETED in SQL, p99", 100.0),
        ]:
            figure = self._find("latency", name)
            if figure:
                target(f"{name} ≤ {limit:g} ms", f"{fmt(figure.median)} ms", figure.median <= limit)
        for figure in self.figures:
            if figure.workload == "sql" and figure.unit == "ms":
                target(f"SQL {figure.name} ≤ 5 ms", f"{fmt(figure.median)} ms", figure.median <= 5)
        finished = self._find("footprint", "Redis bytes per finished job")
        if finished:
            target(
                "Redis bytes per finished job, after the duplicate window, ≈ 0 (≤ 1 B)",
                f"{fmt(finished.median)} B",
                finished.median <= 1.0,
            )
        jumped = self._find("priority", "low jobs started after")
        if jumped:
            target(
                "a priority-9 job after 1,000 of priority 1: ≤ 1 low job (the one in hand) first",
                f"{fmt(jumped.high)} (worst of {len(jumped.values)})",
                jumped.high <= 1,
            )
        resumed = [f for f in self.figures if f.name.startswith("low jobs started before the")]
        if resumed:
            target(
                "after a resume, the priority-9 job starts first, on every pool",
                ", ".join(f"{fmt(f.high)} ({f.name.rsplit('(', 1)[1]}" for f in resumed),
                all(f.high == 0 for f in resumed),
            )
        most = self._find("exclusive", "most jobs WORKING at once (claims)")
        completed = self._find("exclusive", "jobs completed")
        if most and completed:
            target(
                "max_running=1 with three workers: never two at once, every job completes",
                f"at most {fmt(most.high)} at once; {fmt(completed.low)} of "
                f"{self.plan.exclusive_jobs} completed",
                most.high == 1 and completed.low == self.plan.exclusive_jobs,
            )
        mirrors = [f for f in self.figures if f.name.startswith("mirror peak RSS")]
        if len(mirrors) == 2:
            growth = mirrors[1].median / mirrors[0].median
            target(
                "mirror peak RSS with many jobs within 10% of that with few",
                f"{fmt(mirrors[1].median)} vs {fmt(mirrors[0].median)} MiB = {growth:.2f}x",
                growth <= 1.1,
            )
        return found


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _per(jobs_per_message: int | None) -> str:
    if jobs_per_message is None:
        return "jobs/message chosen"
    return f"{jobs_per_message} job{'s' if jobs_per_message > 1 else ''}/message"


def _label(pool: str, concurrency: int, processes: int) -> str:
    return f"{pool} {concurrency}, {processes} process{'es' if processes > 1 else ''}"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
