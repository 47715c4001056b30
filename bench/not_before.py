"""How late a job held until a time starts: ``date_started - not_before``, through real processes.

Jobs are submitted with ``not_before`` scattered a few seconds ahead; a beat,
a mirror and a worker run as ``topchef`` children, and each job's lateness is
read from SQL once all have completed. Beat publishes due jobs every
``Settings.due_interval`` (1 s by default), so that bounds the lateness, plus a
worker's claim and the clocks' translation.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bench.ours import OurStack
from bench.payload import SERVICE, parameters
from bench.stats import percentile
from broker.storage.tables import JobRow, database_now, open_session

#: The jobs' times are spread over this many seconds, starting this soon.
SPREAD_SECONDS = 8.0
LEAD_SECONDS = 2.0


def lateness(ours: OurStack, n: int, seed: int = 14) -> dict[str, float]:
    """Submit ``n`` held jobs, wait for them all, and return lateness percentiles (ms)."""
    choose = random.Random(seed)
    with open_session(ours.settings.database_url) as session:
        now = database_now(session)
    job_ids = []
    for index in range(n):
        due = now + timedelta(seconds=LEAD_SECONDS + choose.uniform(0, SPREAD_SECONDS))
        job_ids.append(ours.producer.submit(SERVICE, parameters(index), not_before=due))
    deadline = time.monotonic() + LEAD_SECONDS + SPREAD_SECONDS + 60
    late: list[float] = []
    while time.monotonic() < deadline:
        with open_session(ours.settings.database_url) as session:
            rows = session.execute(
                sa.select(JobRow.not_before, JobRow.date_started, JobRow.status).where(
                    JobRow.id.in_(job_ids)
                )
            ).all()
        if all(status == "COMPLETED" for _, _, status in rows) and len(rows) == n:
            late = [(started - due).total_seconds() * 1000 for due, started, _ in rows]
            break
        time.sleep(0.2)
    if not late:
        raise RuntimeError(f"the held jobs did not all complete by {datetime.now(UTC)}")
    return {
        "p50": percentile(late, 0.50),
        "p99": percentile(late, 0.99),
        "max": max(late),
        "early": float(sum(1 for value in late if value < 0)),
    }
