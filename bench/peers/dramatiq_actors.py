"""Dramatiq's actor on its Redis broker (``dramatiq bench.peers.dramatiq_actors``)."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import QUEUE, mark_done

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop(parameters: dict[str, Any]) -> None:
    mark_done()
