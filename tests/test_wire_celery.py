"""What the publisher pushes is what Celery itself sends, and its events reach Celery's receivers.

``broker.messaging.celery_wire`` builds Celery's task message and kombu's Redis envelope by
hand, for speed. The golden tests here send the same task with Celery's own
``send_task`` on a real Redis, read both raw messages back from the list
(and both ``task-sent`` events off pub/sub), and compare them field by
field. Only what must differ between two sends may differ: kombu's delivery
tags (a fresh UUID per message), the event's clock and timestamp, and
``reply_to`` (the sending thread's RPC reply queue in Celery; TopChef keeps
no results).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from support import registrar, signing_key_file, wait_for

from broker.app import make_app
from broker.messaging import priorities
from broker.messaging.celery_wire import bounded_repr
from broker.messaging.messages import JobBatch, JobMessage, Signed, batched, parameters_digest
from broker.messaging.publisher import CeleryPublisher
from broker.settings import Settings

pytestmark = pytest.mark.redis

#: Values kombu or Celery draw afresh for each message or event.
FRESH_PROPERTIES = {"delivery_tag"}
FRESH_EVENT_FIELDS = {"clock", "timestamp"}

AWKWARD = {"text": 'tab\t, newline\n, quote ", backslash \\, é, 😀', "n": [1, 2.5, None, True]}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def _app(redis_url: str, **transport_options: Any) -> Celery:
    app = make_app(Settings(broker_url=redis_url))
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        **transport_options,
    }
    return app


def _job(
    index: int,
    per_message: int = 1,
    service_id: uuid.UUID | None = None,
    priority: int = priorities.DEFAULT,
) -> JobMessage:
    return JobMessage(
        uuid.uuid4(),
        service_id or uuid.uuid4(),
        'Rabi "7 T"',
        {**AWKWARD, "index": index},
        per_message=per_message,
        priority=priority,
    )


def _celery_send(app: Celery, message: JobMessage | JobBatch, signed: Signed) -> None:
    """Send ``message`` through Celery's own message builder and publisher, with our options.

    This is ``send_task``'s path (``amqp.create_task_message`` then
    ``amqp.send_task_message``) with the options the publisher uses.
    ``kwargsrepr`` is given because TopChef chooses its own (``bounded_repr``,
    twenty times cheaper than Celery's ``saferepr``), as Celery lets callers
    do. (``send_task`` itself would also copy such an option into the
    message's properties, which is why it is not called here.)
    """
    if isinstance(message, JobBatch):
        task_id, task_name = message.batch_id, "topchef.jobs"
        shadow = f"{message.first.service_name} ({len(message.jobs)} jobs)"
    else:
        task_id, task_name = f"{message.job_id}.{message.attempt}", message.task_name
        shadow = f"{message.service_name} (job)"
    kwargs = message.task_kwargs(signed)
    task_message = app.amqp.create_task_message(
        task_id,
        task_name,
        (),
        kwargs,
        reply_to=app.thread_oid,
        create_sent_event=app.conf.task_send_sent_event,
        shadow=shadow,
        ignore_result=True,
        kwargsrepr=bounded_repr(kwargs),
    )
    with app.producer_or_acquire() as producer:
        app.amqp.send_task_message(
            producer,
            task_name,
            task_message,
            queue=message.queue,
            priority=priorities.kombu_priority(message.priority),
        )


def _decode(raw: bytes | str) -> tuple[dict[str, Any], Any]:
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    return envelope, json.loads(base64.b64decode(envelope["body"]))


def _without(mapping: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


class _Events:
    """``task-sent`` events off Redis pub/sub, as raw messages with the channel they came on."""

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*celeryev*")  # as Flower and `celery events` do
        self._pubsub.get_message(timeout=1)
        self._seen: list[dict[str, Any]] = []

    def of(self, task_id: str, count: int = 1) -> list[tuple[str, bytes]]:
        """The next ``count`` events about ``task_id``; other publishers' are skipped."""
        found: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 10
        while len(found) < count and time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            _, body = _decode(message["data"])
            if body.get("uuid") == task_id:
                found.append((message["channel"].decode(), message["data"]))
        assert len(found) == count, f"{len(found)} of {count} task-sent events for {task_id}"
        return found

    def close(self) -> None:
        self._pubsub.close()


def _task_id(message: JobMessage | JobBatch) -> str:
    if isinstance(message, JobBatch):
        return message.batch_id
    return f"{message.job_id}.{message.attempt}"


@pytest.mark.parametrize(
    ("per_message", "priority"),
    [(1, priorities.DEFAULT), (3, priorities.DEFAULT), (1, priorities.HIGHEST), (3, 0)],
    ids=["one job", "a batch of 3", "one job of the highest priority", "a batch of the lowest"],
)
def test_the_published_message_and_event_are_those_celery_sends(
    client: redis.Redis, redis_url: str, per_message: int, priority: int
) -> None:
    """The same message, on the same Redis list: Celery's for ``send_task(priority=…)``."""
    app = _app(redis_url)
    service_id = uuid.uuid4()
    jobs = [_job(index, per_message, service_id, priority) for index in range(per_message)]
    queue = priorities.queue_list(jobs[0].queue, priority)
    events = _Events(client)
    try:
        wait_for(lambda: client.pubsub_numpat() > 0, 10, "the pattern subscription")
        CeleryPublisher(app, client, signing_key_file()).publish_jobs(jobs)
        ours = client.lrange(queue, 0, -1)
        assert len(ours) == 1
        # A batch's id is drawn as it is published: Celery sends the same batch.
        (message,) = batched(jobs)
        if isinstance(message, JobBatch):
            message = JobBatch(_decode(ours[0])[0]["headers"]["id"], message.jobs)
        (our_event,) = events.of(_task_id(message))
        client.delete(queue)

        _celery_send(app, message, Signed(_decode(ours[0])[1][1]["signature"]))
        theirs = client.lrange(queue, 0, -1)
        (their_event,) = events.of(_task_id(message))
        # Celery put it on no other list of the queue.
        lists = priorities.queue_lists(jobs[0].queue)
        assert sum(client.llen(name) for name in lists) == 1
    finally:
        events.close()
    assert len(theirs) == 1

    (our_envelope, our_body), (their_envelope, their_body) = _decode(ours[0]), _decode(theirs[0])
    assert set(our_envelope) == set(their_envelope)
    assert our_body == their_body  # args, kwargs and embed, as a worker reads them
    assert our_envelope["content-type"] == their_envelope["content-type"] == "application/json"
    assert our_envelope["content-encoding"] == their_envelope["content-encoding"] == "utf-8"
    assert our_envelope["headers"] == their_envelope["headers"]
    fresh = FRESH_PROPERTIES | {"reply_to"}
    assert _without(our_envelope["properties"], fresh) == _without(
        their_envelope["properties"], fresh
    )
    assert (
        our_envelope["properties"]["delivery_tag"] != their_envelope["properties"]["delivery_tag"]
    )
    assert our_envelope["properties"]["reply_to"] == ""
    assert isinstance(their_envelope["properties"]["reply_to"], str)

    (our_channel, our_raw), (their_channel, their_raw) = our_event, their_event
    assert our_channel == their_channel
    (our_event_envelope, our_fields), (their_event_envelope, their_fields) = (
        _decode(our_raw),
        _decode(their_raw),
    )
    body_free = {"body"}
    assert _without(our_event_envelope, body_free | {"properties"}) == _without(
        their_event_envelope, body_free | {"properties"}
    )
    assert _without(our_event_envelope["properties"], FRESH_PROPERTIES) == _without(
        their_event_envelope["properties"], FRESH_PROPERTIES
    )
    assert _without(our_fields, FRESH_EVENT_FIELDS) == _without(their_fields, FRESH_EVENT_FIELDS)
    assert set(our_fields) == set(their_fields)
    assert isinstance(our_fields["clock"], int)
    assert abs(our_fields["timestamp"] - their_fields["timestamp"]) < 60


def test_for_plain_parameters_our_argument_repr_is_celerys_own() -> None:
    """Celery's default ``kwargsrepr`` (``saferepr``) and ours agree for JSON without escapes,
    so Flower shows what it would for a stock producer."""
    from celery.utils.saferepr import saferepr

    kwargs = _job(7).task_kwargs() | {"parameters": {"x": 3, "label": "point 7", "f": [1.5]}}
    assert bounded_repr(kwargs) == saferepr(kwargs, 1024)


class _Receiver:
    """Celery's own event receiver on ``app``, consuming in a thread until it saw ``wanted``."""

    def __init__(self, app: Celery, client: redis.Redis, wanted: Callable[[dict[str, Any]], bool]):
        self.events: list[dict[str, Any]] = []
        self._name = f"wire-test-{uuid.uuid4().hex[:8]}"
        self._client = client
        self._app = app
        self._wanted = wanted
        self._receiver: Any = None
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "client_name": self._name,
        }
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._app.connection_for_read() as connection:
            self._receiver = self._app.events.Receiver(
                connection, handlers={"task-sent": self._on_event}
            )
            with contextlib.suppress(TimeoutError):  # ``join`` tells
                self._receiver.capture(limit=None, timeout=15, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self._wanted(event):
            self._receiver.should_stop = True

    def wait_subscribed(self) -> None:
        def subscribed() -> bool:
            return any(
                entry.get("name") == self._name and int(entry.get("psub", 0)) > 0
                for entry in self._client.client_list()
            )

        wait_for(subscribed, 10, "the event receiver's subscription")

    def join(self) -> None:
        self._thread.join(20)
        assert any(self._wanted(event) for event in self.events), "the receiver never saw it"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fanout_prefix": False},
        {"fanout_prefix": "/lab{db}."},
        {"fanout_patterns": False},
    ],
    ids=["defaults", "no prefix", "own prefix", "no patterns"],
)
def test_celerys_event_receiver_gets_the_task_sent_events(
    client: redis.Redis, redis_url: str, options: dict[str, Any]
) -> None:
    """The topic is kombu's for each setting of its documented fanout options."""
    job = _job(1)
    task_id = f"{job.job_id}.1"
    receiver = _Receiver(_app(redis_url, **options), client, lambda e: e["uuid"] == task_id)
    receiver.wait_subscribed()

    CeleryPublisher(_app(redis_url, **options), client, signing_key_file()).publish_jobs([job])
    receiver.join()

    (event,) = [e for e in receiver.events if e["uuid"] == task_id]
    assert (event["type"], event["name"], event["queue"]) == ("task-sent", job.task_name, job.queue)
    signature = registrar().sign(job.service_id, [(job.job_id, parameters_digest(job.parameters))])
    assert event["kwargs"] == bounded_repr(job.task_kwargs(Signed(signature)))
