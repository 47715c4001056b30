"""The contract's fast path: it may refuse a valid payload, never accept an invalid one."""

from __future__ import annotations

import copy
import enum
import math

import jsonschema
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_contract import json_values

from broker.contract import MAX_BYTES, MAX_DEPTH, Contract
from broker.errors import DeserializationError

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

#: The benchmark's job (bench/payload.py, which tests cannot import).
PARAMETERS_SCHEMA = {
    "type": "object",
    "properties": {
        "sample": {"type": "string", "minLength": 1, "maxLength": 64},
        "frequency_hz": {"type": "number", "minimum": 0},
        "amplitude": {"type": "number", "minimum": 0, "maximum": 1},
        "repetitions": {"type": "integer", "minimum": 1, "maximum": 100000},
        "index": {"type": "integer", "minimum": 0},
    },
    "required": ["sample", "frequency_hz", "amplitude", "repetitions", "index"],
    "additionalProperties": False,
}
RESULTS_SCHEMA = {"type": "object"}


def parameters(index: int) -> dict[str, object]:
    return {
        "sample": "Si-28 wafer 7",
        "frequency_hz": 5.1e9 + 1e5 * index,
        "amplitude": 0.25,
        "repetitions": 200,
        "index": index,
    }


def full_path(contract: Contract) -> Contract:
    """The same contract without its precheck: what every payload went through before."""
    slow = copy.copy(contract)
    slow._precheck = None
    return slow


def outcome(contract: Contract, payload: object) -> tuple[str, tuple[object, ...]] | None:
    try:
        contract.validate(payload)
    except DeserializationError as error:
        return error.validator_error_message, error.path
    return None


def prechecked(schema: dict, payload: object) -> bool:
    precheck = Contract(schema)._precheck
    assert precheck is not None
    return precheck(payload)


# -- the benchmark's payloads take the fast path -------------------------------------


def test_the_benchmark_payloads_are_accepted_by_the_precheck():
    for index in (0, 7, 10**6):
        assert prechecked(PARAMETERS_SCHEMA, parameters(index))
        assert prechecked(RESULTS_SCHEMA, parameters(index))


@pytest.mark.parametrize(
    ("payload", "message", "path"),
    [
        ({**parameters(7), "sample": ""}, "'' should be non-empty", ("sample",)),
        (
            {**parameters(7), "amplitude": 1.5},
            "1.5 is greater than the maximum of 1",
            ("amplitude",),
        ),
        ({**parameters(7), "index": True}, "True is not of type 'integer'", ("index",)),
        ({**parameters(7), "repetitions": 2.5}, "2.5 is not of type 'integer'", ("repetitions",)),
        (
            {**parameters(7), "extra": 1},
            "Additional properties are not allowed ('extra' was unexpected)",
            (),
        ),
        (
            {k: v for k, v in parameters(7).items() if k != "index"},
            "'index' is a required property",
            (),
        ),
        ({**parameters(7), "frequency_hz": float("nan")}, "nan is not a JSON number", ()),
    ],
)
def test_error_messages_are_unchanged(payload, message, path):
    contract = Contract(PARAMETERS_SCHEMA)
    assert contract._precheck is not None
    assert not contract._precheck(payload)
    assert outcome(contract, payload) == (message, path)
    assert outcome(full_path(contract), payload) == (message, path)


def test_an_integral_float_is_an_integer_on_both_paths():
    payload = {**parameters(7), "repetitions": 200.0}
    assert prechecked(PARAMETERS_SCHEMA, payload)
    assert outcome(full_path(Contract(PARAMETERS_SCHEMA)), payload) is None


