"""Services and jobs as TopChef's clients read them.

The Java client maps ``data`` with Jackson, which refuses fields it does not
know; so ``data`` holds exactly TopChef's fields, and what this broker knows
beyond them (progress, attempts, the worker, why a job failed) goes in ``meta``.

TopChefClient (the Python client, under ``/legacy``) reads a job's results as
``result``; its answers carry both names (``job_detail(job, legacy=True)``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker.models.job import Job
from broker.models.service import Service


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(value: float) -> float | int:
    """TopChef sent timeouts as whole seconds; keep that form whenever it is exact."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def service_overview(service: Service) -> dict[str, Any]:
    return {"id": str(service.id), "name": service.name, "description": service.description}


def service_detail(service: Service) -> dict[str, Any]:
    return {
        **service_overview(service),
        "job_registration_schema": service.job_registration_schema,
        "job_result_schema": service.job_result_schema,
        "is_service_available": service.is_service_available,
        "has_timed_out": service.has_timed_out,
        "timeout": _seconds(service.timeout),
    }


def service_meta(service: Service) -> dict[str, Any]:
    return {
        "last_checked_in": _time(service.last_checked_in),
        "worker_loss_policy": service.worker_loss_policy,
        "max_attempts": service.max_attempts,
        "max_running": service.max_running,
        "jobs_per_message": service.jobs_per_message,
        **service.hold_record(),
    }


def job_detail(job: Job, *, legacy: bool = False) -> dict[str, Any]:
    detail = {
        "id": str(job.id),
        "status": job.status.value,
        "parameters": job.parameters,
        "results": job.results,
        "date_submitted": _time(job.date_submitted),
    }
    if legacy:
        detail["result"] = detail["results"]
    return detail


def job_overview(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "status": job.status.value,
        "date_submitted": _time(job.date_submitted),
        "service_id": str(job.service_id),
    }


def job_meta(job: Job) -> dict[str, Any]:
    return {
        "service_id": str(job.service_id),
        "detail": job.detail,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "attempts": job.attempts,
        "worker": job.worker,
        "date_started": _time(job.date_started),
        "date_finished": _time(job.date_finished),
        "not_before": _time(job.not_before),
        "earlier_attempts": job.earlier_attempts,
        "resubmitted_from": str(job.resubmitted_from) if job.resubmitted_from else None,
        "resubmissions": [str(job_id) for job_id in job.resubmissions],
        "priority": job.priority,
    }
