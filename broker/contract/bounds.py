"""The limits every schema and payload meets before a validator sees it.

The validator is compiled Rust: it recurses on nesting, and a stack overflow there
aborts the whole process instead of raising. Values are therefore bounded here,
iteratively, in depth and size. The checks also refuse what the database cannot
store (NUL, lone surrogates) and what is not JSON at all (NaN, tuples, bytes,
non-string keys), which the validator would otherwise accept or reject
inconsistently (it reads NaN as a number and a tuple as an array). A refusal
names where the value is (``results.spectrum[3]``) and what to give instead.

NumPy arrays and numbers are what a lab's handlers compute with, so they are
taken, as the plain JSON they stand for: an array as nested lists
(``ndarray.tolist``), a NumPy number as a Python one (``.item()``). NumPy is
never imported for that (``_numpy_size``), so it stays no dependency. JSON has
no NaN and no infinity, so one in an array is refused, naming its index, like a
Python ``float('nan')``: a missing point is ``None``.

Serializing a value costs more than validating it, so the walk keeps an upper
bound of the length of its compact JSON text instead, and serializes only a value
whose bound exceeds the limit: an integer has at most ``bit_length // 3 + 1``
digits, a float at most 24 characters, a string character at most 12
(``json.dumps`` escapes every non-ASCII character, an astral one as two
``\\uXXXX`` escapes; an ASCII one takes at most 6, as ``\\u001f``). A lower bound,
kept alongside, stops a huge value before anything serializes it. The path to a
refused value is looked for only once it is refused, so a valid payload pays
nothing for it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

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


class Checked(NamedTuple):
    """A payload that passed the bounds: the value to validate, store and send."""

    #: The value itself if it was plain JSON, else its plain copy.
    value: Any
    #: Whether a float in it has a whole value (``10.0``): see ``broker.contract.integers``.
    whole_floats: bool
    #: A lower bound of its length as compact JSON: at least its number of values,
    #: and at least the characters of its strings and keys (a quarter of their bytes).
    size: int = 0
    #: How many values it holds at each depth (the value itself at 0): what a
    #: schema's work is counted against (``broker.contract.references``).
    shape: Sequence[int] = ()


def check_payload(value: object, source: str) -> Checked:
    """``value`` as storable JSON within the bounds, else an error naming where it fails.

    A value holding subclasses of the JSON types (an ``IntEnum``, a ``str``
    subclass) or NumPy arrays and numbers comes back as a plain copy, which is
    what the validator can read and what is stored.
    """
    return _check(value, source, DeserializationError)


def surely_within_bounds(text: str) -> bool:
    """Whether every value the JSON text ``text`` holds, once read, is within the bounds.

    For a reader of JSON text (the state mirror) to skip the walk of what it
    read: a text that opens fewer objects and arrays than ``MAX_DEPTH``,
    escapes no NUL or surrogate (its own characters, from UTF-8, are never
    lone surrogates), and is shorter than ``MAX_BYTES`` even at six
    characters for each of its own holds nothing the walk would refuse or
    copy. False says only that the walk must decide.
    """
    return (
        len(text) * 6 < MAX_BYTES
        and text.count("{") + text.count("[") < MAX_DEPTH
        and "\\u0000" not in text
        and "\\ud" not in text
        and "\\uD" not in text
    )


def canonical_json(value: object, source: str, error: type[DeserializationError]) -> str:
    """The compact JSON of ``value``, keys sorted, after the checks of ``check_payload``.

    A schema is always serialized: the text is its cache key, and loading it back
    gives a deep, plain copy that nothing outside can change.
    """
    return _dumps(_check(value, source, error).value, source, error, sort_keys=True)


def _check(value: object, source: str, error: type[DeserializationError]) -> Checked:
    walk = _walked(value, source, error)
    if not walk.plain:
        value = _plain_copy(value)
        walk = _walked(value, source, error)  # the copy's own bounds, and where it fails
    if walk.upper > MAX_BYTES:
        _dumps(value, source, error, sort_keys=False)  # the exact length decides
    return Checked(value, walk.whole_floats, walk.lower, walk.shape)


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


class _Walk(NamedTuple):
    #: An upper bound of the value's compact JSON length.
    upper: int
    #: Whether every item has an exact JSON type (else a plain copy is made).
    plain: bool
    whole_floats: bool
    #: A lower bound of the value's compact JSON length.
    lower: int
    #: Values at each depth.
    shape: list[int]


class _Refusal(Exception):
    """Why the walk refused a value, and the item it refused (None: the value as a whole)."""

    def __init__(self, item: object, reason: str) -> None:
        super().__init__(reason)
        self.item = item
        self.reason = reason


def _walked(value: object, source: str, error: type[DeserializationError]) -> _Walk:
    try:
        return _walk(value)
    except _Refusal as refusal:
        path = () if refusal.item is None else _path_to(value, refusal.item)
        raise error(source, refusal.reason, path) from None


def _walk(value: object) -> _Walk:
    """Raise ``_Refusal`` unless ``value`` is storable JSON, or NumPy's; else its ``_Walk``.

    Scalars inside a container are checked in the container's loop, not pushed:
    the walk is on the path of every job submitted. Big integers push the upper
    bound past ``MAX_BYTES`` so that the caller serializes them exactly.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    lower = upper = 0
    plain = True
    whole = False
    shape = [1]
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind not in _PLAIN:
            base = next((b for b in _BASES if isinstance(item, b)), None)
            if base is None:
                numbers = _numpy_size(item)
                if numbers is None:
                    raise _Refusal(item, _not_json(item))
                plain = False  # converted by ``_plain_copy``, then walked again
                lower += numbers  # at least a digit each: no huge array is converted
                if lower > MAX_BYTES:
                    raise _Refusal(None, f"more than {MAX_BYTES} bytes of JSON; that is the limit")
                continue
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
                    raise _Refusal(item, f"object keys must be strings, got {key!r}")
                plain = plain and type(key) is str
                upper += _string_size(key, item, "keys")
        elif kind is list:
            children = item
            lower += 2 + len(item)
            upper += 2 + len(item)
        else:
            low, high = _scalar(item, kind)
            lower += low
            upper += high
            whole = whole or (kind is float and item.is_integer())
            children = ()
        if item and kind in _CONTAINERS and depth >= MAX_DEPTH:
            raise _Refusal(item, f"nested deeper than {MAX_DEPTH} levels")
        depth += 1
        if children:  # a container's parent came first: the list reaches its depth
            if depth < len(shape):
                shape[depth] += len(item)
            else:
                shape.append(len(item))
        for child in children:
            kind = type(child)
            if kind is str:
                lower += len(child) + 2
                if "\x00" in child or not child.isascii():
                    upper += _string_size(child, child, "strings")
                else:
                    upper += 6 * len(child) + 2
            elif kind is float:
                if child - child != 0.0:  # NaN or an infinity, without a call
                    raise _Refusal(child, _NOT_A_NUMBER.format(repr(child)))
                if not whole and child % 1.0 == 0.0:
                    whole = True
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
            raise _Refusal(None, f"more than {MAX_BYTES} bytes of JSON; that is the limit")
    return _Walk(upper, plain, whole, lower, shape)


