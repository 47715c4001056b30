"""Deliveries no producer made, sent the way anyone with the Redis URL could.

A plain Celery app, knowing only TopChef's task name, queue names and the
shape of a job message's keyword arguments (``broker.messaging.messages.JobMessage.
task_kwargs``), spelled out here by hand as an outsider would: nothing of the
broker's own publishing code is used, so whatever the broker adds to its own
messages, these carry only what a forger can know.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import celery

#: TopChef's task that runs one job (``broker.messaging.keys.JOB_TASK``), as seen from outside.
JOB_TASK = "topchef.job"


def queue_of(service_id: uuid.UUID) -> str:
    return f"topchef.service.{service_id}"


@dataclass(frozen=True)
class Forgery:
    """One forged delivery: what it claims to be, and where it is sent."""

    label: str
    queue: str
    job_id: uuid.UUID
    service_id: uuid.UUID
    service_name: str
    parameters: dict[str, Any]

    def kwargs(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "service_id": str(self.service_id),
            "service_name": self.service_name,
            "parameters": self.parameters,
            "attempt": 1,
        }


def send(broker_url: str, forgeries: list[Forgery]) -> None:
    app = celery.Celery("forger", broker=broker_url, set_as_current=False)
    app.conf.task_serializer = "json"
    try:
        for forgery in forgeries:
            app.send_task(JOB_TASK, kwargs=forgery.kwargs(), queue=forgery.queue)
    finally:
        app.close()
