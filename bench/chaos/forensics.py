"""What Redis says after the settle period: the first questions a bad count raises.

Read before the next scenario flushes it. For a lost job: its claim, and
whether its message is still waiting in its queue, held unacknowledged by a
consumer (kombu's ``unacked`` hash, which its visibility timeout restores), or
nowhere at all, which no timeout will ever fix. For the state stream: whether
entries are left that the mirror read but never acknowledged, which it will
not read again while it runs.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from broker.messaging import keys
from broker.messaging.connections import text

#: kombu's Redis transport keeps delivered, unacknowledged messages here.
UNACKED = "unacked"


def whereabouts(client: redis.Redis, job_ids: list[str], queues: list[str]) -> dict[str, str]:
    """For each job: its claim's state, and where its message is."""
    waiting = b"\n".join(
        message
        for queue in queues
        for message in client.lrange(queue, 0, -1)  # type: ignore[union-attr]
    )
    unacked = b"\n".join(client.hvals(UNACKED))  # type: ignore[arg-type]
    found = {}
    for job_id in job_ids:
        claim = client.hgetall(keys.claim(job_id))
        state = {text(k): text(v) for k, v in claim.items()}  # type: ignore[union-attr]
        needle = job_id.encode()
        place = (
            "in its queue"
            if needle in waiting
            else "unacknowledged (the visibility timeout will restore it)"
            if needle in unacked
            else "nowhere in Redis"
        )
        claimed = state.get("state", "none")
        found[job_id] = f"claim {claimed}, message {place}"
    return found


#: A delivered entry unacknowledged this long, with the mirror running, is stuck.
STUCK_AFTER_MS = 3000


@dataclass(frozen=True)
class StreamState:
    """The state stream as the mirror's consumer group sees it."""

    length: int
    #: Delivered to a mirror and not acknowledged.
    pending: int = 0
    oldest_idle_ms: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def stuck(self) -> bool:
        """Only entries a mirror read long ago and never acknowledged are left."""
        return 0 < self.length == self.pending and self.oldest_idle_ms >= STUCK_AFTER_MS

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))
        return (
            f"{self.length} state entries left on the stream, {self.pending} of them read by"
            f" the mirror but never acknowledged (the oldest {self.oldest_idle_ms / 1000:.0f} s"
            f" ago): {kinds}"
        )


def state_stream(client: redis.Redis, describe: bool = False) -> StreamState:
    length = int(client.xlen(keys.STATE_STREAM))  # type: ignore[arg-type]
    if length == 0:
        return StreamState(0)
    try:
        summary: Any = client.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)
        oldest: Any = client.xpending_range(keys.STATE_STREAM, keys.MIRROR_GROUP, "-", "+", 1)
    except redis.ResponseError:  # no consumer group yet
        return StreamState(length)
    idle = int(oldest[0]["time_since_delivered"]) if oldest else 0
    kinds: Counter[str] = Counter()
    if describe:
        entries: Any = client.xrange(keys.STATE_STREAM, count=1000)
        for _entry_id, fields in entries:
            try:
                message = json.loads(fields.get(b"m", b"{}"))
            except json.JSONDecodeError:
                kinds["unreadable"] += 1
                continue
            kinds[" ".join(str(message.get(k)) for k in ("kind", "status") if k in message)] += 1
    return StreamState(length, int(summary["pending"]), idle, dict(kinds))
