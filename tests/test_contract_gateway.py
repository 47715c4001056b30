"""A schema's cost over HTTP: refused at creation, and the costliest allowed one does
not keep a real ``topchef api`` from answering others while it validates.
"""

from __future__ import annotations

import random
import re
import threading

import lab
import pytest
import requests
from support import wait_for

from broker.contract.patterns import BASE_WEIGHT, MAX_PATTERN_WEIGHT, MAX_WORK, pattern_weight

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures
pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: The costliest pattern allowed: its DFA has too many states to cache, so the
#: engine reads every byte through its slowest path.
HEAVY = f"a[ab]{{{MAX_PATTERN_WEIGHT - 2}}}c"


def test_a_costly_schema_is_refused_over_http(api):
    for pattern in ("a{40000}", "(a{100}){100}", "a{200000}"):
        body = {
            "name": "Costly",
            "description": "a pattern too costly to validate",
            "job_registration_schema": {"type": "string", "pattern": pattern},
            "job_result_schema": lab.SQUARE_RESULTS,
        }
        response = api.post("/services", json=body)
        assert response.status_code == 400, response.text
        detail = response.json()["errors"][0]["detail"]
        assert "job_registration_schema.pattern" in detail
        assert f"at most {MAX_PATTERN_WEIGHT}" in detail
    assert not [s for s in api.get("/services").json()["data"] if s["name"] == "Costly"]


@pytest.mark.slow  # starts `topchef api`
def test_the_gateway_answers_while_the_costliest_allowed_schema_validates(stack):
    process = stack.process("api", "--port", "0")
    url = wait_for(
        lambda: re.search(r"TopChef API on (http://127\.0\.0\.1:\d+)/", process.log()),
        30,
        "topchef api to listen",
    ).group(1)
    schema = {"type": "object", "properties": {"text": {"type": "string", "pattern": HEAVY}}}
    created = requests.post(
        f"{url}/services",
        json={
            "name": "Heavy",
            "description": "the costliest pattern allowed",
            "job_registration_schema": schema,
            "job_result_schema": lab.SQUARE_RESULTS,
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    jobs = f"{url}/services/{created.json()['data']['id']}/jobs"
    # As much text as the pattern may read, none of it matching: the worst case.
    most = MAX_WORK // (pattern_weight(HEAVY) + BASE_WEIGHT) - len("text")
    text = "".join(random.Random(7).choice("ab") for _ in range(most))

    answers: list[int] = []
    done = threading.Event()

    def submit() -> None:
        with requests.Session() as session:
            for _ in range(20):
                answers.append(session.post(jobs, json={"parameters": {"text": text}}).status_code)
        done.set()

    submitter = threading.Thread(target=submit)
    submitter.start()
    looked = 0
    with requests.Session() as session:
        while not done.is_set():
            response = session.get(f"{url}/", timeout=10)  # generous: the figures are in bench/
            assert response.status_code == 200
            looked += 1
    submitter.join(60)
    assert answers == [400] * 20  # each read in full, and found not to match
    assert looked >= 1
    too_much = requests.post(jobs, json={"parameters": {"text": text + "ab"}}, timeout=10)
    assert too_much.status_code == 400
    assert "may read at most" in too_much.json()["errors"][0]["detail"]
    assert process.stop() == 0
