"""Start order is free: a worker that starts before its services waits for them.

Lab PCs boot in any order. A worker whose services do not exist yet (or that
starts before beat's first sync of the directory) says once what it waits
for, and serves each service within one directory sync of its creation.
"""

from __future__ import annotations

import lab
import pytest
from support import wait_for

from broker.models.service import Service
from broker.storage.tables import open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_waits_for_its_services_and_serves_each_as_it_appears(stack, pool):
    stack.start_mirror()
    worker = stack.worker("--pool", pool, "--concurrency", "2")
    wait_for(lambda: "waiting for the services" in worker.log(), 30, "the worker to say it waits")

    # Created by a producer: its descriptor is published when the transaction commits.
    stack.producer.create_service(lab.SQUARE, "", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS)
    square = stack.producer.submit(lab.SQUARE, {"x": 7})
    assert stack.producer.wait(square, timeout=30) == {"square": 49}

    # Created through the seed API with no publisher: beat's directory sync announces it.
    with open_session(stack.settings.database_url) as session:
        Service.new(lab.HELD, "", lab.HELD_SCHEMA, lab.HELD_SCHEMA, session)
        session.commit()
    stack.release("late")
    held = stack.producer.submit(lab.HELD, {"tag": "late"})
    stack.tick()
    assert stack.producer.wait(held, timeout=30) == {"tag": "late"}

    assert worker.popen.poll() is None
    log = worker.log()
    assert log.count("waiting for the services") == 1
    assert f"service {lab.HELD!r} appeared" in log
    assert "Traceback" not in log
