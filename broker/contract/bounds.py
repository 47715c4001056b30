"""The limits every schema and payload meets before a validator sees it.

The validator is compiled Rust: it recurses on nesting, and a stack overflow there
aborts the whole process instead of raising. Values are therefore bounded here,
iteratively, in depth and size. The checks also refuse what the database cannot
store (NUL, lone surrogates) and what is not JSON at all (NaN, tuples, bytes,
non-string keys), which the validator would otherwise accept or reject
inconsistently (it reads NaN as a number and a tuple as an array).

Serializing a value costs more than validating it, so the walk keeps an upper
bound of the length of its compact JSON text instead, and serializes only a value
whose bound exceeds the limit: an integer has at most ``bit_length // 3 + 1``
digits, a float at most 24 characters, a string character at most 12
(``json.dumps`` escapes every non-ASCII character, an astral one as two
``\\uXXXX`` escapes; an ASCII one takes at most 6, as ``\\u001f``). A lower bound,
kept alongside, stops a huge value before anything serializes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from broker.errors import DeserializationError

#: How deep a schema or a payload may nest (objects and arrays).
MAX_DEPTH = 64
#: How large a schema or a payload may be, as compact JSON.
MAX_BYTES = 1024 * 1024

#: Larger integers are serialized, so that Python's int-to-text limit (at least
#: 640 digits whatever it is set to; 1024 bits are at most 309) refuses them.
_MAX_INT_BITS = 1024
_MAX_FLOAT_CHARS = 24  # len(repr(-2.2250738585072014e-308))
#: Most integers are small: a comparison bounds their length without a call.
_SMALL_INT = 10**9
_SMALL_INT_CHARS = 10  # len("-999999999")
#: The types the validator reads natively; a subclass of one is copied first.
_PLAIN = frozenset({str, int, float, bool, type(None), list, dict})
_BASES = (str, int, float, list, dict)  # bool cannot be subclassed
_CONTAINERS = (dict, list)


def check_payload(value: object, source: str) -> object:
    """``value`` itself if it is storable JSON within the bounds, else an error.

    A value holding subclasses of the JSON types (an ``IntEnum``, a ``str``
    subclass) comes back as a plain copy, which is what the validator can read.
    """
    upper, plain = _walk(value, source, DeserializationError)
    if upper > MAX_BYTES or not plain:
        text = _dumps(value, source, DeserializationError, sort_keys=False)
        if not plain:
            return json.loads(text)
    return value


def canonical_json(value: object, source: str, error: type[DeserializationError]) -> str:
    """The compact JSON of ``value``, keys sorted, after the checks of ``check_payload``.

    A schema is always serialized: the text is its cache key, and loading it back
    gives a deep, plain copy that nothing outside can change.
    """
    _walk(value, source, error)
    return _dumps(value, source, error, sort_keys=True)


def _dumps(
    value: object, source: str, error: type[DeserializationError], *, sort_keys: bool
) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)
    except ValueError as failure:  # an integer beyond Python's int-to-text limit
        raise error(source, f"not serializable as JSON: {failure}") from None
    if len(text) > MAX_BYTES:
        raise error(source, f"{len(text)} bytes of JSON; at most {MAX_BYTES} are accepted")
    return text


def _walk(value: object, source: str, error: type[DeserializationError]) -> tuple[int, bool]:
    """Raise ``error`` unless ``value`` is storable JSON; return (an upper bound of its
    JSON length, whether every item has an exact JSON type).

    Scalars inside a container are checked in the container's loop, not pushed:
    the walk is on the path of every job submitted. Big integers push the upper
    bound past ``MAX_BYTES`` so that the caller serializes them exactly.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    lower = upper = 0
    plain = True
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind not in _PLAIN:
            base = next((b for b in _BASES if isinstance(item, b)), None)
            if base is None:
                raise error(source, f"{kind.__name__} is not a JSON value")
            kind, plain = base, False
        if kind is dict:
            children: Iterable[Any] = item.values()
            lower += 2
            upper += 2 * len(item) + 2
            for key in item:
                lower += len(key) + 3 if isinstance(key, str) else 0
                if type(key) is str and "\x00" not in key and key.isascii():
                    upper += 6 * len(key) + 2
                    continue
                if not isinstance(key, str):
                    raise error(source, f"object keys must be strings, got {key!r}")
                plain = plain and type(key) is str
                upper += _string_size(key, source, error, "keys")
        elif kind is list:
            children = item
            lower += 2 + len(item)
            upper += 2 + len(item)
        else:
            low, high = _scalar(item, kind, source, error)
            lower += low
            upper += high
            children = ()
        if item and kind in _CONTAINERS and depth >= MAX_DEPTH:
            raise error(source, f"nested deeper than {MAX_DEPTH} levels")
        depth += 1
        for child in children:
            kind = type(child)
            if kind is str:
                lower += len(child) + 2
                if "\x00" in child or not child.isascii():
                    upper += _string_size(child, source, error, "strings")
                else:
                    upper += 6 * len(child) + 2
            elif kind is float:
                if child - child != 0.0:  # NaN or an infinity, without a call
                    raise error(source, f"{child!r} is not a JSON number")
                lower += 1
                upper += _MAX_FLOAT_CHARS
            elif kind is int:
                lower += 1
                if -_SMALL_INT < child < _SMALL_INT:
                    upper += _SMALL_INT_CHARS
                else:
                    bits = child.bit_length()
                    upper += bits // 3 + 2 if bits <= _MAX_INT_BITS else MAX_BYTES + 1
            elif child is None or kind is bool:
                lower += 4
                upper += 5
            else:
                push((child, depth))
        if lower > MAX_BYTES:
            raise error(source, f"more than {MAX_BYTES} bytes of JSON; that is the limit")
    return upper, plain


def _scalar(
    item: Any, kind: type, source: str, error: type[DeserializationError]
) -> tuple[int, int]:
    """Lower and upper bounds of a scalar's JSON length, the way the container loop
    of ``_walk`` counts them: for the root, and for subclasses of the JSON types.
    """
    if kind is str:
        return len(item) + 2, _string_size(item, source, error, "strings")
    if kind is float:
        if not math.isfinite(item):
            raise error(source, f"{item!r} is not a JSON number")
        return 1, _MAX_FLOAT_CHARS
    if kind is int:
        bits = item.bit_length()
        return 1, bits // 3 + 2 if bits <= _MAX_INT_BITS else MAX_BYTES + 1
    return 4, 5  # None, True, False


def _string_size(text: str, source: str, error: type[DeserializationError], what: str) -> int:
    """An upper bound of ``text``'s length as JSON; refuses NUL and lone surrogates.

    PostgreSQL stores neither, and the validator cannot read a lone surrogate.
    """
    if "\x00" in text:
        raise error(source, f"{what} may not contain NUL characters (\\u0000)")
    if text.isascii():
        return 6 * len(text) + 2
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(source, f"{what} may not contain lone surrogates (such as \\ud800)") from None
    return 12 * len(text) + 2
