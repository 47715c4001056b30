"""Sweeps submitted with no options: fast when jobs are short, spread when they are long.

``submit_many`` chooses how many jobs share a Celery message
(``broker.producer.packing``). The no-op sweep's figure is in the drain
workload (``topchef (...; jobs/message chosen)``). This one is the other side of the rule:
a sweep of ``jobs`` jobs of ``seconds`` each, on a service with no history
(its jobs table emptied first, as for a new instrument), over ``processes`` x
``concurrency`` worker threads, timed from the submit until the last is
COMPLETED in SQL, beside its ideal: every thread busy from start to end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from bench.controls import instrument_service
from bench.ours import OurStack
from bench.payload import INSTRUMENT_SERVICE


@dataclass(frozen=True)
class Spread:
    seconds: float
    ideal_seconds: float
    completed: int


def create_service(ours: OurStack) -> None:
    instrument_service(ours, INSTRUMENT_SERVICE)


def long_jobs(ours: OurStack, jobs: int, seconds: float, threads: int) -> Spread:
    """One cold sweep of long jobs; the service and its workers must be running already."""
    ours.purge()
    points = [{"index": index, "seconds": seconds} for index in range(jobs)]
    started = time.perf_counter()
    job_ids = ours.producer.submit_many(INSTRUMENT_SERVICE, points)
    deadline = time.monotonic() + 10 * jobs * seconds + 60
    while (completed := ours.completed(job_ids)) < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"long sweep: {completed} of {jobs} jobs completed")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    ours.purge()
    return Spread(elapsed, math.ceil(jobs / threads) * seconds, completed)
