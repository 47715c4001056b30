"""A contract's fast path: a predicate that says "certainly valid" for common schemas.

jsonschema's generic machinery (``best_match(iter_errors(...))``) and the exact
bounds check (``json.dumps``) cost tens of microseconds for a five-field object,
which is most of what submitting a job costs. Most service schemas use a small
subset of JSON Schema, so a contract compiles that subset once into closures
that walk the payload a single time, checking the keywords and the bounds
together.

The predicate must be sound, never complete: ``True`` means that the full path
would accept the payload; ``False`` only means "ask the full path", which then
runs unchanged and produces the usual error message. Whatever it cannot be sure
of it refuses: a schema using any keyword outside the subset gets no predicate;
a payload with anything but the exact built-in JSON types (``dict``, ``list``,
``str``, ``int``, ``float``, ``bool``, ``None``) is refused, and so is one whose
JSON text might exceed the size limit. Its length is bounded from above
without serializing it: an integer has at most ``bit_length // 3 + 1`` digits, a
float at most 24 characters, and a string character at most 12 (``json.dumps``
escapes every non-ASCII character, an astral one as two ``\\uXXXX`` escapes;
an ASCII one takes at most 6, as ``\\u001f``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema._utils import equal

#: Says whether a payload is certainly valid; see the module's docstring.
Precheck = Callable[[object], bool]

#: Checks a value at a nesting depth and returns an upper bound of the length
#: of its compact JSON text, or ``_NO``: not certainly valid.
_Check = Callable[[Any, int], int]
_NO = -1

#: The only dialect compiled; ``$schema`` may name it at the root only.
_DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_DIALECTS = frozenset({_DRAFT_2020_12, _DRAFT_2020_12 + "#"})
#: Keywords that no validator reads. ``$id`` is not one: it changes the base URI
#: that jsonschema resolves while descending, which can fail.
_ANNOTATIONS = frozenset(
    {
        *("title", "description", "default", "examples", "$comment"),
        *("deprecated", "readOnly", "writeOnly"),
    }
)
_NUMERIC = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_KEYWORDS = _ANNOTATIONS | {
    *("type", "enum", "const", "pattern", "items", "properties", "required"),
    *("additionalProperties", *_NUMERIC, *_COUNTS),
}
_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
#: Larger integers go to the full path, which knows Python's int-to-text limit
#: (at least 640 digits whatever it is set to; 1024 bits are at most 309).
_MAX_INT_BITS = 1024
_MAX_FLOAT_CHARS = 24  # len(repr(-2.2250738585072014e-308))


class _Unsupported(Exception):
    """The schema uses something outside the subset; a signal, never raised out of here."""


def compile_precheck(
    schema: Mapping[str, Any],
    *,
    max_depth: int,
    max_bytes: int,
    regex: Callable[[str], Any],
) -> Precheck | None:
    """The fast predicate for ``schema``, or ``None`` if it uses anything outside the subset.

    ``schema`` must already have passed the metaschema; ``regex`` compiles a
    pattern exactly as the full path does, so that both agree on every match.
    """
    schema = dict(schema)
    dialect = schema.pop("$schema", _DRAFT_2020_12)
    if not (isinstance(dialect, str) and dialect in _DIALECTS):
        return None
    try:
        check = _Compiler(max_depth, max_bytes, regex).schema(schema)
    except _Unsupported:
        return None

    def precheck(instance: object) -> bool:
        try:
            return 0 <= check(instance, 0) <= max_bytes
        except RecursionError:  # called deep in a stack already: the full path reports it
            return False

    return precheck


class _Compiler:
    """Turns (sub)schemas into ``_Check`` closures; holds what they all share."""

    def __init__(self, max_depth: int, max_bytes: int, regex: Callable[[str], Any]) -> None:
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self.regex = regex
        self.anything = self._anything()

    def schema(self, schema: object) -> _Check:
        if schema is True:
            return self.anything
        if schema is False:
            return _never
        if type(schema) is not dict or not schema.keys() <= _KEYWORDS:
            raise _Unsupported
        if schema.keys() <= _ANNOTATIONS:
            return self.anything
        types = schema.get("type", list(_TYPES))
        if isinstance(types, str):
            types = [types]
        if type(types) is not list or not all(isinstance(t, str) and t in _TYPES for t in types):
            raise _Unsupported
        kinds: dict[type, _Check] = {}
        if "string" in types:
            kinds[str] = self._string(schema)
        if "number" in types or "integer" in types:
            number = self._number(schema, integral="number" not in types)
            kinds[int] = kinds[float] = number
        if "boolean" in types:
            kinds[bool] = _boolean
        if "null" in types:
            kinds[type(None)] = _null
        if "array" in types:
            kinds[list] = self._array(schema)
        if "object" in types:
            kinds[dict] = self._object(schema)
        check = _dispatch(kinds)
        if "enum" in schema:
            check = _one_of(check, _list(schema["enum"]))
        if "const" in schema:
            check = _one_of(check, [schema["const"]])
        return check

    def _anything(self) -> _Check:
        """What ``true`` and ``{}`` accept: any JSON within the bounds."""
        kinds: dict[type, _Check] = {str: _plain_string, int: _plain_number, float: _plain_number}
        kinds |= {bool: _boolean, type(None): _null}
        check = _dispatch(kinds)  # reads ``kinds`` when called, so it may recurse
        kinds[list] = self._array({}, items=check)
        kinds[dict] = self._object({}, additional=check)
        return check

    def _string(self, schema: dict[str, Any]) -> _Check:
        shortest = _count(schema, "minLength")
        longest = _count(schema, "maxLength")
        if "pattern" not in schema:
            if shortest is None and longest is None:
                return _plain_string
            search = None
        elif type(schema["pattern"]) is str:
            search = self.regex(schema["pattern"]).search
        else:
            raise _Unsupported

        def string(value: Any, depth: int) -> int:
            if type(value) is not str:
                return _NO
            size = _string_size(value)
            if size < 0 or (shortest is not None and len(value) < shortest):
                return _NO
            if longest is not None and len(value) > longest:
                return _NO
            if search is not None:
                try:
                    if not search(value):
                        return _NO
                except UnicodeError:  # a lone surrogate: RE2 takes UTF-8 only
                    return _NO
            return size

        return string

    def _number(self, schema: dict[str, Any], *, integral: bool) -> _Check:
        low, high, above, below = (_bound(schema, keyword) for keyword in _NUMERIC)
        if not integral and all(limit is None for limit in (low, high, above, below)):
            return _plain_number

        def number(value: Any, depth: int) -> int:
            size = _plain_number(value, depth)
            if size < 0 or (integral and type(value) is float and not value.is_integer()):
                return _NO
            if low is not None and value < low:
                return _NO
            if high is not None and value > high:
                return _NO
            if above is not None and value <= above:
                return _NO
            if below is not None and value >= below:
                return _NO
            return size

        return number

    def _array(self, schema: dict[str, Any], items: _Check | None = None) -> _Check:
        fewest = _count(schema, "minItems")
        most = _count(schema, "maxItems")
        each = self.schema(schema.get("items", True)) if items is None else items
        max_depth, max_bytes = self.max_depth, self.max_bytes

        def array(value: Any, depth: int) -> int:
            if type(value) is not list:
                return _NO
            if fewest is not None and len(value) < fewest:
                return _NO
            if most is not None and len(value) > most:
                return _NO
            if not value:
                return 2
            if depth >= max_depth:
                return _NO
            depth += 1
            size = 1  # "[", then each item with its "," or "]"
            for item in value:
                item_size = each(item, depth)
                if item_size < 0:
                    return _NO
                size += item_size + 1
                if size > max_bytes:
                    return _NO
            return size

        return array

    def _object(self, schema: dict[str, Any], additional: _Check | None = None) -> _Check:
        fewest = _count(schema, "minProperties")
        most = _count(schema, "maxProperties")
        required = _list(schema.get("required", []))
        if not all(type(name) is str for name in required):
            raise _Unsupported
        properties = schema.get("properties", {})
        if type(properties) is not dict:
            raise _Unsupported
        known: dict[str, tuple[_Check, int]] = {}
        for name, subschema in properties.items():
            if type(name) is not str or "\x00" in name:
                raise _Unsupported
            known[name] = (self.schema(subschema), len(json.dumps(name)))
        if additional is None:
            additional = self.schema(schema.get("additionalProperties", True))
        others = additional
        max_depth, max_bytes = self.max_depth, self.max_bytes

        def object_(value: Any, depth: int) -> int:
            if type(value) is not dict:
                return _NO
            if fewest is not None and len(value) < fewest:
                return _NO
            if most is not None and len(value) > most:
                return _NO
            for name in required:
                if name not in value:
                    return _NO
            if not value:
                return 2
            if depth >= max_depth:
                return _NO
            depth += 1
            size = 1  # "{", then each '"key":value' with its "," or "}"
            for key, item in value.items():
                if type(key) is not str:
                    return _NO
                found = known.get(key)
                if found is not None:
                    check, key_size = found
                else:
                    check, key_size = others, _string_size(key)
                    if key_size < 0:
                        return _NO
                item_size = check(item, depth)
                if item_size < 0:
                    return _NO
                size += key_size + item_size + 2
                if size > max_bytes:
                    return _NO
            return size

        return object_


def _dispatch(kinds: dict[type, _Check]) -> _Check:
    """One check per exact Python type; a subclass (``bool`` aside) is not certain."""
    checks = set(kinds.values())
    if len(checks) == 1:  # every check tests the exact type itself
        return checks.pop()
    if not checks:
        return _never

    def dispatch(value: Any, depth: int) -> int:
        check = kinds.get(type(value))
        return _NO if check is None else check(value, depth)

    return dispatch


def _one_of(check: _Check, members: list[Any]) -> _Check:
    """``check``, and ``enum``/``const``: jsonschema's equality (``True != 1 == 1.0``)."""
    strings = frozenset(member for member in members if type(member) is str)
    others = [member for member in members if type(member) is not str]

    def one_of(value: Any, depth: int) -> int:
        size = check(value, depth)  # first: ``equal`` only ever sees plain JSON
        if size < 0:
            return _NO
        if type(value) is str:  # equal to nothing but an equal string
            return size if value in strings else _NO
        return size if any(equal(member, value) for member in others) else _NO

    return one_of


