"""The models against real databases: SQLite and PostgreSQL, through one fixture."""

from __future__ import annotations

import asyncio
import gc
import math
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from broker.errors import (
    DeserializationError,
    DuplicateServiceNameError,
    ImmutableFieldError,
    InvalidSchemaError,
    InvalidTransitionError,
    ServiceWithNameNotFound,
)
from broker.models.job import Job
from broker.models.job_list import JobList
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.storage.tables import JobRow, ServiceRow, database_now, open_session

Status = Job.JobStatus

PARAMETERS = {
    "type": "object",
    "properties": {
        "a": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["a"],
}
RESULTS = {"type": "object", "properties": {"value": {"type": "number"}}, "required": ["value"]}


def make_service(session, name="oven", **options) -> Service:
    service = Service.new(name, f"the {name}", PARAMETERS, RESULTS, session, **options)
    # Flushed so that its jobs can be inserted: see
    # test_a_job_of_a_service_not_yet_flushed_can_be_committed.
    session.flush()
    return service


def in_other_session(database_url, read):
    """``read(session)`` in a fresh session of the same database (what another client sees)."""
    with open_session(database_url) as other:
        return read(other)


async def _collect(jobs):
    return [job async for job in jobs]


# -- Service.new --------------------------------------------------------------


def test_new_service_reads_back_its_fields(session, database_url):
    service = make_service(session, timeout=12, worker_loss_policy="requeue", max_attempts=5)
    service_id = service.id
    assert isinstance(service_id, uuid.UUID)
    assert service.name == "oven"
    assert service.description == "the oven"
    assert service.job_registration_schema == PARAMETERS
    assert service.job_result_schema == RESULTS
    assert service.timeout == 12.0
    assert service.worker_loss_policy == "requeue"
    assert service.max_attempts == 5
    assert service.is_service_available is False
    assert service.has_timed_out is False
    assert len(service.jobs) == 0
    session.commit()

    assert service.id == service_id
    again = in_other_session(database_url, lambda other: ServiceList(other)[service_id].as_dict())
    assert again == {**service.as_dict(), "has_timed_out": False}
    assert again["name"] == "oven"
    assert again["timeout"] == 12.0


def test_the_id_is_stable_when_the_service_is_renamed(session, database_url):
    service = make_service(session)
    session.commit()
    service_id = service.id
    service.name = "furnace"
    session.commit()
    assert service.id == service_id
    name = in_other_session(database_url, lambda other: ServiceList(other)[service_id].name)
    assert name == "furnace"


def test_a_duplicate_name_is_refused_committed_or_not(session):
    Service.new("oven", "", PARAMETERS, RESULTS, session)  # pending, not even flushed
    with pytest.raises(DuplicateServiceNameError):
        make_service(session)
    session.commit()
    with pytest.raises(DuplicateServiceNameError):
        make_service(session)
    assert len(ServiceList(session)) == 1


def test_renaming_to_a_taken_name_is_refused(session):
    make_service(session, "oven")
    fridge = make_service(session, "fridge")
    session.commit()
    with pytest.raises(DuplicateServiceNameError):
        fridge.name = "oven"
    assert fridge.name == "fridge"
    fridge.name = "fridge"  # its own name is not "taken"
    session.commit()


@pytest.mark.parametrize("name", ["", "   ", None, 42, "x" * 201])
def test_a_bad_name_is_a_deserialization_error(session, name):
    with pytest.raises(DeserializationError, match="name"):
        make_service(session, name)
    assert len(ServiceList(session)) == 0


@pytest.mark.parametrize("timeout", [0, -1, -0.5, math.nan, math.inf, True, False, "5", None])
def test_a_bad_timeout_is_a_deserialization_error(session, timeout):
    with pytest.raises(DeserializationError, match="timeout"):
        make_service(session, timeout=timeout)
    service = make_service(session)
    with pytest.raises(DeserializationError, match="timeout"):
        service.timeout = timeout
    assert service.timeout == 30.0


@pytest.mark.parametrize(
    ("registration", "result"),
    [
        ({"type": "nonsense"}, RESULTS),
        (PARAMETERS, {"type": "nonsense"}),
        ({"properties": {"a": {"minimum": "zero"}}}, RESULTS),
        ({"required": "a"}, RESULTS),
    ],
)
def test_an_invalid_schema_is_refused_and_nothing_is_added(session, registration, result):
    with pytest.raises(InvalidSchemaError):
        Service.new("oven", "", registration, result, session)
    session.flush()
    assert len(ServiceList(session)) == 0


def test_the_schemas_cannot_change(session):
    service = make_service(session)
    with pytest.raises(ImmutableFieldError):
        service.job_registration_schema = {"type": "object"}
    with pytest.raises(ImmutableFieldError):
        service.job_result_schema = {"type": "object"}
    assert service.job_registration_schema == PARAMETERS
    assert service.job_result_schema == RESULTS


@pytest.mark.parametrize(
    "options",
    [
        {"worker_loss_policy": "retry-forever"},
        {"worker_loss_policy": None},
        {"max_attempts": 0},
        {"max_attempts": True},
        {"max_attempts": 2.5},
    ],
)
def test_a_bad_policy_is_a_deserialization_error(session, options):
    with pytest.raises(DeserializationError):
        make_service(session, **options)
    assert len(ServiceList(session)) == 0


@pytest.mark.parametrize(
    ("setter", "value"),
    [("description", 7), ("is_service_available", "yes"), ("is_service_available", 1)],
)
def test_a_badly_typed_attribute_is_a_deserialization_error(session, setter, value):
    service = make_service(session)
    with pytest.raises(DeserializationError):
        setattr(service, setter, value)


@pytest.mark.parametrize("description", [7, None, ["a"]])
def test_new_refuses_a_description_that_is_not_a_string(session, description):
    with pytest.raises(DeserializationError, match="description"):
        Service.new("oven", description, PARAMETERS, RESULTS, session)


@pytest.mark.parametrize("value", ["a\x00b", math.nan, math.inf], ids=["nul", "nan", "inf"])
def test_parameters_no_backend_can_store_are_refused(session, value):
    service = make_service(session)
    with pytest.raises(DeserializationError):
        service.new_job({"a": 1, "tags": [value]})
    with pytest.raises(DeserializationError):
        service.new_job({"a": 1, value if isinstance(value, str) else "x": value})
    assert not session.new


@pytest.mark.parametrize("field", ["name", "description"])
def test_text_no_backend_can_store_is_refused(session, field):
    texts = {"name": "oven", "description": "bakes"} | {field: "oven\x00"}
    with pytest.raises(DeserializationError, match=field):
        Service.new(texts["name"], texts["description"], PARAMETERS, RESULTS, session)


# -- change tracking: the models never commit ----------------------------------

CHANGES = [
    ("name", "furnace"),
    ("description", "bakes bread"),
    ("timeout", 99.5),
    ("is_service_available", True),
]


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_a_change_reads_back_at_once_and_is_seen_by_others_after_commit(
    session, database_url, field, value
):
    service = make_service(session)
    session.commit()
    old = getattr(service, field)

    def seen_by_others():
        return in_other_session(
            database_url, lambda other: getattr(ServiceList(other)[service.id], field)
        )

    setattr(service, field, value)
    assert getattr(service, field) == value
    assert seen_by_others() == old
    session.flush()  # in the database's transaction, but not committed
    assert getattr(service, field) == value
    assert seen_by_others() == old
    session.commit()
    assert seen_by_others() == value


@pytest.mark.parametrize(("field", "value"), CHANGES)
def test_a_rolled_back_change_is_undone(session, field, value):
    service = make_service(session)
    session.commit()
    old = getattr(service, field)
    setattr(service, field, value)
    session.flush()
    session.rollback()
    assert getattr(service, field) == old


def test_a_new_service_is_invisible_to_others_until_committed(session, database_url):
    def others_see():
        return in_other_session(
            database_url, lambda other: (len(ServiceList(other)), service.id in ServiceList(other))
        )

    service = Service.new("oven", "", PARAMETERS, RESULTS, session)
    assert others_see() == (0, False)
    session.flush()
    assert others_see() == (0, False)
    session.commit()
    assert others_see() == (1, True)


def test_a_new_job_is_invisible_to_others_until_committed(session, database_url):
    service = make_service(session)
    session.commit()
    job = service.new_job({"a": 1})
    job.status = Status.WORKING
    session.flush()
    assert in_other_session(database_url, lambda other: len(JobList(other))) == 0
    session.commit()
    status = in_other_session(database_url, lambda other: JobList(other)[job.id].status)
    assert status is Status.WORKING


# -- check-in and time-out ------------------------------------------------------


def test_a_service_that_did_not_check_in_in_time_has_timed_out(session):
    service = make_service(session, timeout=0.5)
    session.flush()
    # Move the last check-in back instead of sleeping.
    service._row.last_checked_in = database_now(session) - timedelta(seconds=0.6)
    assert service.has_timed_out
    service.check_in()
    assert not service.has_timed_out
    session.commit()
    assert not service.has_timed_out


def test_time_out_is_judged_by_the_stored_check_in(session, database_url):
    service = make_service(session, timeout=5)
    session.commit()
    assert not service.has_timed_out
    with open_session(database_url) as other:
        other.execute(
            sa.update(ServiceRow)
            .where(ServiceRow.id == service.id)
            .values(last_checked_in=datetime.now(UTC) - timedelta(seconds=60))
        )
        other.commit()
    session.expire_all()
    assert service.has_timed_out
    service.check_in()
    session.commit()
    assert (
        in_other_session(database_url, lambda other: ServiceList(other)[service.id].has_timed_out)
        is False
    )


# -- new_job ----------------------------------------------------------------------


def test_new_job_registers_a_job(session, database_url):
    service = make_service(session)
    before = datetime.now(UTC)
    job = service.new_job({"a": 1, "tags": ["x"]})
    after = datetime.now(UTC)

    assert isinstance(job.id, uuid.UUID)
    assert job.status is Status.REGISTERED
    assert job.parameters == {"a": 1, "tags": ["x"]}
    assert job.results is None
    assert job.parameter_schema == service.job_registration_schema
    assert job.result_schema == service.job_result_schema
    assert job.date_submitted.tzinfo is not None
    # Both clocks are this machine's; allow for rounding to the database's precision.
    assert before - timedelta(seconds=1) <= job.date_submitted <= after + timedelta(seconds=1)
    assert job.date_started is None
    assert job.date_finished is None
    assert job in service.jobs
    assert len(service.jobs) == 1
    session.commit()

    def read(other):
        again = JobList(other)[job.id]
        return again.parameters, again.date_submitted, again.status

    parameters, submitted, status = in_other_session(database_url, read)
    assert parameters == {"a": 1, "tags": ["x"]}
    assert submitted == job.date_submitted
    assert submitted.utcoffset() == timedelta(0)
    assert status is Status.REGISTERED


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_of_a_service_not_yet_flushed_can_be_committed(session):
    service = Service.new("oven", "", PARAMETERS, RESULTS, session)
    job = service.new_job({"a": 1})
    session.commit()
    assert job in service.jobs


def test_date_submitted_is_taken_when_each_job_is_created(session):
    service = make_service(session)
    first = service.new_job({"a": 1})
    time.sleep(0.02)
    second = service.new_job({"a": 2})
    assert second.date_submitted - first.date_submitted >= timedelta(seconds=0.01)


@pytest.mark.parametrize(
    ("parameters", "path"),
    [
        ({"a": "x"}, ("a",)),
        ({"a": 1.5}, ("a",)),
        ({"a": 1, "tags": ["ok", 3]}, ("tags", 1)),
        ({}, ()),
        ([1], ()),
    ],
)
def test_invalid_parameters_are_refused_with_their_path_and_nothing_is_added(
    session, parameters, path
):
    service = make_service(session)
    session.flush()
    with pytest.raises(DeserializationError) as caught:
        service.new_job(parameters)
    assert caught.value.status_code == 400
    assert tuple(caught.value.path) == path
    for part in path:
        assert str(part) in caught.value.detail
    assert not session.new
    session.flush()
    assert len(service.jobs) == 0
    assert len(JobList(session)) == 0


# -- Job ---------------------------------------------------------------------------


def test_jobs_are_equal_and_hash_equal_by_id_across_sessions(session, database_url):
    service = make_service(session)
    job, other_job = service.new_job({"a": 1}), service.new_job({"a": 2})
    session.commit()
    with open_session(database_url) as other:
        again = JobList(other)[job.id]
        assert again is not job
        assert again == job
        assert hash(again) == hash(job)
        assert len({job, again, other_job}) == 2
        assert again != other_job
    assert job != job.id  # a job is not its id
    assert job != "job"


def test_results_are_validated_against_the_result_schema(session, database_url):
    service = make_service(session)
    job = service.new_job({"a": 1})
    with pytest.raises(DeserializationError) as caught:
        job.results = {"value": "high"}
    assert tuple(caught.value.path) == ("value",)
    assert job.results is None
    job.results = {"value": 2.5}
    assert job.results == {"value": 2.5}
    with pytest.raises(DeserializationError):
        job.results = {}
    assert job.results == {"value": 2.5}
    session.commit()
    assert in_other_session(database_url, lambda other: JobList(other)[job.id].results) == {
        "value": 2.5
    }


def test_a_job_moves_forward_and_records_when(session):
    service = make_service(session)
    job = service.new_job({"a": 1})
    session.flush()
    job.status = Status.WORKING
    assert job.status is Status.WORKING
    assert job.date_started is not None
    assert job.date_finished is None
    job.status = Status.COMPLETED
    assert job.status is Status.COMPLETED
    assert job.date_submitted <= job.date_started <= job.date_finished
    session.commit()
    assert job.date_started.tzinfo is not None
    assert job.date_finished.tzinfo is not None


#: Forward-only (broker.models.lifecycle): REGISTERED may start, end or be cancelled;
#: WORKING may end; nothing leaves COMPLETED, ERROR or CANCELLED.
ALLOWED = {
    (Status.REGISTERED, Status.WORKING),
    (Status.REGISTERED, Status.COMPLETED),
    (Status.REGISTERED, Status.ERROR),
    (Status.REGISTERED, Status.CANCELLED),
    (Status.WORKING, Status.COMPLETED),
    (Status.WORKING, Status.ERROR),
}


@pytest.mark.parametrize("current", list(Status), ids=str)
@pytest.mark.parametrize("new", list(Status), ids=str)
def test_status_transitions(session, current, new):
    service = make_service(session)
    job = service.new_job({"a": 1})
    job.status = current
    session.flush()
    timestamps = (job.date_submitted, job.date_started, job.date_finished)
    if current == new:
        job.status = new  # no-op
        assert (job.date_submitted, job.date_started, job.date_finished) == timestamps
    elif (current, new) in ALLOWED:
        job.status = new
    else:
        with pytest.raises(InvalidTransitionError) as caught:
            job.status = new
        assert (caught.value.current, caught.value.requested) == (current.value, new.value)
        assert job.status is current
        assert (job.date_submitted, job.date_started, job.date_finished) == timestamps
        return
    assert job.status is new
    session.commit()
    assert job.status is new


# -- JobList -----------------------------------------------------------------------


@pytest.fixture
def two_services(session):
    """An oven with three jobs and a fridge with two, committed."""
    oven, fridge = make_service(session, "oven"), make_service(session, "fridge")
    for a in range(3):
        oven.new_job({"a": a})
    for a in range(2):
        fridge.new_job({"a": 10 + a})
    session.commit()
    return oven, fridge


def test_iterating_a_job_list(session, two_services):
    oven, fridge = two_services
    oven_jobs = list(oven.jobs)
    assert sorted(job.parameters["a"] for job in oven_jobs) == [0, 1, 2]
    assert all(isinstance(job, Job) for job in oven_jobs)
    assert [job.date_submitted for job in oven_jobs] == sorted(
        job.date_submitted for job in oven_jobs
    )
    assert {job.parameters["a"] for job in fridge.jobs} == {10, 11}
    assert {job.id for job in JobList(session)} == {job.id for job in [*oven_jobs, *fridge.jobs]}
    assert list(JobList(session, JobRow.id == uuid.uuid4())) == []


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_stopping_an_iteration_early_closes_its_cursor(session, two_services):
    oven, _ = two_services
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        iterator = iter(oven.jobs)
        next(iterator)
        del iterator
        gc.collect()
    open_cursors = session.execute(sa.text("SELECT count(*) FROM pg_cursors")).scalar_one()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert open_cursors == 0


def test_iterating_a_job_list_asynchronously(session, two_services):
    oven, _ = two_services
    assert asyncio.run(_collect(oven.jobs)) == list(oven.jobs)
    assert len(asyncio.run(_collect(JobList(session)))) == 5


def test_len_is_a_count_that_loads_no_job(session, two_services):
    """A whole service's length is the count the database keeps; other lists count rows."""
    oven, _ = two_services
    engine = session.get_bind()
    statements: list[str] = []

    def record(_connection, _cursor, statement, *_rest):
        statements.append(statement.lower())

    for jobs, expected, how in [
        (oven.jobs, 3, "from job_counts"),
        (oven.jobs.with_status(Status.REGISTERED), 3, "count("),
        (JobList(session), 5, "count("),
    ]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert len(jobs) == expected
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert any(how in statement for statement in statements), statements
        for column in ("parameters", "results", "date_submitted"):
            assert not any(f"jobs.{column}" in statement for statement in statements), statements


def test_membership_by_job_and_by_id(session, two_services):
    oven, fridge = two_services
    (oven_job, *_), (fridge_job, *_) = oven.jobs, fridge.jobs
    everything = JobList(session)
    assert oven_job in oven.jobs
    assert oven_job.id in oven.jobs
    assert oven_job not in fridge.jobs
    assert oven_job.id not in fridge.jobs
    assert fridge_job not in oven.jobs
    assert oven_job in everything
    assert fridge_job.id in everything
    assert uuid.uuid4() not in everything
    assert str(oven_job.id) not in everything  # a string is not a UUID
    assert "not-a-uuid" not in everything
    assert None not in everything


def test_getting_a_job_by_id(session, two_services):
    oven, fridge = two_services
    job, *_ = oven.jobs  # iterated to the end: see test_stopping_an_iteration_early_closes_*
    assert oven.jobs[job.id] == job
    assert JobList(session)[job.id] == job
    with pytest.raises(KeyError):
        fridge.jobs[job.id]  # another service's job
    with pytest.raises(KeyError):
        oven.jobs[uuid.uuid4()]
    with pytest.raises(KeyError):
        oven.jobs[str(job.id)]


def test_unknown_ids_are_key_errors_for_set_and_delete(session, two_services):
    oven, fridge = two_services
    job, *_ = oven.jobs  # iterated to the end: see test_stopping_an_iteration_early_closes_*
    for unknown in (uuid.uuid4(), "not-a-uuid"):
        with pytest.raises(KeyError):
            oven.jobs[unknown] = job
        with pytest.raises(KeyError):
            del oven.jobs[unknown]
    with pytest.raises(KeyError):
        del fridge.jobs[job.id]
    assert len(JobList(session)) == 5


def test_deleting_a_job(session, database_url, two_services):
    oven, fridge = two_services
    job, *_ = oven.jobs  # iterated to the end: see test_stopping_an_iteration_early_closes_*
    del oven.jobs[job.id]
    assert job.id not in oven.jobs
    assert job.id not in JobList(session)
    assert len(oven.jobs) == 2
    assert len(fridge.jobs) == 2
    assert in_other_session(database_url, lambda other: len(JobList(other))) == 5
    session.commit()
    assert in_other_session(database_url, lambda other: job.id in JobList(other)) is False


def test_setting_a_job_copies_its_status_and_results(session, database_url, two_services):
    oven, _ = two_services
    target, source, _ = list(oven.jobs)
    source.status = Status.WORKING
    source.status = Status.COMPLETED
    source.results = {"value": 4}
    oven.jobs[target.id] = source
    assert target.status is Status.COMPLETED
    assert target.results == {"value": 4}
    assert target.parameters == {"a": 0}  # its own parameters stay
    session.commit()
    copied = in_other_session(
        database_url,
        lambda other: (JobList(other)[target.id].status, JobList(other)[target.id].results),
    )
    assert copied == (Status.COMPLETED, {"value": 4})


def test_setting_a_job_cannot_move_it_backwards(session, two_services):
    oven, _ = two_services
    target, source, _ = list(oven.jobs)
    target.status = Status.CANCELLED
    with pytest.raises(InvalidTransitionError):
        oven.jobs[target.id] = source
    assert target.status is Status.CANCELLED


def test_job_lists_of_the_same_jobs_are_equal(session, database_url, two_services):
    oven, fridge = two_services
    assert oven.jobs == oven.jobs
    assert JobList(session) == JobList(session)
    assert oven.jobs != JobList(session)
    with open_session(database_url) as other:
        assert JobList(other) == JobList(session)
        other_oven = ServiceList(other)[oven.id]
        assert other_oven.jobs == oven.jobs
        assert ServiceList(other)[fridge.id].jobs != oven.jobs
    for job in fridge.jobs:
        del fridge.jobs[job.id]
    assert JobList(session) == oven.jobs  # now the same jobs
    assert oven.jobs != [*oven.jobs]  # a list of jobs is not a JobList


def test_job_lists_of_different_services_in_one_session_are_not_equal(session, two_services):
    oven, fridge = two_services
    assert oven.jobs != fridge.jobs
    registered = oven.jobs.with_status(Status.REGISTERED)
    assert registered != oven.jobs.with_status(Status.COMPLETED)


def test_one_services_jobs_are_not_in_anothers_list(session, two_services):
    oven, fridge = two_services
    everything = JobList(session)
    for job in oven.jobs:
        assert job not in fridge.jobs
        assert job in everything
    assert len(oven.jobs) + len(fridge.jobs) == len(everything) == 5


# -- ServiceList -----------------------------------------------------------------------


def test_the_service_list(session, two_services):
    oven, fridge = two_services
    services = ServiceList(session)
    assert len(services) == 2
    assert [service.name for service in services] == ["fridge", "oven"]  # by name
    assert services[oven.id] == oven
    assert services[oven.id].name == "oven"
    assert oven in services
    assert fridge.id in services
    assert uuid.uuid4() not in services
    assert str(oven.id) not in services
    assert None not in services
    with pytest.raises(KeyError):
        services[uuid.uuid4()]
    with pytest.raises(KeyError):
        services["oven"]
    assert services.by_name("fridge") == fridge
    with pytest.raises(ServiceWithNameNotFound) as caught:
        services.by_name("toaster")
    assert caught.value.status_code == 404


def test_setting_a_service_copies_its_mutable_state(session, database_url, two_services):
    oven, _ = two_services
    services = ServiceList(session)
    with open_session(database_url) as other, other.no_autoflush:
        edited = ServiceList(other)[oven.id]
        edited.name = "furnace"
        edited.description = "hotter"
        edited.timeout = 5
        edited.is_service_available = True
        services[oven.id] = edited
    assert (oven.name, oven.description, oven.timeout, oven.is_service_available) == (
        "furnace",
        "hotter",
        5.0,
        True,
    )
    with pytest.raises(KeyError):
        services[uuid.uuid4()] = oven


# -- the queue's index -----------------------------------------------------------------


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_the_queue_query_uses_its_index(session):
    services = [make_service(session, f"service-{n}") for n in range(20)]
    session.commit()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "service_id": services[n % 20].id,
            "status": "REGISTERED" if n % 10 == 0 else "COMPLETED",
            "parameters": {"a": n},
            "attempts": 0,
            "date_submitted": start + timedelta(seconds=n),
        }
        for n in range(4000)
    ]
    session.execute(sa.insert(JobRow), rows)
    session.commit()
    session.execute(sa.text("ANALYZE jobs"))
    query = (
        sa.select(JobRow)
        .where(JobRow.service_id == services[0].id, JobRow.status == "REGISTERED")
        .order_by(JobRow.date_submitted)
        .limit(10)
    )
    sql = str(query.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    # Statistics alone make the planner choose the index (enable_seqscan stays on).
    plan = "\n".join(session.execute(sa.text(f"EXPLAIN {sql}")).scalars())
    assert "ix_jobs_service_status_submitted" in plan, plan
    assert "Sort" not in plan, plan  # the index already gives date_submitted order


@pytest.mark.parametrize(
    "options",
    [{"timeout": 1e300}, {"timeout": float("inf")}, {"max_attempts": 10**12}, {"max_attempts": 0}],
)
def test_timeouts_and_attempts_are_bounded(session, options):
    with pytest.raises(DeserializationError):
        Service.new("bounded", "", {"type": "object"}, {"type": "object"}, session, **options)
