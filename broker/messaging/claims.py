"""Who may run a job, decided atomically in Redis.

Every job has a claim hash (``keys.claim``) that one Lua script at a time may
change. The publisher opens it with the job's registration — its service and
the digest of its parameters (``register``), in the same round trip as the job's
message — and from then on a worker's claim, a cancel, beat's recovery and the
end of a run each change it in one step. Claims are read and written here,
through ``Claims``; its scripts are files of their own (``broker/messaging/lua``),
each headed by the KEYS and ARGV it takes. That gives two guarantees:

- **only registered work runs**: a delivery is refused, without running, unless
  it names a registered job, for that job's own service, with exactly the
  registered parameters (a message forged with ``celery call``, altered on the
  way, or put on another service's queue);
- **each run once**: only the delivery that wins the claim runs the handler, so
  the duplicates of at-least-once delivery are harmless (an outbox re-publish,
  a visibility-timeout redelivery, a second beat).

A running job also has a lease (``keys.lease``) with a TTL that its worker
renews; when the worker dies, the lease lapses on Redis's clock (not a lab
machine's), and beat applies the service's worker-loss policy.

Claim states: none yet (registered only), ``running`` (attempt n, by worker w),
``done``, ``cancelled``, ``requeued`` (beat handed attempt n+1 to the queue),
``retrying`` (the run asked for attempt n+1, which waits for its time),
``lost`` (failed by beat). A running claim may also carry an abort request
(``abort_at``/``abort_by``/``abort_reason``), which its worker reads.

A service may not start a job now while it is held, or while as many of its
jobs run as its ``max_running`` allows: the claim then *parks* the delivery
(the claim's ``parked`` field, beside its state, which stays what it was)
instead of taking it. The delivery's message is kept in the service's parked
set, ordered by priority then arrival, and its Celery message acknowledged, so
nothing waits in a worker and nothing polls. Whatever ends a run frees its slot
and sends the next parked job back to the end of its queue that workers take
from first, in the same script (``lua/slots.lua``, prepended to each script
that starts, ends or gives back a run); a resume, and beat every tick, let go
as many as the service's slots allow (``release_parked``).

A run that ends after beat presumed its worker lost still reports its outcome
(``finish`` says how late it is); nothing a worker measured is dropped here,
the SQL record decides where it belongs.

Every script that appends to the state stream appends before it changes
anything else, so a refused append (a forged entry id exhausted the stream)
changes nothing, and the call is made again once the mirror has restamped
the stream (``broker.mirror.dead_letters``), for up to ``EXHAUSTED_WAIT_SECONDS``:
a run's outcome waits for the stream, it is not lost to it.

A claim lives as long as its job may still run. Once SQL has recorded the end,
``settle`` leaves it ``duplicate_window`` seconds (``Settings``) to refuse late
duplicates of the message; after that the job costs Redis nothing, and a
duplicate that arrives later still finds no registration and is refused.
"""

from __future__ import annotations

import copy
import enum
import importlib.resources
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis
from redis.commands.core import Script

from broker.messaging import keys, priorities
from broker.messaging.connections import text
from broker.messaging.messages import StateMessage
from broker.settings import Settings
from broker.trust.credentials import Credential

#: How long a finished job's claim is kept until SQL has recorded the end and
#: ``settle`` shortens it: a backstop for a mirror that is down for days.
CLAIM_TTL_SECONDS = 7 * 24 * 3600
#: Settle's default window when the caller has no settings at hand.
DEFAULT_WINDOW_SECONDS = 120.0

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a call that appends to the state stream waits for the mirror to
#: restamp a stream whose last id was forged to the largest (it does so within
#: a reading, or ``dead_letters.CHECK_SECONDS``), before it fails as an outage would.
EXHAUSTED_WAIT_SECONDS = 15.0
#: What Redis answers an append to such a stream, or to one written over.
_EXHAUSTED = ("exhausted the last possible ID", "WRONGTYPE")

#: Where the scripts below live, one ``.lua`` file each, shipped as package data.
#: Each file's header names its KEYS and ARGV, one per line, and what it returns.
LUA_SCRIPTS = importlib.resources.files("broker.messaging") / "lua"