# -- which schemas get a precheck --------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "ipv4"},
        {"properties": {"a": {"format": "email"}}},  # anywhere, not only at the root
        {"items": {"items": {"anyOf": [{"type": "integer"}]}}},
        {"additionalProperties": {"not": {}}},
        {"patternProperties": {"^x": {}}},
        {"additionalProperties": False, "patternProperties": {"^x": {}}},
        {"prefixItems": [{}], "items": False},
        {"allOf": [{}]},
        {"oneOf": [{}]},
        {"if": {}, "then": {}},
        {"contains": {}},
        {"uniqueItems": True},
        {"multipleOf": 2},
        {"dependentRequired": {"a": ["b"]}},
        {"propertyNames": {"maxLength": 1}},
        {"unevaluatedProperties": False},
        {"$defs": {"n": {"type": "integer"}}},
        {"$defs": {"n": {}}, "$ref": "#/$defs/n"},
        {"$id": "https://example.org/s.json"},
        {"properties": {"a": {"$id": "a.json"}}},
        {"$anchor": "here"},
        {"contentMediaType": "application/json"},
        {"x-unknown-keyword": 1},
        {"$schema": "http://json-schema.org/draft-07/schema#"},
        {"$schema": "https://json-schema.org/draft/2019-09/schema"},
        {"properties": {"a": {"$schema": DRAFT_2020_12}}},  # a dialect only at the root
    ],
)
def test_no_precheck_for_anything_outside_the_subset(schema):
    assert Contract(schema)._precheck is None


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"$schema": DRAFT_2020_12},
        {"$schema": DRAFT_2020_12 + "#"},
        {
            "title": "t",
            "description": "d",
            "default": {"type": "integer", "format": "ipv4"},  # data, not a subschema
            "examples": [1],
            "$comment": "c",
            "deprecated": True,
            "readOnly": False,
            "writeOnly": False,
        },
        {"type": ["integer", "null"], "minimum": 1.0, "exclusiveMaximum": 10**30},
        {"minLength": 1.0, "maxLength": 3, "pattern": "^a"},
        {"items": False, "minItems": 0, "maxItems": 3},
        {"properties": {"a": True, "b": False}, "additionalProperties": {"enum": [1]}},
        {"const": {"a": [1, None]}, "minProperties": 1, "maxProperties": 2, "required": ["a"]},
    ],
)
def test_a_precheck_for_the_subset(schema):
    assert Contract(schema)._precheck is not None


# -- each keyword, both ways ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "string"}, "a", 1),
        ({"type": ["null", "boolean"]}, False, 0),
        ({"type": "array"}, [], {}),
        ({"type": "object"}, {}, []),
        ({"type": "number"}, 0.5, "0.5"),
        ({"enum": ["a", 1, None]}, None, "b"),
        ({"enum": [{"a": [1]}]}, {"a": [1]}, {"a": [2]}),
        ({"const": [1, "x"]}, [1, "x"], [1, "y"]),
        ({"minimum": 1}, 1, 0.99),
        ({"maximum": 1}, 1, 1.01),
        ({"exclusiveMinimum": 1}, 1.01, 1),
        ({"exclusiveMaximum": 1}, 0.99, 1),
        ({"minLength": 2}, "ab", "a"),
        ({"maxLength": 2}, "ab", "abc"),
        ({"pattern": "^a+$"}, "aa", "ab"),
        ({"pattern": "b"}, "abc", "ac"),  # a search, not a match
        ({"items": {"type": "integer"}}, [1, 2], [1, 2.5]),
        ({"items": False}, [], [1]),
        ({"minItems": 2}, [1, 2], [1]),
        ({"maxItems": 1}, [1], [1, 2]),
        ({"properties": {"a": {"type": "integer"}}}, {"a": 1, "b": "x"}, {"a": "x"}),
        ({"properties": {"a": False}}, {"b": 1}, {"a": 1}),
        ({"required": ["a", "b"]}, {"a": 1, "b": None}, {"a": 1}),
        ({"additionalProperties": False, "properties": {"a": {}}}, {"a": 1}, {"a": 1, "b": 2}),
        ({"additionalProperties": {"type": "string"}}, {"a": "x"}, {"a": 1}),
        ({"minProperties": 1}, {"a": 1}, {}),
        ({"maxProperties": 1}, {"a": 1}, {"a": 1, "b": 2}),
        ({"properties": {"a": {"items": {"maximum": 3}}}}, {"a": [3]}, {"a": [1, 4]}),
        ({"title": "anything"}, [[{"a": None}]], [[{"a": math.nan}]]),
    ],
)
def test_each_keyword_is_enforced(schema, good, bad):
    contract = Contract(schema)
    assert contract._precheck is not None
    assert contract._precheck(good)
    assert not contract._precheck(bad)
    assert outcome(full_path(contract), good) is None
    assert outcome(full_path(contract), bad) is not None
    assert outcome(contract, bad) == outcome(full_path(contract), bad)


# -- the tricky semantics ------------------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


