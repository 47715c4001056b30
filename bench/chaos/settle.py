"""The end every scenario shares: settle, stop, judge.

After its faults, a scenario lets every process run healthy until every job
has ended (or ``settle_seconds`` pass), stops the workers cleanly so that what
they ran is reported, lets the mirror apply it, and only then holds the ledger
against SQL (``bench.chaos.audit``). A lost job is shown with where its
message is in Redis (``bench.chaos.forensics``): the first question it raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from bench.chaos import forensics
from bench.chaos.audit import Snapshot, Verdict, judge
from bench.chaos.load import Feeder
from bench.chaos.plan import Plan
from bench.chaos.stack import Stack, poll_until
from broker.messaging import keys, priorities


def hold(stack: Stack, seconds: float, revive: bool = True) -> None:
    """Let ``seconds`` of the fault schedule pass, restarting what exits on its own."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if revive:
            stack.revive()
        time.sleep(min(0.2, left))


def settle_and_judge(
    stack: Stack,
    plan: Plan,
    feeders: list[Feeder],
    *,
    revive: bool = True,
    lost_unless_completed: bool = False,
    futile: Callable[[], bool] | None = None,
) -> Verdict:
    """Settle, stop, and judge."""
    for feeder in feeders:
        feeder.finish()

    def settled() -> bool:
        if revive:
            stack.revive()
        return stack.unfinished() == 0 or bool(futile and futile())

    if not poll_until(settled, plan.settle_seconds) or stack.unfinished() != 0:
        stack.notes.append(
            f"not every job ended within the {plan.settle_seconds:g} s settle period"
        )
    # Workers first, cleanly: a worker reports what it ran before its task returns,
    # and a warm shutdown waits for its tasks. Once the mirror has applied all of
    # that, nothing the rest could still do is audited: they may simply be killed.
    stack.stop([c for c in stack.children if stack.role(c) == "worker"])
    if stack.living("mirror"):
        _drain(stack)
    stack.stop(stack.children, clean=False)
    snapshot = Snapshot.read(stack.postgres.url)
    verdict = judge(
        snapshot, stack.ledger(), stack.kills, lost_unless_completed=lost_unless_completed
    )
    verdict.stores = snapshot.stores
    verdict.mirror_exits = len(stack.exited_on_their_own("mirror"))
    for mirror in stack.exited_on_their_own("mirror"):
        verdict.note("mirror exits", f"{mirror.name} exited with {mirror.returncode}")
    _explain_lost(stack, snapshot, verdict)
    for feeder in feeders:
        for name, value in feeder.summary().items():
            verdict.context[name] = verdict.context.get(name, 0) + value
    return verdict


def _drain(stack: Stack, timeout: float = 20.0) -> None:
    """Until the mirror has applied every state entry, or only stuck ones are left."""

    def state() -> forensics.StreamState | None:
        try:
            with stack.redis.client() as client:
                return forensics.state_stream(client)
        except redis.RedisError:
            return None

    def drained_or_stuck() -> bool:
        now = state()
        return now is not None and (now.length == 0 or now.stuck)

    poll_until(drained_or_stuck, timeout)
    try:
        with stack.redis.client() as client:
            left = forensics.state_stream(client, describe=True)
    except redis.RedisError as error:
        stack.notes.append(f"the state stream is unreadable: {error}")
        return
    if left.length:
        stack.notes.append(left.describe())


def _explain_lost(stack: Stack, snapshot: Snapshot, verdict: Verdict) -> None:
    """A few lost jobs, each with its last status and where its message is in Redis."""
    shown = verdict.lost_ids[:5]
    if not shown:
        return
    jobs = {job.id: job for job in snapshot.jobs}
    queues = [
        queue_list
        for service_id in stack.service_ids.values()
        for queue_list in priorities.queue_lists(keys.service_queue(service_id))
    ]
    try:
        with stack.redis.client() as client:
            places = forensics.whereabouts(client, shown, queues)
    except redis.RedisError as error:
        places = dict.fromkeys(shown, f"Redis unreadable ({error})")
    for job_id in shown:
        job = jobs[job_id]
        detail = f" ({job.detail})" if job.detail else ""
        verdict.note("lost", f"{job_id} {job.service} {job.status}{detail}; {places[job_id]}")
