"""Whole numbers sent as floats (``10.0``) become integers where the schema says ``integer``.

JSON Schema counts 10.0 as an integer, so the validator accepts it; a handler
reading an ``integer`` field then meets a float, and ``range(10.0)`` raises. So
a payload is handed on with such floats as ints. Which values the schema
declares ``integer`` is the validator's to say, not a walk of the schema of our
own that would have to follow ``$ref``, ``allOf``, ``if``/``then``,
``patternProperties``… as the validator does: jsonschema-rs evaluates the
payload and reports each ``type`` keyword that held, where it held. A float
becomes an int where a ``type`` naming ``integer`` (and not ``number``) held
for it, along a chain of subschemas that all held (a branch of ``anyOf`` that
failed says nothing). The result is validated once more, and kept only if
valid (JSON Schema reads 10 and 10.0 as one value, so it always is).

A contract pays for this only when its schema names ``integer`` and the
payload has a float with a whole value (``broker.contract.bounds``); and
where every ``integer`` of the schema sits at a plain chain of ``properties``
(the common case, with no ``$ref``), only when such a float is at one of
those places: a whole float in a ``number`` field (``5.1e9``, ``0.0``) costs
a few dictionary lookups, not an evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema_rs

#: The base URI a schema's own locations are resolved against (it may name its own ``$id``).
_BASE = "urn:topchef:contract"


class WholeNumbers:
    """Puts ints for whole floats where one schema says ``integer``; one per contract."""

    def __init__(
        self, schema: Mapping[str, Any], validator: jsonschema_rs.Validator, draft: int
    ) -> None:
        self._validator = validator
        self._schema = dict(schema)
        self._draft = draft
        self._resolver: jsonschema_rs.Resolver | None = None
        #: Whether the ``type`` keyword at a schema location asks for an integer alone.
        self._integer_at: dict[str, bool] = {}
        #: Where the schema's ``integer`` fields are, when it says so plainly; None: anywhere.
        self._places = _plain_places(self._schema)

    def applied(self, value: Any) -> Any:
        """``value`` (valid against the schema) with ints for its whole floats at ``integer``
        fields: a new value where one changes, else ``value`` itself."""
        if self._places is not None and not any(
            _is_whole_float(_at_keys(value, place)) for place in self._places
        ):
            return value
        paths = []
        for schema_at, instance_at in _held_types(self._validator.evaluate(value).hierarchical()):
            path = _pointer(instance_at)
            if _is_whole_float(_at(value, path)) and self._asks_integer(schema_at):
                paths.append(path)
        if not paths:
            return value
        trie: dict[str, Any] = {}
        for path in paths:
            node = trie
            for part in path:
                node = node.setdefault(part, {})
        changed = _rebuilt(value, trie)
        return changed if self._validator.is_valid(changed) else value

    def _asks_integer(self, location: str) -> bool:
        known = self._integer_at.get(location)
        if known is None:
            reference = location if "#" in location else f"#{location}"
            try:
                kind = self._resolve(reference)
            except (jsonschema_rs.ReferencingError, ValueError):
                kind = None  # not ours to guess: the value is left as it came
            known = self._integer_at[location] = _integer_only(kind)
        return known

    def _resolve(self, reference: str) -> Any:
        """What ``reference`` points at in the schema; built on first use, as few payloads
        carry a whole float. Every location resolves inside the document: nothing is
        ever retrieved."""
        if self._resolver is None:
            registry = jsonschema_rs.Registry(
                [(_BASE, self._schema)], draft=self._draft, retriever=_refuse
            )
            self._resolver = registry.resolver(_BASE)
        return self._resolver.lookup(reference).contents


#: Keywords whose values are never schemas: nothing under them declares a type.
_NOT_SCHEMAS = frozenset(
    {
        "$schema", "$id", "$anchor", "$comment", "$vocabulary", "title", "description",
        "default", "examples", "enum", "const", "format", "required", "deprecated",
        "readOnly", "writeOnly", "contentEncoding", "contentMediaType",
    }
)  # fmt: skip
_REFERENCES = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})


def _plain_places(schema: Mapping[str, Any]) -> frozenset[tuple[str, ...]] | None:
    """The instance paths of every ``integer`` the schema declares, if each is reached by
    ``properties`` alone from the root; None if one may be reached otherwise (a
    reference, ``items``, an ``anyOf`` branch, ...), when the evaluation must say."""
    places: set[tuple[str, ...]] = set()
    pending: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while pending:
        node, path = pending.pop()
        if not isinstance(node, Mapping):
            continue
        for key, value in node.items():
            if key == "type":
                if _integer_only(value):
                    places.add(path)
            elif key in _REFERENCES:
                return None
            elif key == "properties" and isinstance(value, Mapping):
                pending += [(sub, (*path, str(name))) for name, sub in value.items()]
            elif key not in _NOT_SCHEMAS and _declares(value):
                return None
    return frozenset(places)


def _declares(value: Any) -> bool:
    """Whether anything under ``value`` could declare an integer or refer elsewhere."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            if _REFERENCES & node.keys() or _integer_only(node.get("type")):
                return True
            pending += list(node.values())
        elif isinstance(node, list):
            pending += node
    return False


def _integer_only(kind: Any) -> bool:
    """Whether a ``type`` keyword's value asks for an integer and not any number."""
    names = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    return "integer" in names and "number" not in names


def _at_keys(value: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` through objects only (``properties``); None where there is none."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _refuse(uri: str) -> Any:
    raise ValueError(f"{uri} is not in the schema, and nothing is retrieved")


def _held_types(unit: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(schema location, instance location) of each ``type`` keyword that held, reached
    through units that all held. Iterative: the output is as deep as the schema."""
    stack = [unit]
    while stack:
        unit = stack.pop()
        if not unit.get("valid", False):
            continue
        if str(unit.get("evaluationPath", "")).endswith("/type"):
            yield str(unit.get("schemaLocation", "")), str(unit.get("instanceLocation", ""))
        stack.extend(unit.get("details", ()))


def _pointer(location: str) -> list[str]:
    """A JSON Pointer (RFC 6901) as its reference tokens."""
    if not location:
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in location[1:].split("/")]


def _at(value: Any, path: list[str]) -> Any:
    """The value at ``path``; None where the path leads nowhere (then nothing changes)."""
    try:
        for part in path:
            value = value[int(part)] if isinstance(value, list) else value[part]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value


def _is_whole_float(value: object) -> bool:
    return type(value) is float and value.is_integer()


def _rebuilt(value: Any, trie: dict[str, Any]) -> Any:
    """``value`` with the leaves of ``trie`` made ints, copying only the containers on the way."""
    if not trie:
        return int(value)
    if isinstance(value, list):
        copy: Any = list(value)
        for part, below in trie.items():
            copy[int(part)] = _rebuilt(value[int(part)], below)
        return copy
    copy = dict(value)
    for part, below in trie.items():
        copy[part] = _rebuilt(value[part], below)
    return copy