def _lua(name: str) -> str:
    """Read a script once, at import: a missing file fails the import, not a job's claim."""
    return (LUA_SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")


def lua_with_slots(name: str, calling: Sequence[str] = ()) -> str:
    """A script that starts, ends or gives back a run, with ``slots.lua``'s functions before it.

    A script that ends a run another way calls ``free_slot(running, parked,
    control, claim)`` with the service's ``keys.slots`` as it ends, so that the
    next parked job of the service may start. The scripts ``calling`` names
    come between, each as a function its own name calls (``_as_function``).
    """
    return _lua("slots") + "\n" + "".join(map(_as_function, calling)) + _lua(name)


def _as_function(name: str) -> str:
    """A script's body as the Lua function ``name(KEYS, ARGV)``, for a script that calls it.

    Its parameters shadow the globals the body reads, so the body runs unchanged
    on the slices of KEYS and ARGV it is given.
    """
    return f"local function {name}(KEYS, ARGV)\n{_lua(name)}\nend\n"


# One call registers a whole chunk: a command per job costs the publisher more
# than the rest of a bulk submit's Redis work.
_REGISTER = _lua("register")
# A delivery's claim, checking in the same step that it is registered work:
# another script could change the claim between a separate check and the take.
_CLAIM = lua_with_slots("claim")
# A run's end, on time or late: nothing a worker measured is dropped here, the
# SQL record decides where a late outcome belongs.
_FINISH = lua_with_slots("finish")
# A batch's run ends and its next job is claimed in one round trip, where two
# would be half of what a packed no-op job costs its worker.
_FINISH_THEN_CLAIM = lua_with_slots("finish_then_claim", calling=("finish", "claim"))
# A cancel and a claim exclude each other only if both change the claim in one step.
_CANCEL = _lua("cancel")
# Beat's decision on a job whose lease may have lapsed, read and written at
# once so that two beats cannot both re-queue it.
_RECOVER = lua_with_slots("recover")
# The holder gives a claim back: the job is registered work again, unclaimed.
_RELEASE = lua_with_slots("release")
# Parked jobs let go as far as the service's slots allow (resume, beat).
_RELEASE_PARKED = lua_with_slots("release_parked")
# An abort request lands on a running claim only, once, stamped on Redis's clock.
_ABORT = _lua("abort")
# A run that asked for a retry ends (freeing its slot), and its claim waits for the next attempt.
_RETRY = lua_with_slots("retry")
# Shortens only claims that ended: a job running or re-queued since keeps its claim.
_SETTLE = _lua("settle")
# The HTTP gateway's check-ins renew the leases of the jobs still running over
# HTTP and drop the others from the service's set, in one step, so a job claimed
# again meanwhile cannot lose its membership. Its 'http:' is
# ``broker.gateway.dispatch.HTTP_PREFIX``.
_RENEW_HTTP = _lua("renew_http")
# Every service's queue depth and parked jobs, for a metrics scrape, in one command.
_DEPTHS = _lua("depths")
# The services with a slot in use or a job parked, for beat, in one command.
_OCCUPIED = _lua("occupied")
# Who took each take of the claims a reading's WORKING reports name, for the mirror.
_TAKERS = _lua("takers")


@dataclass(frozen=True, slots=True)
class _Scripts:
    """The scripts registered with one client, shared by every ``Claims`` derived from it.

    Registering hashes the script; a gateway that needs a ``Claims`` per
    service timeout should not do that on every request.
    """

    register: Script
    claim: Script
    finish: Script
    finish_then_claim: Script
    cancel: Script
    recover: Script
    release: Script
    settle: Script
    renew_http: Script
    abort: Script
    retry: Script
    release_parked: Script
    depths: Script
    occupied: Script
    takers: Script

    @classmethod
    def of(cls, client: redis.Redis) -> _Scripts:
        return cls(
            register=client.register_script(_REGISTER),
            claim=client.register_script(_CLAIM),
            finish=client.register_script(_FINISH),
            finish_then_claim=client.register_script(_FINISH_THEN_CLAIM),
            cancel=client.register_script(_CANCEL),
            recover=client.register_script(_RECOVER),
            release=client.register_script(_RELEASE),
            settle=client.register_script(_SETTLE),
            renew_http=client.register_script(_RENEW_HTTP),
            abort=client.register_script(_ABORT),
            retry=client.register_script(_RETRY),
            release_parked=client.register_script(_RELEASE_PARKED),
            depths=client.register_script(_DEPTHS),
            occupied=client.register_script(_OCCUPIED),
            takers=client.register_script(_TAKERS),
        )


class ClaimResult(enum.Enum):
    """What a delivery of a job message found when it tried to claim the job."""

    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    RETRYING = "retrying"
    LOST = "lost"
    #: The service may not start a job now (held, or at its ``max_running``):
    #: the delivery's message waits in the parked set; its Celery message is done.
    PARKED = "parked"
    #: The same, but the caller must first hand the delivery's message over (``Parking``).
    MUST_PARK = "must_park"
    #: The same, for a caller that read the job from SQL (HTTP): nothing changed.
    DEFERRED = "deferred"
    #: Refusals: the delivery does not match what a producer registered.
    UNREGISTERED = "unregistered"
    MISROUTED = "misrouted"
    ALTERED = "altered"

    @property
    def refused(self) -> bool:
        """Whether the delivery is not registered work (as opposed to a harmless duplicate)."""
        return self in REFUSALS


REFUSALS = frozenset({ClaimResult.UNREGISTERED, ClaimResult.MISROUTED, ClaimResult.ALTERED})


@dataclass(frozen=True, slots=True)
class Parking:
    """A delivery's message as it would go back to its queue, should its claim park it."""

    message: str
    queue_list: str
    priority: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """Beat's verdict on a WORKING job: ``alive``, ``requeue``, ``fail``, ``exhausted``…"""

    verdict: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Finish:
    """How a run's report landed: on time, or how late (see ``_FINISH``)."""

    lateness: str
    #: When beat presumed the worker lost (Redis ms), for ``lost`` and ``requeued``.
    presumed_lost_ms: int | None = None
    #: The abort that kept a run asked ``unless_aborted`` from ending (it has not).
    abort: AbortRequest | None = None

    @property
    def on_time(self) -> bool:
        return not self.lateness


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A run's outcome, as ``finish`` reports it."""

    job_id: uuid.UUID
    attempt: int
    final: StateMessage
    #: See ``finish``: a handler that never learnt of an abort asks for it.
    unless_aborted: bool = False


@dataclass(frozen=True, slots=True)
class AbortRequest:
    """An abort asked of a running job: who asked, why, and when (Redis ms)."""

    at_ms: int
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class Holder:
    """A job's claim as Redis has it now: who runs which attempt, if anyone."""

    state: str | None
    attempt: int
    worker: str | None


class Claims:
    """The Lua scripts above and the reads of claims beside them, bound to one Redis client."""

    def __init__(
        self,
        client: redis.Redis,
        lease_seconds: float = 30.0,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        credential: Credential | None = None,
    ) -> None:
        self._client = client
        self.lease_ms = _lease_ms(lease_seconds)
        self.window_seconds = max(1, int(window_seconds + 0.999))
        self._scripts = _Scripts.of(client)
        #: Signs the reports these claims append (``broker.trust.reports``); without
        #: one they go unsigned, and the mirror refuses them.
        self.credential = credential

    @classmethod
    def configured(
        cls, client: redis.Redis, settings: Settings, credential: Credential | None = None
    ) -> Claims:
        """Claims on ``settings``' lease and duplicate window: how every process builds them.

        One place, so that a worker, the mirror, beat, a producer and the HTTP
        gateway keep a finished job's claim for the same window. A process that
        reports (a worker, the HTTP gateway) passes the ``credential`` it signs with.
        """
        return cls(client, settings.lease_seconds, settings.duplicate_window, credential)

    def signed_by(self, credential: Credential) -> Claims:
        """The same claims, signing what they report with ``credential``."""
        signed = copy.copy(self)
        signed.credential = credential
        return signed

    def _signed(self, entry: StateMessage) -> list[str]:
        """An entry's report, its credential's name and its MAC, as a script's ARGV."""
        report = entry.to_fields()["m"]
        if self.credential is None:
            return [report, "", ""]
        return self.credential.args(report)

    def leased(self, lease_seconds: float) -> Claims:
        """The same claims with another lease (an HTTP claim's is its service's timeout).

        The scripts stay registered once, with this client.
        """
        leased = copy.copy(self)
        leased.lease_ms = _lease_ms(lease_seconds)
        return leased

    def register(
        self,
        pipeline: redis.client.Pipeline,
        service_id: uuid.UUID,
        jobs: Sequence[tuple[uuid.UUID, str]],
    ) -> None:
        """Record jobs (id, parameters digest) of one service as registered work.

        Queued in ``pipeline``, the one that carries their messages, ahead of
        them. Idempotent: a re-publish records the same registration, and a
        claim taken since keeps its state.
        """
        if jobs:
            self._scripts.register(
                keys=[keys.claim(job_id) for job_id, _ in jobs],
                args=[str(service_id), *(digest for _, digest in jobs)],
                client=pipeline,
            )

    def claim(
        self,
        job_id: uuid.UUID,
        attempt: int,
        worker: str,
        working: StateMessage,
        digest: str = "",
        *,
        trusted: bool = False,
        parking: Parking | None = None,
    ) -> ClaimResult:
        """Take the job for this delivery and report it WORKING, or say why not.

        ``digest`` is that of the delivery's parameters; a ``trusted`` caller
        (the HTTP gateway, which read the job from SQL) passes none, and may
        register a job whose message has not been published yet.

        A delivery the service may not start now is ``MUST_PARK`` without
        ``parking``: the caller encodes its message only then, so the common
        path pays nothing, and calls again with it (``PARKED``).
        """
        claim_keys, args = self._claim_call(
            job_id, attempt, worker, working, digest, trusted, parking
        )
        return ClaimResult(
            text(_appending(lambda: self._scripts.claim(keys=claim_keys, args=args)))
        )

    def _claim_call(
        self,
        job_id: uuid.UUID,
        attempt: int,
        worker: str,
        working: StateMessage,
        digest: str,
        trusted: bool,
        parking: Parking | None,
    ) -> tuple[list[str], list[str | int | float]]:
        """claim.lua's KEYS and ARGV, as its header names them."""
        report, by, signature = self._signed(working)
        return [
            keys.claim(job_id),
            keys.lease(job_id),
            keys.STATE_STREAM,
            *keys.slots(working.service_id),
            keys.parked_arrivals(working.service_id),
        ], [
            attempt,
            worker,
            self.lease_ms,
            report,
            str(working.service_id),
            digest,
            "1" if trusted else "0",
            self.window_seconds,
            parking.message if parking else "",
            parking.queue_list if parking else "",
            parking.priority if parking else 0,
            by,
            signature,
        ]

    def finish(
        self, job_id: uuid.UUID, attempt: int, final: StateMessage, unless_aborted: bool = False
    ) -> Finish:
        """Report the run's outcome; say how late it is if beat gave the job up meanwhile.

        ``unless_aborted`` is for a handler that never learnt of an abort: if
        one was asked, the run is left running and the abort returned, so that
        the outcome can say it was ignored. The check costs no round trip of
        its own, where reading the request first would cost one per run.
        """
        finish_keys, args = self._finish_call(job_id, attempt, final, unless_aborted)
        return _finished(_appending(lambda: self._scripts.finish(keys=finish_keys, args=args)))

    def finish_then_claim(
        self,
        ended: RunEnd,
        job_id: uuid.UUID,
        attempt: int,
        worker: str,
        working: StateMessage,
        digest: str,
    ) -> tuple[Finish, ClaimResult | None]:
        """``finish`` one run, then ``claim`` the next job for this worker, in one round trip.

        A batch's worker ends each run and starts the next at once, and the two
        round trips were most of what a short packed job cost. The claim is
        None when the finish found an abort its run never learnt of: that run
        has not ended (see ``finish``), so the caller reports it again and
        then claims. A delivery that must park is ``MUST_PARK``, as from ``claim``.
        """
        finish_keys, finish_args = self._finish_call(
            ended.job_id, ended.attempt, ended.final, ended.unless_aborted
        )
        claim_keys, claim_args = self._claim_call(
            job_id, attempt, worker, working, digest, False, None
        )
        answer, claimed = _appending(
            lambda: self._scripts.finish_then_claim(
                keys=finish_keys + claim_keys, args=finish_args + claim_args
            )
        )
        result = text(claimed)
        return _finished(answer), ClaimResult(result) if result else None

    def release(
        self, job_id: uuid.UUID, attempt: int, worker: str, entry: StateMessage
    ) -> int | None:
        """Give back a claim ``worker`` holds but will not run: the take given back, or None.

        Every take of a claim is numbered from 1 (0: a claim taken before
        takes were numbered); SQL keeps the number of the last one given back
        (``lifecycle.release``), so that the mirror's copy of an older take's
        reports moves nothing.
        """
        released = _appending(
            lambda: self._scripts.release(
                keys=[
                    keys.claim(job_id),
                    keys.lease(job_id),
                    keys.STATE_STREAM,
                    *keys.slots(entry.service_id),
                ],
                args=[attempt, worker, *self._signed(entry)],
            )
        )
        take = int(released)
        return None if take < 0 else take

    def abort(self, job_id: uuid.UUID, reason: str, by: str) -> tuple[str, int | None]:
        """Ask a running job to stop: ``('requested' | 'already', at ms)``, or (its state, None)."""
        outcome, at = self._scripts.abort(keys=[keys.claim(job_id)], args=[reason, by])
        at_text = text(at)
        return text(outcome), int(at_text) if at_text else None

    def abort_request(self, job_id: uuid.UUID) -> AbortRequest | None:
        """The abort asked of the job's run, if any (one HMGET: cheap enough to poll)."""
        at, by, reason = self._client.hmget(
            keys.claim(job_id), ["abort_at", "abort_by", "abort_reason"]
        )
        return None if at is None else _abort_request(at, by, reason)

    def retry(self, job_id: uuid.UUID, attempt: int, entry: StateMessage) -> str:
        """End a run that asked for a retry; 'retrying', or the state of a claim it lost."""
        return text(
            _appending(
                lambda: self._scripts.retry(
                    keys=[
                        keys.claim(job_id),
                        keys.lease(job_id),
                        keys.STATE_STREAM,
                        *keys.slots(entry.service_id),
                    ],
                    args=[attempt, *self._signed(entry)],
                )
            )
        )

    def renew(self, leases: Mapping[str, str]) -> None:
        """Extend leases this process holds (lease key → holder): its jobs' and batches'."""
        if not leases:
            return
        pipeline = self._client.pipeline(transaction=False)
        for key, worker in leases.items():
            pipeline.set(key, worker, px=self.lease_ms)
        pipeline.execute()

    def cancel(self, job_id: uuid.UUID) -> ClaimResult:
        """Forbid every delivery of the job from running it, unless one already has."""
        return ClaimResult(
            text(self._scripts.cancel(keys=[keys.claim(job_id)], args=[CLAIM_TTL_SECONDS]))
        )

    def recover(
        self,
        job_id: uuid.UUID,
        requeue: bool,
        max_attempts: int,
        service_id: uuid.UUID | str | None = None,
    ) -> Recovery:
        """Decide the fate of a WORKING job whose lease may have lapsed.

        A run given up frees its slot in its service (``service_id``; read from
        the claim when the caller does not know it).
        """
        if service_id is None:
            service_id = _text(self._client.hget(keys.claim(job_id), "service")) or ""
        verdict, attempt = self._scripts.recover(
            keys=[keys.claim(job_id), keys.lease(job_id), *keys.slots(service_id)],
            args=["1" if requeue else "0", max_attempts, self.lease_ms],
        )
        return Recovery(text(verdict), int(attempt))

    def release_parked(self, service_id: uuid.UUID, prune: bool = False) -> int:
        """Let the service's parked jobs go as far as its slots allow; returns how many went.

        ``prune`` first frees the slots of runs that ended without freeing
        theirs (beat's safety net, each tick).
        """
        released, _pruned = self._scripts.release_parked(
            keys=keys.slots(service_id), args=["1" if prune else "0"]
        )
        return int(released)

    def with_slots_in_use(self, service_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Those of the services with a job running or parked, in one round trip."""
        if not service_ids:
            return []
        found: list[str] = []
        for service_id in map(str, service_ids):
            found += (keys.running_jobs(service_id), keys.parked_jobs(service_id))
        positions = self._scripts.occupied(keys=found)
        return [service_ids[int(position) - 1] for position in positions]

    def queue_depths(
        self, pipeline: redis.client.Pipeline, service_ids: Sequence[uuid.UUID]
    ) -> None:
        """Ask, on ``pipeline``, for each service's queue depth and parked jobs.

        Its reply is ``depth, parked`` for each service in turn (``depths.lua``).
        """
        found: list[str] = []
        for service_id in service_ids:
            found += priorities.queue_lists(keys.service_queue(service_id))
            found.append(keys.parked_jobs(service_id))
        per_service = len(priorities.STEPS) + 1
        self._scripts.depths(keys=found, args=[per_service], client=pipeline)

    def parked(self, service_ids: Sequence[uuid.UUID]) -> list[int]:
        """How many jobs of each service wait parked, in one round trip."""
        pipeline = self._client.pipeline(transaction=False)
        for service_id in service_ids:
            pipeline.zcard(keys.parked_jobs(service_id))
        return [int(count) for count in (pipeline.execute() if service_ids else [])]

    def settle(self, job_ids: Iterable[uuid.UUID | str], chunk: int = 1000) -> None:
        """SQL has recorded these jobs' ends: keep their claims one duplicate window more.

        Only ended claims are shortened; a job that is running or re-queued
        keeps its claim whatever the caller believed.
        """
        claim_keys = [keys.claim(job_id) for job_id in job_ids]
        for start in range(0, len(claim_keys), chunk):
            self._scripts.settle(keys=claim_keys[start : start + chunk], args=[self.window_seconds])

    def unclaimed(self, job_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``job_ids`` that no delivery has taken (registered, or not even that)."""
        ids = list(job_ids)
        if not ids:
            return set()
        pipeline = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipeline.hexists(keys.claim(job_id), "state")
        return {job_id for job_id, taken in zip(ids, pipeline.execute(), strict=True) if not taken}

    def holders(self, job_ids: Sequence[uuid.UUID]) -> list[Holder]:
        """The claims of ``job_ids``, in their order, read in one round trip."""
        pipeline = self._client.pipeline(transaction=False)
        for job_id in job_ids:
            pipeline.hmget(keys.claim(job_id), ["state", "attempt", "worker"])
        return [
            Holder(_text(state), int(attempt or 0), _text(worker))
            for state, attempt, worker in (pipeline.execute() if job_ids else [])
        ]

    def holder(self, job_id: uuid.UUID) -> Holder:
        """The job's claim now, for a caller that must be its holder to report on it."""
        return self.holders([job_id])[0]

    def renew_http(self, service_id: uuid.UUID, job_ids: Sequence[str], chunk: int = 500) -> int:
        """Extend this lease for those of the service's HTTP-held ``job_ids`` still held over HTTP.

        The others leave the service's set (``keys.http_jobs``); returns how many did.
        """
        held = keys.http_jobs(service_id)
        dropped = 0
        for start in range(0, len(job_ids), chunk):
            ids = job_ids[start : start + chunk]
            script_keys = [held]
            for job_id in ids:
                script_keys += [keys.claim(job_id), keys.lease(job_id)]
            dropped += int(self._scripts.renew_http(keys=script_keys, args=[self.lease_ms, *ids]))
        return dropped

    def _finish_call(
        self, job_id: uuid.UUID, attempt: int, final: StateMessage, unless_aborted: bool
    ) -> tuple[list[str], list[str | int | float]]:
        """finish.lua's KEYS and ARGV, as its header names them."""
        report, by, signature = self._signed(final)
        return [
            keys.claim(job_id),
            keys.lease(job_id),
            keys.STATE_STREAM,
            *keys.slots(final.service_id),
        ], [attempt, report, CLAIM_TTL_SECONDS, int(unless_aborted), by, signature]

    def takers(self, takes: Sequence[tuple[uuid.UUID, int]]) -> list[str | None]:
        """The credential that took each (job, take) of its claim (``by:<take>``), or None."""
        if not takes:
            return []
        names = self._scripts.takers(
            keys=[keys.claim(job_id) for job_id, _ in takes], args=[take for _, take in takes]
        )
        return [None if name is None else text(name) for name in names]

    def state(self, job_id: uuid.UUID) -> str | None:
        """The claim's state, for inspection and tests."""
        value = self._client.hget(keys.claim(job_id), "state")
        return None if value is None else text(value)


def _appending(call: Callable[[], T]) -> T:
    """``call`` (a script that appends to the state stream), made again while the stream is
    exhausted or written over, for up to ``EXHAUSTED_WAIT_SECONDS``: the script changed
    nothing (it appends first), and the mirror repairs the stream.
    """
    deadline = time.monotonic() + EXHAUSTED_WAIT_SECONDS
    delay = 0.05
    while True:
        try:
            return call()
        except redis.ResponseError as error:
            if not any(t in str(error) for t in _EXHAUSTED) or time.monotonic() > deadline:
                raise
            log.warning("the state stream is exhausted (a forged id); waiting for the mirror")
        time.sleep(delay)  # waiting for the mirror's repair, which no signal announces
        delay = min(1.0, delay * 2)


def _finished(answer: Sequence[object]) -> Finish:
    """finish.lua's answer, read."""
    if text(answer[0]) == "aborted":
        _, at, by, reason = answer
        return Finish("", abort=_abort_request(at, by, reason))
    lateness, since = answer
    since_text = text(since)
    return Finish(text(lateness), int(since_text) if since_text else None)


def _lease_ms(lease_seconds: float) -> int:
    return max(1, int(lease_seconds * 1000))


def _text(value: object) -> str | None:
    return None if value is None else text(value)


def _abort_request(at: object, by: object, reason: object) -> AbortRequest:
    """An abort request from the claim's ``abort_*`` fields (``at`` is set)."""
    return AbortRequest(int(text(at)), _text(by) or "someone", _text(reason) or "")
