"""How big and how long a chaos run is: the full run, and the smoke run for CI.

The smoke sizes keep every scenario and every fault, only fewer jobs and
shorter schedules: the whole run stays well under 90 s on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.chaos.stack import Timings


@dataclass(frozen=True)
class Plan:
    """How big and how long each scenario is."""

    jobs: int = 800
    #: Each job's simulated measurement, in milliseconds (uniform in this range).
    ms: tuple[int, int] = (50, 300)
    #: Jobs are submitted over this long, while the faults happen.
    feed_seconds: float = 55.0
    kill_every: float = 3.0
    #: How long Redis or PostgreSQL stays down.
    outage_seconds: float = 4.0
    #: How long a worker stays SIGSTOPped (well past its lease), and its job's length.
    freeze_seconds: float = 12.0
    freeze_job_ms: int = 2000
    #: The HTTP service's timeout: an HTTP claim's lease lasts this long.
    http_timeout: float = 6.0
    http_workers: int = 2
    http_callers: int = 2
    settle_seconds: float = 90.0
    timings: Timings = field(default_factory=Timings)


SMOKE = Plan(
    jobs=40,
    ms=(20, 100),
    feed_seconds=2.5,
    kill_every=0.8,
    outage_seconds=1.5,
    freeze_seconds=6.0,
    freeze_job_ms=1500,
    http_timeout=2.0,
    settle_seconds=15.0,
    timings=Timings(visibility_timeout=5.0),
)
