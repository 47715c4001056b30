"""Service contracts: JSON Schema compiled once, evaluated safely."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import ClassVar

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.contract import MAX_BYTES, MAX_DEPTH, MAX_REFERENCES, Contract, compile_contract
from broker.contract.schema import build_validator
from broker.errors import DeserializationError, InvalidSchemaError


def test_compiled_once_and_reused():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {}}}
    contract = compile_contract(schema)
    assert compile_contract(dict(reversed(schema.items()))) is contract  # canonical JSON
    assert compile_contract(schema, source="job_result_schema") is contract  # not per source
    assert compile_contract({"type": "string"}) is not contract


def test_compile_contract_names_the_source_of_a_refused_schema():
    for source in ("job_registration_schema", "job_result_schema"):
        with pytest.raises(InvalidSchemaError) as error:
            compile_contract({"type": "nonsense"}, source=source)
        assert error.value.source == source
        assert error.value.path == ("type",)


def test_failing_path_and_reason_are_reported():
    contract = Contract(
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    )
    with pytest.raises(DeserializationError) as error:
        contract.validate({"a": [1, "two"]})
    assert error.value.path == ("a", 1)
    assert '"two" is not of type "integer"' in error.value.detail


def test_the_schema_cannot_be_mutated_through_the_contract():
    contract = Contract({"type": "integer"})
    contract.schema["type"] = "string"
    assert contract.is_valid(3)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nonsense"},
        {"minimum": "zero"},
        [],
        "x",
        True,
        False,
        None,
        {"$schema": 5},
        {"$schema": ["not", "hashable"]},
        pytest.param({"maximum": 10**5000}, id="huge-int"),  # beyond Python's int-to-text limit
        {"enum": [float("nan")]},
        pytest.param({"enum": ["x" * MAX_BYTES]}, id="too-big"),
    ],
)
def test_invalid_schemas_are_refused(schema):
    with pytest.raises(InvalidSchemaError):
        Contract(schema)
    with pytest.raises(InvalidSchemaError):
        compile_contract(schema)


def test_a_schema_error_names_where_the_problem_is():
    with pytest.raises(InvalidSchemaError) as error:
        Contract({"properties": {"a": {"type": "nonsense"}}}, source="job_registration_schema")
    assert error.value.source == "job_registration_schema"
    assert error.value.path == ("properties", "a", "type")


def test_dialects():
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "integer"}]}
    for spelling in (
        "http://json-schema.org/draft-07/schema",
        "HTTP://json-schema.org/draft-07/schema#",
    ):
        assert Contract({**draft7, "$schema": spelling}).is_valid([1, "anything"])
    contract = Contract(draft7)  # a list of items is draft 7's tuple validation
    assert contract.is_valid([1, "anything"])
    assert not contract.is_valid(["x"])
    draft7.pop("$schema")
    with pytest.raises(InvalidSchemaError):  # and invalid in 2020-12, the default
        Contract(draft7)
    with pytest.raises(InvalidSchemaError, match="unknown \\$schema"):
        Contract({"$schema": "http://example.org/my-dialect"})
    # 2020-12 by default: prefixItems is understood.
    contract = Contract({"prefixItems": [{"type": "integer"}]})
    assert not contract.is_valid(["x"])
    draft4 = Contract({"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 1})
    assert draft4.is_valid(1)
    draft4 = Contract(
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "maximum": 1,
            "exclusiveMaximum": True,
        }
    )
    assert not draft4.is_valid(1)  # draft 4's boolean exclusiveMaximum
    draft6 = Contract({"$schema": "http://json-schema.org/draft-06/schema#", "const": 1})
    assert not draft6.is_valid(2)
    draft2019 = Contract(
        {
            "$schema": "https://json-schema.org/draft/2019-09/schema",
            "dependentRequired": {"a": ["b"]},
        }
    )
    assert not draft2019.is_valid({"a": 1})


def test_draft_3_is_refused_with_a_reason():
    with pytest.raises(InvalidSchemaError, match="draft 3 is not supported") as error:
        Contract({"$schema": "http://json-schema.org/draft-03/schema#"})
    assert error.value.path == ("$schema",)


def test_a_nested_unknown_dialect_is_refused(recorder_url):
    with pytest.raises(InvalidSchemaError, match="unknown \\$schema") as error:
        Contract({"$defs": {"x": {"$id": f"{recorder_url}/x", "$schema": f"{recorder_url}/meta"}}})
    assert error.value.path == ("$defs", "x", "$schema")
    nested = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "integer"}
    assert Contract({"$defs": {"x": nested}}).is_valid(1)
    assert _Recorder.requests == []


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self):
        _Recorder.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"type": "integer"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder_url():
    _Recorder.requests.clear()
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_remote_and_file_references_are_refused_and_never_fetched(recorder_url, tmp_path):
    local_file = tmp_path / "integer.json"
    local_file.write_text('{"type": "integer"}')
    url = f"{recorder_url}/schema.json"
    for schema in (
        {"$ref": url},
        {"properties": {"a": {"$ref": url}}},
        {"$defs": {"x": {"items": {"$ref": url}}}},
        {"$dynamicRef": url},
        {"$ref": local_file.as_uri()},
        {"$ref": "integer.json"},  # relative to a base URI: outside the document too
        {"$schema": "http://json-schema.org/draft-04/schema#", "items": {"$ref": url}},
    ):
        with pytest.raises(InvalidSchemaError, match="outside this schema") as error:
            Contract(schema)
        assert error.value.path[-1] in ("$ref", "$dynamicRef")
    assert _Recorder.requests == []


def test_a_base_uri_on_the_network_is_still_never_fetched(recorder_url):
    contract = Contract(
        {
            "$id": f"{recorder_url}/root.json",
            "$defs": {"n": {"type": "integer"}, "elsewhere": {"$id": "other.json"}},
            "items": {"$ref": "#/$defs/n"},
        }
    )
    assert contract.is_valid([1])
    assert not contract.is_valid(["x"])
    assert _Recorder.requests == []


def test_local_references_work():
    contract = Contract({"$defs": {"n": {"type": "integer"}}, "items": {"$ref": "#/$defs/n"}})
    assert contract.is_valid([1, 2])
    assert not contract.is_valid([1, "x"])


def test_a_local_reference_to_nowhere_is_refused_at_creation():
    with pytest.raises(InvalidSchemaError, match=r"cannot be resolved.*/\$defs/missing"):
        Contract({"$ref": "#/$defs/missing"})


@pytest.fixture
def silent_listener():
    """A socket that listens and never accepts: a connection would wait in its backlog."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def connections(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            accepted, _ = listener.accept()
        except BlockingIOError:
            return count
        accepted.close()
        count += 1


