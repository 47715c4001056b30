"""TopChef's handlers for the benchmark (``topchef worker bench.jobs``).

``BenchNoop`` does nothing; ``BenchProbe`` records when it started, on the
machine-wide monotonic clock, so the latency workload can time submit →
handler start across processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from bench.payload import PROBE_SERVICE, SERVICE
from broker.worker import handles

STARTED = "bench:probe:started"


@handles(SERVICE)
def noop(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


_probe_client: redis.Redis | None = None


@handles(PROBE_SERVICE)
def probe(parameters: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    global _probe_client
    if _probe_client is None:
        _probe_client = redis.Redis.from_url(os.environ["TOPCHEF_BROKER_URL"])
    _probe_client.rpush(STARTED, f"{parameters['index']} {started!r}")
    return {"ok": True}
