"""JSON as a person reads it: whole when it fits a screen, summarised when it does not.

``topchef jobs show``, ``jobs wait`` and ``jobs submit --wait`` print a job's
results (``show`` the whole job) through here, since one job's results can
run to tens of thousands of lines. A value whose indented JSON fits a screen
(``LINES`` lines, none longer than ``LONGEST`` characters) is printed exactly
as ``json.dumps(value, indent=2)`` prints it. A larger one is laid out in
``LINES`` lines: objects one key a line, as far as the lines allow (each key
gets its share; ``DEPTH`` levels at most), and what does not fit is
summarised on its line: a long list as its length, the kind of its items and
the first few (``<57,034 numbers: 0.0, 0.05, …>``), a long string cut, with its
length (``"Lorem ipsum…" <12,345 characters>``), an object beyond its lines as
its first keys and how many more.

Every summary is written between ``<`` and ``>``, which JSON never uses
outside a string: a program that parses the output fails on a summary rather
than taking it for data. ``--results`` and ``--json`` print everything, as JSON.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

#: The lines a summarised value takes at most: a screen.
LINES = 40
#: The width summarised lines are laid out to, indentation included.
WIDTH = 100
#: The longest line printed whole (a string may wrap onto a second line or so).
LONGEST = 200
#: Levels of nesting laid out one entry a line; deeper ones stay on one line.
DEPTH = 3
#: The first items of a list of objects (or lists) shown one a line: its data's shape.
ITEMS = 10
#: The longest key shown whole on a line of its own.
KEY = 40
#: Below this, a summary stops adding items or keys.
_NARROWEST = 12


@dataclass(frozen=True, slots=True)
class Shown:
    """What to print, and whether anything in it was summarised."""

    lines: list[str]
    summarised: bool

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def block(value: Any, lines: int = LINES) -> Shown:
    """``value`` as indented JSON if it fits in ``lines`` lines, else summarised to fit."""
    whole = _whole(value, lines, LONGEST)
    if whole is not None:
        return Shown(whole, False)
    layout = _Layout()
    return Shown(layout.block(value, lines, 0, 0, 0), layout.summarised)


def one_line(value: Any, width: int) -> Shown:
    """``value`` as JSON on one line if it fits ``width``, else summarised to fit."""
    layout = _Layout()
    return Shown([layout.line(value, width)], layout.summarised)


class _Layout:
    """Lays out one value; remembers whether it had to summarise anything."""

    def __init__(self) -> None:
        self.summarised = False

    def block(self, value: Any, lines: int, indent: int, head: int, depth: int) -> list[str]:
        """``value`` in at most ``lines`` lines, relative to ``indent``.

        ``head`` is what precedes its first line (a key); the caller adds
        both, and the indentation of the lines after it.
        """
        room = WIDTH - indent - head - 1  # the comma after it
        if isinstance(value, str):  # a string may wrap: cut only what would not fit a few lines
            return [self.line(value, max(room, LONGEST - indent - head - 1))]
        if not _expandable(value) or lines < 3 or depth >= DEPTH:
            return [self.line(value, room)]
        inline = _encoded(value, room)
        if inline is not None:
            return [inline]
        whole = _whole(value, lines, LONGEST - indent)
        if whole is not None:
            return whole
        return self._expanded(value, lines, indent, depth) or [self.line(value, room)]

    def _expanded(
        self, value: dict[str, Any] | list[Any], lines: int, indent: int, depth: int
    ) -> list[str] | None:
        """One entry a line, each in its share of ``lines``; None if not one entry fits."""
        keyed = isinstance(value, dict)
        opener, closer, noun = ("{", "}", "keys") if keyed else ("[", "]", "items")
        inside = lines - 2
        most = inside if keyed else min(inside, ITEMS + 1)
        count = len(value)
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        entries = list(itertools.islice(pairs, most))
        shown = entries if count <= most else entries[: most - 1]
        if not shown:
            return None
        more = count - len(shown)
        shares = _shares([_need(item, depth + 1) for _, item in shown], inside - (1 if more else 0))
        laid = [opener]
        for index, ((name, item), share) in enumerate(zip(shown, shares, strict=True)):
            key = self._text(str(name), KEY) + ": " if keyed else ""
            entry = self.block(item, share, indent + 2, len(key), depth + 1)
            entry[0] = key + entry[0]
            if more or index < len(shown) - 1:
                entry[-1] += ","
            laid += ["  " + line for line in entry]
        if more:
            self.summarised = True
            laid.append(f"  <{more:,} more {_counted(more, noun)}>")
        laid.append(closer)
        return laid

    def line(self, value: Any, room: int) -> str:
        """``value`` on one line of at most ``room`` characters (as near as it can)."""
        if isinstance(value, str):
            return self._text(value, room)
        whole = _encoded(value, room)
        if whole is not None:
            return whole
        if isinstance(value, dict):
            return self._object(value, room)
        if isinstance(value, list):
            return self._list(value, room)
        self.summarised = True
        return f"<number of {len(json.dumps(value)):,} digits>"

    def _text(self, text: str, room: int) -> str:
        whole = json.dumps(text) if len(text) + 2 <= room else None
        if whole is not None and len(whole) <= room:
            return whole
        self.summarised = True
        length = f" <{len(text):,} characters>"
        budget = max(_NARROWEST, room - len(length) - 3)  # the quotes and the ellipsis
        kept: list[str] = []
        used = 0
        for character in text:
            escaped = json.dumps(character)[1:-1]
            if used + len(escaped) > budget:
                break
            kept.append(escaped)
            used += len(escaped)
        return '"' + "".join(kept) + '…"' + length

    def _list(self, items: list[Any], room: int) -> str:
        """``<57,034 numbers: 0.0, 0.05, …>``: length, kind, and the first items that fit."""
        self.summarised = True
        label = f"<{len(items):,} {_counted(len(items), _kind(items))}"
        parts: list[str] = []
        for item in items:
            left = room - len(f"{label}: {', '.join([*parts, ''])}, …>")
            if parts and left < _NARROWEST:
                break
            shown = self.line(item, max(left, _NARROWEST))
            if parts and len(shown) > left:
                break
            parts.append(shown)
        if not parts or len(f"{label}: {', '.join(parts)}, …>") > room:
            return label + ">"
        rest = ", …" if len(parts) < len(items) else ""
        return f"{label}: {', '.join(parts)}{rest}>"

    def _object(self, value: dict[str, Any], room: int) -> str:
        """``{"a": 1, "b": <41 numbers: …>, <3 more keys>}``: the first keys that fit."""
        self.summarised = True
        parts: list[str] = []
        entries = list(value.items())
        for index, (key, item) in enumerate(entries):
            rest = len(entries) - index - 1
            tail = len(f", <{rest:,} more keys>") if rest else 0
            head = json.dumps(str(key)) + ": "
            left = room - len("{" + ", ".join([*parts, head]) + "}") - tail
            if left < _NARROWEST:
                break
            # A value may take half of what is left while keys follow, so that they show too.
            shown = self.line(item, max(_NARROWEST, left // 2) if rest else left)
            if len(shown) > left:
                break
            parts.append(head + shown)
        hidden = len(entries) - len(parts)
        if not parts:
            return f"<object of {hidden:,} {_counted(hidden, 'keys')}>"
        if hidden:
            parts.append(f"<{hidden:,} more {_counted(hidden, 'keys')}>")
        return "{" + ", ".join(parts) + "}"


def _encoded(value: Any, limit: int, indent: int | None = None) -> str | None:
    """``json.dumps(value, indent=indent)`` if it takes at most ``limit`` characters, else None.

    Encoded piece by piece and given up past ``limit``: judging whether
    millions of values fit a line costs no more than the line.
    """
    pieces: list[str] = []
    used = 0
    for piece in json.JSONEncoder(indent=indent).iterencode(value):
        used += len(piece)
        if used > limit:
            return None
        pieces.append(piece)
    return "".join(pieces)


def _whole(value: Any, lines: int, longest: int) -> list[str] | None:
    """``value``'s indented JSON, if it fits in ``lines`` lines of at most ``longest``."""
    text = _encoded(value, lines * (longest + 1), indent=2)
    if text is None:
        return None
    whole = text.splitlines()
    if len(whole) <= lines and all(len(line) <= longest for line in whole):
        return whole
    return None