@pytest.mark.parametrize(
    ("schema", "payload", "valid"),
    [
        ({"type": "integer"}, True, False),  # bool is not an integer ...
        ({"type": "number"}, False, False),  # ... nor a number
        ({"type": "integer"}, 1.0, True),
        ({"type": "integer"}, 1.5, False),
        ({"type": "integer"}, 2**1100, True),  # exact on the full path only
        ({"type": "boolean"}, 1, False),
        ({"minimum": 5}, True, True),  # a keyword ignores other types
        ({"maximum": 0}, "long string", True),
        ({"minLength": 9}, 3, True),
        ({"maxItems": 0}, {"a": 1}, True),
        ({"required": ["a"]}, [1], True),
        ({"additionalProperties": False}, ["a"], True),
        ({"minimum": 1}, 1.0, True),
        ({"exclusiveMinimum": 1}, 1.0, False),
        ({"exclusiveMaximum": 1.5}, 1, True),
        ({"maximum": 2**70}, 2**70 + 1, False),
        ({"minimum": 0.5}, 10**300, True),
        ({"enum": [1]}, True, False),  # True != 1 ...
        ({"enum": [True]}, 1, False),
        ({"enum": [1]}, 1.0, True),  # ... but 1 == 1.0
        ({"enum": [[1, {"a": False}]]}, [1.0, {"a": False}], True),
        ({"enum": [[1, {"a": False}]]}, [1, {"a": 0}], False),
        ({"enum": [[1]]}, (1,), False),  # equal to jsonschema, but not JSON
        ({"const": "a"}, Text("a"), True),
        ({"const": 0}, False, False),
        ({"const": {"a": 1}}, {"a": 1.0}, True),
        ({"enum": ["1", 1]}, "1", True),
        ({"maxLength": 1}, "\U0001f600", True),  # lengths count code points
        ({"minLength": 2}, "\U0001f600", False),
        ({"pattern": "^.$"}, "\U0001f600", True),
        ({"pattern": "a"}, "\ud800a", False),  # RE2 cannot read a lone surrogate
        ({"pattern": "a"}, 5, True),
        ({"type": "integer"}, Colour.RED, True),  # subclasses: the full path decides
        ({"type": "string"}, Text("x"), True),
        ({"items": {"type": "integer"}}, (1, "x"), False),
        ({}, {"a": (1,)}, False),
        ({}, {"a": {1, 2}}, False),
        ({}, [b"x"], False),
        ({}, [object()], False),
        ({}, {1: "a"}, False),
        ({}, {"a\x00": 1}, False),
        ({"additionalProperties": {}}, {"a\x00": 1}, False),
        ({}, ["a\x00"], False),
        ({"type": "string"}, "a\x00", False),
        ({"type": "number"}, math.nan, False),
        ({}, {"a": [math.inf]}, False),
        ({"type": "object"}, {"a": [-math.inf]}, False),
        pytest.param({"type": "integer"}, 10**5000, False, id="huge-int"),  # beyond int-to-text
    ],
)
def test_tricky_cases(schema, payload, valid):
    contract = Contract(schema)
    assert contract._precheck is not None
    assert (outcome(full_path(contract), payload) is None) is valid
    assert contract.is_valid(payload) is valid
    if not valid:
        assert not contract._precheck(payload)


def nested(depth: int, leaf: object = 1) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@pytest.mark.parametrize("schema", [{}, {"type": "array"}, {"items": True}])
def test_depth_is_bounded_exactly(schema):
    contract = Contract(schema)
    assert contract._precheck is not None
    assert contract._precheck(nested(MAX_DEPTH))
    assert contract._precheck(nested(MAX_DEPTH, []))
    assert contract._precheck(nested(MAX_DEPTH, {}))
    for too_deep in (nested(MAX_DEPTH + 1), nested(MAX_DEPTH, [1]), nested(MAX_DEPTH, {"a": 1})):
        assert not contract._precheck(too_deep)
        with pytest.raises(DeserializationError, match="nested deeper"):
            contract.validate(too_deep)


def test_a_value_that_contains_itself_is_refused():
    looped: list[object] = []
    looped.append(looped)
    contract = Contract({})
    assert contract._precheck is not None
    assert not contract._precheck(looped)
    with pytest.raises(DeserializationError, match="nested deeper"):
        contract.validate(looped)


