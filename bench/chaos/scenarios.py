"""The scenarios: each a fault schedule, run while jobs are fed at a steady pace.

Each starts its processes, feeds jobs, injects its faults (the pauses of
``settle.hold`` *are* the schedule: "kill a worker every 3 s"), and ends the
way every scenario ends (``settle.settle_and_judge``). Faults are chosen by a
seeded ``random.Random``, so a run can be repeated (``--seed``).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil
import psycopg

from bench.chaos import forgery
from bench.chaos.audit import Verdict
from bench.chaos.gateway_clients import Client, HangingUpCaller, HttpWorker
from bench.chaos.load import Feeder
from bench.chaos.plan import Plan
from bench.chaos.services import CHAOS, CHAOS_REQUEUE, SPECS, THERMOMETER
from bench.chaos.settle import hold, settle_and_judge
from bench.chaos.stack import Stack, poll_until
from bench.servers import free_port, wait_until
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.storage.tables import open_session

Scenario = Callable[[Stack, Plan, random.Random], Verdict]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        SCENARIOS[name] = function
        return function

    return register


def base_stack(stack: Stack, services: list[str], workers: int = 2) -> list[Any]:
    """Mirror, beat and ``workers`` worker processes serving ``services``, all ready."""
    stack.create_services(services)
    children = [stack.mirror(), stack.beat()]
    children += [stack.worker(services) for _ in range(workers)]
    stack.ready(*children)
    return children


def feeder(stack: Stack, plan: Plan, services: list[str], rng: random.Random, **kw: Any) -> Feeder:
    jobs = kw.pop("jobs", plan.jobs)
    seconds = kw.pop("seconds", plan.feed_seconds)
    feed = Feeder(stack, services, jobs, seconds, plan.ms, rng, **kw)
    feed.start()
    return feed


# -- 1. worker-kill ------------------------------------------------------------------


@scenario("worker-kill")
def worker_kill(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """SIGKILL a random worker every ``kill_every`` s and start a replacement."""
    services = [CHAOS, CHAOS_REQUEUE]
    base_stack(stack, services)
    feed = feeder(stack, plan, services, rng)
    kills = 0
    deadline = time.monotonic() + plan.feed_seconds
    while time.monotonic() < deadline:
        hold(stack, plan.kill_every)
        workers = stack.living("worker")
        ready = [w for w in workers if stack.is_ready(w)] or workers
        if ready:
            victim = rng.choice(ready)
            stack.kill(victim)
            stack.replace(victim)
            kills += 1
    verdict = settle_and_judge(stack, plan, [feed])
    verdict.context["workers killed"] = kills
    return verdict


# -- 2. mirror-beat-kill -------------------------------------------------------------


@scenario("mirror-beat-kill")
def mirror_beat_kill(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """SIGKILL the mirror once and beat once, mid-run, and start them again."""
    services = [CHAOS, CHAOS_REQUEUE]
    mirror, beat, *_workers = base_stack(stack, services)
    feed = feeder(stack, plan, services, rng)
    hold(stack, plan.feed_seconds / 3)
    stack.kill(mirror)
    hold(stack, plan.outage_seconds / 2)
    stack.replace(mirror)
    hold(stack, plan.feed_seconds / 3)
    stack.kill(beat)
    hold(stack, plan.outage_seconds / 2)
    stack.replace(beat)
    return settle_and_judge(stack, plan, [feed])


# -- 3. redis-restart ----------------------------------------------------------------


@scenario("redis-restart")
def redis_restart(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """SIGKILL redis-server mid-run; start it again on its port and its append-only file."""
    return _outage(stack, plan, rng, "SIGKILL redis-server", stack.redis.kill, stack.redis.start)


# -- 4. postgres-restart -------------------------------------------------------------


@scenario("postgres-restart")
def postgres_restart(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """Shut PostgreSQL down (fast) mid-run, keep it down a while, start it again."""
    return _outage(
        stack,
        plan,
        rng,
        "PostgreSQL fast shutdown",
        lambda: stack.postgres.stop("fast"),
        stack.postgres.start,
    )


def _outage(
    stack: Stack,
    plan: Plan,
    rng: random.Random,
    what: str,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> Verdict:
    """A server down for ``outage_seconds`` in the middle of a feed of jobs."""
    services = [CHAOS, CHAOS_REQUEUE]
    base_stack(stack, services)
    feed = feeder(stack, plan, services, rng)
    hold(stack, plan.feed_seconds / 3)
    stack.event(what)
    stop()
    hold(stack, plan.outage_seconds)
    start()
    stack.event(f"back after: {what}")
    hold(stack, plan.feed_seconds / 3)
    return settle_and_judge(stack, plan, [feed])


# -- 5. worker-freeze ----------------------------------------------------------------


@scenario("worker-freeze")
def worker_freeze(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """SIGSTOP a worker mid-job for longer than its lease; SIGCONT it; its measurement must stay.

    The frozen worker runs one job at a time and is alone when the long job
    starts, so that job is the only one it holds when it stops.
    """
    services = [CHAOS, CHAOS_REQUEUE]
    stack.create_services(services)
    mirror, beat = stack.mirror(), stack.beat()
    frozen = stack.worker(services, concurrency=1)
    stack.ready(mirror, beat, frozen)
    parameters = SPECS[CHAOS].parameters(plan.freeze_job_ms)
    stack.producer.submit(CHAOS, parameters)
    started = wait_until(
        lambda: stack.started_run(parameters["token"]), 30, "the long job to start"
    )
    if started.pid != frozen.pid:
        raise RuntimeError(f"the long job started in pid {started.pid}, not {frozen.name}'s")
    frozen.freeze()
    stopped_at = time.monotonic()
    stack.event(f"SIGSTOP {frozen.name} (pid {frozen.pid}) running the long job")
    stack.worker(services)  # keeps the service going while the other is frozen
    feed = feeder(stack, plan, services, rng, seconds=plan.freeze_seconds)
    hold(stack, plan.freeze_seconds - (time.monotonic() - stopped_at))
    frozen.thaw()
    stack.event(f"SIGCONT {frozen.name}")
    return settle_and_judge(stack, plan, [feed])


# -- 6. forged -----------------------------------------------------------------------


@scenario("forged")
def forged(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """Deliveries no producer made reach the queue of a served service.

    (a) a job id nobody registered; (b) registered jobs' ids with altered
    parameters (another token; an extra field and an out-of-schema value);
    (c) a Thermometer job sent to Chaos's queue, as it is and relabelled as
    Chaos's. The targets are registered without publishing (the outbox
    publishes them ``outbox_grace_seconds`` later), so the forgeries arrive first.
    """
    stack.create_services([CHAOS, THERMOMETER])
    children = [stack.mirror(), stack.beat(), stack.worker([CHAOS]), stack.worker([THERMOMETER])]
    stack.ready(*children)
    half = plan.jobs // 2
    seconds = plan.feed_seconds / 2
    first = feeder(stack, plan, [CHAOS], rng, jobs=half, seconds=seconds)
    first.finish()
    poll_until(lambda: stack.unfinished() == 0, plan.settle_seconds)

    targets = _register_unpublished(stack, [CHAOS, CHAOS, THERMOMETER, THERMOMETER])
    (a_job, _), (b_job, b_params), (c_job, c_params), (d_job, d_params) = targets
    chaos_id, thermometer_id = stack.service_ids[CHAOS], stack.service_ids[THERMOMETER]
    queue = forgery.queue_of(chaos_id)
    Forgery = forgery.Forgery
    forgeries = [
        Forgery("Thermometer job relabelled as Chaos's", queue, d_job, chaos_id, CHAOS, d_params),
        Forgery("Thermometer job on Chaos's queue", queue, c_job, thermometer_id, THERMOMETER,
                c_params),
        Forgery("unregistered job id", queue, uuid.uuid4(), chaos_id, CHAOS,
                SPECS[CHAOS].parameters(50)),
        Forgery("another token", queue, a_job, chaos_id, CHAOS, SPECS[CHAOS].parameters(50)),
        Forgery("extra field, out-of-schema value", queue, b_job, chaos_id, CHAOS,
                {**b_params, "ms": -1, "forged": True}),
    ]  # fmt: skip
    by_hand = Forgery("registered by hand", queue, uuid.uuid4(), chaos_id, CHAOS,
                      SPECS[CHAOS].parameters(50))  # fmt: skip
    with stack.redis.client() as client:
        forgery.register_by_hand(client, chaos_id, by_hand.job_id, by_hand.parameters)
    forgeries.append(by_hand)
    forgery.send(stack.redis.url, forgeries)
    stack.event(f"sent {len(forgeries)} forged deliveries")
    second = feeder(stack, plan, [CHAOS], rng, jobs=plan.jobs - half, seconds=seconds)
    second.finish()
    poll_until(lambda: stack.unfinished() == 0, plan.settle_seconds)
    rewritten = _rewrite_a_parked_job(stack)
    verdict = settle_and_judge(stack, plan, [first, second])
    verdict.context["forged deliveries sent"] = len(forgeries)
    verdict.context["parked messages rewritten"] = rewritten
    targeted = {str(f.job_id): f.label for f in forgeries}
    changed = sorted(set(targeted) & verdict.foreign)
    for job_id in changed:
        verdict.note("targets changed by a forgery", f"{job_id}: {targeted[job_id]}")
    verdict.context["targets changed by a forgery"] = len(changed)
    return verdict


def _rewrite_a_parked_job(stack: Stack, timeout: float = 20.0) -> int:
    """Hold Chaos, submit a job, rewrite its parked message and digest, resume.

    The rewrite asks for ten times the measurement under another token: a run
    of it is a run without registration in the audit, and SQL recording the
    original parameters for it would be the record lying about what ran.
    """
    stack.producer.hold_service(CHAOS, "chaos: a parked job is rewritten")
    parameters = SPECS[CHAOS].parameters(50)
    job_id = stack.producer.submit(CHAOS, parameters)

    def rewritten() -> bool:
        with stack.redis.client() as client:
            return forgery.rewrite_parked(
                client, job_id, lambda p: {**p, "token": uuid.uuid4().hex, "ms": p["ms"] * 10}
            )

    done = poll_until(rewritten, timeout)
    stack.event(f"parked job {job_id} rewritten: {done}")
    stack.producer.resume_service(CHAOS)
    return int(done)


def _register_unpublished(stack: Stack, names: list[str]) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """Jobs committed through the seed API with no publisher: beat's outbox sends them."""
    jobs = []
    with open_session(stack.postgres.url) as session:
        for name in names:
            parameters = SPECS[name].parameters(50)
            job = ServiceList(session).by_name(name).new_job(parameters)
            jobs.append((job.id, parameters))
        session.commit()
    return jobs


