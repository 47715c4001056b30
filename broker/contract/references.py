"""How many times references make the validator evaluate subschemas on one value.

A ``$ref`` evaluates its target once more wherever it is used, so references
that fan out multiply: ``d1 = allOf [$ref d0, $ref d0]``, ``d2`` the same over
``d1`` and so on doubles the work at each level, and a schema a few hundred
bytes long takes longer than anyone waits for a single string. So does a
recursive schema whose two branches both descend into the same child
(``allOf [{properties: {x: $ref #}}, {properties: {x: $ref #, y: …}}]``): its
work doubles with each level of the payload's nesting.

``evaluations`` bounds, from the schema alone, the number of subschema
evaluations that can land on any one value of a payload: every subschema
counts once per level of the payload it applies at, each reference adds its
target's count at the level the reference reaches, and references under
``properties`` with different names never reach the same child. Loops of
references that do not descend into the payload are cut by the validator after
one turn; one that can turn in more than one way (``allOf [$ref #, $ref #]``)
is refused, as it constrains nothing and its turns multiply.

The same count, with each schema object weighing what its patterns weigh
instead of one, gives the pattern work on one value: a pattern that references
apply to a string several times is read several times
(``broker.contract.patterns``).

A reference is resolved as a JSON pointer (``#/$defs/a``) or an anchor
(``#name``) within the document; one that resolves otherwise (against a nested
``$id``) is counted as a reference to the root, which recursion reaches anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from broker.contract.bounds import MAX_DEPTH
from broker.contract.patterns import BASE_WEIGHT, members, pattern_weight

#: How many evaluations references may add, on one value, to what the schema's own
#: subschemas cost there.
MAX_EXPANSION = 100_000
#: How many subschema evaluations one payload may take (its values at each depth
#: times the schema's most evaluations on a value there).
MAX_EVALUATIONS = 3_000_000

_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")
#: Keywords whose subschemas apply to a value's children, not to the value.
_TO_CHILDREN = frozenset(
    {
        "items",
        "prefixItems",
        "additionalItems",
        "contains",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "propertyNames",
    }
)
#: Keywords holding subschemas by name, applied to the value itself.
_BY_NAME_HERE = frozenset({"dependentSchemas", "dependencies"})
#: Keywords whose subschemas are not evaluated where they are.
_NOT_EVALUATED = frozenset({"$defs", "definitions", "enum", "const", "examples", "default"})
#: A child selected by no name: any child may be reached.
_ANY = object()
_CAP = 10**15

Pointer = tuple[object, ...]


class LoopingReferences(Exception):
    """References that loop without descending, in more than one way."""

    def __init__(self, where: Pointer) -> None:
        super().__init__(where)
        self.where = where


@dataclass(slots=True)
class _Unit:
    """A subschema references reach: its own nodes by level, its references out."""

    #: How many schema objects it holds at each level below the value it applies to.
    own: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    #: The weight of its patterns at each level (``broker.contract.patterns``).
    patterns: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    #: (target, levels down, the first child's name or _ANY, where the reference is).
    out: list[tuple[Pointer, int, object, Pointer]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Evaluations:
    """What references make of a schema's work on one value."""

    #: The most subschema evaluations on any one value of a payload.
    most: int
    #: The most the schema's own subschemas (references not followed) make there.
    own: int
    #: The reference into the target that costs most: where to look.
    heaviest: Pointer
    #: The most pattern weight evaluated on any one value: references applying a
    #: pattern again count it again.
    patterns: int
    #: The most evaluations on one value at each depth of a payload (0: the payload).
    profile: tuple[int, ...]


