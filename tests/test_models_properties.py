"""Properties of new_job: an invalid payload never makes a row, a valid one always does.

SQLite only (fast). The database and its service are made once per module; each
example runs in a session of its own that is rolled back, so examples cannot
see each other's jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from broker.errors import DeserializationError
from broker.models.service import Service
from broker.models.service_list import ServiceList
from broker.storage.tables import create_schema, engine_for, open_session

SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 100},
        "label": {"type": "string", "minLength": 1, "maxLength": 20},
    },
    "required": ["count", "label"],
    "additionalProperties": False,
}
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def acceptable(payload: object) -> bool:
    """The oracle: valid JSON Schema-wise, and storable (no backend stores NUL in text)."""
    return VALIDATOR.is_valid(payload) and not _has_nul(payload)


EXAMPLES = settings(max_examples=100, deadline=None)

# -- payloads -----------------------------------------------------------------

counts = st.integers(min_value=0, max_value=100)
# Text a JSON document can hold: no lone surrogate (storage refuses one, rightly).
labels = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
valid_payloads = st.fixed_dictionaries({"count": counts, "label": labels})

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
not_integers = json_values.filter(
    lambda v: isinstance(v, bool) or not isinstance(v, int | float) or not float(v).is_integer()
)


def _with(key: str, values: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    return st.builds(lambda payload, value: {**payload, key: value}, valid_payloads, values)


invalid_payloads = st.one_of(
    # A required field missing.
    st.builds(
        lambda payload, missing: {k: v for k, v in payload.items() if k != missing},
        valid_payloads,
        st.sampled_from(sorted(SCHEMA["required"])),
    ),
    # Out of bounds.
    _with("count", st.integers(max_value=-1) | st.integers(min_value=101)),
    _with("label", st.just("") | st.text(min_size=21, max_size=40)),
    # Of the wrong type.
    _with("count", not_integers),
    _with("label", json_values.filter(lambda v: not isinstance(v, str))),
    # An unexpected field.
    st.builds(
        lambda payload, key, value: {**payload, key: value},
        valid_payloads,
        st.text(max_size=10).filter(lambda k: k not in SCHEMA["properties"]),
        json_values,
    ),
    # Not an object at all.
    json_values.filter(lambda v: not isinstance(v, dict)),
)


# -- the database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def service_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, uuid.UUID]]:
    """A SQLite database holding one committed service: (url, service id)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('properties') / 'topchef.sqlite3'}"
    create_schema(url)
    with open_session(url) as session:
        service_id = Service.new("counter", "", SCHEMA, {"type": "object"}, session).id
        session.commit()
    yield url, service_id
    engine_for(url).dispose()


@contextmanager
def example_session(url: str) -> Iterator[Session]:
    """A session for one example; whatever it did is rolled back."""
    session = open_session(url)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


# -- properties -----------------------------------------------------------------


@EXAMPLES
@given(payload=invalid_payloads)
def test_an_invalid_payload_never_creates_a_job(service_database, payload):
    assert not VALIDATOR.is_valid(payload), "the strategy made a valid payload"
    url, service_id = service_database
    with example_session(url) as session:
        service = ServiceList(session)[service_id]
        with pytest.raises(DeserializationError) as caught:
            service.new_job(payload)
        assert caught.value.status_code == 400
        session.flush()
        assert len(service.jobs) == 0


@EXAMPLES
@given(payload=valid_payloads)
def test_a_valid_payload_always_creates_one_job(service_database, payload):
    url, service_id = service_database
    with example_session(url) as session:
        service = ServiceList(session)[service_id]
        job = service.new_job(payload)
        session.flush()
        assert len(service.jobs) == 1
        assert service.jobs[job.id].parameters == payload


#: Objects near the schema's boundary: its own keys (and one more) with any values.
near_payloads = st.dictionaries(
    st.sampled_from(["count", "label", "other"]), counts | labels | json_values, max_size=3
)


@EXAMPLES
@given(payload=near_payloads | json_values)
def test_new_job_agrees_with_json_schema_on_any_value(service_database, payload):
    url, service_id = service_database
    with example_session(url) as session:
        service = ServiceList(session)[service_id]
        if acceptable(payload):
            service.new_job(payload)
        else:
            with pytest.raises(DeserializationError):
                service.new_job(payload)
        session.flush()
        assert len(service.jobs) == int(acceptable(payload))
