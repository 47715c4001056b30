"""Workers' presences on services, kept per worker in real Redis (both backends)."""

from __future__ import annotations

import uuid

import pytest
import redis
from support import wait_for

from broker.messaging import keys
from broker.messaging.presence import Presence

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url):
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


def test_one_worker_leaving_withdraws_only_its_own_presence(client):
    presence = Presence(client)
    echo, rabi = uuid.uuid4(), uuid.uuid4()

    assert presence.arrive("pc-1:10", [echo, rabi], 30) == {echo: 1, rabi: 1}
    assert presence.arrive("pc-2:20", [echo], 30) == {echo: 2}
    assert presence.leave("pc-1:10", [echo, rabi]) == {echo: 1, rabi: 0}

    assert presence.live([echo, rabi]) == {echo: 1, rabi: 0}
    assert client.zrange(keys.service_workers(echo), 0, -1) == [b"pc-2:20"]
    assert not client.exists(keys.service_workers(rabi))
    assert presence.leave("pc-2:20", [echo]) == {echo: 0}
    assert not client.exists(keys.service_workers(echo))


def test_a_worker_that_never_leaves_lapses_and_its_set_expires(client):
    presence = Presence(client)
    service = uuid.uuid4()
    presence.arrive("killed:1", [service], 0.3)
    presence.arrive("alive:2", [service], 60)

    wait_for(lambda: presence.live([service]) == {service: 1}, 10, "the killed worker to lapse")
    # The next change prunes it, and the set lives as long as its longest presence.
    assert presence.arrive("alive:2", [service], 0.3) == {service: 1}
    assert client.zrange(keys.service_workers(service), 0, -1) == [b"alive:2"]
    assert 0 < client.pttl(keys.service_workers(service)) <= 300
    wait_for(lambda: not client.exists(keys.service_workers(service)), 10, "the set to expire")


def test_renewing_extends_a_presence_but_makes_none(client):
    presence = Presence(client)
    service = uuid.uuid4()
    assert presence.renew("http:stranger", [service], 30) == {service: 0}

    presence.arrive("http:rig-1", [service], 1)
    before = client.zscore(keys.service_workers(service), "http:rig-1")
    assert presence.renew("http:rig-1", [service], 60) == {service: 1}
    assert client.zscore(keys.service_workers(service), "http:rig-1") > before + 50_000


def test_no_services_is_no_round_trip(client):
    assert Presence(client).live([]) == {}
