"""The Prometheus endpoint, scraped over HTTP against a real stack."""

from __future__ import annotations

import dataclasses
import logging
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime

import lab
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support import wait_for

from broker.errors import ConfigurationError
from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.messaging.presence import Presence
from broker.mirror.process import Mirror
from broker.ops.metrics import MetricsServer, serve
from broker.settings import Settings
from broker.storage.tables import database_now, open_session

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CLOSED_REDIS = "redis://127.0.0.1:1/0"
CLOSED_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"


def scrape(server: MetricsServer) -> dict[str, Metric]:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.status == 200
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    matches = [
        sample.value
        for sample in families[name].samples
        if labels.items() <= sample.labels.items() and not sample.name.endswith("_created")
    ]
    assert len(matches) == 1, (name, labels, families[name].samples)
    return matches[0]


def check_in_age(stack, name: str, since: datetime | None = None) -> float:
    """Seconds since ``name`` checked in (or ``since``), on the database's clock."""
    last_checked_in = since or stack.service(name).last_checked_in
    with open_session(stack.settings.database_url) as session:
        return (database_now(session) - last_checked_in).total_seconds()


@pytest.fixture
def metrics(stack) -> Iterator[MetricsServer]:
    server = serve(stack.settings, 0)
    try:
        yield server
    finally:
        server.close()


def test_jobs_by_status_and_queue_depth(stack, metrics):
    stack.create_lab_services()
    jobs = [stack.producer.submit(lab.SQUARE, {"x": i}) for i in range(3)]
    stack.producer.cancel(stack.producer.submit(lab.FAILING, {"x": 0}))

    families = scrape(metrics)

    square = str(stack.service(lab.SQUARE).id)
    by_status = {
        status: value(
            families, "topchef_jobs", service=lab.SQUARE, service_id=square, status=status
        )
        for status in ("REGISTERED", "WORKING", "COMPLETED", "ERROR", "CANCELLED")
    }
    assert by_status == {"REGISTERED": 3, "WORKING": 0, "COMPLETED": 0, "ERROR": 0, "CANCELLED": 0}
    assert value(families, "topchef_jobs", service=lab.FAILING, status="CANCELLED") == 1
    assert stack.queue_length(lab.SQUARE) == len(jobs)
    assert value(families, "topchef_queue_depth", service=lab.SQUARE, service_id=square) == 3
    assert value(families, "topchef_queue_depth", service=lab.INVALID) == 0
    assert value(families, "topchef_source_up", source="database") == 1
    assert value(families, "topchef_source_up", source="redis") == 1
    assert value(families, "topchef_scrape_errors", source="redis") == 0


def test_live_workers_per_service(stack, metrics):
    stack.create_lab_services()
    square, held = stack.service(lab.SQUARE).id, stack.service(lab.HELD).id
    presence = Presence(stack.redis)
    presence.arrive("pc-1:1", [square, held], 30)
    presence.arrive("http:rig-1", [square], 30)
    presence.arrive("pc-2:2", [held], 30)
    presence.leave("pc-2:2", [held])

    families = scrape(metrics)

    workers = {
        name: value(families, "topchef_service_workers", service=name)
        for name in (lab.SQUARE, lab.HELD, lab.FAILING)
    }
    assert workers == {lab.SQUARE: 2, lab.HELD: 1, lab.FAILING: 0}


def test_database_down_still_counts_workers_of_the_services_in_the_directory(stack):
    stack.create_lab_services()
    square = stack.service(lab.SQUARE).id
    Presence(stack.redis).arrive("pc-1:1", [square], 30)
    down = serve(dataclasses.replace(stack.settings, database_url=CLOSED_POSTGRES), 0)
    try:
        families = scrape(down)
    finally:
        down.close()
    assert value(families, "topchef_service_workers", service=lab.SQUARE) == 1


@pytest.mark.slow  # starts a worker
def test_liveness_follows_check_ins_on_the_database_clock(stack, metrics):
    stack.create_lab_services(timeout=30)
    stack.producer.create_service("Brief", "times out", {}, {}, timeout=0.1)

    created = stack.service(lab.SQUARE).last_checked_in
    before = check_in_age(stack, lab.SQUARE)
    families = scrape(metrics)
    after = check_in_age(stack, lab.SQUARE)
    age = value(families, "topchef_seconds_since_check_in", service=lab.SQUARE)
    assert before <= age <= after
    assert value(families, "topchef_service_available", service=lab.SQUARE) == 0
    assert value(families, "topchef_service_timed_out", service=lab.SQUARE) == 0
    wait_for(
        lambda: value(scrape(metrics), "topchef_seconds_since_check_in", service=lab.SQUARE) > age,
        10,
        "the check-in age to grow",
    )
    wait_for(
        lambda: value(scrape(metrics), "topchef_service_timed_out", service="Brief") == 1,
        10,
        "the brief service to time out",
    )

    stack.start_mirror()
    stack.worker()
    wait_for(
        lambda: value(scrape(metrics), "topchef_service_available", service=lab.SQUARE) == 1,
        30,
        "the worker's check-in to make the service available",
    )
    families = scrape(metrics)
    # Measured from the worker's check-in, no longer from the service's creation.
    since_creation = check_in_age(stack, lab.SQUARE, since=created)
    assert value(families, "topchef_seconds_since_check_in", service=lab.SQUARE) < since_creation
    assert value(families, "topchef_service_timed_out", service=lab.SQUARE) == 0


