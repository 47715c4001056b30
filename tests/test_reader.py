"""Reading jobs back without a message broker: ids by their start, outcomes of a sweep."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from broker.errors import JobFailedError, JobReferenceError, JobWithUUIDNotFound, WaitTimeoutError
from broker.models.lifecycle import Status
from broker.models.service import Service
from broker.producer.reader import Reader, Standing
from broker.storage.tables import JobRow

SCHEMA = {"type": "object"}


def _jobs(session, ids: list[str]) -> list[uuid.UUID]:
    """Jobs with these ids (real jobs of a real service; only their ids are chosen)."""
    service = Service.new("oven", "", SCHEMA, SCHEMA, session)
    session.flush()
    made = []
    for wanted in ids:
        job = service.new_job({})
        session.flush()
        session.execute(sa.update(JobRow).where(JobRow.id == job.id).values(id=uuid.UUID(wanted)))
        made.append(uuid.UUID(wanted))
    session.commit()
    return made


A1 = "aaaa0000-0000-4000-8000-000000000001"
A2 = "aaaa0000-0000-4000-8000-000000000002"
B = "bbbb1234-0000-4000-8000-000000000003"


def test_the_start_of_an_id_finds_the_one_job_it_names(session, database_url):
    _, _, b = _jobs(session, [A1, A2, B])
    reader = Reader(database_url)
    assert reader.find("bbbb") == b
    assert reader.find("BBBB-1234") == b  # case and dashes as a user types them
    assert reader.find(B) == b
    assert reader.find(A2) == uuid.UUID(A2)


@pytest.mark.parametrize(
    ("reference", "matches"),
    [("aaaa", 2), ("aaaa0000", 2), ("cccc", 0), ("aaa", None), ("zzzz", None), ("a" * 33, None)],
)
def test_a_start_that_names_no_one_job_says_why(session, database_url, reference, matches):
    _jobs(session, [A1, A2, B])
    with pytest.raises(JobReferenceError) as refused:
        Reader(database_url).find(reference)
    assert refused.value.matches == matches


def test_a_whole_id_of_no_job_is_job_not_found(database_url):
    with pytest.raises(JobWithUUIDNotFound):
        Reader(database_url).find(A1)


def test_outcomes_report_every_job_where_wait_all_stops_at_the_first(session, database_url):
    first, second, third = _jobs(session, [A1, A2, B])
    for job, status, detail in ((first, "ERROR", "boom"), (second, "COMPLETED", None)):
        session.execute(
            sa.update(JobRow).where(JobRow.id == job).values(status=status, detail=detail)
        )
    session.commit()
    reader = Reader(database_url)
    outcomes = reader.outcomes([first, second, third], timeout=0.05)
    assert [(o.status, o.detail, o.finished) for o in outcomes] == [
        (Status.ERROR, "boom", True),
        (Status.COMPLETED, None, True),
        (Status.REGISTERED, None, False),
    ]
    with pytest.raises(WaitTimeoutError):
        reader.wait_all([first, third], timeout=0.05)
    with pytest.raises(JobFailedError, match="boom"):
        reader.wait_all([second, first], timeout=0.05)


def test_a_watch_sees_one_job_s_progress_and_a_sweep_s_counts(session, database_url):
    first, second, third = _jobs(session, [A1, A2, B])
    running = {"status": "WORKING", "progress": 0.4, "progress_message": "point 81/200"}
    session.execute(sa.update(JobRow).where(JobRow.id == first).values(**running))
    session.execute(sa.update(JobRow).where(JobRow.id == second).values(status="ERROR"))
    session.execute(sa.update(JobRow).where(JobRow.id == third).values(status="CANCELLED"))
    session.commit()
    reader = Reader(database_url)
    seen: list[Standing] = []
    reader.outcomes([first], timeout=0.05, watch=seen.append)
    assert seen[-1] == Standing(1, 0, 0, 0, Status.WORKING, 0.4, "point 81/200")
    assert reader.job(first)["progress_message"] == "point 81/200"  # Producer.job's too
    seen.clear()
    reader.outcomes([first, second, third], timeout=0.05, watch=seen.append)
    assert seen[-1] == Standing(3, 2, 1, 1)
    seen.clear()
    with pytest.raises(JobFailedError):
        reader.wait_all([second], timeout=1, watch=seen.append)
    assert seen == [Standing(1, 1, 1, 0, Status.ERROR)]  # once: it had already ended
