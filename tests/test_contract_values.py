"""What a contract hands back: plain JSON, NumPy's values converted, whole floats as ints
where the schema says ``integer``; and a refusal that names where the value is.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap

import jsonschema
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_contract import json_values, schemas

from broker.contract import MAX_BYTES, Contract
from broker.contract.bounds import MAX_DEPTH, check_payload, surely_within_bounds
from broker.errors import DeserializationError

ANY = Contract({})


def _exact(value: object) -> object:
    """``value`` with each scalar paired with its exact type, to compare types as well."""
    if isinstance(value, dict):
        return {key: _exact(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_exact(child) for child in value]
    return (type(value), value)


# -- NumPy ---------------------------------------------------------------------------


def test_numpy_arrays_and_numbers_become_the_json_they_stand_for():
    results = {
        "spectrum": np.linspace(0.0, 1.0, 5),
        "grid": np.arange(6, dtype=np.int32).reshape(2, 3),
        "mask": np.array([True, False]),
        "labels": np.array(["a", "b"]),
        "single": np.float32(0.5),
        "count": np.int64(3),
        "flag": np.bool_(True),
        "name": np.str_("x"),
        "nested": [{"peak": np.float64(2.5)}],
    }
    plain = ANY.validate(results, source="results")
    assert _exact(plain) == _exact(
        {
            "spectrum": [0.0, 0.25, 0.5, 0.75, 1.0],
            "grid": [[0, 1, 2], [3, 4, 5]],
            "mask": [True, False],
            "labels": ["a", "b"],
            "single": 0.5,
            "count": 3,
            "flag": True,
            "name": "x",
            "nested": [{"peak": 2.5}],
        }
    )
    assert json.loads(json.dumps(plain)) == plain
    assert isinstance(results["spectrum"], np.ndarray)  # the caller's value is left as it was


def test_a_masked_point_is_null():
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    assert ANY.validate({"points": masked}) == {"points": [1.0, None, 3.0]}


@pytest.mark.parametrize(
    ("results", "where", "reason"),
    [
        (
            {"spectrum": np.array([0.0, 1.0, 2.0, np.nan])},
            "results.spectrum[3]",
            "nan is not a JSON number: JSON has no NaN or infinity; give None for a missing value",
        ),
        ({"fit": {"chi2": np.float64("inf")}}, "results.fit.chi2", "inf is not a JSON number"),
        ({"grid": np.array([[1.0, 2.0], [-np.inf, 0.0]])}, "results.grid[1][0]", "-inf is not"),
        ({"z": np.array([1 + 2j])}, "results.z[0]", "complex is not a JSON value: give its real"),
        (
            {"t": np.array(["2026-01-01T00:00"], dtype="datetime64[s]")},
            "results.t[0]",
            "datetime is not a JSON value: give it as text, value.isoformat()",
        ),
        ({"raw": np.array([b"ab"])}, "results.raw[0]", "bytes is not a JSON value: decode it"),
        ({"when": datetime.date(2026, 1, 1)}, "results.when", "date is not a JSON value"),
        ({"pair": [1, (2, 3)]}, "results.pair[1]", "tuple is not a JSON value: make it a list"),
        ({"tags": {"a", "b"}}, "results.tags", "set is not a JSON value: make it a list"),
        ({"a": [{"b": "x\x00"}]}, "results.a[0].b", "strings may not contain NUL"),
        ({"a": {1: "x"}}, "results.a", "object keys must be strings, got 1"),
    ],
)
def test_a_value_that_is_not_json_is_refused_naming_where_it_is_and_what_to_give(
    results, where, reason
):
    with pytest.raises(DeserializationError) as caught:
        ANY.validate(results, source="results")
    assert caught.value.detail.startswith(f"{where}: ")
    assert reason in caught.value.detail


def test_a_huge_array_is_refused_before_it_is_converted():
    class Untouchable(np.ndarray):
        def tolist(self):  # a real conversion would take its time and memory first
            raise AssertionError("converted")

    huge = np.zeros(MAX_BYTES + 1).view(Untouchable)
    with pytest.raises(DeserializationError, match=r"more than .* bytes of JSON"):
        ANY.validate({"trace": huge}, source="results")


def test_an_object_array_holding_itself_is_refused_not_looped():
    loop = np.empty(1, dtype=object)
    loop[0] = loop
    with pytest.raises(DeserializationError, match="nested deeper"):
        ANY.validate({"loop": loop})


def test_plain_json_never_loads_numpy():
    program = textwrap.dedent(
        """
        import sys
        from broker.contract import Contract
        contract = Contract({"type": "object", "properties": {"n": {"type": "integer"}}})
        contract.validate({"n": 3.0, "x": [1.5, "a", None, {"k": True}]})
        try:
            contract.validate({"bad": (1, 2)})
        except Exception:
            pass
        print("numpy" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


# -- where a refusal points -------------------------------------------------------------

keys = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=3)
steps = st.lists(st.one_of(keys, st.integers(0, 3)), max_size=8)
bad_values = st.sampled_from(
    [float("nan"), float("-inf"), (1,), b"x", "a\x00", object(), np.float64("nan")]
)


