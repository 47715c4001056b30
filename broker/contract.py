"""A service's JSON-Schema contract, compiled once and evaluated safely.

Schemas come from users, so compiling one must never reach the network or the
file system, and evaluating one must take time linear in the payload:

- ``$ref``/``$dynamicRef`` may only point inside the schema document; every
  validator gets an empty ``referencing.Registry`` so that nothing else could
  be retrieved even if a reference slipped through (jsonschema's default
  registry fetches ``http://`` and ``file://`` references);
- every regex (``pattern``; ``patternProperties``, which ``additionalProperties``
  and ``unevaluatedProperties`` consult too) runs on RE2, which cannot backtrack
  (``^(a+)+$`` costs Python's ``re`` 0.8 s on 24 characters); a pattern RE2
  cannot compile (lookaround, backreference) is refused at creation;
- schemas and payloads are bounded in depth and size before anything recursive
  sees them.

Checking a schema costs far more than a validation, so contracts are cached.
A payload that ``broker.precheck``'s predicate finds certainly valid skips the
full path; any other payload takes it, so errors read the same either way.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import types
from collections.abc import Mapping
from typing import Any

import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import re2
from jsonschema import validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from referencing import Registry

from broker.errors import DeserializationError, InvalidSchemaError
from broker.precheck import Precheck, compile_precheck

#: How deep a schema or a payload may nest (objects and arrays).
MAX_DEPTH = 64
#: How large a schema or a payload may be, as compact JSON.
MAX_BYTES = 1024 * 1024
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")


class Contract:
    """A JSON Schema compiled once, validating payloads against it."""

    def __init__(self, schema: Mapping[str, Any], *, source: str = "schema") -> None:
        if not isinstance(schema, Mapping):
            raise InvalidSchemaError(source, "a schema must be a JSON object")
        _check_bounds(dict(schema), source, error=InvalidSchemaError)
        self._schema = copy.deepcopy(dict(schema))
        dialect = self._schema.get("$schema")
        if dialect is not None and not isinstance(dialect, str):
            raise InvalidSchemaError(source, f"$schema must be a URI, not {dialect!r}", ["$schema"])
        base = validators.validator_for(self._schema, default=_UNKNOWN)
        if base is _UNKNOWN:
            if dialect is not None:
                raise InvalidSchemaError(source, f"unknown $schema {dialect!r}", ["$schema"])
            base = _DEFAULT
        try:
            base.check_schema(self._schema)
        except SchemaError as error:
            raise InvalidSchemaError(source, error.message, list(error.path)) from None
        except RecursionError:
            raise InvalidSchemaError(source, "the schema is nested too deeply") from None
        _check_document(self._schema, source)
        cls = _safe(base)
        self._validator: Validator = cls(
            self._schema, registry=Registry(), format_checker=base.FORMAT_CHECKER
        )
        self._precheck: Precheck | None = None
        if base is _DEFAULT:
            self._precheck = compile_precheck(
                self._schema, max_depth=MAX_DEPTH, max_bytes=MAX_BYTES, regex=_compiled
            )

    @property
    def schema(self) -> dict[str, Any]:
        """A copy: the compiled schema must not change under its validator."""
        return copy.deepcopy(self._schema)

    def validate(self, instance: object, *, source: str = "parameters") -> None:
        """Raise ``DeserializationError`` naming the failing path and the reason."""
        if self._precheck is not None and self._precheck(instance):
            return
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
def _compile(canonical: str) -> Contract:
    return Contract(json.loads(canonical))


def compile_contract(schema: Mapping[str, Any], *, source: str = "schema") -> Contract:
    """The cached ``Contract`` for ``schema``: compiled and checked once per process.

    The cache is keyed by the schema alone, not by ``source``, so that the
    registration and result schemas of many services share one compilation; a
    refused schema is not cached, and its error is re-labelled with ``source``.
    """
    if not isinstance(schema, Mapping):
        raise InvalidSchemaError(source, "a schema must be a JSON object")
    canonical = _check_bounds(dict(schema), source, error=InvalidSchemaError)
    try:
        return _compile(canonical)
    except InvalidSchemaError as error:
        raise InvalidSchemaError(source, error.validator_error_message, error.path) from None


# -- internals -------------------------------------------------------------------

_DEFAULT = validators.Draft202012Validator
_UNKNOWN: Any = object()
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the user, not to stderr


def _check_bounds(value: object, source: str, error: type[DeserializationError]) -> str:
    """JSON only, at most ``MAX_DEPTH`` deep and ``MAX_BYTES`` long; returns canonical JSON.

    Iterative, and it keeps a lower bound of the text's length, so that neither a
    deep nor a huge value reaches the recursive ``json.dumps``.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    at_least = 0
    while stack:
        item, depth = stack.pop()
        at_least += 1
        if depth > MAX_DEPTH:
            raise error(source, f"nested deeper than {MAX_DEPTH} levels")
        if at_least > MAX_BYTES:
            raise error(source, f"more than {MAX_BYTES} bytes of JSON; that is the limit")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise error(source, f"object keys must be strings, got {key!r}")
                if "\x00" in key:
                    raise error(source, "keys may not contain NUL characters (\\u0000)")
                at_least += len(key) + 3
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            at_least += len(item)
            if "\x00" in item:
                raise error(source, "strings may not contain NUL characters (\\u0000)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise error(source, f"{item!r} is not a JSON number")
        elif item is not None and not isinstance(item, str | int | bool):
            raise error(source, f"{type(item).__name__} is not a JSON value")
    try:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    except ValueError as failure:  # an integer beyond Python's 4300-digit conversion limit
        raise error(source, f"not serializable as JSON: {failure}") from None
    if len(text) > MAX_BYTES:
        raise error(source, f"{len(text)} bytes of JSON; at most {MAX_BYTES} are accepted")
    return text


def _check_document(schema: dict[str, Any], source: str) -> None:
    """Refuse, anywhere in ``schema``, a reference outside it and a pattern RE2 refuses.

    Iterative, and blind to which values are subschemas: a ``$ref`` inside an
    ``enum`` is refused too, which costs nothing real and can miss nothing.
    """
    stack: list[tuple[object, tuple[object, ...]]] = [(schema, ())]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack.extend((child, (*where, index)) for index, child in enumerate(item))
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            path = (*where, key)
            stack.append((value, path))
            if key in _REFERENCES and isinstance(value, str) and not value.startswith("#"):
                message = f"{key} {value!r} points outside this schema; only '#...' is allowed"
                raise InvalidSchemaError(source, message, path)
            if key == "pattern" and isinstance(value, str):
                _regex(source, path, value)
            if key == "patternProperties" and isinstance(value, dict):
                for pattern in value:
                    _regex(source, path, pattern)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _regex(source: str, path: tuple[object, ...], pattern: str) -> None:
    try:
        _compiled(pattern)
    except Exception as error:  # re2.error; UnicodeEncodeError for a lone surrogate
        reason: object = error
        if error.args and isinstance(error.args[0], bytes):
            reason = error.args[0].decode(errors="replace")
        raise InvalidSchemaError(
            source,
            f"pattern {pattern!r} is not supported ({reason}); lookarounds and "
            "backreferences are refused because they can take exponential time",
            list(path),
        ) from None


#: Stands in for the ``re`` module inside the jsonschema code rebound below.
_RE2 = types.SimpleNamespace(search=lambda pattern, string: _compiled(pattern).search(string))


def _rebound(module: types.ModuleType, *names: str, **replace: Any) -> dict[str, Any]:
    """Copies of ``module``'s functions ``names`` that see ``_RE2`` as ``re``.

    ``additionalProperties`` and ``unevaluatedProperties`` call ``re.search`` deep
    in recursive helpers; new globals keep jsonschema's semantics and messages
    without copying its code (the helpers are private, so tests pin the behaviour).
    """
    namespace = {**vars(module), "re": _RE2, **replace}
    for name in names:
        f = namespace[name]
        namespace[name] = types.FunctionType(f.__code__, namespace, name, f.__defaults__)
    return {name: namespace[name] for name in names}


_UTILS = _rebound(
    jsonschema._utils, "find_additional_properties", "find_evaluated_property_keys_by_schema"
)
_KEYWORDS = _rebound(
    jsonschema._keywords,
    *("pattern", "patternProperties", "additionalProperties", "unevaluatedProperties"),
    **_UTILS,
)
_LEGACY = _rebound(
    jsonschema._legacy_keywords,
    *("find_evaluated_property_keys_by_schema", "unevaluatedProperties_draft2019"),
)
#: Each jsonschema function that calls ``re``, mapped to its RE2 copy.
_ON_RE2: dict[Any, Any] = {getattr(jsonschema._keywords, n): f for n, f in _KEYWORDS.items()}
_ON_RE2.update({getattr(jsonschema._legacy_keywords, n): f for n, f in _LEGACY.items()})


@functools.cache
def _safe(base: Any) -> Any:
    """``base`` with every regex keyword evaluated by RE2 instead of ``re``."""
    replaced = {k: _ON_RE2[f] for k, f in base.VALIDATORS.items() if f in _ON_RE2}
    return validators.extend(base, replaced)