def evaluations(schema: dict[str, Any]) -> Evaluations:
    """Count what ``schema`` costs on one value; raises ``LoopingReferences``."""
    units = _units(schema)
    order = _order(units)
    inline = _Unit()  # the whole schema, references not followed
    for _ in _walk(schema, (), inline, set()):
        pass
    counts = _per_level(units, order, "own")
    patterns = _per_level(units, order, "patterns")
    every = {u: [t for t, _, _, _ in unit.out] for u, unit in units.items()}
    used = _reachable((), every) | {()}
    edges = [(t, w) for u in used for t, _, _, w in units[u].out]
    heaviest = max(edges, key=lambda e: max(h[e[0]] for h in counts), default=((), ()))[1]
    return Evaluations(
        most=max(level[()] for level in counts),
        own=max(inline.own.values(), default=0),
        heaviest=heaviest,
        patterns=max(level[()] for level in patterns),
        profile=tuple(level[()] for level in counts),
    )


def _per_level(
    units: dict[Pointer, _Unit], order: list[list[Pointer]], measure: str
) -> list[dict[Pointer, int]]:
    """Each unit's ``measure`` (``own`` or ``patterns``) on one value at each level."""
    history: list[dict[Pointer, int]] = []
    for level in range(MAX_DEPTH + 1):
        current: dict[Pointer, int] = {}
        for group in order:
            _settle(group, units, level, current, history, measure)
        history.append(current)
    return history


# -- the units and their references ---------------------------------------------------


def _units(schema: dict[str, Any]) -> dict[Pointer, _Unit]:
    """The root and every reference's target, each walked up to the next one inside it
    (which it then refers to, as if by a reference): every node is walked once.
    """
    roots = {()} | {t for _, reference in _references(schema) for t in _resolve(schema, reference)}
    units: dict[Pointer, _Unit] = {}
    for where in roots:
        unit = units[where] = _Unit()
        for source, target, levels, name in _walk(_at(schema, where), where, unit, roots):
            resolved = [target] if isinstance(target, tuple) else _resolve(schema, target)
            unit.out.extend((t, levels, name, source) for t in resolved)
    return units


def _references(schema: object) -> Iterator[tuple[Pointer, str]]:
    for path, key, value in members(schema):
        if key in _REFERENCES and isinstance(value, str):
            yield path, value


def _walk(
    node: object, where: Pointer, unit: _Unit, roots: set[Pointer]
) -> Iterator[tuple[Pointer, str | Pointer, int, object]]:
    """Count ``node``'s schema objects by level; yield each reference in it (or each
    unit nested in it, by its pointer), with the levels it descends and the name of
    the first child it descends to.
    """
    stack: list[tuple[object, Pointer, int, object]] = [(node, where, 0, None)]
    while stack:
        item, path, level, name = stack.pop()
        if isinstance(item, list):
            stack.extend((child, (*path, i), level, name) for i, child in enumerate(item))
            continue
        if not isinstance(item, dict):
            continue
        if path != where and path in roots:
            yield path, path, level, name
            continue
        unit.own[level] += 1
        weight = _pattern_weights(item)
        if weight:
            unit.patterns[level] += weight
        for key, value in item.items():
            here = (*path, key)
            first = name if level else _ANY
            if key in _REFERENCES and isinstance(value, str):
                yield here, value, level, name
            elif key in _NOT_EVALUATED:
                continue
            elif key == "properties" and isinstance(value, dict):
                stack.extend(
                    (child, (*here, k), level + 1, k if not level else first)
                    for k, child in value.items()
                )
            elif key == "patternProperties" and isinstance(value, dict):
                stack.extend((child, (*here, k), level + 1, first) for k, child in value.items())
            elif key in _TO_CHILDREN:
                stack.append((value, here, level + 1, first))
            elif key in _BY_NAME_HERE and isinstance(value, dict):
                stack.extend((child, (*here, k), level, name) for k, child in value.items())
            else:
                stack.append((value, here, level, name))


def _pattern_weights(node: dict[str, Any]) -> int:
    """What one evaluation of this schema object's own patterns weighs, per byte read."""
    weight = 0
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        weight += pattern_weight(pattern) + BASE_WEIGHT
    keyed = node.get("patternProperties")
    if isinstance(keyed, dict):
        weight += sum(pattern_weight(key) + BASE_WEIGHT for key in keyed)
    return weight