def _planted(path: list[object], bad: object, filler: int) -> object:
    """A payload with ``bad`` at ``path``: lists padded with ``filler``, objects given a sibling."""
    value: object = bad
    for step in reversed(path):
        if isinstance(step, int):
            value = [filler] * step + [value] + [filler]
        else:
            value = {f"{step}~sibling": filler, step: value}
    return value


@settings(max_examples=300, deadline=None)
@given(path=steps, bad=bad_values, filler=st.integers(-5, 5))
def test_every_refusal_names_the_path_of_what_it_refused(path, bad, filler):
    with pytest.raises(DeserializationError) as caught:
        ANY.validate(_planted(path, bad, filler), source="results")
    assert caught.value.path == tuple(path)


# -- whole numbers -----------------------------------------------------------------------


def _kinds(value: object) -> object:
    return json.loads(json.dumps(_exact(value), default=lambda t: t.__name__))


@pytest.mark.parametrize(
    ("schema", "given_value", "expected"),
    [
        ({"type": "integer"}, 10.0, 10),
        ({"properties": {"points": {"type": "integer"}}}, {"points": 10.0}, {"points": 10}),
        ({"properties": {"x": {"type": "number"}}}, {"x": 10.0}, {"x": 10.0}),
        ({"properties": {"x": {"type": ["integer", "null"]}}}, {"x": 2.0}, {"x": 2}),
        ({"properties": {"x": {"type": ["integer", "number"]}}}, {"x": 2.0}, {"x": 2.0}),
        ({"items": {"type": "integer"}}, [1.0, 2, -3.0], [1, 2, -3]),
        ({"additionalProperties": {"type": "integer"}}, {"a": 1.0}, {"a": 1}),
        (
            {"patternProperties": {"^n_": {"type": "integer"}}},
            {"n_a": 1.0, "x": 2.0},
            {"n_a": 1, "x": 2.0},
        ),
        (
            {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}},
            {"a": 4.0},
            {"a": 4},
        ),
        (
            {  # its locations are then absolute URIs, which the schema's own registry resolves
                "$id": "https://lab.example/scan",
                "$defs": {"s": {"type": "integer"}},
                "properties": {"steps": {"$ref": "#/$defs/s"}},
            },
            {"steps": 100.0},
            {"steps": 100},
        ),
        (
            {"properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}},
            {"x": 1.0},
            {"x": 1},
        ),
        (  # only the branch that held counts: 3 is below the integer branch's minimum
            {"oneOf": [{"type": "integer", "minimum": 5}, {"type": "number", "maximum": 4}]},
            3.0,
            3.0,
        ),
        (
            {"if": {"properties": {"n": {"type": "integer"}}}, "then": {"required": ["n"]}},
            {"n": 2.0},
            {"n": 2},
        ),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "properties": {"n": {"type": "integer"}},
            },
            {"n": 2.0},
            {"n": 2},
        ),
        (  # integers along plain properties only: found without an evaluation
            {
                "properties": {
                    "scan": {"properties": {"steps": {"type": "integer"}}},
                    "type": {"type": ["integer", "null"]},  # a field named "type"
                    "hz": {"type": "number"},
                },
                "default": {"type": "integer"},  # data, not a schema
            },
            {"scan": {"steps": 3.0}, "type": 1.0, "hz": 5.1e9},
            {"scan": {"steps": 3}, "type": 1, "hz": 5.1e9},
        ),
        (  # and an integer under items is found by the evaluation
            {"properties": {"n": {"type": "integer"}, "v": {"items": {"type": "integer"}}}},
            {"n": 1.0, "v": [2.0, 3]},
            {"n": 1, "v": [2, 3]},
        ),
        ({"properties": {"x": {"type": "integer"}}}, {"x": 2.5}, None),  # invalid: refused
        ({"type": "object"}, {"x": 2.0}, {"x": 2.0}),  # no integer anywhere: nothing to do
    ],
)
def test_whole_floats_become_ints_where_the_schema_says_integer(schema, given_value, expected):
    contract = Contract(schema)
    if expected is None:
        with pytest.raises(DeserializationError, match=r'2\.5 is not of type "integer"'):
            contract.validate(given_value)
        return
    before = json.dumps(given_value)
    assert _kinds(contract.validate(given_value)) == _kinds(expected)
    assert json.dumps(given_value) == before  # the caller's value is never changed


