"""What a schema's regular expressions may cost, read from their text.

The regex engine (Rust's ``regex``, linear in the text) searches with a lazy
DFA. A pattern that expands to many positions (``a{40000}``, ``(a{100}){100}``)
makes each DFA state large, overflows the DFA's cache, and the engine falls
back to simulating the NFA: time proportional to the pattern's positions
times the text's length, all of it holding Python's lock. A pattern whose
DFA has exponentially many states (``a[ab]{20}c``) falls back the same way,
at any size. So the cost of a validation is bounded by two numbers, owned
here: each pattern's *weight* (the positions it expands to: atoms, with each
repeat multiplying what it repeats by its upper count), limited when the
schema is compiled, and the work of one payload (the schema's summed weights
times the UTF-8 bytes of the payload's strings and keys), limited when a
payload is validated (``broker.contract.schema.Contract.validate``).

The weight is read by a scanner of our own rather than Python's private
regex parser: it knows escapes (``\\{``, ``\\x{41}``, ``\\p{Greek}``),
character classes (a ``]`` first, nested classes, ``[:alpha:]``), groups and
flag groups, and verbose mode (``(?x)``: blanks and ``#`` comments skipped, as
the engine skips them, also inside classes and counted repeats). What it
cannot read as a repeat it counts as literal characters, so it errs towards
more weight, never less. The engine's own size limit
(``MAX_COMPILED_BYTES``) stands behind it, for what text does not show (a
Unicode class compiles to many states).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

#: The longest pattern accepted, in characters.
MAX_PATTERN_CHARS = 1000
#: The largest weight (positions after expanding repeats) of one pattern.
MAX_PATTERN_WEIGHT = 1000
#: The largest summed weight of every pattern in one schema.
MAX_SCHEMA_WEIGHT = 10_000
#: The engine's limit on one compiled pattern (``jsonschema_rs.RegexOptions``).
MAX_COMPILED_BYTES = 2 * 1024 * 1024
#: What a pattern costs per character even when small, in weight: the engine's
#: fallback from its DFA costs about as much per character as that many positions.
BASE_WEIGHT = 16
#: The most pattern work (weight x characters) one payload may take.
MAX_WORK = 20_000_000

#: Weights are capped here, so that no pattern makes a huge integer.
_CAP = 10**12
_FLAG_LETTERS = frozenset("imsuxUR")
#: How many hex digits follow ``\x``, ``\u`` and ``\U`` without braces.
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)
class _Frame:
    """One group being read: its weight so far, its last atom's, its verbose flag."""

    total: int = 0
    last: int = 0
    verbose: bool = False


