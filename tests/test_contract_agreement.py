"""The contract against jsonschema, the reference: the same verdicts on JSON, refusals only
for what is not storable JSON, and the bounds exact to the byte."""

from __future__ import annotations

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


def parameters(index: int) -> dict[str, object]:
    return {
        "sample": "Si-28 wafer 7",
        "frequency_hz": 5.1e9 + 1e5 * index,
        "amplitude": 0.25,
        "repetitions": 200,
        "index": index,
    }


def outcome(contract: Contract, payload: object) -> tuple[str, tuple[object, ...]] | None:
    try:
        contract.validate(payload)
    except DeserializationError as error:
        return error.validator_error_message, error.path
    return None


def test_the_benchmark_payloads_are_valid():
    contract = Contract(PARAMETERS_SCHEMA)
    for index in (0, 7, 10**6):
        assert outcome(contract, parameters(index)) is None
        assert contract.is_valid(parameters(index))
    assert outcome(contract, {**parameters(7), "repetitions": 200.0}) is None  # integral


@pytest.mark.parametrize(
    ("payload", "message", "path"),
    [
        ({**parameters(7), "sample": ""}, '"" is shorter than 1 character', ("sample",)),
        (
            {**parameters(7), "amplitude": 1.5},
            "1.5 is greater than the maximum of 1",
            ("amplitude",),
        ),
        ({**parameters(7), "index": True}, 'true is not of type "integer"', ("index",)),
        ({**parameters(7), "repetitions": 2.5}, '2.5 is not of type "integer"', ("repetitions",)),
        (
            {**parameters(7), "extra": 1},
            "Additional properties are not allowed ('extra' was unexpected)",
            (),
        ),
        (
            {k: v for k, v in parameters(7).items() if k != "index"},
            '"index" is a required property',
            (),
        ),
        # The shallowest error wins, whatever order the validator finds them in.
        (
            {**parameters(7), "sample": 5, "extra": 1},
            "Additional properties are not allowed ('extra' was unexpected)",
            (),
        ),
        (
            {**parameters(7), "frequency_hz": float("nan")},
            "nan is not a JSON number: JSON has no NaN or infinity; give None for a missing value",
            ("frequency_hz",),
        ),
    ],
)
def test_error_messages_name_the_path_and_the_reason(payload, message, path):
    contract = Contract(PARAMETERS_SCHEMA)
    assert outcome(contract, payload) == (message, path)
    assert not contract.is_valid(payload)