def _scalar(item: Any, kind: type) -> tuple[int, int]:
    """Lower and upper bounds of a scalar's JSON length, the way the container loop
    of ``_walk`` counts them: for the root, and for subclasses of the JSON types.
    """
    if kind is str:
        return len(item) + 2, _string_size(item, item, "strings")
    if kind is float:
        if not math.isfinite(item):
            raise _Refusal(item, _NOT_A_NUMBER.format(float.__repr__(item)))
        return 1, _MAX_FLOAT_CHARS
    if kind is int:
        bits = item.bit_length()
        return 1, bits // 3 + 2 if bits <= _MAX_INT_BITS else MAX_BYTES + 1
    return 4, 5  # None, True, False


def _string_size(text: str, item: object, what: str) -> int:
    """An upper bound of ``text``'s length as JSON; refuses NUL and lone surrogates.

    PostgreSQL stores neither, and the validator cannot read a lone surrogate.
    ``item`` is what a refusal points at: the string, or the object it is a key of.
    """
    if "\x00" in text:
        raise _Refusal(item, f"{what} may not contain NUL characters (\\u0000)")
    if text.isascii():
        return 6 * len(text) + 2
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refusal(item, f"{what} may not contain lone surrogates (such as \\ud800)") from None
    return 12 * len(text) + 2