def pattern_weight(pattern: str) -> int:
    """The positions ``pattern`` expands to (at least; never fewer), capped at 10**12.

    Never raises: an ill-formed pattern gets a weight too, and is refused by the
    engine when it compiles.
    """
    frames = [_Frame()]
    i, end = 0, len(pattern)
    while i < end:
        frame = frames[-1]
        char = pattern[i]
        if frame.verbose and (char.isspace() or char == "#"):
            i = _skip_space(pattern, i, verbose=True)
            continue
        if char == "\\":
            i = _escape_end(pattern, i)
            _atom(frame, 1)
        elif char == "[":
            close = _class_end(pattern, i, frame.verbose)
            i = i + 1 if close is None else close
            _atom(frame, 1)
        elif char == "(":
            i = _open_group(pattern, i, frames)
        elif char == ")" and len(frames) > 1:
            frames.pop()
            _atom(frames[-1], frame.total)
            i += 1
        elif char == "{":
            repeat = _counted_repeat(pattern, i, frame.verbose)
            if repeat is None:
                _atom(frame, 1)
                i += 1
            else:
                upper, i = repeat
                _repeat(frame, upper)
        elif char in "*+?":
            i += 1  # a star adds a loop, not a copy; a second '?' makes it lazy
        elif char == "|":
            frame.last = 0
            i += 1
        else:
            _atom(frame, 1)
            i += 1
    while len(frames) > 1:  # an unclosed group: the engine refuses it; counted anyway
        inner = frames.pop()
        _atom(frames[-1], inner.total)
    return frames[0].total


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` costs too much to be used, or None."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return (
            f"pattern of {len(pattern)} characters is too long; "
            f"at most {MAX_PATTERN_CHARS} are accepted"
        )
    weight = pattern_weight(pattern)
    if weight > MAX_PATTERN_WEIGHT:
        shown = f"more than {_CAP}" if weight >= _CAP else str(weight)
        return (
            f"pattern {_clipped(pattern)} expands to {shown} positions (its repeat counts "
            f"multiplied); at most {MAX_PATTERN_WEIGHT} are accepted, because validating "
            "against it would take time growing with that number times the text's length"
        )
    return None


def members(schema: object) -> Iterator[tuple[tuple[object, ...], object, object]]:
    """Every member of every object in ``schema``, with its path, key and value, iteratively.

    Blind to which values are subschemas: the checks that walk a schema this
    way (patterns here, references in ``schema``) look inside an ``enum`` too,
    which costs nothing real and can miss nothing.
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
            yield path, key, value


def schema_patterns(schema: object) -> Iterator[tuple[tuple[object, ...], str]]:
    """Every pattern in ``schema``, with its path: ``pattern`` values and the keys of
    ``patternProperties``, anywhere (``$defs`` included).
    """
    for path, key, value in members(schema):
        if key == "pattern" and isinstance(value, str):
            yield path, value
        elif key == "patternProperties" and isinstance(value, dict):
            for pattern in value:
                yield (*path, pattern), pattern


def text_length(value: object) -> int:
    """The UTF-8 bytes of every string and key in a JSON value: what patterns may read
    (the engine reads bytes).
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) if item.isascii() else len(item.encode())
        elif isinstance(item, dict):
            total += sum(len(k) if k.isascii() else len(k.encode()) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


# -- the scanner -------------------------------------------------------------------


def _atom(frame: _Frame, weight: int) -> None:
    frame.total = min(frame.total + weight, _CAP)
    frame.last = weight


def _repeat(frame: _Frame, upper: int) -> None:
    """The last atom repeated ``upper`` times: ``upper - 1`` more copies of it."""
    frame.total = min(frame.total + frame.last * (upper - 1), _CAP)
    frame.last = min(frame.last * upper, _CAP)


def _skip_space(pattern: str, i: int, *, verbose: bool) -> int:
    """Past blanks, and past ``#`` comments in verbose mode."""
    end = len(pattern)
    while i < end:
        char = pattern[i]
        if char.isspace():
            i += 1
        elif verbose and char == "#":
            newline = pattern.find("\n", i)
            i = end if newline < 0 else newline + 1
        else:
            break
    return i


def _escape_end(pattern: str, i: int) -> int:
    """Past the escape at ``i`` (a backslash), braces included (``\\x{41}``, ``\\p{L}``)."""
    if i + 1 >= len(pattern):
        return len(pattern)
    kind = pattern[i + 1]
    if kind in "pPxuU" and pattern.startswith("{", i + 2):
        close = pattern.find("}", i + 3)
        return len(pattern) if close < 0 else close + 1
    if kind in "pP":  # a one-letter class name: \pL
        return min(i + 3, len(pattern))
    digits = _HEX_DIGITS.get(kind, 0)
    hexes = pattern[i + 2 : i + 2 + digits]
    if digits and len(hexes) == digits and all(c in _HEX for c in hexes):
        return i + 2 + digits
    return i + 2


def _class_end(pattern: str, i: int, verbose: bool) -> int | None:
    """Past the character class opening at ``i``; None if it never closes."""
    end = len(pattern)
    j = i + 1
    if j < end and pattern[j] == "^":
        j += 1
    if j < end and pattern[j] == "]":  # a ']' first is a literal one
        j += 1
    depth = 1
    while j < end:
        char = pattern[j]
        if verbose and (char.isspace() or char == "#"):
            j = _skip_space(pattern, j, verbose=True)
        elif char == "\\":
            j = _escape_end(pattern, j)
        elif pattern.startswith("[:", j):
            close = pattern.find(":]", j + 2)
            j = j + 1 if close < 0 else close + 2
        elif char == "[":
            depth += 1
            j += 1
            if j < end and pattern[j] == "^":
                j += 1
            if j < end and pattern[j] == "]":
                j += 1
        elif char == "]":
            depth -= 1
            j += 1
            if depth == 0:
                return j
        else:
            j += 1
    return None


def _open_group(pattern: str, i: int, frames: list[_Frame]) -> int:
    """Open the group at ``i``, or apply a flag directive ``(?x)``; returns where to go on."""
    frame = frames[-1]
    if not pattern.startswith("(?", i):
        frames.append(_Frame(verbose=frame.verbose))
        return i + 1
    j = i + 2
    end = len(pattern)
    while j < end and (pattern[j] in _FLAG_LETTERS or pattern[j] == "-"):
        j += 1
    flags = pattern[i + 2 : j]
    verbose = _verbose_after(flags, frame.verbose)
    if j < end and pattern[j] == ")":  # a directive: from here to the group's end
        frame.verbose = verbose
        frame.last = 0
        return j + 1
    if j < end and pattern[j] == ":":
        frames.append(_Frame(verbose=verbose))
        return j + 1
    frames.append(_Frame(verbose=frame.verbose))  # a named group, or an error
    close = pattern.find(">", i)
    return i + 2 if close < 0 else close + 1


def _verbose_after(flags: str, verbose: bool) -> bool:
    """Whether ``x`` is on after ``flags`` (``i-x``: on before the dash, off after)."""
    on, _, off = flags.partition("-")
    if "x" in on:
        verbose = True
    if "x" in off:
        verbose = False
    return verbose


def _counted_repeat(pattern: str, i: int, verbose: bool) -> tuple[int, int] | None:
    """The upper count of ``{n}``, ``{n,}`` or ``{n,m}`` at ``i`` (``{n,}``: n + 1, a last
    copy looping), and where it ends; None if that is no counted repeat.
    Blanks may surround the numbers, as the engine allows.
    """
    j = _skip_space(pattern, i + 1, verbose=verbose)
    low, j = _number(pattern, j)
    if low is None:
        return None
    j = _skip_space(pattern, j, verbose=verbose)
    if pattern.startswith("}", j):
        return max(low, 1), j + 1
    if not pattern.startswith(",", j):
        return None
    j = _skip_space(pattern, j + 1, verbose=verbose)
    high, j = _number(pattern, j)
    j = _skip_space(pattern, j, verbose=verbose)
    if not pattern.startswith("}", j):
        return None
    upper = min(low + 1, _CAP) if high is None else max(high, low, 1)
    return upper, j + 1


def _number(pattern: str, j: int) -> tuple[int | None, int]:
    """The decimal at ``j`` (capped), and where it ends."""
    start = j
    while j < len(pattern) and "0" <= pattern[j] <= "9":
        j += 1
    digits = pattern[start:j]
    if not digits:
        return None, j
    return (int(digits) if len(digits) <= 12 else _CAP), j


def _clipped(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"