def _at(schema: object, where: Pointer) -> object:
    node = schema
    for part in where:
        node = node[part]  # type: ignore[index]
    return node


def _resolve(schema: dict[str, Any], reference: str) -> list[Pointer]:
    """Where ``reference`` points in ``schema``: a pointer, or every anchor of its name."""
    fragment = reference.partition("#")[2]
    if not fragment:
        return [()]
    if fragment.startswith("/"):
        pointer = _pointer(schema, fragment)
        return [pointer] if pointer is not None else [()]
    anchors = list(_anchors(schema, unquote(fragment)))
    return anchors or [()]


def _pointer(schema: object, fragment: str) -> Pointer | None:
    node = schema
    path: list[object] = []
    for raw in fragment.split("/")[1:]:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            path.append(int(part))
        else:
            return None
    return tuple(path) if isinstance(node, dict) else None


def _anchors(schema: object, name: str) -> Iterator[Pointer]:
    stack: list[tuple[object, Pointer]] = [(schema, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        elif isinstance(item, dict):
            if name in (item.get("$anchor"), item.get("$dynamicAnchor")) or f"#{name}" in (
                item.get("$id"),
                item.get("id"),
            ):
                yield path
            stack.extend((child, (*path, key)) for key, child in item.items())


# -- counting ----------------------------------------------------------------------------


def _order(units: dict[Pointer, _Unit]) -> list[list[Pointer]]:
    """The units in groups that loop into each other without descending, each group
    after those it refers to; refuses a group that can loop in more than one way.
    """
    here = {u: [t for t, levels, _, _ in units[u].out if levels == 0] for u in units}
    reach = {u: _reachable(u, here) for u in units}
    groups: list[list[Pointer]] = []
    placed: set[Pointer] = set()
    for unit in units:
        if unit in placed:
            continue
        group = [v for v in units if v in reach[unit] and unit in reach[v]] or [unit]
        placed.update(group)
        members = set(group)
        for member in group:
            inside = [t for t in here[member] if t in members]
            if len(inside) > 1:
                raise LoopingReferences(member)
        groups.append(group)
    done: set[Pointer] = set()
    ordered: list[list[Pointer]] = []
    remaining = groups
    while remaining:
        ready = [g for g in remaining if all(t in done or t in g for m in g for t in here[m])]
        for group in ready:
            ordered.append(group)
            done.update(group)
        remaining = [g for g in remaining if g not in ready]
    return ordered


def _reachable(start: Pointer, edges: dict[Pointer, list[Pointer]]) -> set[Pointer]:
    seen: set[Pointer] = set()
    stack = list(edges[start])
    while stack:
        unit = stack.pop()
        if unit not in seen:
            seen.add(unit)
            stack.extend(edges[unit])
    return seen


def _settle(
    group: list[Pointer],
    units: dict[Pointer, _Unit],
    level: int,
    current: dict[Pointer, int],
    history: list[dict[Pointer, int]],
    measure: str,
) -> None:
    """The evaluations at ``level`` below one evaluation of each unit of ``group``
    (``history[n]``: each unit's at level ``n``, for references that descend).

    A group that loops is evaluated once round its loop, whichever unit it is
    entered by: each member counts for all of them.
    """
    members = set(group)
    total = 0
    for member in group:
        unit = units[member]
        total += getattr(unit, measure).get(level, 0)
        below: dict[object, int] = defaultdict(int)
        for target, levels, name, _ in unit.out:
            if levels == 0:
                if target not in members:
                    total += current[target]
            elif levels <= level:
                below[name] += history[level - levels][target]
        anywhere = below.pop(_ANY, 0)
        total += anywhere + max(below.values(), default=0)
    for member in group:
        current[member] = min(total, _CAP)