def _never(value: Any, depth: int) -> int:
    return _NO


def _null(value: Any, depth: int) -> int:
    return 4 if value is None else _NO


def _boolean(value: Any, depth: int) -> int:
    return 5 if value is True or value is False else _NO


def _plain_string(value: Any, depth: int) -> int:
    return _string_size(value) if type(value) is str else _NO


def _string_size(text: str) -> int:
    if "\x00" in text:
        return _NO
    return (6 if text.isascii() else 12) * len(text) + 2


def _plain_number(value: Any, depth: int) -> int:
    kind = type(value)
    if kind is int:
        bits = value.bit_length()
        return bits // 3 + 2 if bits <= _MAX_INT_BITS else _NO
    if kind is float and math.isfinite(value):
        return _MAX_FLOAT_CHARS
    return _NO


def _count(schema: dict[str, Any], keyword: str) -> int | float | None:
    """A length limit; the metaschema allows an integral float (``1.0``) too."""
    if keyword not in schema:
        return None
    value = schema[keyword]
    if type(value) is int or (type(value) is float and value.is_integer()):
        return value
    raise _Unsupported


def _bound(schema: dict[str, Any], keyword: str) -> int | float | None:
    if keyword not in schema:
        return None
    value = schema[keyword]
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return value
    raise _Unsupported


def _list(value: object) -> list[Any]:
    if type(value) is not list:
        raise _Unsupported
    return value
