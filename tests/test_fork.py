"""Fork-safe: a Producer used in a process that then forks keeps working in the children.

A ``multiprocessing`` sweep, gunicorn ``--preload`` and Celery's prefork pool
all fork a process whose pools already hold connections.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import replace

import pytest
import sqlalchemy as sa

from broker.messaging import keys, priorities
from broker.messaging.connections import redis_client
from broker.producer import Producer
from broker.storage.tables import JobRow, create_schema, open_session

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

_producer: Producer | None = None


def _submit_in_child(n: int) -> str:
    assert _producer is not None
    job = _producer.submit("Forked", {"n": n})
    _producer.submit_many("Forked", [{"n": 1000 + n}])
    return str(job)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_children_of_a_forked_producer_submit_with_pools_of_their_own(
    backend, stack_settings, tmp_path
):
    global _producer
    url = stack_settings.database_url
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fork.sqlite3'}"
        create_schema(url)
    settings = replace(stack_settings, database_url=url)
    _producer = Producer(settings)
    service = _producer.create_service("Forked", "", SCHEMA, {"type": "object"})
    # The parent uses its pools (the one-statement path is primed on PostgreSQL).
    parent = [_producer.submit("Forked", {"n": -1}), _producer.submit("Forked", {"n": -2})]

    with multiprocessing.get_context("fork").Pool(2) as pool:
        children = pool.map(_submit_in_child, range(8))
    parent.append(_producer.submit("Forked", {"n": -3}))  # and the parent still works

    with open_session(url) as session:
        numbers = sorted(session.scalars(sa.select(JobRow.parameters["n"].as_integer())))
    assert numbers == sorted([-3, -2, -1, *range(8), *range(1000, 1008)])
    assert len(set(children)) == 8
    queue = priorities.queue_list(keys.service_queue(service), priorities.DEFAULT)
    assert redis_client(settings.broker_url).llen(queue) == 19