def test_mirror_lag_counts_unapplied_state_entries(stack, metrics):
    stack.create_lab_services()
    square = stack.service(lab.SQUARE).id
    for _ in range(4):
        stack.report(StateMessage("checkin", square))

    families = scrape(metrics)
    assert value(families, "topchef_mirror_lag_entries") == 4
    assert value(families, "topchef_mirror_pending_entries") == 0  # no mirror group yet
    assert value(families, "topchef_mirror_dead_entries") == 0

    # A mirror that read two entries and died before committing leaves them pending.
    Mirror(stack.settings).ensure_group()
    stack.redis.xreadgroup(keys.MIRROR_GROUP, "gone", {keys.STATE_STREAM: ">"}, count=2)
    families = scrape(metrics)
    assert value(families, "topchef_mirror_lag_entries") == 4
    assert value(families, "topchef_mirror_pending_entries") == 2

    stack.start_mirror()
    wait_for(
        lambda: value(scrape(metrics), "topchef_mirror_lag_entries") == 2,
        30,
        "the mirror to apply the unread entries",
    )
    assert value(scrape(metrics), "topchef_mirror_pending_entries") == 2


def test_redis_down_still_serves_the_database_metrics(stack, metrics, caplog):
    stack.create_lab_services()
    stack.producer.submit(lab.SQUARE, {"x": 1})
    down = serve(dataclasses.replace(stack.settings, broker_url=CLOSED_REDIS), 0)
    try:
        with caplog.at_level(logging.WARNING, logger="broker.ops.metrics"):
            families = scrape(down)
    finally:
        down.close()

    assert value(families, "topchef_source_up", source="redis") == 0
    assert value(families, "topchef_source_up", source="database") == 1
    assert value(families, "topchef_scrape_errors", source="redis") == 1
    assert value(families, "topchef_jobs", service=lab.SQUARE, status="REGISTERED") == 1
    assert "topchef_queue_depth" not in families
    assert "topchef_service_workers" not in families
    assert "topchef_mirror_lag_entries" not in families
    assert "cannot read the redis" in caplog.text
    # The healthy stack's own endpoint, on its own registry, is unaffected.
    assert value(scrape(metrics), "topchef_source_up", source="redis") == 1


def test_database_down_still_serves_queues_named_by_the_broker(stack):
    stack.create_lab_services()
    stack.producer.submit(lab.SQUARE, {"x": 1})
    down = serve(dataclasses.replace(stack.settings, database_url=CLOSED_POSTGRES), 0)
    try:
        families = scrape(down)
    finally:
        down.close()

    assert value(families, "topchef_source_up", source="database") == 0
    assert value(families, "topchef_source_up", source="redis") == 1
    assert "topchef_jobs" not in families
    square = str(stack.service(lab.SQUARE).id)
    assert value(families, "topchef_queue_depth", service=lab.SQUARE, service_id=square) == 1


def test_metrics_port_is_read_from_the_environment():
    assert Settings().metrics_port == 0
    assert Settings.from_env({"TOPCHEF_METRICS_PORT": "9108"}).metrics_port == 9108
    for bad in ("http", "1.5", "-1", "65536"):
        with pytest.raises(ConfigurationError, match="TOPCHEF_METRICS_PORT"):
            Settings.from_env({"TOPCHEF_METRICS_PORT": bad})


def test_unmarked_publications_count_what_beat_has_yet_to_mark(stack, metrics):
    stack.create_lab_services()
    stack.producer.submit_many(lab.SQUARE, [{"x": x} for x in range(3)])
    assert value(scrape(metrics), "topchef_unmarked_publications") == 3

    stack.tick()
    assert value(scrape(metrics), "topchef_unmarked_publications") == 0


def test_refused_deliveries_are_counted_by_reason(stack, metrics):
    from broker.worker.runtime import WorkerRuntime

    runtime = WorkerRuntime(stack.settings, [])
    for reason in ("unregistered", "unregistered", "altered"):
        runtime.refuse(reason, None, "a test delivery")
    families = scrape(metrics)
    assert value(families, "topchef_refused_deliveries", reason="unregistered") == 2
    assert value(families, "topchef_refused_deliveries", reason="altered") == 1


def test_dead_letters_are_counted_by_reason(stack, metrics):
    stack.create_lab_services()
    square = stack.service(lab.SQUARE).id
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    for entry in (
        {"m": "{not json"},
        {"m": '{"kind": "takeover"}'},
        StateMessage("status", square, uuid.uuid4(), "ERROR").to_fields(),
    ):
        stack.redis.xadd(keys.STATE_STREAM, entry)
    stack.redis.xadd(keys.STATE_STREAM, {"m": "{}"}, id="18446744073709551615-0")
    while stack.redis.xlen(keys.STATE_STREAM):
        mirror.step()

    families = scrape(metrics)
    assert value(families, "topchef_mirror_dead_entries") == 5
    for reason, count in (("unreadable", 1), ("unknown_kind", 2), ("unknown_job", 1)):
        assert value(families, "topchef_mirror_dead_letters", reason=reason) == count
    assert value(families, "topchef_mirror_dead_letters", reason="future") == 1
