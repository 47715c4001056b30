"""The verdict on one scenario: the ledger held up against what SQL says happened.

SQL is read with plain psycopg (not through ``broker``), so that a bug in the
broker's models cannot hide itself. The counts that matter:

- **lost**: jobs that never reached an end (COMPLETED, ERROR, CANCELLED);
- **run twice**: jobs of a ``fail``-policy service whose instrument started
  more than once with the job's own parameters;
- **run without registration**: instrument starts whose (service, parameters)
  is no job's (service, parameters): forged, altered or misrouted deliveries;
- **outcomes dropped**: instrument runs of registered jobs that returned, but
  whose results the broker kept nowhere;
- **forged outcomes recorded**: jobs with an outcome kept anywhere that a
  forger made up (its ``run`` starts with ``FORGED_RUN``), and forged
  check-ins SQL believed (counted by the scenario that sends them);
- **mirror exits**: state mirrors that exited on their own (not killed or
  stopped by the harness): an entry must never stop the mirror.

Where the broker keeps outcomes is a list, ``OUTCOME_STORES``, so that a new
place (``job_attempts``, for an attempt superseded by a later one) is one
function more, found only if its table exists.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.chaos.ledger import Line, canonical, key

TERMINAL = ("COMPLETED", "ERROR", "CANCELLED")
#: The mark a forger's made-up results carry (``bench.chaos.forgery.FORGED_RUN``).
FORGED_RUN = "forged-"
#: A run that returned this shortly before the harness SIGKILLed its process
#: was cut off while reporting: nothing can keep what was never sent.
CUT_OFF_SECONDS = 1.0


@dataclass(frozen=True)
class JobRecord:
    id: str
    service: str
    policy: str
    status: str
    parameters: Any
    results: Any
    detail: str | None
    attempts: int
    worker: str | None

    @property
    def key(self) -> tuple[str, str]:
        return key(self.service, self.parameters)


def read_jobs(connection: psycopg.Connection[Any]) -> list[JobRecord]:
    rows = connection.execute(
        "SELECT j.id::text AS id, s.name AS service, s.worker_loss_policy AS policy, j.status,"
        " j.parameters, j.results, j.detail, j.attempts, j.worker"
        " FROM jobs j JOIN services s ON s.id = j.service_id"
    ).fetchall()
    return [JobRecord(**row) for row in rows]


def _table_exists(connection: psycopg.Connection[Any], table: str) -> bool:
    found = connection.execute("SELECT to_regclass(%s) IS NOT NULL AS found", [table]).fetchone()
    return bool(found and found["found"])


def results_on_jobs(connection: psycopg.Connection[Any]) -> list[tuple[str, Any]] | None:
    """The outcome SQL shows for each job."""
    rows = connection.execute("SELECT id::text AS id, results FROM jobs WHERE results IS NOT NULL")
    return [(row["id"], row["results"]) for row in rows]


def results_of_attempts(connection: psycopg.Connection[Any]) -> list[tuple[str, Any]] | None:
    """Outcomes kept per attempt (``job_attempts``), e.g. a superseded attempt's late one."""
    if not _table_exists(connection, "job_attempts"):
        return None
    rows = connection.execute(
        "SELECT job_id::text AS id, results FROM job_attempts WHERE results IS NOT NULL"
    )
    return [(row["id"], row["results"]) for row in rows]


#: Every place the broker keeps a job's outcome: (job id, results) pairs, or
#: None where this database has no such place.
OutcomeStore = Callable[[psycopg.Connection[Any]], list[tuple[str, Any]] | None]
OUTCOME_STORES: tuple[OutcomeStore, ...] = (results_on_jobs, results_of_attempts)


@dataclass
class Snapshot:
    """What SQL holds at the end of a scenario."""

    jobs: list[JobRecord]
    #: job id → canonical results kept anywhere (``OUTCOME_STORES``).
    kept: dict[str, set[str]]
    #: The stores this database has, by function name.
    stores: list[str]

    @classmethod
    def read(cls, url: str) -> Snapshot:
        with psycopg.connect(url, row_factory=dict_row, connect_timeout=10) as connection:
            jobs = read_jobs(connection)
            kept: dict[str, set[str]] = defaultdict(set)
            stores = []
            for store in OUTCOME_STORES:
                found = store(connection)
                if found is None:
                    continue
                stores.append(store.__name__)
                for job_id, results in found:
                    kept[job_id].add(canonical(_json(results)))
        return cls(jobs, dict(kept), stores)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True)
class Kill:
    """A process the harness SIGKILLed, and when (``time.time()``, as the ledger stamps)."""

    pid: int
    at: float


