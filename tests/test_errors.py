"""Errors: one root, an HTTP status code each, and how several codes aggregate."""

from __future__ import annotations

import inspect
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from broker.models import APIError
from broker.models import errors as e

SOME_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")

#: One instance of each error, with the status code it must carry.
EXAMPLES: list[tuple[e.TopChefError, int]] = [
    (e.DeserializationError("parameters", "'x' is not of type 'integer'", ("a",)), 400),
    (e.InvalidSchemaError("job_registration_schema", "'nonsense' is not valid"), 400),
    (e.ImmutableFieldError("job_result_schema"), 400),
    (e.MethodNotAllowedError("DELETE", ["GET", "POST"]), 405),
    (e.NotUUIDError("not-a-uuid"), 404),
    (e.SerializationError("cannot serialize a set"), 500),
    (e.ServiceNotFoundError(), 404),
    (e.ServiceWithUUIDNotFound(SOME_ID), 404),
    (e.ServiceWithNameNotFound("oven"), 404),
    (e.JobWithUUIDNotFound(SOME_ID), 404),
    (e.JobReferenceError("8a94", 3, 4), 404),
    (e.SQLAlchemyError(sa.exc.OperationalError("SELECT 1", {}, Exception("gone"))), 500),
    (e.ConflictError("taken"), 409),
    (e.DuplicateServiceNameError("oven"), 409),
    (e.InvalidTransitionError(SOME_ID, "COMPLETED", "WORKING"), 409),
    (e.JobNotAbortableError(SOME_ID, "COMPLETED", "it has finished"), 409),
    (e.JobFailedError(SOME_ID, "boom"), 500),
    (e.JobCancelledError(SOME_ID), 409),
    (e.WaitTimeoutError(SOME_ID, "WORKING", 1.5), 504),
    (e.ConfigurationError("TOPCHEF_X must be a number"), 500),
    (e.BrokerUnavailableError("redis down"), 503),
]
ERRORS = [error for error, _ in EXAMPLES]


@pytest.mark.parametrize(("error", "code"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_each_error_has_its_status_code_a_title_and_a_detail(error, code):
    assert error.status_code == code
    assert isinstance(error.title, str)
    assert error.title
    assert isinstance(error.detail, str)
    assert error.detail
    assert error.as_dict() == {"status_code": code, "title": error.title, "detail": error.detail}
    assert error.detail in str(error)


def test_every_error_class_in_the_module_has_an_example():
    classes = {
        cls
        for _, cls in inspect.getmembers(e, inspect.isclass)
        if issubclass(cls, e.TopChefError) and cls is not e.TopChefError
    }
    assert classes == {type(error) for error in ERRORS}


def test_all_errors_share_one_root_which_is_an_api_error():
    assert issubclass(e.TopChefError, APIError)
    assert issubclass(e.TopChefError, Exception)
    for error in ERRORS:
        assert isinstance(error, e.TopChefError)
        assert isinstance(error, APIError)
    with pytest.raises(e.TopChefError):
        raise e.JobWithUUIDNotFound(SOME_ID)


def test_errors_keep_the_data_that_explains_them():
    error = e.DeserializationError("parameters", "'x' is not of type 'integer'", ["a", 0])
    assert error.path == ("a", 0)
    assert error.source == "parameters"
    assert "parameters.a[0]" in error.detail
    assert e.ServiceWithUUIDNotFound(SOME_ID).offending_uuid == SOME_ID
    assert str(SOME_ID) in e.JobWithUUIDNotFound(SOME_ID).detail
    assert e.MethodNotAllowedError("PUT", iter(["GET"])).allowed_methods == ("GET",)
    underlying = sa.exc.OperationalError("SELECT 1", {}, Exception("gone"))
    assert e.SQLAlchemyError(underlying).underlying_exception is underlying


def test_service_with_uuid_not_found_is_a_service_not_found_error():
    assert isinstance(e.ServiceWithUUIDNotFound(SOME_ID), e.ServiceNotFoundError)
    assert isinstance(e.ServiceWithNameNotFound("oven"), e.ServiceNotFoundError)


# -- aggregation --------------------------------------------------------------


def _code(code: int) -> e.TopChefError:
    return next(error for error in ERRORS if error.status_code == code)


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([404], 404),
        ([404, 404, 404], 404),
        ([500], 500),
        ([400, 404], 400),
        ([404, 405], 400),  # two different 4xx (the seed's 404 and 403)
        ([404, 409], 400),
        ([404, 500], 500),
        ([400, 409, 503], 500),
        ([500, 503], 500),
        ([503, 504], 500),
    ],
)
def test_aggregate_status_code(codes, expected):
    assert e.aggregate_status_code([_code(code) for code in codes]) == expected


def test_aggregate_status_code_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        e.aggregate_status_code([])


@given(st.lists(st.sampled_from(ERRORS), min_size=1, max_size=12), st.randoms())
def test_aggregation_rule(errors, random):
    codes = {error.status_code for error in errors}
    result = e.aggregate_status_code(errors)
    if len(codes) == 1:
        assert result == codes.pop()
    elif any(code >= 500 for code in codes):
        assert result == 500
    else:
        assert all(400 <= code < 500 for code in codes)
        assert result == 400
    # The order and the number of repeats do not matter; any iterable will do.
    shuffled = list(errors)
    random.shuffle(shuffled)
    assert e.aggregate_status_code(iter(shuffled)) == result
    assert e.aggregate_status_code(errors + errors) == result