# -- 6b. forged-reports ---------------------------------------------------------------


@scenario("forged-reports")
def forged_reports(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """What a Redis writer can put on the state stream, while real jobs report on it.

    A COMPLETED with made-up results for a job still REGISTERED, and for a job
    running now; a check-in for a service nobody serves; then every entry that
    once stopped the mirror (an unknown status, a wrong type, 100,000-deep
    JSON, ids a year ahead and the largest id). Jobs are fed before and after:
    each must end with its own run's outcome.
    """
    stack.create_services([CHAOS, CHAOS_REQUEUE])  # ChaosRequeue: served by nobody
    children = [stack.mirror(), stack.beat(), stack.worker([CHAOS])]
    stack.ready(*children)
    chaos_id, unserved_id = stack.service_ids[CHAOS], stack.service_ids[CHAOS_REQUEUE]
    first = feeder(stack, plan, [CHAOS], rng, jobs=plan.jobs // 2, seconds=plan.feed_seconds / 2)
    sent = 0
    with stack.redis.client() as client:
        ((waiting, waiting_params),) = _register_unpublished(stack, [CHAOS])
        forgery.report(client, forgery.outcome(waiting, chaos_id, _made_up(waiting_params, 1)))
        sent += 1
        running_params = SPECS[CHAOS].parameters(3000)
        running = stack.producer.submit(CHAOS, running_params)
        if poll_until(lambda: stack.started_run(running_params["token"]), 30):
            forgery.report(client, forgery.outcome(running, chaos_id, _made_up(running_params, 2)))
            sent += 1
        else:
            stack.notes.append(f"the long job {running} never started: not forged over")
        check_in_id = client.xadd(forgery.STATE_STREAM, forgery.check_in(unserved_id))
        believed = _believed_available(stack, check_in_id, unserved_id)
        first.finish()
        poison = forgery.poison(chaos_id, waiting)
        refused_by_redis = 0
        for what, fields, entry_id in poison:
            error = forgery.report(client, fields, entry_id)
            refusal = f" (Redis refused it: {error})" if error else ""
            stack.event(f"poison entry: {what}{refusal}")
            refused_by_redis += error is not None
    second = feeder(stack, plan, [CHAOS], rng, jobs=plan.jobs - plan.jobs // 2,
                    seconds=plan.feed_seconds / 2)  # fmt: skip
    verdict = settle_and_judge(stack, plan, [first, second])
    verdict.forged_outcomes += believed
    if believed:
        verdict.note("forged outcomes recorded", f"{unserved_id}: a forged check-in was believed")
    verdict.context["forged outcomes sent"] = sent
    verdict.context["forged check-ins believed"] = believed
    verdict.context["poison entries sent"] = len(poison) - refused_by_redis
    return verdict


def _made_up(parameters: dict[str, Any], n: int) -> dict[str, Any]:
    return {"token": parameters["token"], "run": f"{forgery.FORGED_RUN}{n}", "service": CHAOS}


def _believed_available(stack: Stack, entry_id: bytes, service_id: uuid.UUID) -> int:
    """1 if SQL shows the unserved service available once the mirror has read the check-in."""

    def read_past() -> bool:
        with stack.redis.client() as client:
            groups = client.xinfo_groups(forgery.STATE_STREAM)
        return any(
            _entry_key(group["last-delivered-id"]) >= _entry_key(entry_id)
            and int(group["pending"]) == 0
            for group in groups
        )

    if not poll_until(read_past, 30):
        stack.notes.append("the mirror never read past the forged check-in")
    with psycopg.connect(stack.postgres.url, connect_timeout=10) as connection:
        row = connection.execute(
            "SELECT is_service_available FROM services WHERE id = %s", [service_id]
        ).fetchone()
    return int(bool(row and row[0]))


def _entry_key(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


# -- 7. http-disconnect --------------------------------------------------------------


@scenario("http-disconnect")
def http_disconnect(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """HTTP callers that hang up mid-claim, beside HTTP workers that behave.

    The service has no Celery worker; every job should end COMPLETED by an
    HTTP worker, so any other end is a lost job.
    """
    stack.create_services([CHAOS], timeout=plan.http_timeout)
    service_id = stack.service_ids[CHAOS]
    port = free_port()
    children = [stack.mirror(), stack.beat(), stack.api(port)]
    stack.ready(*children)
    checkin = plan.http_timeout / 3
    workers = [
        HttpWorker(port, service_id, f"rig-{i}", stack.ledger_path, checkin)
        for i in range(plan.http_workers)
    ]
    callers = [
        HangingUpCaller(port, service_id, f"claimer-{i}", stack.ledger_path, rng.random())
        for i in range(plan.http_callers)
    ]
    for thread in [*workers, *callers]:
        thread.start()
    client = Client(port)

    def submit_over_http(service: str, parameters: dict[str, Any]) -> uuid.UUID:
        status, body = client.call(
            "POST", f"/services/{service_id}/jobs", {"parameters": parameters}
        )
        if status != 201:
            raise RuntimeError(f"POST /services/{service_id}/jobs answered {status}: {body}")
        return uuid.UUID(body["data"]["id"])

    half = plan.jobs // 2
    feeds = [
        feeder(stack, plan, [CHAOS], rng, jobs=half),
        feeder(stack, plan, [CHAOS], rng, jobs=plan.jobs - half, submit=submit_over_http),
    ]
    for feed in feeds:
        feed.finish()
    for caller in callers:
        caller.stop()
    # The callers are gone; the workers drain the queue and then stop checking in,
    # so that the leases of jobs claimed for nobody can lapse.
    poll_until(lambda: stack.waiting() == 0, plan.settle_seconds)
    for worker in workers:
        worker.stop()
    for thread in [*workers, *callers]:
        thread.join(30)
    verdict = settle_and_judge(stack, plan, feeds, lost_unless_completed=True)
    verdict.context["claims hung up on"] = sum(c.hung_up for c in callers)
    verdict.context["claims answered in time"] = sum(c.answered for c in callers)
    verdict.context["completions refused"] = sum(w.refused for w in workers)
    taken = _taken_by(stack, "http:claimer-")
    verdict.context["ended ERROR, taken by a hung-up caller"] = len(taken)
    # A job claimed while its caller was still waiting, whose answer was on its
    # way as the caller hung up, cannot be told apart by any server from one the
    # caller received: it is held, and the policy decides. Only a job claimed
    # *after* the caller hung up is the gateway's loss.
    in_flight = [
        job_id
        for job_id, worker, claimed_at in taken
        if job_id in verdict.lost_ids
        and any(c.worker == worker and c.was_waiting(claimed_at) for c in callers)
    ]
    verdict.lost -= len(in_flight)
    verdict.lost_ids = [job_id for job_id in verdict.lost_ids if job_id not in in_flight]
    if "lost" in verdict.examples:
        verdict.examples["lost"] = [
            e for e in verdict.examples["lost"] if e.split(" ", 1)[0] not in in_flight
        ]
    verdict.context["answers in flight as their caller hung up"] = len(in_flight)
    return verdict


def _taken_by(stack: Stack, prefix: str) -> list[tuple[str, str, float]]:
    """ERROR jobs claimed by callers named ``prefix…``: (id, caller, claimed at)."""
    with psycopg.connect(stack.postgres.url) as connection:
        rows = connection.execute(
            "SELECT id::text, worker, extract(epoch FROM date_started) FROM jobs"
            " WHERE status = 'ERROR' AND worker LIKE %s AND date_started IS NOT NULL",
            [prefix + "%"],
        ).fetchall()
    return [(job_id, worker.removeprefix("http:"), float(at)) for job_id, worker, at in rows]


# -- 8. worker-before-service --------------------------------------------------------


@scenario("worker-before-service")
def worker_before_service(stack: Stack, plan: Plan, rng: random.Random) -> Verdict:
    """Workers started before their services exist; then the services are created.

    One service is created by a producer (which publishes its descriptor), the
    other through the seed API with no publisher at all (only beat's directory
    sync tells workers of it). A worker that exits instead of waiting is not
    restarted: its jobs are the scenario's lost ones.
    """
    stack.mirror()
    stack.beat()
    early = [stack.worker([CHAOS]), stack.worker([CHAOS_REQUEUE])]
    for worker in early:
        wait_until(
            lambda w=worker: not w.alive() or _talks_to(w.pid, stack.redis.port),
            60,
            f"{worker.name} to look for its service",
        )
    stack.create_services([CHAOS])
    seeded = SPECS[CHAOS_REQUEUE]
    with open_session(stack.postgres.url) as session:
        service = Service.new(
            seeded.name,
            "chaos instrument created through the seed API",
            seeded.parameters_schema,
            seeded.results_schema,
            session,
            **seeded.options(30.0),
        )
        session.commit()
        stack.service_ids[seeded.name] = service.id
    feed = feeder(stack, plan, [CHAOS, CHAOS_REQUEUE], rng, seconds=plan.feed_seconds / 2)
    verdict = settle_and_judge(
        stack,
        plan,
        [feed],
        revive=False,
        futile=lambda: not feed.is_alive() and not stack.living("worker"),
    )
    exits = stack.exited_on_their_own("worker")
    verdict.context["workers that exited"] = len(exits)
    for child in exits:
        last = [line for line in child.log().splitlines() if line.strip()][-1:] or ["(no output)"]
        stack.notes.append(f"{child.name} exited (code {child.returncode}): {last[0][:200]}")
    return verdict


def _talks_to(pid: int, port: int) -> bool:
    """Whether the process has a TCP connection to ``port`` (it has reached Redis)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.raddr and c.raddr.port == port for c in connections)