def _expandable(value: Any) -> bool:
    """Whether ``value`` may take a line per entry: an object, or a list of anything but scalars.

    A list of numbers or strings reads better as one line summarised than as
    its first forty items, one a line.
    """
    if isinstance(value, dict):
        return bool(value)
    if isinstance(value, list):
        return any(isinstance(item, dict | list) for item in value)
    return False


def _need(value: Any, depth: int, cap: int = LINES) -> int:
    """The lines ``value`` would take laid out in full (at most ``cap``)."""
    if not _expandable(value) or depth >= DEPTH:
        return 1
    total = 2
    for item in value.values() if isinstance(value, dict) else value:
        total += _need(item, depth + 1, cap)
        if total >= cap:
            return cap
    return total


def _shares(needs: list[int], lines: int) -> list[int]:
    """Split ``lines`` among entries: at least one each, the small ones all they need,
    the large ones the rest in equal parts."""
    shares = [1] * len(needs)
    left = lines - len(needs)
    waiting = sorted(range(len(needs)), key=lambda index: needs[index])
    for position, index in enumerate(waiting):
        extra = min(needs[index] - 1, left // (len(waiting) - position))
        shares[index] += max(0, extra)
        left -= max(0, extra)
    return shares


def _counted(count: int, plural: str) -> str:
    return plural if count != 1 else plural.removesuffix("s")


def _kind(items: list[Any]) -> str:
    """What a list holds, in the plural: ``numbers``, ``strings``, … or ``items``."""
    kinds = {_KINDS.get(type(item), "items") for item in items}
    return kinds.pop() if len(kinds) == 1 else "items"


_KINDS = {
    int: "numbers",
    float: "numbers",
    str: "strings",
    bool: "booleans",
    dict: "objects",
    list: "lists",
    type(None): "nulls",
}
