"""Many producers at once: on one service, or each on its own, the same rate.

``producers`` processes are started, each with a ``Producer`` of its own, and
told to go at one moment (a Redis list they all wait on). Each submits its
share to the service it is given and reports when it finished, on the
machine-wide monotonic clock; the figure is all their jobs over the time from
the go to the last finish. Run twice: every process on one service, then each
on a service of its own. Each process submits one job at a time (``submit``),
or ``BULK_CALLS`` sweeps of ``bulk_jobs`` with no options (``submit_many``).
No worker runs; the queues are emptied after each run.

``python -m bench.producers SERVICE MODE JOBS`` is one producer (the child).
"""

from __future__ import annotations

import subprocess
import sys
import time

import redis

from bench.ours import OurStack
from bench.payload import PARAMETERS_SCHEMA, RESULTS_SCHEMA, parameters
from bench.servers import PYTHON
from broker.producer import Producer
from broker.settings import Settings

READY = "bench:producers:ready"
GO = "bench:producers:go"
DONE = "bench:producers:done"
#: A bulk producer's ``submit_many`` calls.
BULK_CALLS = 5


def rate(ours: OurStack, producers: int, one_service: bool, mode: str, jobs: int) -> float:
    """Jobs per second submitted by ``producers`` processes of ``jobs`` each."""
    names = [f"BenchShared{0 if one_service else index}" for index in range(producers)]
    for name in set(names):
        ours.service_ids[name] = ours.producer.ensure_service(
            name, "producers", PARAMETERS_SCHEMA, RESULTS_SCHEMA, timeout=60
        )
    ours.purge()
    ours.redis.delete(READY, GO, DONE)
    children = [
        subprocess.Popen([PYTHON, "-m", "bench.producers", name, mode, str(jobs)], env=ours.env())
        for name in names
    ]
    # Its own client: redis-py's default socket timeout (5 s) is shorter than these waits.
    waiter = redis.Redis.from_url(ours.settings.broker_url, socket_timeout=None)
    try:
        for _ in children:
            if waiter.blpop([READY], timeout=60) is None:
                raise TimeoutError("a producer did not start")
        go = time.monotonic()
        ours.redis.rpush(GO, *["go"] * producers)
        ends = []
        for _ in children:
            reply = waiter.blpop([DONE], timeout=300)
            if reply is None:
                raise TimeoutError("a producer did not finish")
            ends.append(float(reply[1]))
        for child in children:
            if child.wait(timeout=60) != 0:
                raise RuntimeError(f"a producer exited with {child.returncode}")
        return producers * jobs / (max(ends) - go)
    finally:
        waiter.close()
        for child in children:
            child.kill()
        ours.purge()


def main(service: str, mode: str, jobs: int) -> None:
    producer = Producer(Settings.from_env())
    producer.submit(service, parameters(0))  # connected and warm before the go
    client = redis.Redis.from_url(producer.settings.broker_url)
    client.rpush(READY, "1")
    client.blpop([GO], timeout=120)
    if mode == "single":
        for index in range(jobs):
            producer.submit(service, parameters(index))
    else:
        share = jobs // BULK_CALLS
        for call in range(BULK_CALLS):
            producer.submit_many(service, [parameters(call * share + i) for i in range(share)])
    client.rpush(DONE, repr(time.monotonic()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
