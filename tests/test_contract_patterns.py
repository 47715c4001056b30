"""What a schema's patterns may cost: the weight scanner, its limits, the payload budget."""

from __future__ import annotations

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.contract import Contract, compile_contract
from broker.contract.patterns import (
    BASE_WEIGHT,
    MAX_PATTERN_CHARS,
    MAX_PATTERN_WEIGHT,
    MAX_SCHEMA_WEIGHT,
    MAX_WORK,
    pattern_weight,
)
from broker.errors import DeserializationError, InvalidSchemaError
from broker.models.service import Service
from broker.models.service_list import ServiceList

# -- the scanner ---------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab(){}[]^\\,|*+?:#x-P<>0123456789 \n"), max_size=80))
def test_the_scanner_reads_any_text_without_raising(text):
    weight = pattern_weight(text)
    assert 0 <= weight <= 10**12


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_the_scanner_reads_any_unicode_without_raising(text):
    assert pattern_weight(text) >= 0


# A pattern as a tree whose weight is known: (text, weight) pairs, built bottom-up.
_ATOMS = st.sampled_from(
    [
        ("a", 1),
        ("0", 1),
        (",", 1),
        ("}", 1),
        ("\\{", 1),
        ("\\[", 1),
        ("\\(", 1),
        ("\\d", 1),
        ("\\x{41}", 1),
        ("\\p{L}", 1),
        ("\\pL", 1),
        ("\\x41", 1),
        ("\\u00e9", 1),
        ("[a-z]", 1),
        ("[]a]", 1),
        ("[^]{}()]", 1),
        ("[\\]x]", 1),
        ("[[:alpha:]]", 1),
        ("[a[bc]]", 1),
        ("[{1000}]", 1),
        ("[(]", 1),
        (".", 1),
    ]
)


def _quantifiers() -> st.SearchStrategy[tuple[str, int]]:
    count = st.integers(min_value=0, max_value=40)
    return st.one_of(
        st.sampled_from([("*", 1), ("+", 1), ("?", 1)]),
        count.map(lambda n: (f"{{{n}}}", max(n, 1))),
        count.map(lambda n: (f"{{{n},}}", n + 1)),
        st.tuples(count, count).map(
            lambda p: (f"{{{min(p)},{max(p)}}}", max(max(p), 1)),
        ),
        st.tuples(count, count).map(
            lambda p: (f"{{ {min(p)} , {max(p)} }}", max(max(p), 1)),
        ),
    ).flatmap(lambda q: st.sampled_from([q, (q[0] + "?", q[1])]))


def _repeated(node: st.SearchStrategy[tuple[str, int]]) -> st.SearchStrategy[tuple[str, int]]:
    return st.tuples(node, _quantifiers()).map(lambda p: (p[0][0] + p[1][0], p[0][1] * p[1][1]))


def _grouped(children: st.SearchStrategy[tuple[str, int]]) -> st.SearchStrategy[tuple[str, int]]:
    sequence = st.lists(children, min_size=1, max_size=4).map(
        lambda items: ("".join(t for t, _ in items), sum(w for _, w in items))
    )
    branches = st.lists(sequence, min_size=1, max_size=3).map(
        lambda items: ("|".join(t for t, _ in items), sum(w for _, w in items))
    )
    opener = st.sampled_from(["(", "(?:", "(?i:", "(?s-m:"])
    group = st.tuples(opener, branches).map(lambda p: (f"{p[0]}{p[1][0]})", p[1][1]))
    return st.one_of(group, _repeated(group))


_NODES = st.recursive(st.one_of(_ATOMS, _repeated(_ATOMS)), _grouped, max_leaves=12)
_PATTERNS = st.lists(_NODES, min_size=1, max_size=5).map(
    lambda items: ("".join(t for t, _ in items), sum(w for _, w in items))
)


@settings(max_examples=500, deadline=None)
@given(_PATTERNS)
def test_the_scanner_agrees_with_the_tree_a_pattern_was_built_from(built):
    text, weight = built
    assert pattern_weight(text) == weight
    if weight <= 2000:  # a real pattern: the engine compiles it (compiling a huge one is slow)
        jsonschema_rs.Draft202012Validator(
            {"pattern": text}, pattern_options=jsonschema_rs.RegexOptions(size_limit=1 << 30)
        )


@settings(max_examples=300, deadline=None)
@given(_PATTERNS, st.sampled_from([" ", "\n", " # a{999} [ ( \n", "\t"]))
def test_verbose_mode_skips_blanks_and_comments_as_the_engine_does(built, blank):
    text, weight = built
    spaced = "(?x)" + blank + blank.join(_tokens(text)) + blank
    assert pattern_weight(spaced) == weight


def _tokens(text: str) -> list[str]:
    """``text`` cut where verbose mode lets blanks in: before each top-level '(' and
    after each ')' at depth 0 — enough to put comments between whole items.
    """
    cuts, depth, klass, i = [0], 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            klass += 1
        elif char == "]" and klass:
            klass -= 1
        elif not klass and char == "(":
            if depth == 0:
                cuts.append(i)
            depth += 1
        elif not klass and char == ")":
            depth -= 1
        i += 1
    return [text[a:b] for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True) if a < b]