def test_the_validator_itself_is_offline(silent_listener, tmp_path):
    """Below the reference check: what jsonschema-rs does with a reference that got past it."""
    local_file = tmp_path / "integer.json"
    local_file.write_text('{"type": "integer"}')
    port = silent_listener.getsockname()[1]
    dialect = jsonschema_rs.Draft202012Validator
    for schema in (
        {"$ref": f"http://127.0.0.1:{port}/schema.json"},
        {"items": {"$ref": f"http://127.0.0.1:{port}/schema.json#/$defs/n"}},
        {"$ref": local_file.as_uri()},
    ):
        with pytest.raises(jsonschema_rs.ValidationError, match="Retrieval is disabled"):
            build_validator(schema, dialect)
    time.sleep(0.1)  # a connection attempt would have reached the backlog by now
    assert connections(silent_listener) == 0
    # The control: the library's default would have read the file (and used it).
    online = dialect({"$ref": local_file.as_uri()})
    assert online.is_valid(1)
    assert not online.is_valid("x")


def test_http_options_would_turn_retrieval_back_on(silent_listener):
    """Why ``build_validator`` never passes ``http_options``: it overrides ``offline``."""
    port = silent_listener.getsockname()[1]
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.Draft202012Validator(
            {"$ref": f"http://127.0.0.1:{port}/x.json"},
            offline=True,
            http_options=jsonschema_rs.HttpOptions(timeout=0.3, connect_timeout=0.3),
        )
    assert connections(silent_listener) >= 1