@dataclass
class Verdict:
    """One scenario's counts, and the context that explains them."""

    submitted: int = 0
    terminal: int = 0
    lost: int = 0
    run_twice: int = 0
    unregistered: int = 0
    dropped: int = 0
    forged_outcomes: int = 0
    mirror_exits: int = 0
    context: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: Where the database keeps outcomes (``OUTCOME_STORES`` present).
    stores: list[str] = field(default_factory=list)
    #: Ids of COMPLETED jobs whose results came from no run of their own.
    foreign: set[str] = field(default_factory=set)
    #: Ids of the lost jobs (``examples`` shows a few).
    lost_ids: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return (
            self.lost
            + self.run_twice
            + self.unregistered
            + self.dropped
            + self.forged_outcomes
            + self.mirror_exits
        )

    def note(self, name: str, example: str) -> None:
        listed = self.examples.setdefault(name, [])
        if len(listed) < 5:
            listed.append(example)


def judge(
    snapshot: Snapshot,
    ledger: list[Line],
    kills: Iterable[Kill] = (),
    *,
    lost_unless_completed: bool = False,
) -> Verdict:
    """Compare the ledger with SQL.

    ``lost_unless_completed``: every job ought to end COMPLETED (no instrument
    fails in that scenario), so one that ended otherwise was lost too.
    """
    verdict = Verdict()
    jobs = snapshot.jobs
    by_key: dict[tuple[str, str], JobRecord] = {job.key: job for job in jobs}
    starts: dict[tuple[str, str], list[Line]] = defaultdict(list)
    ends = [line for line in ledger if line.event == "end"]
    for line in ledger:
        if line.event == "start":
            starts[line.key].append(line)
    run_of: dict[str, Line] = {line.run: line for line in ledger if line.event == "start"}

    verdict.submitted = len(jobs)
    statuses = Counter(job.status for job in jobs)
    verdict.terminal = sum(statuses[status] for status in TERMINAL)
    for job in jobs:
        lost = job.status not in TERMINAL or (lost_unless_completed and job.status != "COMPLETED")
        if lost:
            verdict.lost += 1
            verdict.lost_ids.append(job.id)
        if job.policy == "fail" and len(starts.get(job.key, [])) > 1:
            verdict.run_twice += 1
            verdict.note("run twice", f"{job.id} {job.service} started {len(starts[job.key])}x")

    for line_key, lines in starts.items():
        if line_key not in by_key:
            verdict.unregistered += len(lines)
            verdict.note("unregistered", f"{line_key[0]} {line_key[1]}")

    kill_list = list(kills)
    cut_off = 0
    for line in ends:
        job = by_key.get(line.key)
        if job is None:
            continue  # an unregistered run: counted above
        if canonical(line.results) in snapshot.kept.get(job.id, set()):
            continue
        if any(k.pid == line.pid and 0 <= k.at - line.t <= CUT_OFF_SECONDS for k in kill_list):
            cut_off += 1
            continue
        verdict.dropped += 1
        ended = f"{job.status} ({job.detail})" if job.detail else job.status
        verdict.note(
            "dropped",
            f"{job.id} {job.service}: the run in pid {line.pid} returned, its results are"
            f" kept nowhere; the job ended {ended}",
        )

    marker = f'"run":"{FORGED_RUN}'
    for job_id, kept in snapshot.kept.items():
        if any(marker in results for results in kept):
            verdict.forged_outcomes += 1
            verdict.note("forged outcomes recorded", f"{job_id}: a forger's results are kept")

    # Context: how the jobs ended, and what else the ledger shows.
    for status in ("COMPLETED", "ERROR", "CANCELLED", "REGISTERED", "WORKING"):
        if statuses[status] or status in ("COMPLETED", "ERROR"):
            verdict.context[status.lower()] = statuses[status]
    verdict.context["error: worker lost"] = sum(
        1 for job in jobs if job.status == "ERROR" and "worker lost" in (job.detail or "")
    )
    verdict.context["instrument starts"] = sum(len(lines) for lines in starts.values())
    verdict.context["requeue jobs rerun"] = sum(
        1 for job in jobs if job.policy == "requeue" and len(starts.get(job.key, [])) > 1
    )
    verdict.context["cut off by a kill"] = cut_off
    verdict.foreign = _foreign_outcomes(jobs, run_of, verdict)
    verdict.context["foreign outcomes"] = len(verdict.foreign)
    return verdict


def _foreign_outcomes(jobs: list[JobRecord], run_of: dict[str, Line], verdict: Verdict) -> set[str]:
    """COMPLETED jobs whose results came from no run of that job (a forged or misrouted one).

    Results name the run that produced them (``run``), so each can be traced
    to the ledger's ``start`` and its (service, parameters) compared with the job's.
    """
    foreign = set()
    for job in jobs:
        if job.status != "COMPLETED":
            continue
        results = _json(job.results) or {}
        run = run_of.get(str(results.get("run", ""))) if isinstance(results, dict) else None
        if run is None or run.key != job.key:
            foreign.add(job.id)
            source = "no ledger run" if run is None else f"a run of {run.service} {run.params}"
            verdict.note("foreign outcomes", f"{job.id} {job.service}: results from {source}")
    return foreign
