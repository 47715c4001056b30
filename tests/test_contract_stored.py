"""A schema stored before a limit existed: refused where it is used, never run."""

from __future__ import annotations

import lab
import pytest
import sqlalchemy as sa

from broker.errors import InvalidSchemaError
from broker.messaging.messages import StateMessage
from broker.mirror.process import Mirror
from broker.storage.tables import ServiceRow, open_session

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

COSTLY = {"type": "object", "properties": {"square": {"type": "string", "pattern": "a{40000}"}}}


def _store(stack, service, **schemas) -> None:
    """Write schemas as an older version would have stored them, past today's checks."""
    with open_session(stack.settings.database_url) as session:
        session.execute(sa.update(ServiceRow).where(ServiceRow.id == service).values(schemas))
        session.commit()


def test_the_mirror_records_results_under_a_stored_costly_schema_as_an_error(stack):
    stack.create_lab_services()
    job = stack.producer.submit(lab.SQUARE, {"x": 3})
    service = stack.service(lab.SQUARE).id
    _store(stack, service, job_result_schema=COSTLY)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    stack.report(StateMessage("status", service, job, "WORKING"))
    stack.report(StateMessage("status", service, job, "COMPLETED", results={"square": "a" * 40000}))
    assert mirror.step() == 2  # the mirror goes on
    assert stack.status(job) == "ERROR"
    detail = stack.job(job)["detail"]
    assert "invalid results" in detail
    assert "job_result_schema" in detail
    assert "at most 1000" in detail


def test_a_stored_costly_registration_schema_refuses_new_jobs_with_the_reason(stack):
    stack.create_lab_services()
    service = stack.service(lab.SQUARE).id
    _store(stack, service, job_registration_schema={"type": "string", "pattern": "a{40000}"})
    with pytest.raises(InvalidSchemaError, match="at most 1000") as error:
        stack.producer.submit(lab.SQUARE, "a" * 40000)
    assert error.value.source == "job_registration_schema"
