"""Service contracts: JSON Schema compiled once, evaluated safely."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.contract import MAX_BYTES, MAX_DEPTH, Contract, compile_contract
from broker.models.errors import DeserializationError, InvalidSchemaError


def test_compiled_once_and_reused():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert compile_contract(schema) is compile_contract(dict(schema))


def test_failing_path_and_reason_are_reported():
    contract = Contract(
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    )
    with pytest.raises(DeserializationError) as error:
        contract.validate({"a": [1, "two"]})
    assert error.value.path == ("a", 1)
    assert "'two' is not of type 'integer'" in error.value.detail


def test_the_schema_cannot_be_mutated_through_the_contract():
    contract = Contract({"type": "integer"})
    contract.schema["type"] = "string"
    assert contract.is_valid(3)


@pytest.mark.parametrize("schema", [{"type": "nonsense"}, {"minimum": "zero"}, [], "x"])
def test_invalid_schemas_are_refused(schema):
    with pytest.raises(InvalidSchemaError):
        Contract(schema)


def test_dialects():
    assert Contract({"$schema": "http://json-schema.org/draft-07/schema#", "type": "integer"})
    with pytest.raises(InvalidSchemaError, match="unknown \\$schema"):
        Contract({"$schema": "http://example.org/my-dialect"})
    # 2020-12 by default: prefixItems is understood.
    contract = Contract({"prefixItems": [{"type": "integer"}]})
    assert not contract.is_valid(["x"])


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self):
        _Recorder.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"type": "integer"}')

    def log_message(self, *args):
        pass


def test_remote_and_file_references_are_refused_and_never_fetched():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        for schema in (
            {"$ref": url},
            {"properties": {"a": {"$ref": url}}},
            {"$dynamicRef": url},
            {"$ref": "file:///etc/passwd"},
        ):
            with pytest.raises(InvalidSchemaError, match="outside this schema"):
                Contract(schema)
    finally:
        server.shutdown()
        server.server_close()
    assert _Recorder.requests == []


def test_local_references_work():
    contract = Contract({"$defs": {"n": {"type": "integer"}}, "items": {"$ref": "#/$defs/n"}})
    assert contract.is_valid([1, 2])
    assert not contract.is_valid([1, "x"])


def test_formats_are_checked():
    contract = Contract({"type": "string", "format": "ipv4"})
    assert contract.is_valid("127.0.0.1")
    assert not contract.is_valid("not an address")


def test_patterns_run_in_linear_time():
    contract = Contract({"type": "string", "pattern": "^(a+)+$"})
    assert not contract.is_valid("a" * 5000 + "b")  # catastrophic for re; instant for RE2
    assert contract.is_valid("aaaa")
    plain = Contract({"type": "string", "pattern": "^[a-z]+$"})
    assert plain.is_valid("abc")
    assert not plain.is_valid("ABC")
    unanchored = Contract({"type": "string", "pattern": "b"})
    assert unanchored.is_valid("abc")


def test_pattern_properties_run_on_re2():
    contract = Contract({"type": "object", "patternProperties": {"^x_": {"type": "integer"}}})
    assert contract.is_valid({"x_a": 1, "y": "anything"})
    assert not contract.is_valid({"x_a": "one"})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "(?=a)"},  # lookahead
        {"type": "string", "pattern": "(a)\\1"},  # backreference
        {"type": "string", "pattern": "("},  # not a regex at all
        {"patternProperties": {"(?<=x)": {}}},
    ],
)
def test_patterns_that_can_backtrack_or_do_not_compile_are_refused(schema):
    with pytest.raises(InvalidSchemaError):
        Contract(schema)


def test_pathological_schemas_are_refused_not_crashed():
    deep: dict = {"type": "integer"}
    for _ in range(5000):
        deep = {"not": deep}
    with pytest.raises(InvalidSchemaError, match="nested deeper"):
        Contract(deep)
    looping = Contract({"$defs": {"x": {"$ref": "#/$defs/x"}}, "$ref": "#/$defs/x"})
    with pytest.raises(DeserializationError):
        looping.validate({})


def test_payloads_are_bounded_before_validation():
    contract = Contract({})
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(DeserializationError, match="nested deeper"):
        contract.validate(deep)
    with pytest.raises(DeserializationError, match="bytes of JSON"):
        contract.validate("x" * (MAX_BYTES + 1))


@pytest.mark.parametrize(
    "payload", [float("nan"), float("inf"), {1: "non-string key"}, {"a": object()}, "a\x00b"]
)
def test_only_storable_json_is_accepted(payload):
    with pytest.raises(DeserializationError):
        Contract({}).validate(payload)


# -- agreement with jsonschema itself ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
    ),
    max_leaves=8,
)
leaf_schemas = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["integer", "string", "boolean", "null", "array", "object", "number"]
            )
        }
    ),
    st.fixed_dictionaries({"minimum": st.integers(-50, 50)}),
    st.fixed_dictionaries({"maxLength": st.integers(0, 4)}),
    st.fixed_dictionaries({"enum": st.lists(st.integers(-3, 3), min_size=1, max_size=3)}),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: (
        st.fixed_dictionaries(
            {"properties": st.dictionaries(st.sampled_from("abc"), inner, max_size=2)},
            optional={"required": st.lists(st.sampled_from("abc"), max_size=2, unique=True)},
        )
        | st.fixed_dictionaries({"items": inner})
        | st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=2)})
    ),
    max_leaves=4,
)


@settings(max_examples=200, deadline=None)
@given(schema=schemas, payload=json_values)
def test_verdicts_agree_with_jsonschema(schema, payload):
    expected = jsonschema.Draft202012Validator(schema).is_valid(payload)
    assert Contract(schema).is_valid(payload) is expected
