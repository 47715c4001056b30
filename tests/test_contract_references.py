"""References that multiply the validator's work are refused; those that recurse are not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.contract import Contract
from broker.contract.references import (
    MAX_EVALUATIONS,
    MAX_EXPANSION,
    LoopingReferences,
    evaluations,
)
from broker.errors import DeserializationError, InvalidSchemaError


def doubling(levels: int, top: int) -> dict:
    """``d_i = allOf [$ref d_(i-1), $ref d_(i-1)]``: 2**top evaluations of ``d0``."""
    defs: dict = {"d0": {"type": "string"}}
    for i in range(1, levels + 1):
        defs[f"d{i}"] = {"allOf": [{"$ref": f"#/$defs/d{i - 1}"}, {"$ref": f"#/$defs/d{i - 1}"}]}
    return {"$defs": defs, "$ref": f"#/$defs/d{top}"}


def test_references_that_double_at_each_level_are_refused_naming_one():
    with pytest.raises(InvalidSchemaError, match=f"at most {MAX_EXPANSION} more") as error:
        Contract(doubling(30, 30))
    assert error.value.path[-1] == "$ref"
    assert Contract(doubling(30, 10)).is_valid("x")  # 2**10: cheap, and allowed


def test_recursion_whose_branches_reach_the_same_child_is_refused():
    both = {
        "allOf": [
            {"properties": {"x": {"$ref": "#"}}},
            {"properties": {"x": {"$ref": "#"}, "y": {"type": "string"}}},
        ]
    }
    with pytest.raises(InvalidSchemaError, match="more than 10\\*\\*15"):
        Contract(both)


def test_recursion_into_different_children_is_allowed():
    tree = {
        "type": "object",
        "properties": {"left": {"$ref": "#"}, "right": {"$ref": "#"}, "value": {"type": "integer"}},
    }
    contract = Contract(tree)
    deep: dict = {"value": 1}
    for _ in range(40):
        deep = {"left": deep, "right": {"value": 2}}
    assert contract.is_valid(deep)
    counted = evaluations(tree)
    assert counted.most <= counted.own + 1  # a child is reached by one branch: no growth


def test_a_loop_of_references_that_can_turn_two_ways_is_refused():
    with pytest.raises(InvalidSchemaError, match="more than one way"):
        Contract({"allOf": [{"$ref": "#"}, {"$ref": "#"}], "type": "integer"})
    ring = {
        "$defs": {
            "a": {"allOf": [{"$ref": "#/$defs/b"}, {"$ref": "#/$defs/b"}]},
            "b": {"$ref": "#/$defs/a"},
        },
        "$ref": "#/$defs/a",
    }
    with pytest.raises(InvalidSchemaError, match="more than one way"):
        Contract(ring)


def test_anchors_are_followed():
    defs: dict = {"d0": {"$anchor": "d0", "type": "string"}}
    for i in range(1, 21):
        defs[f"d{i}"] = {"$anchor": f"d{i}", "allOf": [{"$ref": f"#d{i - 1}"}] * 2}
    with pytest.raises(InvalidSchemaError, match="evaluations on one value"):
        Contract({"$defs": defs, "$ref": "#d20"})


_KEYS = st.sampled_from(
    ["allOf", "anyOf", "properties", "items", "$defs", "not", "a", "b", "$ref", "$anchor"]
)
_REFS = st.sampled_from(["#", "#/a", "#/$defs/a", "#/properties/a", "#x", "#/allOf/0", "#/zz"])
_SCHEMAS = st.recursive(
    st.one_of(st.just({}), st.builds(lambda r: {"$ref": r}, _REFS), st.just({"$anchor": "x"})),
    lambda inner: st.one_of(
        st.dictionaries(_KEYS, inner, max_size=4),
        st.builds(lambda items: {"allOf": items}, st.lists(inner, max_size=3)),
    ),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(_SCHEMAS)
def test_any_schema_is_counted_or_its_loop_refused(schema):
    try:
        counted = evaluations(schema)
    except LoopingReferences:
        return
    assert counted.most >= 1
    assert counted.own >= 1


def test_a_pattern_applied_again_by_references_counts_again():
    heavy = {"type": "string", "pattern": "a[ab]{998}c"}  # 1000 positions
    eight = doubling(4, 3)
    eight["$defs"]["d0"] = heavy
    contract = Contract(eight)  # eight evaluations of the pattern on one string
    with pytest.raises(DeserializationError, match="may read at most 2460"):
        contract.validate("ab" * 1231)
    sixteen = doubling(4, 4)
    sixteen["$defs"]["d0"] = heavy
    with pytest.raises(InvalidSchemaError, match="references apply patterns expanding to 16256"):
        Contract(sixteen)


def test_patterns_at_different_levels_do_not_add():
    schema = {
        "$defs": {"id": {"type": "string", "pattern": "^[0-9a-f]{900}$"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/id"}, "b": {"$ref": "#/$defs/id"}},
    }
    assert evaluations(schema).patterns == 902 + 16  # one string is read by one of them


def test_a_payload_too_large_for_its_schema_is_refused_before_validation():
    schema = {"type": "array", "items": {"allOf": [{"minimum": -i} for i in range(1000)]}}
    contract = Contract(schema)  # a thousand evaluations on each item
    assert contract.validate([0] * (MAX_EVALUATIONS // 1000 - 10)) is not None
    with pytest.raises(DeserializationError, match="subschema evaluations") as error:
        contract.validate([0] * (MAX_EVALUATIONS // 1000 + 1))
    assert f"at most {MAX_EVALUATIONS}" in error.value.detail
    assert not contract.is_valid([0] * (MAX_EVALUATIONS // 1000 + 1))


def test_a_large_payload_with_an_ordinary_schema_is_taken():
    schema = {
        "type": "object",
        "properties": {
            **{f"p{i}": {"type": "string", "maxLength": 20} for i in range(20)},
            "spectrum": {"type": "array", "items": {"type": "number"}},
        },
    }
    spectrum = [0.5] * 200_000  # about 1 MiB of JSON
    assert Contract(schema).validate({"p1": "x", "spectrum": spectrum})["p1"] == "x"
    assert evaluations(schema).profile[:3] == (1, 21, 1)
