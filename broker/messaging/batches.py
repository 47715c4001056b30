"""Batches in flight: which worker holds which jobs it has not started yet.

A job's claim and lease (``broker.messaging.claims``) cover it from the moment a worker
starts it. The jobs queued behind it in the same batch have neither, so when
the worker dies, nothing would say they are waiting, and Redis would hand the
batch's message back only after its visibility timeout (an hour by default).

So a worker records each batch it takes (``open``) under a lease of its own,
renewed like a job's, and removes the record when the batch is through
(``close``). Beat asks for the batches whose lease lapsed (``abandoned``) and
re-queues their jobs that no delivery ever claimed; the claims make a late
redelivery of the original message harmless.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import redis

from broker.messaging import keys
from broker.messaging.connections import text


class Batches:
    """The batch records and leases in Redis, bound to one client."""

    def __init__(self, client: redis.Redis, lease_seconds: float) -> None:
        self._client = client
        self.lease_ms = max(1, int(lease_seconds * 1000))

    def open(self, batch_id: str, job_ids: Sequence[str], worker: str) -> None:
        """Record that ``worker`` holds the batch, atomically with its lease."""
        pipeline = self._client.pipeline(transaction=True)
        pipeline.hset(keys.BATCHES, batch_id, json.dumps(list(job_ids)))
        pipeline.set(keys.batch_lease(batch_id), worker, px=self.lease_ms)
        pipeline.execute()

    def close(self, batch_id: str) -> None:
        """The batch is through: every job in it was claimed by someone."""
        pipeline = self._client.pipeline(transaction=True)
        pipeline.hdel(keys.BATCHES, batch_id)
        pipeline.delete(keys.batch_lease(batch_id))
        pipeline.execute()

    def abandon(self, batch_id: str) -> None:
        """Give the batch up now (a worker shutting down): beat re-queues the rest."""
        self._client.delete(keys.batch_lease(batch_id))

    def abandoned(self) -> dict[str, list[uuid.UUID]]:
        """Batches whose worker is gone (their lease lapsed), with every job they carried.

        Which of those jobs no delivery took is the claims' to say
        (``Claims.unclaimed``): a batch record knows only what it carried.
        """
        records = {text(k): json.loads(v) for k, v in self._client.hgetall(keys.BATCHES).items()}
        if not records:
            return {}
        pipeline = self._client.pipeline(transaction=False)
        for batch_id in records:
            pipeline.exists(keys.batch_lease(batch_id))
        alive = pipeline.execute()
        return {
            batch_id: [uuid.UUID(job_id) for job_id in job_ids]
            for (batch_id, job_ids), live in zip(records.items(), alive, strict=True)
            if not live
        }

    def forget(self, batch_ids: Sequence[str]) -> None:
        """Drop the records of batches whose unclaimed jobs were re-queued."""
        if batch_ids:
            self._client.hdel(keys.BATCHES, *batch_ids)