def test_contracts_reach_no_socket_and_no_file(silent_listener, tmp_path):
    local_file = tmp_path / "integer.json"
    local_file.write_text('{"type": "integer"}')
    port = silent_listener.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    for schema in (
        {"$ref": f"{base}/schema.json"},
        {"$schema": f"{base}/meta"},  # validator_for would fetch an unknown meta-schema
        {"$ref": local_file.as_uri()},
    ):
        with pytest.raises(InvalidSchemaError):
            Contract(schema)
    contract = Contract(
        {
            "$id": f"{base}/root.json",
            "$defs": {"n": {"type": "integer"}, "other": {"$id": "other.json"}},
            "items": {"$ref": "#/$defs/n"},
        }
    )
    assert contract.is_valid([1])
    assert not contract.is_valid(["x"])
    time.sleep(0.1)
    assert connections(silent_listener) == 0


def test_formats_are_checked():
    contract = Contract({"type": "string", "format": "ipv4"})
    assert contract.is_valid("127.0.0.1")
    assert not contract.is_valid("not an address")
    email = Contract({"format": "email"})
    assert email.is_valid("chef@example.org")
    assert not email.is_valid("no at sign")


def test_the_regex_format_does_not_crash():
    contract = Contract({"type": "string", "format": "regex"})
    assert contract.is_valid("^[a-z]+$")
    assert not contract.is_valid("(")
    assert not contract.is_valid("(" * 5000)
    assert contract.is_valid("(" * 100_000 + ")" * 100_000)  # balanced: a regex, however deep


def test_patterns_run_in_linear_time():
    contract = Contract({"type": "string", "pattern": "^(a+)+$"})
    started = time.monotonic()
    assert not contract.is_valid("a" * 5000 + "b")  # catastrophic for a backtracking engine
    with pytest.raises(DeserializationError, match="does not match"):
        contract.validate("a" * 5000 + "b")
    assert time.monotonic() - started < 5  # generous: backtracking would take forever
    assert contract.is_valid("aaaa")
    plain = Contract({"type": "string", "pattern": "^[a-z]+$"})
    assert plain.is_valid("abc")
    assert not plain.is_valid("ABC")
    unanchored = Contract({"type": "string", "pattern": "b"})
    assert unanchored.is_valid("abc")


EVIL = "^(a+)+$"
EVIL_KEY = "a" * 5000 + "b"  # catastrophic for backtracking: any keyword on it would hang


def test_pattern_properties_run_in_linear_time():
    contract = Contract({"type": "object", "patternProperties": {"^x_": {"type": "integer"}}})
    assert contract.is_valid({"x_a": 1, "y": "anything"})
    assert not contract.is_valid({"x_a": "one"})
    evil = Contract({"patternProperties": {EVIL: {"type": "integer"}}})
    assert evil.is_valid({EVIL_KEY: "not matched, so not checked"})
    assert not evil.is_valid({"aaa": "matched"})


@pytest.mark.parametrize(
    "dialect",
    [
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-04/schema#",
    ],
)
def test_additional_properties_match_pattern_properties_in_linear_time(dialect):
    contract = Contract(
        {"$schema": dialect, "patternProperties": {EVIL: {}}, "additionalProperties": False}
    )
    assert contract.is_valid({"aaa": 1})
    assert not contract.is_valid({EVIL_KEY: 1})
    with pytest.raises(DeserializationError, match=r"Additional properties are not allowed"):
        contract.validate({EVIL_KEY: 1, "b": 2})


