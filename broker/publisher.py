"""Publishing what producers commit: job messages to Celery, descriptors to the directory."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from celery import Celery

from broker import keys
from broker.messages import JobMessage, ServiceDescriptor


class CeleryPublisher:
    """The outbox's publisher: jobs through Celery, services into the Redis directory."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self._app = app
        self._client = client

    def publish_jobs(self, messages: Sequence[JobMessage]) -> None:
        """Send every message on one pooled connection."""
        if not messages:
            return
        with self._app.producer_or_acquire() as producer:
            for message in messages:
                self._app.send_task(
                    message.task_name,
                    kwargs=message.task_kwargs(),
                    queue=message.queue,
                    producer=producer,
                    task_id=f"{message.job_id}.{message.attempt}",
                    ignore_result=True,
                    # Flower and the logs show the service, not the generic task name.
                    shadow=f"{message.service_name} (job)",
                )

    def publish_services(self, descriptors: Sequence[ServiceDescriptor]) -> None:
        """Write descriptors to the directory, dropping names a renamed service left."""
        if not descriptors:
            return
        by_id = {str(descriptor.id): descriptor for descriptor in descriptors}
        stale = [
            name
            for name, service_id in self._client.hgetall(keys.SERVICE_IDS).items()
            if _text(service_id) in by_id and by_id[_text(service_id)].name != _text(name)
        ]
        pipeline = self._client.pipeline(transaction=True)
        if stale:
            pipeline.hdel(keys.SERVICE_IDS, *stale)
        for service_id, descriptor in by_id.items():
            pipeline.hset(keys.SERVICE_IDS, descriptor.name, service_id)
            pipeline.hset(keys.SERVICE_DESCRIPTORS, service_id, descriptor.to_json())
        pipeline.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
