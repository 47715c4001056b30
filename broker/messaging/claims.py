"""Who may run a job, decided atomically in Redis.

Every job has a claim hash (``keys.claim``) that one Lua script at a time may
change. The publisher opens it with the job's registration — its service and
the digest of its parameters (``register``), in the same round trip as the job's
message — and from then on a worker's claim, a cancel, beat's recovery and the
end of a run each change it in one step. That gives two guarantees:

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
``lost`` (failed by beat). A run that ends after beat presumed its worker lost
still reports its outcome (``finish`` says how late it is); nothing a worker
measured is dropped here, the SQL record decides where it belongs.

A claim lives as long as its job may still run. Once SQL has recorded the end,
``settle`` leaves it ``duplicate_window`` seconds (``Settings``) to refuse late
duplicates of the message; after that the job costs Redis nothing, and a
duplicate that arrives later still finds no registration and is refused.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import redis

from broker.messaging import keys
from broker.messaging.connections import text
from broker.messaging.messages import StateMessage

#: How long a finished job's claim is kept until SQL has recorded the end and
#: ``settle`` shortens it: a backstop for a mirror that is down for days.
CLAIM_TTL_SECONDS = 7 * 24 * 3600
#: Settle's default window when the caller has no settings at hand.
DEFAULT_WINDOW_SECONDS = 120.0

# KEYS: the claims of jobs of one service. ARGV: service id, then each job's digest.
# One call registers a whole chunk: a command per job costs the publisher more
# than the rest of a bulk submit's Redis work.
_REGISTER = """
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'service', ARGV[1], 'digest', ARGV[i + 1])
end
return #KEYS
"""

# KEYS: claim, lease, stream.
# ARGV: attempt, worker, lease ms, WORKING entry, service id, parameters digest
#       ('' when the caller read the job from SQL itself), trusted (1: the caller
#       read the job from SQL and may register it), settle seconds.
_CLAIM = """
local service = redis.call('HGET', KEYS[1], 'service')
if not service then
  if ARGV[7] ~= '1' then
    return 'unregistered'
  end
  redis.call('HSET', KEYS[1], 'service', ARGV[5])
elseif service ~= ARGV[5] then
  return 'misrouted'
end
local digest = redis.call('HGET', KEYS[1], 'digest')
if ARGV[6] ~= '' and digest and digest ~= ARGV[6] then
  return 'altered'
end
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(ARGV[1])
if state then
  local current = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
  if not (state == 'requeued' and attempt == current + 1) then
    if state == 'done' or state == 'cancelled' or state == 'lost' then
      -- This delivery consumed a duplicate; later ones come within the window.
      local ttl = redis.call('TTL', KEYS[1])
      if ttl < 0 or ttl > tonumber(ARGV[8]) then
        redis.call('EXPIRE', KEYS[1], ARGV[8])
      end
    end
    return state
  end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', attempt, 'worker', ARGV[2])
redis.call('PERSIST', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[4])
return 'claimed'
"""

# KEYS: claim, lease, stream. ARGV: attempt, final entry, backstop ttl.
# Returns {lateness, since}: lateness '' (on time), 'lost' or 'requeued' (beat
# presumed the worker lost at ``since`` ms, and nothing ran again: this outcome
# stands), 'superseded' (another attempt holds the job) or 'unknown' (the claim
# is gone or already ended). The outcome is reported in every case.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
local mine = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') == tonumber(ARGV[1])
if mine and state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[2])
  return {'', ''}
end
if mine and (state == 'lost' or state == 'requeued') then
  local since = redis.call('HGET', KEYS[1], state .. '_at') or ''
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[2], 'late', state, 'since', since)
  return {state, since}
end
local lateness = 'unknown'
if state == 'running' or state == 'requeued' then
  lateness = 'superseded'
end
redis.call('XADD', KEYS[3], '*', 'm', ARGV[2], 'late', lateness, 'since', '')
return {lateness, ''}
"""

# KEYS: claim. ARGV: claim ttl.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'cancelled' then
  return state
end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'cancelled'
"""

# KEYS: claim, lease. ARGV: requeue (1/0), max attempts, stale ms.
# Returns {verdict, attempt}; verdict: alive | requeue | fail | exhausted | other.
_RECOVER = """
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if state == 'requeued' then
  local since = tonumber(redis.call('HGET', KEYS[1], 'requeued_at') or '0')
  if now_ms - since < tonumber(ARGV[3]) then
    return {'alive', attempt}
  end
  redis.call('HSET', KEYS[1], 'requeued_at', now_ms)
  return {'requeue', attempt + 1}
