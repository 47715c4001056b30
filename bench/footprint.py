"""What TopChef keeps in Redis per job: while queued, and once finished and settled.

A job costs Redis its message and its registration (the claim hash) while it
waits. Once SQL has recorded its end, its claim lives one duplicate window more
(``Settings.duplicate_window``) and then nothing of it should remain. Measured
as the bytes the keyspace holds (``MEMORY USAGE`` of every key), not the
server's ``used_memory``, which moves with client buffers and the allocator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from bench.ours import OurStack
from bench.payload import SERVICE, parameters
from bench.servers import wait_until
from broker.messaging import keys
from broker.settings import Settings

#: Short windows, so that a run waits seconds for the claims to settle, not minutes.
SHORT_WINDOWS = Settings(
    visibility_timeout=5.0, lease_seconds=2.0, beat_interval=1.0, outbox_grace_seconds=1.0
)
SHORT_ENV = {
    "TOPCHEF_VISIBILITY_TIMEOUT": str(SHORT_WINDOWS.visibility_timeout),
    "TOPCHEF_LEASE_SECONDS": str(SHORT_WINDOWS.lease_seconds),
    "TOPCHEF_BEAT_INTERVAL": str(SHORT_WINDOWS.beat_interval),
    "TOPCHEF_OUTBOX_GRACE_SECONDS": str(SHORT_WINDOWS.outbox_grace_seconds),
}


@dataclass(frozen=True)
class Footprint:
    queued_bytes_per_job: float
    finished_bytes_per_job: float
    claims_left: int
    window_seconds: float


def keyspace_bytes(client: redis.Redis) -> int:
    """The bytes every key of the database takes (its value and its overhead)."""
    total = 0
    batch: list[bytes] = []
    for key in client.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            total += _usage(client, batch)
            batch = []
    return total + _usage(client, batch)


def _usage(client: redis.Redis, batch: list[bytes]) -> int:
    pipeline = client.pipeline(transaction=False)
    for key in batch:
        pipeline.memory_usage(key, samples=0)
    return sum(int(used or 0) for used in pipeline.execute())


def claims(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match=keys.claim("*"), count=1000))


def measure(ours: OurStack, n: int, processes: int, pool: str, concurrency: int) -> Footprint:
    """Submit ``n`` jobs with no worker, then drain them, then wait out the window."""
    window = SHORT_WINDOWS.duplicate_window
    ours.extra_env = SHORT_ENV
    try:
        ours.purge()
        ours.start_mirror()
        # The probe each start runs leaves a claim: let it settle before the baseline.
        ours.start_workers(processes, pool, concurrency)
        ours.stop_workers()
        wait_until(lambda: claims(ours.redis) == 0, window + 30, "the probes' claims to settle")
        before = keyspace_bytes(ours.redis)
        job_ids = ours.producer.submit_many(SERVICE, [parameters(i) for i in range(n)])
        ours.mark_published()
        queued = keyspace_bytes(ours.redis)
        ours.start_workers(processes, pool, concurrency)
        wait_until(lambda: ours.completed(job_ids) == n, max(120.0, n / 50), "the drain")
        settled = time.monotonic() + window + 30
        wait_until(lambda: claims(ours.redis) == 0 or time.monotonic() > settled, window + 60, "")
        ours.stop_workers()
        after = keyspace_bytes(ours.redis)
        return Footprint((queued - before) / n, (after - before) / n, claims(ours.redis), window)
    finally:
        ours.stop_workers()
        if ours.mirror is not None:
            ours.mirror.stop()
            ours.mirror = None
        ours.extra_env = {}