@pytest.mark.parametrize(
    ("pattern", "weight"),
    [
        ("a{40000}", 40000),
        ("(a{100}){100}", 10000),
        ("a{10,}", 11),
        ("a{2,50}", 50),
        ("[a{1000}]", 1),
        ("\\{1000}", 6),
        ("a{ 12 , 30 }", 30),
        ("(?x) a # [ \n a{5000} ]", 5002),
        ("(?x)[a # ] \n a{5000}]", 1),  # the engine skips comments inside a class too
        ("(a(?x) ){1000} b{1000}", 2001),  # (?x) ends with its group
        ("a|b{100}", 101),
        ("a{1000}{2}", 2000),
    ],
)
def test_weights_of_known_patterns(pattern, weight):
    assert pattern_weight(pattern) == weight


# -- refusal at creation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"type": "string", "pattern": "a{40000}"}, ("pattern",)),
        ({"type": "string", "pattern": "a{200000}"}, ("pattern",)),
        ({"pattern": "(a{100}){100}"}, ("pattern",)),
        ({"pattern": "x{1001,}"}, ("pattern",)),
        ({"pattern": "x{5,2000}"}, ("pattern",)),
        ({"patternProperties": {"^k[0-9]{5000}$": {}}}, ("patternProperties", "^k[0-9]{5000}$")),
        (
            {"$defs": {"id": {"type": "string", "pattern": "[ab]{1001}"}}, "$ref": "#/$defs/id"},
            ("$defs", "id", "pattern"),
        ),
        (
            {"items": {"propertyNames": {"pattern": "(?x) a # [ \n a{5000} ]"}}},
            ("items", "propertyNames", "pattern"),
        ),
    ],
)
def test_a_costly_pattern_is_refused_naming_where_and_the_limit(schema, path):
    for source in ("job_registration_schema", "job_result_schema"):
        with pytest.raises(InvalidSchemaError) as error:
            compile_contract(schema, source=source)
        assert error.value.source == source
        assert error.value.path == path
        assert f"at most {MAX_PATTERN_WEIGHT}" in error.value.detail


def test_an_oversized_pattern_is_refused():
    pattern = "(ab)" * (MAX_PATTERN_CHARS // 4 + 1)
    with pytest.raises(InvalidSchemaError, match=f"at most {MAX_PATTERN_CHARS} are accepted"):
        Contract({"pattern": pattern})


def test_a_pattern_compiling_too_large_is_refused():
    # 40 positions of a Unicode class compile to far more than 40 of ASCII.
    with pytest.raises(InvalidSchemaError, match="compiling to more than") as error:
        Contract({"pattern": "\\p{L}{100}"})
    assert error.value.path == ("pattern",)


def test_the_patterns_of_one_schema_are_limited_together():
    each = "[0-9a-f]{" + str(MAX_PATTERN_WEIGHT) + "}"
    count = MAX_SCHEMA_WEIGHT // (MAX_PATTERN_WEIGHT + BASE_WEIGHT) + 1
    schema = {"properties": {f"p{i}": {"pattern": each} for i in range(count)}}
    with pytest.raises(InvalidSchemaError, match=f"more than {MAX_SCHEMA_WEIGHT} positions"):
        Contract(schema)
    schema["properties"].popitem()
    Contract(schema)


def test_the_heaviest_pattern_allowed_still_works():
    contract = Contract({"type": "string", "pattern": f"^a{{{MAX_PATTERN_WEIGHT - 2}}}$"})
    assert contract.validate("a" * 998) == "a" * 998
    with pytest.raises(DeserializationError, match="does not match"):
        contract.validate("a" * 997)


# -- the work of one payload ----------------------------------------------------------


def test_a_payload_too_long_for_the_schemas_patterns_is_refused_before_validation():
    heavy = f"a[ab]{{{MAX_PATTERN_WEIGHT - 2}}}c"
    contract = Contract({"type": "array", "items": {"type": "string", "pattern": heavy}})
    most = MAX_WORK // (pattern_weight(heavy) + BASE_WEIGHT)
    fits = ["ab" * (most // 4)] * 2
    with pytest.raises(DeserializationError, match="does not match"):
        contract.validate(fits)  # read by the engine, and found invalid
    with pytest.raises(DeserializationError, match=f"may read at most {most}") as error:
        contract.validate([*fits, "ab"])  # a byte too many: refused unread
    assert error.value.source == "parameters"
    assert not contract.is_valid([*fits, "ab"])


def test_non_ascii_text_counts_its_bytes():
    contract = Contract({"patternProperties": {"^k{900}$": {}}})
    most = MAX_WORK // (pattern_weight("^k{900}$") + BASE_WEIGHT)
    contract.validate({"é" * (most // 2): 1})
    with pytest.raises(DeserializationError, match="bytes of text"):
        contract.validate({"é" * (most // 2 + 1): 1})


def test_a_schema_with_light_patterns_takes_any_payload_within_the_bounds():
    contract = Contract({"type": "string", "pattern": "^a+$"})
    contract.validate("a" * 1_000_000)


def test_a_costly_schema_is_refused_when_a_producer_creates_the_service(session):
    with pytest.raises(InvalidSchemaError) as error:
        Service.new("Costly", "", {"type": "string", "pattern": "a{40000}"}, {}, session)
    assert error.value.source == "job_registration_schema"
    assert error.value.path == ("pattern",)
    assert len(ServiceList(session)) == 0