_NOT_A_NUMBER = (
    "{} is not a JSON number: JSON has no NaN or infinity; give None for a missing value"
)

#: What to give instead of a value of a type JSON does not have, by the type's name.
_INSTEAD = {
    "tuple": "make it a list",
    "set": "make it a list (sorted, if its order matters)",
    "frozenset": "make it a list (sorted, if its order matters)",
    "bytes": "decode it to a str, or give it as base64 text",
    "bytearray": "decode it to a str, or give it as base64 text",
    "datetime": "give it as text, value.isoformat()",
    "date": "give it as text, value.isoformat()",
    "time": "give it as text, value.isoformat()",
    "timedelta": "give its seconds, value.total_seconds()",
    "Decimal": "give float(value), or str(value) to keep every digit",
    "complex": "give its real and imaginary parts as two numbers",
    "UUID": "give str(value)",
}


def _not_json(item: object) -> str:
    name = type(item).__name__
    instead = _INSTEAD.get(name, "give a str, a number, a bool, None, a list or a dict")
    return f"{name} is not a JSON value: {instead}"


def _numpy_size(item: object) -> int | None:
    """How many numbers a NumPy array or scalar holds; None if ``item`` is not NumPy's.

    NumPy is never imported here: a NumPy value exists only once NumPy is
    loaded, so it is looked up among the loaded modules, and a lab that does
    not use it pays one dictionary lookup for a value that is not JSON.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if isinstance(item, numpy.ndarray):
        return int(item.size)
    if isinstance(item, numpy.generic):
        return 1
    return None


def _plain_copy(value: object) -> Any:
    """A copy of ``value`` with exact JSON types: NumPy arrays as lists, NumPy numbers and
    subclasses of the JSON types as their Python values. The caller's value is never
    changed; what is still not JSON (a tuple, a ``datetime``) is kept, for the walk
    to refuse with its path. Iterative, and no deeper than the walk accepts plus one,
    so an object array that holds itself ends as "nested deeper", not as a loop.
    """
    holder = [value]
    stack: list[tuple[Any, int]] = [(holder, -1)]
    while stack:
        container, depth = stack.pop()
        keys = range(len(container)) if type(container) is list else list(container)
        for key in keys:
            child = _plain_one(container[key])
            container[key] = child
            if type(child) in _CONTAINERS and child and depth < MAX_DEPTH:
                stack.append((child, depth + 1))
    return holder[0]


def _plain_one(item: Any) -> Any:
    """``item`` as an exact JSON type, one level deep (a container is a new, shallow copy)."""
    kind = type(item)
    if kind is dict:
        return {key if type(key) is str else _plain_one(key): child for key, child in item.items()}
    if kind is list:
        return list(item)
    if kind in _PLAIN:
        return item
    if isinstance(item, dict):
        return _plain_one(dict(item))
    if isinstance(item, list):
        return list(item)
    if isinstance(item, str):
        return str.__str__(item)
    if isinstance(item, int) and not isinstance(item, bool):
        return int.__int__(item)
    if isinstance(item, float):
        return float.__float__(item)
    if _numpy_size(item) is not None:
        return item.tolist()  # an array's nested lists; a NumPy number's Python value
    return item


def _path_to(root: object, target: object) -> tuple[object, ...]:
    """Where ``target`` is in ``root`` (keys and indexes), found by identity; () if it is
    ``root`` or cannot be found. Searched only for a refusal, in the walk's order,
    each container once.
    """
    stack: list[tuple[object, tuple[object, ...]]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        item, path = stack.pop()
        if item is target:
            return path
        if id(item) in seen or len(path) > MAX_DEPTH:
            continue
        pairs: Iterable[tuple[object, object]]
        if isinstance(item, dict):
            pairs = item.items()
        elif isinstance(item, list):
            pairs = enumerate(item)
        else:
            continue
        seen.add(id(item))
        for key, child in pairs:
            if child is target:
                return (*path, key)
            stack.append((child, (*path, key)))
    return ()