def test_a_value_with_nothing_to_change_is_handed_back_itself():
    contract = Contract({"properties": {"n": {"type": "integer"}, "x": {"type": "number"}}})
    for value in ({"n": 3, "x": 1.5}, {"n": 3, "x": 2.0}):
        assert contract.validate(value) is value


def _strictly_integer(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


#: jsonschema (Python) with ``integer`` meaning a Python int only: the oracle.
Strict = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", _strictly_integer
    ),
)
whole_heavy = st.recursive(
    st.integers(-5, 5).map(float) | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(schema=schemas, payload=whole_heavy | json_values)
def test_after_the_contract_every_integer_field_holds_a_python_int(schema, payload):
    contract = Contract(schema)
    assume(contract.is_valid(payload))
    normalized = contract.validate(payload)
    assert normalized == payload  # the same numbers: 10 == 10.0
    assert Strict(schema).is_valid(normalized), (schema, payload, normalized)
    assert _kinds(contract.validate(normalized)) == _kinds(normalized)  # and it stays so


#: Any JSON at all, NUL, surrogates and deep nesting included, as text a Redis writer sends.
_any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None), max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children)
    ),
    max_leaves=80,
)
_deep = st.integers(1, 3 * MAX_DEPTH).map(lambda depth: "[" * depth + "]" * depth)


def _utf8(text: str) -> bool:
    """Whether ``text`` is what the mirror reads from bytes: UTF-8, so no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=400)
@given(value=_any_json, ascii_only=st.booleans(), deep=_deep)
def test_json_text_surely_within_bounds_is_within_them_and_unchanged_by_the_walk(
    value, ascii_only, deep
):
    """The mirror skips the walk of a report ``surely_within_bounds``: never wrongly."""
    for text in (json.dumps(value, ensure_ascii=ascii_only), deep):
        if _utf8(text) and surely_within_bounds(text):
            read = json.loads(text)
            assert check_payload(read, "results").value == read


def test_what_is_not_surely_within_bounds_is_left_to_the_walk():
    assert surely_within_bounds('{"results": {"x": [1, 2.5, "é"]}}')
    for text in (
        "[" * MAX_DEPTH + "]" * MAX_DEPTH,
        '{"x": "a\\u0000b"}',
        '{"x": "\\ud83d\\ude00"}',
        '{"x": "\\uDC00"}',
        '"' + "x" * (MAX_BYTES // 6) + '"',
    ):
        assert not surely_within_bounds(text)