@pytest.mark.parametrize(
    "dialect",
    [
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
    ],
)
def test_unevaluated_properties_match_pattern_properties_in_linear_time(dialect):
    contract = Contract(
        {
            "$schema": dialect,
            "allOf": [{"patternProperties": {EVIL: {}}}, {"properties": {"x": {}}}],
            "unevaluatedProperties": False,
        }
    )
    assert contract.is_valid({"aaa": 1, "x": 2})
    assert not contract.is_valid({EVIL_KEY: 1})
    with pytest.raises(DeserializationError, match="Unevaluated properties are not allowed"):
        contract.validate({"x": 1, "y": 2})


def test_property_names_patterns_run_in_linear_time():
    contract = Contract({"propertyNames": {"pattern": EVIL}})
    assert contract.is_valid({"aaa": 1})
    assert not contract.is_valid({EVIL_KEY: 1})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "(?=a)"},  # lookahead
        {"type": "string", "pattern": "(a)\\1"},  # backreference
        {"type": "string", "pattern": "("},  # not a regex at all
        {"patternProperties": {"(?<=x)": {}}},
        {"properties": {"a": {"items": {"pattern": "(?!a)"}}}},
        {"type": "string", "pattern": "\ud800"},  # a lone surrogate: not even UTF-8
        {"propertyNames": {"pattern": "(?=a)"}},
        {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": "(?=a)"},
    ],
)
def test_patterns_that_can_backtrack_or_do_not_compile_are_refused(schema):
    with pytest.raises(InvalidSchemaError):
        Contract(schema)
    with pytest.raises(InvalidSchemaError):
        compile_contract(schema)


def test_a_refused_pattern_says_why():
    with pytest.raises(InvalidSchemaError, match="lookarounds and backreferences") as error:
        Contract({"properties": {"a": {"type": "string", "pattern": "(?=a)"}}})
    assert error.value.path == ("properties", "a", "pattern")
    assert "'(?=a)'" in error.value.detail
    with pytest.raises(InvalidSchemaError, match="linear-time regex engine") as error:
        Contract({"patternProperties": {"(a)\\1": {}}})
    assert error.value.path == ("patternProperties", "(a)\\1")


def test_pathological_schemas_are_refused_not_crashed():
    deep: dict = {"type": "integer"}
    for _ in range(5000):
        deep = {"not": deep}
    with pytest.raises(InvalidSchemaError, match="nested deeper"):
        Contract(deep)
    with pytest.raises(InvalidSchemaError, match="not supported") as error:
        # Shallow as JSON, but deeper than the regex parser nests.
        Contract({"pattern": "(" * 400 + ")" * 400})
    assert error.value.path == ("pattern",)
    assert len(error.value.detail) < 400  # the pattern is clipped in the message
    with pytest.raises(InvalidSchemaError, match="too long") as error:
        Contract({"pattern": "(" * 5000 + ")" * 5000})
    assert len(error.value.detail) < 400
    for schema in (
        {"$ref": "#"},
        {"$defs": {"x": {"$ref": "#/$defs/x"}}, "$ref": "#/$defs/x"},
        {"$dynamicAnchor": "n", "$dynamicRef": "#n"},
    ):
        # A reference to itself constrains nothing more: jsonschema-rs accepts, not loops.
        looping = Contract(schema)
        looping.validate({})
        assert looping.is_valid(1)
    looping = Contract({"$ref": "#", "type": "integer"})
    assert looping.is_valid(1)
    assert not looping.is_valid("x")


def chain(links: int) -> dict:
    """``links`` references in a row, the last back to the first one level down."""
    defs: dict = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(links - 1)}
    defs[f"a{links - 1}"] = {"type": "array", "items": {"$ref": "#/$defs/a0"}}
    return {"$defs": defs, "$ref": "#/$defs/a0"}


