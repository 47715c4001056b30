"""A delivery its service may not start now, made ready to wait in the parked set.

A claim parks a delivery when its service is held or runs as many jobs as its
``max_running`` allows (``broker.messaging.claims``): the delivery's message is
kept in Redis, and its Celery message acknowledged, so no worker thread waits
for a slot and nothing polls for one. The message kept is the job's own, encoded
as the publisher encodes it (``publisher.encode``), so that when a slot frees
it goes back to its queue's list for its priority as if it had just been
published. It is encoded only when the claim asks for it: a service that is
neither held nor limited pays nothing.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from celery.utils.time import utcoffset

from broker.messaging.celery_wire import TaskEncoder
from broker.messaging.claims import Parking
from broker.messaging.messages import JobMessage, ServiceDescriptor, Signed, requeues_lost_work
from broker.messaging.publisher import encode, message_list


class Parker:
    """Encodes the messages of this worker's parked deliveries."""

    def __init__(self) -> None:
        # A parked message sends no ``task-sent`` event, so no clock is needed.
        self._encoder = TaskEncoder(f"gen{os.getpid()}@{socket.gethostname()}", utcoffset(), None)

    def parking(
        self,
        descriptor: ServiceDescriptor,
        job_id: uuid.UUID,
        parameters: dict[str, Any],
        attempt: int,
        priority: int,
        signed: Signed,
    ) -> Parking:
        """The delivery's message as it came, with the signature it came with.

        A worker cannot sign: the parked message proves its registration as
        the delivery did, so that it verifies when it comes back.
        """
        message = JobMessage(
            job_id=job_id,
            service_id=descriptor.id,
            service_name=descriptor.name,
            parameters=parameters,
            requeue=requeues_lost_work(descriptor.worker_loss_policy),
            attempt=attempt,
            priority=priority,
        )
        task_message, _event = encode(self._encoder, message, signed)
        return Parking(task_message, message_list(message), priority)