def test_the_reported_error_does_not_depend_on_key_order():
    contract = Contract(
        {"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["c"]}
    )
    first = outcome(contract, {"a": "x", "b": "y"})
    assert first == ('"c" is a required property', ())
    assert outcome(contract, {"b": "y", "a": "x"}) == first
    nested = Contract({"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}})
    assert outcome(nested, {"b": "y", "a": "x"}) == outcome(nested, {"a": "x", "b": "y"})


def test_an_any_of_error_is_reported_after_a_definite_one_at_the_same_depth():
    contract = Contract({"anyOf": [{"type": "integer"}, {"type": "string"}], "minimum": 5})
    assert outcome(contract, None) == (
        "null is not valid under any of the schemas listed in the 'anyOf' keyword",
        (),
    )
    assert outcome(contract, 3) == ("3 is less than the minimum of 5", ())


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
        ({"type": "integer"}, 2**1100, True),
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
        ({"const": "a"}, Text("a"), True),  # a subclass is validated as its plain copy
        ({"const": 0}, False, False),
        ({"const": {"a": 1}}, {"a": 1.0}, True),
        ({"enum": ["1", 1]}, "1", True),
        ({"maxLength": 1}, "\U0001f600", True),  # lengths count code points
        ({"minLength": 2}, "\U0001f600", False),
        ({"pattern": "^.$"}, "\U0001f600", True),
        ({"pattern": "a"}, "\ud800a", False),  # a lone surrogate is refused
        ({}, "\ud800", False),
        ({"pattern": "a"}, 5, True),
        ({"type": "integer"}, Colour.RED, True),
        ({"enum": [1]}, Colour.RED, True),
        ({"type": "string"}, Text("x"), True),
        ({"properties": {"a": {"type": "integer"}}}, {Text("a"): "x"}, False),
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
    assert (outcome(contract, payload) is None) is valid
    assert contract.is_valid(payload) is valid


def nested(depth: int, leaf: object = 1) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@pytest.mark.parametrize("schema", [{}, {"type": "array"}, {"items": True}])
def test_depth_is_bounded_exactly(schema):
    contract = Contract(schema)
    for deep_enough in (nested(MAX_DEPTH), nested(MAX_DEPTH, []), nested(MAX_DEPTH, {})):
        assert contract.is_valid(deep_enough)
    objects: object = {}
    for _ in range(MAX_DEPTH):
        objects = {"a": objects}
    assert Contract({}).is_valid(objects)
    assert not Contract({}).is_valid({"a": objects})
    for too_deep in (nested(MAX_DEPTH + 1), nested(MAX_DEPTH, [1]), nested(MAX_DEPTH, {"a": 1})):
        assert not contract.is_valid(too_deep)
        with pytest.raises(DeserializationError, match="nested deeper"):
            contract.validate(too_deep)


def test_a_value_that_contains_itself_is_refused():
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(DeserializationError, match="nested deeper"):
        Contract({}).validate(looped)


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
    assert outcome(Contract({}), payload) is None


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
        [0] * (MAX_BYTES + 1),  # refused before it is serialized
    ],
    ids=["ascii", "latin", "astral", "control", "ints", "big-ints", "floats", "huge"],
)
def test_payloads_just_over_the_size_limit_are_refused(payload):
    result = outcome(Contract({}), payload)
    assert result is not None
    assert "bytes of JSON" in result[0]


# -- agreement on generated schemas and payloads --------------------------------------------

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
    """What a validator might confuse with ``value``, or tell apart only by its type."""
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


def storable(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is JSON that the database can store: the only kind a contract may
    accept. Subclasses of the JSON types count (they are validated as plain copies)."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, list):
        return all(storable(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and storable(key) and storable(item, depth + 1)
            for key, item in value.items()
        )
    return False


def assert_agrees(schema: dict, payload: object) -> None:
    contract = Contract(schema)
    verdict = outcome(contract, payload)
    assert contract.is_valid(payload) is (verdict is None)
    if not storable(payload):
        event("not storable")
        assert verdict is not None  # no false accept, whatever jsonschema says
        return
    expected = jsonschema.Draft202012Validator(schema).is_valid(payload)
    event("valid" if expected else "invalid")
    if expected and verdict is not None and has_huge_whole_float(payload):
        # jsonschema-rs compares a number past 2**63 by its kind: 2.0**70 is not
        # the integer 2**70 to it. A refusal, never an acceptance, so it is safe.
        event("huge whole float refused")
        return
    assert (verdict is None) is expected, verdict


def has_huge_whole_float(value: object) -> bool:
    """Whether ``value`` holds a float with a whole value beyond what 64 bits hold."""
    if isinstance(value, float):
        return value.is_integer() and abs(value) >= 2.0**63
    if isinstance(value, list):
        return any(has_huge_whole_float(item) for item in value)
    if isinstance(value, dict):
        return any(has_huge_whole_float(item) for item in value.values())
    return False


@settings(max_examples=400, deadline=None)
@given(schema=subset_schemas, data=st.data())
def test_verdicts_agree_with_jsonschema_on_nested_schemas(schema, data):
    assert_agrees(schema, data.draw(near(schema), label="payload"))


@settings(max_examples=300, deadline=None)
@given(schema=schema_of(keywords(st.booleans())), data=st.data())
def test_verdicts_agree_with_jsonschema_at_one_level(schema, data):
    assert_agrees(schema, data.draw(near(schema), label="payload"))
