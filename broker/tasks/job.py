"""The task that runs a job on a lab worker."""

from __future__ import annotations

from typing import Any

from celery import Celery

from broker import keys
from broker.worker import current_runtime


def run_job(
    job_id: str, service_id: str, parameters: dict[str, Any], attempt: int = 1, **extra: Any
) -> str:
    """Run one delivery of a job on this process's worker runtime."""
    return current_runtime().run(job_id, service_id, parameters, attempt, **extra)


def run_batch(batch_id: str, service_id: str, jobs: list[dict[str, Any]], **extra: Any) -> Any:
    """Run a batch of jobs (``messages.JobBatch``) on this process's worker runtime."""
    return current_runtime().run_batch(batch_id, service_id, jobs, **extra)


def register(app: Celery) -> None:
    """Register the job tasks; the two for single jobs differ in what a dead worker process means.

    Under the ``requeue`` policy a worker process that dies mid-job has the
    message rejected back to its queue (Celery's reject-on-worker-lost); the
    job's claim and beat decide whether it runs again.

    A batch is rejected back under either policy: its jobs that did not start
    must run, and the claims stop the ones that did from running twice.
    """
    app.task(name=keys.JOB_TASK, acks_late=True, ignore_result=True)(run_job)
    app.task(
        name=keys.REQUEUE_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )(run_job)
    app.task(
        name=keys.JOB_BATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )(run_batch)
