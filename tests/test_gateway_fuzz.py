"""Fuzzing the served OpenAPI document with schemathesis: no input makes the gateway fail.

Every operation gets valid and invalid requests (bodies, query strings, headers,
path ids), half of them aimed at a real service and job so that the handlers
past the 404 are reached too. The bar is no 5xx, ever.
"""

from __future__ import annotations

import uuid

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from broker.gateway.openapi import document

pytest_plugins = ["gateway_support"]  # the make_gateway fixture
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]  # ~25 s
TOKEN = "fuzz-token"

#: Examples per operation and generation mode: the whole run stays well under a minute.
EXAMPLES = 30


def test_no_request_from_the_openapi_document_makes_a_5xx(make_gateway, stack):
    served = make_gateway(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = served.api
    service = api.create_service()
    job = api.submit(service, {"x": 1})
    real = {"service_id": service, "job_id": job}
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", headers=auth)
    assert api.get("/openapi.json").json() == document(stack.settings.version)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, served.url, auth, real)


def _fuzz(operation, mode, base_url, auth, real):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), aim=st.booleans())
    def check(case, aim):
        if aim and case.path_parameters:
            case.path_parameters = {
                name: real.get(name, str(uuid.uuid4())) for name in case.path_parameters
            }
        if isinstance(case.query, dict) and "wait" in case.query:
            case.query = {**case.query, "wait": 0}  # a long poll would only slow the run
        response = case.call(base_url=base_url, headers=auth, timeout=30)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
        )

    try:
        check()
    except Unsatisfiable:
        # No invalid request exists for an operation without inputs (GET /).
        assert mode is GenerationMode.NEGATIVE, operation.label
