"""Beat's directory sync: the cost of what changed, and nothing SQL says forgotten.

A beat tick used to publish every service again. ``broker.beat.directory``
publishes what changed since its last tick, a rolling slice of the rest, and
everything when Redis has lost the mark of its last full publish. Each test
breaks what the sync must heal (a change written to SQL with no publish, a
Redis that lost its keys, a stale descriptor) and looks at Redis.
"""

from __future__ import annotations

import math
import uuid

import pytest
import sqlalchemy as sa
from support import keyed

from broker.beat.directory import SLICE, Directory
from broker.messaging import keys
from broker.messaging.connections import redis_client, text
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import ServiceRow, database_now, open_session


class Counting:
    """The real publisher, counting the descriptors each call writes."""

    def __init__(self, publisher) -> None:
        self.publisher = publisher
        self.published: list[uuid.UUID] = []

    def publish_services(self, descriptors) -> None:
        self.published += [descriptor.id for descriptor in descriptors]
        self.publisher.publish_services(descriptors)


@pytest.fixture
def producer(database_url: str, redis_url: str) -> Producer:
    broker_url = redis_url.replace("unix://", "redis+socket://")
    return Producer(keyed(Settings(database_url=database_url, broker_url=broker_url)))


def _services(producer: Producer, count: int) -> list[uuid.UUID]:
    return [producer.create_service(f"S{index:04}", "", {}, {}) for index in range(count)]


def _sync(producer: Producer, directory: Directory) -> list[uuid.UUID]:
    counting = Counting(producer.publisher)
    with open_session(producer.settings.database_url) as session:
        directory.sync(session, counting)
    return counting.published


@pytest.mark.redis
def test_a_tick_publishes_what_changed_and_a_slice_not_every_service(producer):
    ids = _services(producer, 3 * SLICE)
    directory = Directory(redis_client(producer.settings.broker_url))
    assert sorted(_sync(producer, directory)) == sorted(ids)  # the first tick: everything
    assert len(_sync(producer, directory)) == SLICE  # nothing changed: the slice alone

    changed = ids[-1]
    with open_session(producer.settings.database_url) as session:  # SQL only, no publish
        session.execute(
            sa.update(ServiceRow)
            .where(ServiceRow.id == changed)
            .values(held_at=database_now(session), max_running=2)
        )
        session.commit()
    published = _sync(producer, directory)
    assert changed in published
    assert len(published) <= SLICE + 1
    control = redis_client(producer.settings.broker_url).hgetall(keys.service_control(changed))
    assert {text(k): text(v) for k, v in control.items()} == {"held": "1", "max_running": "2"}


@pytest.mark.redis
def test_every_service_is_published_again_within_its_share_of_ticks(producer):
    ids = _services(producer, 2 * SLICE + 7)
    client = redis_client(producer.settings.broker_url)
    directory = Directory(client)
    _sync(producer, directory)
    client.hset(keys.SERVICE_DESCRIPTORS, str(ids[0]), "{}")  # an out-of-order publish
    seen: set[uuid.UUID] = set()
    for _ in range(math.ceil(len(ids) / SLICE)):
        seen.update(_sync(producer, directory))
    assert seen == set(ids)
    assert text(client.hget(keys.SERVICE_DESCRIPTORS, str(ids[0]))) != "{}"


@pytest.mark.redis
def test_a_redis_that_lost_its_data_gets_the_whole_directory_at_the_next_tick(producer):
    ids = _services(producer, SLICE + 10)
    producer.hold_service("S0003", "bake-out")
    client = redis_client(producer.settings.broker_url)
    directory = Directory(client)
    _sync(producer, directory)
    client.flushdb()  # a restart without its data
    assert sorted(_sync(producer, directory)) == sorted(ids)
    assert client.hlen(keys.SERVICE_DESCRIPTORS) == len(ids)
    held = ids[3]
    assert text(client.hget(keys.service_control(held), "held")) == "1"
