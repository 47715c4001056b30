"""Publishing what producers commit: job messages to Celery, descriptors to the directory.

A sweep of thousands of jobs must leave in a few Redis round trips, not one
each: ``send_task`` costs ~0.4 ms of Python per message plus a round trip for
the message and another for its ``task-sent`` event. So job messages are
built here (``broker.messaging.celery_wire``), in Celery's documented task protocol (version 2)
and the envelope kombu's Redis transport stores, and pushed with their ``task-sent`` events
(for Flower) through one Redis pipeline. Workers consume them with stock
Celery; ``tests/test_broker_e2e.py`` and ``tests/test_flower.py`` run both ends,
and ``tests/test_wire_celery.py`` compares each message and event, field by
field, with what Celery's own ``send_task_message`` puts on Redis.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from celery.utils.time import utcoffset

from broker.messaging import keys, priorities
from broker.messaging.celery_wire import EVENT_EXCHANGE, SENT_ROUTING_KEY, TaskEncoder
from broker.messaging.claims import Claims
from broker.messaging.connections import text
from broker.messaging.messages import (
    JobBatch,
    JobMessage,
    ServiceDescriptor,
    Signed,
    batched,
    parameters_digest,
)
from broker.trust.registrations import Registrar

#: Messages sent to Redis per pipeline round trip.
PIPELINE_CHUNK = 1000
#: Seconds between checks for anyone listening to ``task-sent`` events.
EVENT_LISTENERS_TTL = 2.0


def fanout_topic(channel: Any, exchange: str, routing_key: str) -> str:
    """The pub/sub channel name kombu's Redis transport gives ``exchange``'s fanout messages.

    Celery's events go to the exchange ``celeryev``, a fanout exchange on
    Redis, and kombu sends a fanout message with one PUBLISH to ``prefix +
    exchange``, followed by ``"/" + routing_key`` when fanout patterns are on;
    Flower and ``celery events`` subscribe to the same names, by pattern. Both
    pieces are public attributes of kombu's Redis channel, set from its
    documented transport options: ``keyprefix_fanout`` (``fanout_prefix``: by
    default ``/{db}.``, formatted with the database the channel connected to,
    since pub/sub names are shared by every database of a server; empty when
    ``fanout_prefix`` is false) and ``fanout_patterns``. Reading them, rather
    than recomputing them from the URL, keeps kombu's own reading of the URL
    and options. (Only Sentinel's ``sentinel_fanout_compat`` publishes to a
    second topic, and ``connections.redis_url`` refuses Sentinel URLs.)
    ``tests/test_wire_celery.py`` subscribes Celery's own event receiver
    under each option and sees the events arrive.
    """
    prefix = str(channel.keyprefix_fanout)
    if routing_key and channel.fanout_patterns:
        return f"{prefix}{exchange}/{routing_key}"
    return f"{prefix}{exchange}"


def message_list(message: JobMessage | JobBatch) -> str:
    """The Redis list a job message goes to: its queue's, for its priority."""
    return priorities.queue_list(message.queue, message.priority)


def encode(
    encoder: TaskEncoder, message: JobMessage | JobBatch, signed: Signed, event: bool = False
) -> tuple[str, str | None]:
    """The kombu envelope of the task message, and that of its ``task-sent`` event.

    The one way a job message is encoded: the publisher's, and a worker's
    that parks a delivery and must be able to send it again as it was, with
    the signature it came with (a worker cannot sign).
    """
    if isinstance(message, JobBatch):
        task_id, task_name = message.batch_id, keys.JOB_BATCH_TASK
        shadow = f"{message.first.service_name} ({len(message.jobs)} jobs)"
    else:
        task_id, task_name = f"{message.job_id}.{message.attempt}", message.task_name
        shadow = f"{message.service_name} (job)"
    kwargs = message.task_kwargs(signed)
    priority = priorities.kombu_priority(message.priority)
    return encoder.encode(task_id, task_name, shadow, message.queue, kwargs, event, priority)