@pytest.mark.parametrize(
    "payload",
    [
        "x" * (MAX_BYTES - 2),
        ["\u00e9" * (MAX_BYTES // 6 - 1)],
        ["\U0001f600" * (MAX_BYTES // 12)],
        [0] * (MAX_BYTES // 2 - 1),
        {str(i): 0.1 for i in range(MAX_BYTES // 12)},
    ],
    ids=["ascii", "latin", "astral", "ints", "floats"],
)
def test_payloads_up_to_the_size_limit_are_valid(payload):
    contract = Contract({})
    assert outcome(contract, payload) is None
    assert outcome(full_path(contract), payload) is None


@pytest.mark.parametrize(
    "payload",
    [
        "x" * (MAX_BYTES - 1),
        {"k": "\u00e9" * (MAX_BYTES // 6)},  # 6 bytes each as JSON
        ["\U0001f600" * (MAX_BYTES // 12 + 1)],  # 12 bytes each: two escapes
        {"k": "\x1f" * (MAX_BYTES // 6)},
        [0] * (MAX_BYTES // 2),
        [2**1000] * (MAX_BYTES // 300),
        {str(i): 0.1 for i in range(MAX_BYTES // 8)},
    ],
    ids=["ascii", "latin", "astral", "control", "ints", "big-ints", "floats"],
)
def test_payloads_just_over_the_size_limit_are_refused(payload):
    contract = Contract({})
    assert contract._precheck is not None
    assert not contract._precheck(payload)
    assert outcome(contract, payload) == outcome(full_path(contract), payload)
    assert "bytes of JSON" in outcome(contract, payload)[0]


def test_large_payloads_within_the_bound_take_the_fast_path():
    contract = Contract({"type": "array", "items": {"type": "string"}})
    assert contract._precheck is not None
    assert contract._precheck(["abcdefgh"] * 10_000)
    assert not contract._precheck(["x" * (MAX_BYTES // 6 + 1)])  # might exceed: full path
    assert contract.is_valid(["x" * (MAX_BYTES // 6 + 1)])


# -- soundness on generated schemas and payloads -----------------------------------------

TYPES = ["array", "boolean", "integer", "null", "number", "object", "string"]
NAMES = st.sampled_from("abc")
SMALL = st.sampled_from(
    [
        *(None, True, False, 0, 1, -1, 2, 1.0, 0.5, -2.5, 2**70),
        *("", "a", "ab", "\u00e9", "\U0001f600"),
        *([], [1], [True], {}, {"a": 1}, {"a": None}),
    ]
)
BOUNDS = st.integers(-3, 3) | st.sampled_from([0.5, 1.0, -1.5, 2**70])
COUNTS = st.integers(0, 3) | st.just(2.0)


def keywords(subschemas: st.SearchStrategy) -> dict[str, st.SearchStrategy]:
    return {
        "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), min_size=1, unique=True),
        "enum": st.lists(SMALL, min_size=1, max_size=3),
        "const": SMALL,
        **dict.fromkeys(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], BOUNDS),
        **dict.fromkeys(["minLength", "maxLength", "minItems", "maxItems"], COUNTS),
        **dict.fromkeys(["minProperties", "maxProperties"], COUNTS),
        "pattern": st.sampled_from(["a", "^a", "b$", "^.$", "\u00e9", "^$", "[0-9]"]),
        "items": subschemas,
        "properties": st.dictionaries(NAMES, subschemas, max_size=3),
        "required": st.lists(NAMES, max_size=2, unique=True),
        "additionalProperties": subschemas,
        "title": st.text(st.characters(exclude_characters="\x00"), max_size=3),
        "default": SMALL,
    }


def schema_of(keywords: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Up to three keywords, and often a ``type``: most keywords apply to one type only."""
    names = st.lists(st.sampled_from(sorted(keywords.keys() - {"type"})), max_size=3, unique=True)
    return names.flatmap(
        lambda chosen: st.fixed_dictionaries(
            {k: keywords[k] for k in chosen}, optional={"type": keywords["type"]}
        )
    )


subschemas = st.recursive(
    st.booleans() | schema_of(keywords(st.booleans())),
    lambda inner: st.booleans() | schema_of(keywords(inner)),
    max_leaves=6,
)
subset_schemas = schema_of(
    {**keywords(subschemas), "$schema": st.sampled_from([DRAFT_2020_12, DRAFT_2020_12 + "#"])}
)

not_json = st.sampled_from(
    [math.nan, math.inf, -math.inf, b"a", (1,), ("a", 1), frozenset(), Colour.RED, Text("a")]
)
leaves = (
    SMALL
    | st.integers()
    | st.floats()
    | st.text(st.sampled_from('ab1\x00\x1f"\\\u00e9\U0001f600\ud800'), max_size=4)
    | not_json
)
payloads = json_values | st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(NAMES | st.sampled_from([1, "a\x00", "\ud800"]), children, max_size=3)
        | st.tuples(children)
    ),
    max_leaves=10,
)


#: The type each keyword constrains; payloads of other types pass it untested.
APPLIES_TO = {
    **dict.fromkeys(["minLength", "maxLength", "pattern"], "string"),
    **dict.fromkeys(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], "number"),
    **dict.fromkeys(["items", "minItems", "maxItems"], "array"),
    **dict.fromkeys(["properties", "required", "additionalProperties"], "object"),
    **dict.fromkeys(["minProperties", "maxProperties"], "object"),
}


def lookalikes(value: object) -> list[object]:
    """What jsonschema might confuse with ``value``, or tell apart only by its type."""
    if isinstance(value, bool):
        return [value, int(value)]
    if isinstance(value, int | float):
        return [value, float(value), value - 1, value + 0.5, value + 1, value == 1]
    if isinstance(value, list):
        return [value, tuple(value), [*value, None], [lookalikes(v)[-1] for v in value]]
    if isinstance(value, dict):
        return [value, {**value, "z": 0}, {k: lookalikes(v)[-1] for k, v in value.items()}]
    if isinstance(value, str):
        return [value, Text(value), value + "a", value[:-1]]
    return [value]


def near(schema: object) -> st.SearchStrategy:
    """Payloads at the edges of what ``schema`` accepts: mostly valid, often only just not."""
    if not isinstance(schema, dict):
        return payloads
    members = [schema["const"]] if "const" in schema else schema.get("enum", [])
    numbers: list[object] = [True, False, 1.5]
    for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        numbers += lookalikes(schema[keyword]) if keyword in schema else []
    counts = [schema.get(k, 0) for k in ("minLength", "maxLength", "minItems", "maxItems")]
    longest = int(max(counts)) + 1
    properties = schema.get("properties", {})
    kinds = {
        "number": st.sampled_from(numbers) | st.integers(-3, 3),
        "integer": st.sampled_from(numbers) | st.integers(-3, 3),
        "string": st.text(st.sampled_from("ab1\u00e9\U0001f600\x00\ud800"), max_size=longest),
        "array": st.lists(near(schema.get("items", True)), max_size=longest) | st.tuples(SMALL),
        "object": st.tuples(
            st.fixed_dictionaries({}, optional={k: near(v) for k, v in properties.items()}),
            st.dictionaries(NAMES, near(schema.get("additionalProperties", True)), max_size=2),
        ).map(lambda parts: {**parts[1], **parts[0]}),
        "boolean": st.booleans(),
        "null": st.none(),
    }
    types = schema.get("type") or sorted({APPLIES_TO.get(k, "") for k in schema} - {""}) or TYPES
    types = [types] if isinstance(types, str) else types
    options = [kinds[t] for t in types] + [payloads]
    if members:
        options.append(st.sampled_from([x for m in members for x in lookalikes(m)]))
    return st.one_of(options)


def assert_sound(schema: dict, payload: object) -> None:
    contract = Contract(schema)
    assert contract._precheck is not None
    before = outcome(full_path(contract), payload)
    event("valid" if before is None else "invalid")
    if contract._precheck(payload):
        event("fast path")
        assert before is None
        assert jsonschema.Draft202012Validator(schema).is_valid(payload)
    assert outcome(contract, payload) == before


@settings(max_examples=300, deadline=None)
@given(schema=subset_schemas, data=st.data())
def test_the_precheck_accepts_only_what_the_full_path_accepts(schema, data):
    assert_sound(schema, data.draw(near(schema), label="payload"))


@settings(max_examples=300, deadline=None)
@given(schema=schema_of(keywords(st.booleans())), data=st.data())
def test_the_precheck_accepts_only_what_the_full_path_accepts_at_one_level(schema, data):
    assert_sound(schema, data.draw(near(schema), label="payload"))