def test_references_are_bounded():
    with pytest.raises(InvalidSchemaError, match=f"more than {MAX_REFERENCES} references"):
        Contract(chain(MAX_REFERENCES))  # one more: the root's own $ref
    contract = Contract(chain(MAX_REFERENCES - 1))
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert not contract.is_valid(deep)  # every level through every reference, then 1
    assert contract.is_valid([[[]]])


def test_the_worst_reference_chain_fits_a_small_thread_stack():
    """What ``MAX_REFERENCES`` is for: the validator overflows its stack in Rust, which
    kills the process (SIGSEGV) rather than raising; a child process shows it safely."""
    program = textwrap.dedent(
        f"""
        import sys, threading
        sys.path[:0] = {sys.path!r}
        from test_contract import chain
        from broker.contract import MAX_DEPTH, MAX_REFERENCES, Contract
        deep = 1
        for _ in range(MAX_DEPTH):
            deep = [deep]
        def run():
            contract = Contract(chain(MAX_REFERENCES - 1))
            assert not contract.is_valid(deep)
            print("ok")
        threading.stack_size(2 * 1024 * 1024)
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_payloads_are_bounded_before_validation():
    contract = Contract({})
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(DeserializationError, match="nested deeper"):
        contract.validate(deep)
    contract.validate(deep[0])  # exactly MAX_DEPTH is fine
    with pytest.raises(DeserializationError, match="bytes of JSON"):
        contract.validate("x" * (MAX_BYTES + 1))
    with pytest.raises(DeserializationError, match="bytes of JSON"):
        contract.validate([0] * (MAX_BYTES + 1))  # refused before it is serialized
    with pytest.raises(DeserializationError, match="bytes of JSON"):
        contract.validate({"k": "\u00e9" * (MAX_BYTES // 3)})  # escaped to 6 bytes each


def test_payload_errors_name_their_source():
    with pytest.raises(DeserializationError) as error:
        Contract({"type": "integer"}).validate("x", source="results")
    assert error.value.source == "results"
    assert error.value.path == ()
    assert str(error.value).startswith("Deserialization error: results:")


@pytest.mark.parametrize(
    "payload",
    [
        float("nan"),
        float("inf"),
        {"a": [float("-inf")]},
        {1: "non-string key"},
        {"a": object()},
        (1, 2),
        b"bytes",
        "a\x00b",
        "\ud800",  # a lone surrogate: PostgreSQL cannot store it, jsonschema-rs cannot read it
        {"\udfff": 1},
        pytest.param(10**5000, id="huge-int"),
    ],
)
def test_only_storable_json_is_accepted(payload):
    with pytest.raises(DeserializationError):
        Contract({}).validate(payload)


# -- agreement with jsonschema itself ---------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-100, 100)
    | st.floats(-100, 100, allow_nan=False)
    # NUL is refused on purpose (PostgreSQL cannot store it); jsonschema accepts it.
    | st.text(st.characters(exclude_characters="\x00"), max_size=5),
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
    st.fixed_dictionaries(
        {"type": st.lists(st.sampled_from(["integer", "string", "null"]), min_size=1, unique=True)}
    ),
    st.fixed_dictionaries({"minimum": st.integers(-50, 50)}),
    st.fixed_dictionaries({"maximum": st.floats(-50, 50, allow_nan=False)}),
    st.fixed_dictionaries({"minLength": st.integers(0, 4)}),
    st.fixed_dictionaries({"maxLength": st.integers(0, 4)}),
    st.fixed_dictionaries({"enum": st.lists(st.integers(-3, 3), min_size=1, max_size=3)}),
    st.fixed_dictionaries({"enum": st.lists(json_values, min_size=1, max_size=2)}),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: (
        st.fixed_dictionaries(
            {"properties": st.dictionaries(st.sampled_from("abc"), inner, max_size=2)},
            optional={
                "required": st.lists(st.sampled_from("abc"), max_size=2, unique=True),
                "additionalProperties": st.booleans() | inner,
            },
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