class CeleryPublisher:
    """The outbox's publisher: jobs through Celery, services into the Redis directory.

    Each job message goes out signed (``broker.trust.registrations``) with the
    private key in the file ``signing_key``: a worker runs nothing else. The
    key is read when first needed, so that a process that publishes services
    only (a hold, a resume) needs none.
    """

    def __init__(self, app: Celery, client: redis.Redis, signing_key: str) -> None:
        self._app = app
        self._client = client
        self._signing_key = signing_key
        self._registrar: Registrar | None = None
        self._claims = Claims(client)
        self._sent_topic: str | None = None
        self._listeners = False
        self._listeners_checked_at = -EVENT_LISTENERS_TTL
        self._encoder = TaskEncoder(
            f"gen{os.getpid()}@{socket.gethostname()}", utcoffset(), app.clock
        )

    def publish_jobs(self, messages: Sequence[JobMessage]) -> None:
        """Push every message, and its ``task-sent`` event, in pipelined chunks.

        The same round trip records the jobs as published (``keys.PUBLISHED``)
        for beat to mark in SQL (``outbox.mark_taken``).

        Each job's registration (``Claims.register``) goes first in the same
        round trip, so no worker can see a message before what it must match;
        each message carries the core's signature over its jobs' ids, service
        and parameters' digests (one signature per message, a batch's too).

        Jobs travel alone, or in batches where their ``per_message`` allows
        (``messages.batched``). Each chunk's messages go to their queue's list
        for their priority (``priorities.queue_list``, the one kombu's own
        publish would use) in one multi-value ``LPUSH``, which queues them in
        the order given, as one ``LPUSH`` each would. They are pushed highest
        priority first (``priorities.highest_first``): a worker waiting for its
        queue takes the first job that reaches any of its lists, so a re-publish
        of several priorities pushed in submission order could start a low one
        first.
        """
        if not messages:
            return
        registrar = self.registrar  # no key: nothing of it goes
        messages = priorities.highest_first(messages)
        sent_events = self._events_wanted()
        topic = self._event_topic() if sent_events else ""
        pipeline = self._client.pipeline(transaction=False)
        for start in range(0, len(messages), PIPELINE_CHUNK):
            chunk = messages[start : start + PIPELINE_CHUNK]
            by_service: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
            digests: dict[uuid.UUID, str] = {}
            for job in chunk:
                digest = digests[job.job_id] = parameters_digest(job.parameters)
                by_service.setdefault(job.service_id, []).append((job.job_id, digest))
            for service_id, registrations in by_service.items():
                self._claims.register(pipeline, service_id, registrations)
            by_queue: dict[str, list[str]] = {}
            for message in batched(chunk):
                signed = _signed(registrar, message, digests)
                task_message, event = encode(self._encoder, message, signed, sent_events)
                by_queue.setdefault(message_list(message), []).append(task_message)
                if event is not None:
                    pipeline.publish(topic, event)
            for queue, task_messages in by_queue.items():
                pipeline.lpush(queue, *task_messages)
            pipeline.sadd(keys.PUBLISHED, *(str(message.job_id) for message in chunk))
            pipeline.execute()

    @property
    def registrar(self) -> Registrar:
        """What signs the jobs; a ``ConfigurationError`` naming the setting if there is no key.

        A producer asks before it commits a job, so that a missing key is an
        error there and then, not a job left for beat to publish.
        """
        if self._registrar is None:
            self._registrar = Registrar.from_file(self._signing_key)
        return self._registrar

    def take_published(self, limit: int) -> list[uuid.UUID]:
        """Remove and return up to ``limit`` ids of jobs published but not yet marked."""
        taken: Any = self._client.spop(keys.PUBLISHED, limit)
        return [uuid.UUID(text(job_id)) for job_id in taken or ()]

    def _events_wanted(self) -> bool:
        """Whether ``task-sent`` events may reach anyone: Celery's setting, and a listener.

        Event consumers (Flower, ``celery events``) subscribe by pattern, so
        with no pattern subscription on the server an event is work for
        nothing: encoding it costs as much as the message. Asked at most every
        ``EVENT_LISTENERS_TTL`` seconds; a Flower that has just started may miss
        that long of ``task-sent`` events, as it misses those sent before it.
        """
        if not self._app.conf.task_send_sent_event:
            return False
        now = time.monotonic()
        if now >= self._listeners_checked_at + EVENT_LISTENERS_TTL:
            self._listeners = int(self._client.pubsub_numpat()) > 0
            self._listeners_checked_at = now
        return self._listeners

    def _event_topic(self) -> str:
        """The pub/sub channel kombu publishes ``task-sent`` events on (it depends on the db)."""
        if self._sent_topic is None:
            with self._app.connection_for_write() as connection:
                self._sent_topic = fanout_topic(
                    connection.default_channel, EVENT_EXCHANGE, SENT_ROUTING_KEY
                )
        return self._sent_topic

    def publish_services(self, descriptors: Sequence[ServiceDescriptor]) -> None:
        """Write descriptors to the directory, dropping names a renamed service left.

        The same round trip writes what claims read of a service's hold and
        ``max_running`` (``keys.service_control``): from SQL, by the producer
        that changed them and by beat on every tick, so a Redis that lost them
        learns them again within a tick.
        """
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
            _control(pipeline, descriptor)
        pipeline.execute()


def _signed(
    registrar: Registrar, message: JobMessage | JobBatch, digests: dict[uuid.UUID, str]
) -> Signed:
    """The core's signature over every job ``message`` carries (``registrations.document``)."""
    jobs = message.jobs if isinstance(message, JobBatch) else (message,)
    registered = [(job.job_id, digests[job.job_id]) for job in jobs]
    return Signed(registrar.sign(jobs[0].service_id, registered))


def _control(pipeline: redis.client.Pipeline, descriptor: ServiceDescriptor) -> None:
    """Write a service's hold and ``max_running`` where its claims read them (from SQL)."""
    control = keys.service_control(descriptor.id)
    if descriptor.held:
        pipeline.hset(control, "held", "1")
    else:
        pipeline.hdel(control, "held")
    if descriptor.max_running:
        pipeline.hset(control, "max_running", descriptor.max_running)
    else:
        pipeline.hdel(control, "max_running")
