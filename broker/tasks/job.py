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


def register(app: Celery) -> None:
    """Register both job tasks: they differ only in what a dead worker process means.

    Under the ``requeue`` policy a worker process that dies mid-job has the
    message rejected back to its queue (Celery's reject-on-worker-lost); the
    job's claim and beat decide whether it runs again.
    """
    app.task(name=keys.JOB_TASK, acks_late=True, ignore_result=True)(run_job)
    app.task(
        name=keys.REQUEUE_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )(run_job)
