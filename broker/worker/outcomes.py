"""What a delivery of a job came to, in the terms its Celery task reports it.

The job's record in SQL is the truth; this is what the worker knows when the
delivery ends, so that the task can end the same way in Flower: a run's status
(COMPLETED, or ERROR with its detail), or why nothing ran (cancelled, or a
duplicate of a delivery that did run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from broker.models.interfaces.job import Job

COMPLETED = Job.JobStatus.COMPLETED.value
ERROR = Job.JobStatus.ERROR.value
#: A claim's state (``ClaimResult.CANCELLED``): the job was cancelled before it ran.
CANCELLED = "cancelled"
#: A run that saw its abort: the job ended CANCELLED while running.
ABORTED = Job.JobStatus.CANCELLED.value
#: A run that asked for another attempt, which beat publishes when it is due.
RETRYING = "retrying"
#: A batch's job that the worker did not reach before it shut down; beat sends it again.
UNSTARTED = "unstarted"
#: How much of each failed job's detail a batch's summary quotes (SQL keeps it whole).
DETAIL_QUOTED = 200


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery's end: its run's status, or the claim state that kept it from running."""

    job_id: str
    status: str
    detail: str | None = None
    #: What the run reported: its results (partial ones, for an aborted run).
    results: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.status == ERROR

    @property
    def stopped(self) -> bool:
        """Whether the job will not run to its end: cancelled before it ran, or aborted running."""
        return self.status in (CANCELLED, ABORTED)


def by_status(outcomes: Iterable[Outcome]) -> dict[str, list[str]]:
    """A batch's job ids by how each ended, in the batch's order: its row in Flower.

    Grouped rather than one pair per job, so that an operator reads at once
    whether anything failed, and a batch of many jobs stays short.
    """
    grouped: dict[str, list[str]] = {}
    for outcome in outcomes:
        grouped.setdefault(outcome.status, []).append(outcome.job_id)
    return grouped


def failure_summary(outcomes: Iterable[Outcome]) -> str | None:
    """What a batch with jobs that ended ERROR says of itself; None if none did."""
    outcomes = list(outcomes)
    failed = [outcome for outcome in outcomes if outcome.failed]
    if not failed:
        return None
    details = "; ".join(f"{o.job_id}: {_quoted(o.detail)}" for o in failed)
    return f"{len(failed)} of {len(outcomes)} jobs ended ERROR: {by_status(outcomes)}; {details}"


def _quoted(detail: str | None) -> str:
    text = detail or "no detail"
    return text if len(text) <= DETAIL_QUOTED else text[: DETAIL_QUOTED - 3] + "..."
