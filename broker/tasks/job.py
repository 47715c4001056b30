"""The tasks that run jobs on a lab worker.

They accept any arguments at all: a forged message (``celery call``, Flower's
send-task, a plain ``send_task``) must reach the runtime to be refused and
counted, not fail in Celery's argument binding where nobody would see it.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Reject

from broker.messaging import keys
from broker.worker.runtime import Refused, current_runtime


def run_job(*args: Any, **fields: Any) -> str:
    """Run one delivery of a job on this process's worker runtime.

    A refused delivery is rejected without requeue: Celery drops the message,
    and Flower shows the task as rejected with the reason, not as a success.
    """
    try:
        return current_runtime().run(*args, **fields)
    except Refused as refusal:
        raise Reject(refusal, requeue=False) from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        # The claim could not be taken, so nothing ran: the message goes back to
        # its queue (or, if Redis is still away, stays unacknowledged until
        # restored), rather than being acknowledged as a failed task.
        raise Reject(f"message broker unavailable: {error}", requeue=True) from None


def run_batch(*args: Any, **fields: Any) -> Any:
    """Run a batch of jobs (``messages.JobBatch``) on this process's worker runtime."""
    try:
        batch_id, service_id, jobs = _batch_fields(*args, **fields)
    except (TypeError, ValueError) as error:
        refusal = current_runtime().refuse("malformed", None, f"unreadable batch: {error}")
        raise Reject(refusal, requeue=False) from None
    return current_runtime().run_batch(batch_id, service_id, jobs)


def _batch_fields(
    batch_id: object = None, service_id: object = None, jobs: object = None, **_ignored: Any
) -> tuple[str, str, list[dict[str, Any]]]:
    if not isinstance(batch_id, str) or not isinstance(jobs, list):
        raise ValueError("a batch needs a batch_id and a list of jobs")
    return batch_id, str(service_id), [job for job in jobs if isinstance(job, dict)]


class _RefusalLoggedOnce(logging.Filter):
    """Drops Celery's traceback for a refusal the runtime has already logged with its reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, Reject) and isinstance(error.reason, Refused))


_REFUSAL_LOGGED_ONCE = _RefusalLoggedOnce()


def register(app: Celery) -> None:
    """Register the job tasks; the two for single jobs differ in what a dead worker process means.

    Under the ``requeue`` policy a worker process that dies mid-job has the
    message rejected back to its queue (Celery's reject-on-worker-lost); the
    job's claim and beat decide whether it runs again.

    A batch is rejected back under either policy: its jobs that did not start
    must run, and the claims stop the ones that did from running twice.
    """
    logging.getLogger("celery.app.trace").addFilter(_REFUSAL_LOGGED_ONCE)
    app.task(name=keys.JOB_TASK, acks_late=True, ignore_result=True)(run_job)
    app.task(
        name=keys.REQUEUE_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )(run_job)
    app.task(
        name=keys.JOB_BATCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )(run_batch)
