"""The peers' task modules, each the plainest use of its library (``BENCH_REDIS_URL``).

Every no-op task increments one Redis counter, the only way to see a raw
queue drained without a result backend; it costs each peer one round trip.
"""

from __future__ import annotations

import os

import redis

DONE = "bench:done"
QUEUE = "bench"

_client: redis.Redis | None = None


def mark_done() -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _client.incr(DONE)
