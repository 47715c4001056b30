"""The tasks that run jobs on a lab worker, and end as their jobs did.

They accept any arguments at all: a forged message (``celery call``, Flower's
send-task, a plain ``send_task``) must reach the runtime to be refused and
counted, not fail in Celery's argument binding where nobody would see it.

A task's Celery state is what Flower shows of its job, so each task ends as
its job's delivery did, once the runtime has reported the run on the state
stream (SQL stays the record):

- COMPLETED: a success whose result is the job's results (Celery keeps a
  bounded repr of it, ``resultrepr_maxsize``);
- ERROR: a failure whose exception is the job's detail (``JobError``);
- cancelled before it ran, or aborted while it ran (CANCELLED): *revoked*,
  Celery's own state for a task cancelled, its result the job's detail
  (and, for an aborted run, the partial results it returned);
- a duplicate (the job ran, or runs, under another delivery): *ignored*, with
  no outcome of its own, so that Flower's row keeps the one of the delivery
  that ran;
- refused (not registered work): a failure whose exception is the reason
  (``RefusedDelivery``).

Every such message is acknowledged, never retried or redelivered: only a
worker lost mid-job, or a Redis that cannot be reached to claim it, sends one
back (``register``).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from celery.utils.saferepr import saferepr

from broker.messaging import keys
from broker.worker.outcomes import (
    ABORTED,
    CANCELLED,
    COMPLETED,
    Outcome,
    by_status,
    failure_summary,
)
from broker.worker.runtime import Refused, current_runtime

#: What Celery keeps of a batch's result for its log line and Flower: room for
#: every job id of the largest batch a producer sends (1000 jobs), where its
#: default (1024 characters) names about twenty.
BATCH_RESULT_REPR_MAX = 64 * 1024
#: How much of an aborted run's partial results its revoked event quotes,
#: as much as Celery quotes of a completed job's results by default.
REVOKED_RESULTS_REPR_MAX = 1024


class JobError(Exception):
    """A job (or a batch's job) ended ERROR; the task fails with the detail as its message.

    Raised only once the outcome is reported, so it changes nothing about the
    job. Celery expects it (the tasks' ``throws``): it logs one line without a
    traceback, the runtime having logged the handler's error already.
    """


class RefusedDelivery(Exception):
    """A delivery that is not registered work; the task fails with the reason as its message.

    Not Celery's ``Reject``: Celery 5.7 records a task rejected for good as
    failed too, but its failure event names the wrapper of the exception
    (``ExceptionWithTraceback()``), not the reason. Celery's log record of it
    is dropped (``_RefusalLoggedOnce``): the runtime has logged and counted
    the refusal, with its reason, once.
    """


def run_job(task: Task, *args: Any, **fields: Any) -> dict[str, Any]:
    """Run one delivery of a job on this process's worker runtime."""
    try:
        outcome = current_runtime().run(*args, **fields)
    except Refused as refusal:
        raise RefusedDelivery(str(refusal)) from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        # The claim could not be taken, so nothing ran: the message goes back to
        # its queue (or, if Redis is still away, stays unacknowledged until
        # restored), rather than being acknowledged as a failed task.
        raise Reject(f"message broker unavailable: {error}", requeue=True) from None
    if outcome.status == COMPLETED:
        return outcome.results or {}
    if outcome.failed:
        raise JobError(outcome.detail or "the job ended ERROR")
    raise _did_not_run(task, outcome)


def _did_not_run(task: Task, outcome: Outcome) -> Ignore:
    """End a delivery without an outcome of its own; a cancelled or aborted job's is revoked.

    Celery sends ``task-revoked`` for a task revoked by a control command; a
    job cancelled in its claim, or aborted while it ran, is revoked in the
    same sense, so its task sends that event itself, with the same fields
    (``terminated`` for a run that had started) and the job's detail as its
    ``result``, which Flower shows beside the state. It is the task's only
    event not gated by the worker's task events switch: one per cancelled job.
    """
    if outcome.stopped:
        task.send_event(
            "task-revoked",
            terminated=outcome.status == ABORTED,
            signum=None,
            expired=False,
            result=_revoked_result(outcome),
        )
    return Ignore(f"job {outcome.job_id} is {outcome.status}")


def _revoked_result(outcome: Outcome) -> str:
    """What Flower shows of a cancelled job: why, and what an aborted run had measured."""
    if outcome.status == CANCELLED:
        return "cancelled before it ran"
    shown = outcome.detail or "aborted while running"
    if outcome.results:
        shown += f"; partial results: {saferepr(outcome.results, REVOKED_RESULTS_REPR_MAX)}"
    return shown


def run_batch(*args: Any, **fields: Any) -> dict[str, list[str]]:
    """Run a batch of jobs (``messages.JobBatch``) on this process's worker runtime.

    Its result names every job of the batch by how it ended, for an operator
    to find them in Flower; a batch with a job that ended ERROR fails, saying
    which and why. Each job's own record is in SQL, as for a job sent alone.
    """
    try:
        batch_id, service_id, jobs, signature = _batch_fields(*args, **fields)
    except (TypeError, ValueError) as error:
        refusal = current_runtime().refuse("malformed", None, f"unreadable batch: {error}")
        raise RefusedDelivery(str(refusal)) from None
    outcomes = current_runtime().run_batch(batch_id, service_id, jobs, signature)
    failure = failure_summary(outcomes)
    if failure is not None:
        raise JobError(failure)
    return by_status(outcomes)


def _batch_fields(
    batch_id: object = None,
    service_id: object = None,
    jobs: object = None,
    signature: object = None,
    **_ignored: Any,
) -> tuple[str, str, list[dict[str, Any]], object]:
    if not isinstance(batch_id, str) or not isinstance(jobs, list):
        raise ValueError("a batch needs a batch_id and a list of jobs")
    # A job that is not an object is dropped here: the batch's signature then fails.
    return batch_id, str(service_id), [job for job in jobs if isinstance(job, dict)], signature


class _RefusalLoggedOnce(logging.Filter):
    """Drops Celery's record (and traceback) of a refusal the runtime has already logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RefusedDelivery)


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
    common: dict[str, Any] = {"acks_late": True, "ignore_result": True, "throws": (JobError,)}
    app.task(name=keys.JOB_TASK, bind=True, **common)(run_job)
    app.task(name=keys.REQUEUE_JOB_TASK, bind=True, reject_on_worker_lost=True, **common)(run_job)
    app.task(
        name=keys.JOB_BATCH_TASK,
        reject_on_worker_lost=True,
        resultrepr_maxsize=BATCH_RESULT_REPR_MAX,
        **common,
    )(run_batch)
