"""Who may run a job, decided atomically in Redis.

Every job has a claim hash (``keys.claim``) that one Lua script at a time may
change: a worker's claim, a cancel, beat's recovery and the end of a run. That
makes the duplicates that at-least-once delivery produces harmless — an outbox
re-publish, a visibility-timeout redelivery, a second beat — because only the
delivery that wins the claim runs the handler.

A running job also has a lease (``keys.lease``) with a TTL that its worker
renews; when the worker dies, the lease lapses on Redis's clock (not a lab
machine's), and beat applies the service's worker-loss policy.

Claim states: ``running`` (attempt n, by worker w), ``done``, ``cancelled``,
``requeued`` (beat handed attempt n+1 to the queue), ``lost`` (failed by beat).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from broker import keys
from broker.connections import text
from broker.messages import StateMessage

#: How long a finished job's claim is kept: long enough to refuse any late
#: duplicate of its message (visibility timeouts are minutes).
CLAIM_TTL_SECONDS = 7 * 24 * 3600

# KEYS: claim, lease, stream. ARGV: attempt, worker, lease ms, claim ttl, WORKING entry.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(ARGV[1])
if state then
  local current = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
  if not (state == 'requeued' and attempt == current + 1) then
    return state
  end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', attempt, 'worker', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[5])
return 'claimed'
"""

# KEYS: claim, lease, stream. ARGV: attempt, final entry.
_FINISH = """
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or attempt ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[2])
return 1
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
redis.call('HSET', KEYS[1], 'state', 'lost')
if ARGV[1] == '1' then
  return {'exhausted', attempt}
end
return {'fail', attempt}
"""


class ClaimResult(enum.Enum):
    """What a delivery of a job message found when it tried to claim the job."""

    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Recovery:
    """Beat's verdict on a WORKING job: ``alive``, ``requeue``, ``fail``, ``exhausted``…"""

    verdict: str
    attempt: int


class Claims:
    """The Lua scripts above, bound to one Redis client."""

    def __init__(self, client: redis.Redis, lease_seconds: float) -> None:
        self._client = client
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._recover = client.register_script(_RECOVER)

    def claim(
        self, job_id: uuid.UUID, attempt: int, worker: str, working: StateMessage
    ) -> ClaimResult:
        """Take the job for this delivery and report it WORKING, or say why not."""
        result = self._claim(
            keys=[keys.claim(job_id), keys.lease(job_id), keys.STATE_STREAM],
            args=[attempt, worker, self.lease_ms, CLAIM_TTL_SECONDS, working.to_fields()["m"]],
        )
        return ClaimResult(text(result))

    def finish(self, job_id: uuid.UUID, attempt: int, final: StateMessage) -> bool:
        """Report the run's outcome, unless beat has since given the job up."""
        result = self._finish(
            keys=[keys.claim(job_id), keys.lease(job_id), keys.STATE_STREAM],
            args=[attempt, final.to_fields()["m"]],
        )
        return bool(result)

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

    def state(self, job_id: uuid.UUID) -> str | None:
        """The claim's state, for inspection and tests."""
        value = self._client.hget(keys.claim(job_id), "state")
        return None if value is None else text(value)
