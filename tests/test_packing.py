"""How many jobs share a message when nobody says: fast sweeps, and every worker busy.

The rule (``broker.producer.packing``) is checked on its own, by simulating
the workers it must keep busy, and through a real producer: the messages in
Redis, the service's history in SQL, the overrides from Python, the CLI and
HTTP.
"""

from __future__ import annotations

import heapq
import json
import math
from datetime import UTC, datetime, timedelta

import lab
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import DeserializationError
from broker.messaging import keys, priorities
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.producer import packing
from broker.storage.tables import JobRow, open_session

pytest_plugins = ["gateway_support"]  # the api fixture


def _makespan(sizes: list[int], threads: int, seconds: float = 1.0) -> float:
    """When the last of ``threads`` free threads ends, each taking the next message in turn."""
    free_at = [0.0] * threads
    for size in sizes:
        heapq.heappush(free_at, heapq.heappop(free_at) + size * seconds)
    return max(free_at)


@given(count=st.integers(0, 20_000), typical=st.none() | st.floats(1e-6, 1e4))
def test_sizes_cover_the_sweep_in_order_and_shrink_towards_its_end(count, typical):
    sizes = packing.sizes(count, typical)
    assert sum(sizes) == count
    assert all(1 <= size <= packing.MOST for size in sizes)
    assert sizes == sorted(sizes, reverse=True)
    remaining = count
    for size in sizes:
        assert size <= math.ceil(remaining / packing.SPREAD)
        remaining -= size
    if sizes:
        assert sizes[-1] == 1


@given(count=st.integers(1, 5_000), threads=st.integers(1, packing.SPREAD))
def test_a_sweep_of_long_jobs_with_no_history_keeps_every_thread_busy(count, threads):
    ideal = math.ceil(count / threads)  # whole jobs: the best any split can do
    assert _makespan(packing.sizes(count, None), threads) <= 1.2 * ideal


def test_short_jobs_share_messages_and_long_ones_go_alone():
    assert packing.sizes(10_000, None)[0] == packing.MOST
    assert len(packing.sizes(10_000, 0.0001)) < 10_000 / 30
    assert max(packing.sizes(10_000, 0.01)) == 5  # 50 ms of work
    assert packing.sizes(1_000, 1.0) == [1] * 1_000
    assert packing.sizes(packing.SPREAD, None) == [1] * packing.SPREAD


def test_per_job_gives_each_job_its_message_size():
    assert packing.per_job(3, 2) == [3, 3]
    assert packing.per_job([2, 1], 3) == [2, 2, 1]
    with pytest.raises(ValueError, match="add up to 3"):
        packing.per_job([2, 1], 4)


def _finished(session, service_id, runs: list[float], status: str = "COMPLETED", day: int = 1):
    """Jobs that ran for ``runs`` seconds, submitted on ``day`` of December (later: newer)."""
    start = datetime(2026, 12, day, tzinfo=UTC)
    for index, seconds in enumerate(runs):
        began = start + timedelta(minutes=index)
        session.add(
            JobRow(
                service_id=service_id,
                status=status,
                parameters={"x": index},
                attempts=1,
                date_submitted=began,
                date_started=began,
                date_finished=began + timedelta(seconds=seconds),
            )
        )
    session.flush()


def test_the_typical_run_is_the_median_of_the_latest_completed_runs(session):
    service = Service.new("Timed", "", {"type": "object"}, {"type": "object"}, session)
    session.flush()
    assert packing.typical(session, service.id) is None
    _finished(session, service.id, [30.0, 30.0, 30.0], status="ERROR")  # not what jobs take
    assert packing.typical(session, service.id) is None
    _finished(session, service.id, [0.5, 2.0, 1.0], day=2)
    assert packing.typical(session, service.id) == 1.0
    _finished(session, service.id, [0.001] * packing.RECENT_RUNS, day=3)
    assert packing.typical(session, service.id) == pytest.approx(0.001)  # the old ones forgotten


# -- through a producer ------------------------------------------------------------


def _empty(stack, name: str) -> None:
    queue = keys.service_queue(stack.service(name).id)
    stack.redis.delete(*priorities.queue_lists(queue))


@pytest.mark.postgres
@pytest.mark.redis
def test_a_sweep_without_options_is_packed_from_its_services_history(stack):
    stack.create_lab_services()
    sweep = [{"x": x} for x in range(200)]
    stack.producer.submit_many(lab.SQUARE, sweep)
    assert stack.queue_length(lab.SQUARE) == len(packing.sizes(200, None)) < 100
    _empty(stack, lab.SQUARE)

    with open_session(stack.settings.database_url) as session:
        _finished(session, stack.service(lab.SQUARE).id, [1.0] * 5)  # jobs of a second each
        session.commit()
    stack.producer.submit_many(lab.SQUARE, sweep)
    assert stack.queue_length(lab.SQUARE) == 200  # each on its own: any free worker takes it
    _empty(stack, lab.SQUARE)

    stack.producer.submit_many(lab.SQUARE, sweep, jobs_per_message=100)
    assert stack.queue_length(lab.SQUARE) == 2  # the caller's word wins


@pytest.mark.postgres
@pytest.mark.redis
def test_a_services_own_jobs_per_message_fixes_the_number(stack):
    stack.producer.create_service(
        "Fixed", "", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS, jobs_per_message=1
    )
    stack.producer.submit_many("Fixed", [{"x": x} for x in range(100)])
    assert stack.queue_length("Fixed") == 100
    stack.producer.set_jobs_per_message("Fixed", 25)
    stack.producer.submit_many("Fixed", [{"x": x} for x in range(100)])
    assert stack.queue_length("Fixed") == 104
    stack.producer.set_jobs_per_message("Fixed", None)
    with open_session(stack.settings.database_url) as session:
        assert ServiceList(session).by_name("Fixed").as_dict()["jobs_per_message"] is None
    for bad in (0, 1001, True, "50"):
        with pytest.raises(DeserializationError, match="jobs_per_message"):
            stack.producer.set_jobs_per_message("Fixed", bad)  # type: ignore[arg-type]


@pytest.mark.postgres
@pytest.mark.redis
def test_the_cli_and_http_set_a_services_jobs_per_message(cli, api):
    run = cli
    schema = json.dumps(lab.NUMBER_SCHEMA)
    run("services", "create", "Mag", "--parameters", schema, "--results", "{}")
    assert json.loads(run("services", "show", "Mag"))["jobs_per_message"] is None
    run("services", "set", "Mag", "--jobs-per-message", "10")
    assert json.loads(run("services", "show", "Mag"))["jobs_per_message"] == 10
    assert "chosen from its run times" in run(
        "services", "set", "Mag", "--jobs-per-message", "auto"
    )
    assert json.loads(run("services", "show", "Mag"))["jobs_per_message"] is None
    nothing = cli.invoke("services", "set", "Mag")
    assert nothing.exit_code != 0
    assert "say what to change" in nothing.output

    service = api.create_service()
    patched = api.patch(f"/services/{service}", json={"jobs_per_message": 20})
    assert patched.json()["meta"]["jobs_per_message"] == 20
    patched = api.patch(f"/services/{service}", json={"jobs_per_message": None})
    assert patched.json()["meta"]["jobs_per_message"] is None
    refused = api.patch(f"/services/{service}", json={"jobs_per_message": 0})
    assert refused.status_code == 400
    assert "jobs_per_message" in refused.text
