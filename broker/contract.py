"""A service's JSON-Schema contract, compiled once and evaluated safely.

Schemas come from users, so compiling one must never reach the network or the
file system, and evaluating one must take time linear in the payload:

- ``$ref``/``$dynamicRef`` may only point inside the schema document; every
  validator gets an empty ``referencing.Registry`` so that nothing else could
  be retrieved even if a reference slipped through (jsonschema's default
  registry fetches ``http://`` and ``file://`` references);
- ``pattern`` and ``patternProperties`` run on RE2, which has no backtracking
  (``^(a+)+$`` costs Python's ``re`` 0.8 s on 24 characters); a pattern RE2
  cannot compile (lookaround, backreference) is refused when the service is
  created;
- schemas and payloads are bounded in depth and size before anything recursive
  sees them.

A compiled validator is ~50 times faster than ``jsonschema.validate`` per call, so
contracts are cached by their canonical JSON text.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import re2
from jsonschema import validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator
from referencing import Registry

from broker.models.errors import DeserializationError, InvalidSchemaError

#: How deep a schema or a payload may nest (objects and arrays).
MAX_DEPTH = 64
#: How large a schema or a payload may be, as compact JSON.
MAX_BYTES = 1024 * 1024
_REFERENCE_KEYWORDS = ("$ref", "$dynamicRef")


class Contract:
    """A JSON Schema compiled once, validating payloads against it."""

    def __init__(self, schema: Mapping[str, Any], *, source: str = "schema") -> None:
        if not isinstance(schema, Mapping):
            raise InvalidSchemaError(source, "a schema must be a JSON object")
        _check_bounds(schema, source, error=InvalidSchemaError)
        self._schema = copy.deepcopy(dict(schema))
        self._source = source
        base = validators.validator_for(self._schema, default=_UNKNOWN)
        if base is _UNKNOWN:
            if "$schema" in self._schema:
                dialect = self._schema["$schema"]
                raise InvalidSchemaError(source, f"unknown $schema {dialect!r}", ["$schema"])
            base = _DEFAULT
        try:
            base.check_schema(self._schema)
        except SchemaError as error:
            raise InvalidSchemaError(source, error.message, list(error.path)) from None
        except RecursionError:
            raise InvalidSchemaError(source, "the schema is nested too deeply") from None
        for path, keyword, value in _walk(self._schema):
            _check_keyword(source, path, keyword, value)
        cls = _safe(base)
        self._validator: Validator = cls(
            self._schema, registry=Registry(), format_checker=base.FORMAT_CHECKER
        )

    @property
    def schema(self) -> dict[str, Any]:
        """A copy: the compiled schema must not change under its validator."""
        return copy.deepcopy(self._schema)

    def validate(self, instance: object, *, source: str = "parameters") -> None:
        """Raise ``DeserializationError`` naming the failing path and the reason."""
        _check_bounds(instance, source, error=DeserializationError)
        try:
            error = best_match(self._validator.iter_errors(instance))
        except RecursionError:
            raise DeserializationError(source, "the schema recurses without end") from None
        except Exception as failure:  # a reference that resolves nowhere, say
            raise DeserializationError(source, f"cannot be validated: {failure}") from None
        if error is not None:
            raise DeserializationError(source, error.message, list(error.absolute_path))

    def is_valid(self, instance: object) -> bool:
        try:
            self.validate(instance)
        except DeserializationError:
            return False
        return True


@functools.lru_cache(maxsize=256)
def _compile(canonical: str, source: str) -> Contract:
    return Contract(json.loads(canonical), source=source)


def compile_contract(schema: Mapping[str, Any], *, source: str = "schema") -> Contract:
    """The cached ``Contract`` for ``schema``: compiled and checked once per process."""
    if not isinstance(schema, Mapping):
        raise InvalidSchemaError(source, "a schema must be a JSON object")
    try:
        canonical = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidSchemaError(source, f"not JSON: {error}") from None
    return _compile(canonical, source)


# -- internals -------------------------------------------------------------------

_DEFAULT = validators.Draft202012Validator
_UNKNOWN: Any = object()
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the user, not to stderr


def _check_bounds(value: object, source: str, error: type[DeserializationError]) -> None:
    """JSON values only, at most ``MAX_DEPTH`` deep and ``MAX_BYTES`` long — iteratively."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error(source, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise error(source, f"object keys must be strings, got {key!r}")
                if "\x00" in key:
                    raise error(source, "keys may not contain NUL characters (\\u0000)")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise error(source, "strings may not contain NUL characters (\\u0000)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise error(source, f"{item!r} is not a JSON number")
        elif item is not None and not isinstance(item, str | int | bool):
            raise error(source, f"{type(item).__name__} is not a JSON value")
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_BYTES:
        raise error(source, f"{size} bytes of JSON; at most {MAX_BYTES} are accepted")


def _walk(
    node: object, path: tuple[object, ...] = ()
) -> Iterator[tuple[tuple[object, ...], str, Any]]:
    """Every (path, keyword, value) in a schema document, iteratively."""
    stack: list[tuple[object, tuple[object, ...]]] = [(node, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield where, key, child
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, index)) for index, child in enumerate(item))


def _check_keyword(source: str, path: tuple[object, ...], keyword: str, value: Any) -> None:
    if keyword in _REFERENCE_KEYWORDS and isinstance(value, str) and not value.startswith("#"):
        raise InvalidSchemaError(
            source,
            f"{keyword} {value!r} points outside this schema; only '#...' is allowed",
            [*path, keyword],
        )
    if keyword == "pattern" and isinstance(value, str):
        _regex(source, (*path, keyword), value)
    if keyword == "patternProperties" and isinstance(value, dict):
        for pattern in value:
            _regex(source, (*path, keyword), pattern)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _regex(source: str, path: tuple[object, ...], pattern: str) -> None:
    try:
        _compiled(pattern)
    except Exception as error:  # re2.error, and ValueError for some inputs
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise InvalidSchemaError(
            source,
            f"pattern {pattern!r} is not supported ({reason}); lookarounds and "
            "backreferences are refused because they can take exponential time",
            list(path),
        ) from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        compiled = _compiled(pattern)
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@functools.cache
def _safe(base: Any) -> Any:
    """``base`` with RE2 in place of ``re`` for ``pattern`` and ``patternProperties``."""
    return validators.extend(base, {"pattern": _pattern, "patternProperties": _pattern_properties})