end
if state ~= 'running' then
  return {state or 'unclaimed', attempt}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'alive', attempt}
end
if ARGV[1] == '1' and attempt < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'requeued', 'requeued_at', now_ms)
  return {'requeue', attempt + 1}
end
redis.call('HSET', KEYS[1], 'state', 'lost', 'lost_at', now_ms)
if ARGV[1] == '1' then
  return {'exhausted', attempt}
end
return {'fail', attempt}
"""

# KEYS: claim, lease, stream. ARGV: attempt, worker, release entry.
# The holder gives a claim back: the job is registered work again, unclaimed.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running'
    or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2]
    or tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HDEL', KEYS[1], 'state', 'attempt', 'worker')
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[3])
return 1
"""

# KEYS: claims whose job SQL has recorded as ended. ARGV: window seconds.
_SETTLE = """
for i = 1, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'done' or state == 'cancelled' or state == 'lost' then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
  end
end
return #KEYS
"""


class ClaimResult(enum.Enum):
    """What a delivery of a job message found when it tried to claim the job."""

    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    LOST = "lost"
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

    @property
    def on_time(self) -> bool:
        return not self.lateness


class Claims:
    """The Lua scripts above, bound to one Redis client."""

    def __init__(
        self,
        client: redis.Redis,
        lease_seconds: float = 30.0,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        self._client = client
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.window_seconds = max(1, int(window_seconds + 0.999))
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._recover = client.register_script(_RECOVER)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._register = client.register_script(_REGISTER)

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
            self._register(
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
    ) -> ClaimResult:
        """Take the job for this delivery and report it WORKING, or say why not.

        ``digest`` is that of the delivery's parameters; a ``trusted`` caller
        (the HTTP gateway, which read the job from SQL) passes none, and may
        register a job whose message has not been published yet.
        """
        result = self._claim(
            keys=[keys.claim(job_id), keys.lease(job_id), keys.STATE_STREAM],
            args=[
                attempt,
                worker,
                self.lease_ms,
                working.to_fields()["m"],
                str(working.service_id),
                digest,
                "1" if trusted else "0",
                self.window_seconds,
            ],
        )
        return ClaimResult(text(result))

    def finish(self, job_id: uuid.UUID, attempt: int, final: StateMessage) -> Finish:
        """Report the run's outcome; say how late it is if beat gave the job up meanwhile."""
        lateness, since = self._finish(
            keys=[keys.claim(job_id), keys.lease(job_id), keys.STATE_STREAM],
            args=[attempt, final.to_fields()["m"], CLAIM_TTL_SECONDS],
        )
        since_text = text(since)
        return Finish(text(lateness), int(since_text) if since_text else None)

    def release(self, job_id: uuid.UUID, attempt: int, worker: str, entry: StateMessage) -> bool:
        """Give back a claim ``worker`` holds but will not run; False if it holds none."""
        released = self._release(
            keys=[keys.claim(job_id), keys.lease(job_id), keys.STATE_STREAM],
            args=[attempt, worker, entry.to_fields()["m"]],
        )
        return bool(released)

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
        return ClaimResult(text(self._cancel(keys=[keys.claim(job_id)], args=[CLAIM_TTL_SECONDS])))

    def recover(self, job_id: uuid.UUID, requeue: bool, max_attempts: int) -> Recovery:
        """Decide the fate of a WORKING job whose lease may have lapsed."""
        verdict, attempt = self._recover(
            keys=[keys.claim(job_id), keys.lease(job_id)],
            args=["1" if requeue else "0", max_attempts, self.lease_ms],
        )
        return Recovery(text(verdict), int(attempt))

    def settle(self, job_ids: Iterable[uuid.UUID | str], chunk: int = 1000) -> None:
        """SQL has recorded these jobs' ends: keep their claims one duplicate window more.

        Only ended claims are shortened; a job that is running or re-queued
        keeps its claim whatever the caller believed.
        """
        claim_keys = [keys.claim(job_id) for job_id in job_ids]
        for start in range(0, len(claim_keys), chunk):
            self._settle(keys=claim_keys[start : start + chunk], args=[self.window_seconds])

    def unclaimed(self, job_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``job_ids`` that no delivery has taken (registered, or not even that)."""
        ids = list(job_ids)
        if not ids:
            return set()
        pipeline = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipeline.hexists(keys.claim(job_id), "state")
        return {job_id for job_id, taken in zip(ids, pipeline.execute(), strict=True) if not taken}

    def state(self, job_id: uuid.UUID) -> str | None:
        """The claim's state, for inspection and tests."""
        value = self._client.hget(keys.claim(job_id), "state")
        return None if value is None else text(value)
