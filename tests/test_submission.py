"""A submission's rows: what goes in (by COPY on PostgreSQL) is what comes back out."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import lab
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from support import wait_for

from broker.errors import DeserializationError, ServiceWithNameNotFound
from broker.messaging import keys
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.producer import Producer
from broker.producer.submission import add_jobs
from broker.storage.tables import JobRow, database_now, open_session

AWKWARD = [
    {"text": "tab\there, newline\nhere, CR\r, backslash \\ and \\\\N, quote \" and '"},
    {"text": "\\.", "nested": {"list": [1, 2.5, None, True, {"deep": "\\t"}]}},
    {"text": "ünïcödé, 日本語, 😀, \u2028"},
    {"text": "", "n": -(2**62), "f": 1e-300},
]


def test_parameters_come_back_exactly_as_submitted_and_in_order(session):
    service = Service.new("awkward", "", {"type": "object"}, {"type": "object"}, session)
    session.flush()
    now = database_now(session)
    ids = add_jobs(session, service, now, AWKWARD)
    session.commit()

    rows = session.scalars(
        sa.select(JobRow).where(JobRow.service_id == service.id).order_by(JobRow.date_submitted)
    ).all()
    assert [row.id for row in rows] == ids
    assert [row.parameters for row in rows] == AWKWARD
    assert [row.date_submitted for row in rows] == [
        now + timedelta(microseconds=index) for index in range(len(AWKWARD))
    ]
    assert {(row.status, row.attempts, row.version, row.published_at) for row in rows} == {
        ("REGISTERED", 0, 1, None)
    }


#: JSON values PostgreSQL's ``jsonb`` stores: text without NUL (``jsonb`` refuses
#: ``\u0000``) or lone surrogates, integers, and floats with a fraction (``jsonb``
#: keeps numbers as ``numeric``: 1e16 comes back as the integer it equals).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=12,
)


@pytest.mark.postgres
@settings(max_examples=40, deadline=None)
@given(sets=st.lists(st.dictionaries(_TEXT, _JSON, max_size=4), min_size=2, max_size=6))
def test_any_json_parameters_survive_the_copy(postgres_url, sets):
    """COPY's encoding is psycopg's: whatever JSON goes in (tabs, newlines, backslashes,
    quotes, ``\\N``, any non-NUL text) comes back equal, in order."""
    with open_session(postgres_url) as session:
        service = Service.new("any", "", {"type": "object"}, {"type": "object"}, session)
        session.flush()
        ids = add_jobs(session, service, database_now(session), sets)
        rows = session.execute(
            sa.select(JobRow.id, JobRow.parameters).where(JobRow.service_id == service.id)
        ).all()
        session.rollback()
    assert {row.id: row.parameters for row in rows} == dict(zip(ids, sets, strict=True))


def test_one_invalid_parameter_set_writes_nothing(session):
    schema = {"type": "object", "required": ["x"]}
    service = Service.new("strict", "", schema, {"type": "object"}, session)
    session.flush()
    with pytest.raises(DeserializationError, match='"x" is a required property'):
        add_jobs(session, service, database_now(session), [{"x": 1}, {"y": 2}])
    assert session.scalar(sa.select(sa.func.count()).select_from(JobRow)) == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_producers_record_publications_in_redis_and_beat_marks_them_in_sql(stack):
    stack.create_lab_services()
    jobs = [stack.producer.submit(lab.SQUARE, {"x": x}) for x in range(3)]
    sweep = [{"x": x} for x in range(50)]
    jobs += stack.producer.submit_many(lab.SQUARE, sweep, jobs_per_message=1)
    assert stack.redis.smembers(keys.PUBLISHED) == {str(job).encode() for job in jobs}
    assert _published_at(stack, jobs) == [None] * len(jobs)

    time.sleep(stack.settings.outbox_grace_seconds)  # old enough for beat to publish again
    report = stack.tick()

    assert report.published == 0  # recorded as sent: not published a second time
    assert None not in _published_at(stack, jobs)
    assert stack.redis.scard(keys.PUBLISHED) == 0
    assert stack.queue_length(lab.SQUARE) == len(jobs)


def _published_at(stack, jobs):
    with open_session(stack.settings.database_url) as session:
        query = sa.select(JobRow.published_at).where(JobRow.id.in_(jobs))
        return session.scalars(query).all()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_renamed_service_is_looked_up_again_and_its_old_name_refused(stack):
    stack.create_lab_services()
    first = stack.producer.submit(lab.SQUARE, {"x": 1})  # the producer now knows the service
    with open_session(stack.settings.database_url) as session, session.begin():
        ServiceList(session).by_name(lab.SQUARE).name = "Squares, renamed"

    with pytest.raises(ServiceWithNameNotFound):
        stack.producer.submit(lab.SQUARE, {"x": 2})
    second = stack.producer.submit("Squares, renamed", {"x": 3})

    assert stack.job(first)["parameters"] == {"x": 1}
    assert stack.job(second)["parameters"] == {"x": 3}
    assert stack.count_jobs() == 2
    assert stack.queue_length("Squares, renamed") == 2


@pytest.mark.postgres
@pytest.mark.redis
def test_a_known_service_still_refuses_invalid_parameters_and_queues_nothing(stack):
    stack.create_lab_services()
    stack.producer.submit(lab.SQUARE, {"x": 1})
    with pytest.raises(DeserializationError, match='"a" is not of type "integer"'):
        stack.producer.submit(lab.SQUARE, {"x": "a"})
    assert stack.count_jobs() == 1
    assert stack.queue_length(lab.SQUARE) == 1


def _publish_calls(client) -> int:
    stats = client.info("commandstats").get("cmdstat_publish", {})
    return int(stats.get("calls", 0))


@pytest.mark.postgres
@pytest.mark.redis
def test_task_sent_events_are_published_only_while_someone_listens(stack):
    stack.create_lab_services()
    if stack.redis.pubsub_numpat():
        pytest.skip("another client listens by pattern on this Redis server")
    before = _publish_calls(stack.redis)
    Producer(stack.settings).submit_many(lab.SQUARE, [{"x": x} for x in range(5)])
    assert _publish_calls(stack.redis) == before  # no listener: no event

    listener = stack.redis.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("*celeryev*")  # as Flower and `celery events` do
    wait_for(lambda: stack.redis.pubsub_numpat() == 1, 10, "the pattern subscription")
    job = Producer(stack.settings).submit(lab.SQUARE, {"x": 9})

    message = wait_for(lambda: listener.get_message(timeout=0.1), 10, "a task-sent event")
    event = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
    assert (event["type"], event["uuid"]) == ("task-sent", f"{job}.1")
    listener.close()
