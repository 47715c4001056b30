"""Publishing what producers commit: job messages to Celery, descriptors to the directory.

A sweep of thousands of jobs must leave in a few Redis round trips, not one
each: ``send_task`` costs ~0.4 ms of Python per message plus a round trip for
the message and another for its ``task-sent`` event. So job messages are
built here, in Celery's documented task protocol (version 2) and the envelope
kombu's Redis transport stores, and pushed with their ``task-sent`` events
(for Flower) through one Redis pipeline. Workers consume them with stock
Celery; ``tests/test_broker_e2e.py`` and ``tests/test_flower.py`` run both ends.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from celery.utils.time import utcoffset

from broker import keys
from broker.connections import text
from broker.messages import JobBatch, JobMessage, ServiceDescriptor, batched

#: Messages sent to Redis per pipeline round trip.
PIPELINE_CHUNK = 1000
#: What Celery keeps of a task's arguments in its headers and events (its default).
REPR_MAX = 1024
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Celery's event exchange, and the routing key of a ``task-sent`` event.
_EVENT_EXCHANGE = "celeryev"
_SENT_ROUTING_KEY = "task.sent"


class CeleryPublisher:
    """The outbox's publisher: jobs through Celery, services into the Redis directory."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self._app = app
        self._client = client
        self._sent_topic: str | None = None
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._utcoffset = utcoffset()

    def publish_jobs(self, messages: Sequence[JobMessage]) -> None:
        """Push every message, and its ``task-sent`` event, in pipelined chunks.

        The same round trip records the jobs as published (``keys.PUBLISHED``)
        for beat to mark in SQL (``outbox.mark_taken``).

        Jobs travel alone, or in batches where their ``per_message`` allows
        (``messages.batched``). Each chunk's messages go to their queue in one
        multi-value ``LPUSH``, which queues them in the order given, as one
        ``LPUSH`` each would.
        """
        if not messages:
            return
        sent_events = bool(self._app.conf.task_send_sent_event)
        topic = self._event_topic() if sent_events else ""
        pipeline = self._client.pipeline(transaction=False)
        for start in range(0, len(messages), PIPELINE_CHUNK):
            by_queue: dict[str, list[str]] = {}
            for message in batched(messages[start : start + PIPELINE_CHUNK]):
                task_message, event = self._encode(message)
                by_queue.setdefault(message.queue, []).append(task_message)
                if sent_events:
                    pipeline.publish(topic, event)
            for queue, task_messages in by_queue.items():
                pipeline.lpush(queue, *task_messages)
            chunk = messages[start : start + PIPELINE_CHUNK]
            pipeline.sadd(keys.PUBLISHED, *(str(message.job_id) for message in chunk))
            pipeline.execute()

    def take_published(self, limit: int) -> list[uuid.UUID]:
        """Remove and return up to ``limit`` ids of jobs published but not yet marked."""
        taken: Any = self._client.spop(keys.PUBLISHED, limit)
        return [uuid.UUID(text(job_id)) for job_id in taken or ()]

    def _encode(self, message: JobMessage | JobBatch) -> tuple[str, str]:
        """The kombu envelope of the task message, and that of its ``task-sent`` event."""
        if isinstance(message, JobBatch):
            task_id = message.batch_id
            task_name = keys.JOB_BATCH_TASK
            # Flower and the logs show the service, not the generic task name.
            shadow = f"{message.first.service_name} ({len(message.jobs)} jobs)"
        else:
            task_id = f"{message.job_id}.{message.attempt}"
            task_name = message.task_name
            shadow = f"{message.service_name} (job)"
        kwargs = message.task_kwargs()
        kwargs_repr = _bounded_repr(kwargs)
        body = json.dumps([[], kwargs, _EMBED])
        headers: dict[str, Any] = {
            "lang": "py",
            "task": task_name,
            "id": task_id,
            "shadow": shadow,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": kwargs_repr,
            "origin": self._origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties = {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": message.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        task_message = _envelope(body, headers, properties)
        event_body = {
            "hostname": self._origin,
            "utcoffset": self._utcoffset,
            "pid": os.getpid(),
            "clock": self._app.clock.forward(),
            "uuid": task_id,
            "root_id": task_id,
            "parent_id": None,
            "name": task_name,
            "args": "()",
            "kwargs": kwargs_repr,
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": message.queue,
            "exchange": "",
            "routing_key": message.queue,
            "timestamp": time.time(),
            "type": "task-sent",
        }
        event_properties = {
            "delivery_mode": 1,
            "delivery_info": {"exchange": _EVENT_EXCHANGE, "routing_key": _SENT_ROUTING_KEY},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        event = _envelope(json.dumps(event_body), {"hostname": self._origin}, event_properties)
        return task_message, event

    def _event_topic(self) -> str:
        """The pub/sub channel kombu publishes ``task-sent`` events on (it depends on the db)."""
        if self._sent_topic is None:
            with self._app.connection_for_write() as connection:
                channel: Any = connection.default_channel
                self._sent_topic = str(
                    channel._get_publish_topic(_EVENT_EXCHANGE, _SENT_ROUTING_KEY)
                )
        return self._sent_topic

    def publish_services(self, descriptors: Sequence[ServiceDescriptor]) -> None:
        """Write descriptors to the directory, dropping names a renamed service left."""
        if not descriptors:
            return
        by_id = {str(descriptor.id): descriptor for descriptor in descriptors}
        stale = [
            name
            for name, service_id in self._client.hgetall(keys.SERVICE_IDS).items()
            if text(service_id) in by_id and by_id[text(service_id)].name != text(name)
        ]
        pipeline = self._client.pipeline(transaction=True)
        if stale:
            pipeline.hdel(keys.SERVICE_IDS, *stale)
        for service_id, descriptor in by_id.items():
            pipeline.hset(keys.SERVICE_IDS, descriptor.name, service_id)
            pipeline.hset(keys.SERVICE_DESCRIPTORS, service_id, descriptor.to_json())
        pipeline.execute()


def _envelope(body: str, headers: dict[str, Any], properties: dict[str, Any]) -> str:
    """A message as kombu's Redis transport stores it: a JSON body in base64."""
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    )


def _bounded_repr(value: object) -> str:
    """What Flower shows of a job's arguments: JSON data, so ``repr`` is safe; cut short."""
    text = repr(value)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."
