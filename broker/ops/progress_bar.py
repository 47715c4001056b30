"""The live progress bar of ``topchef jobs wait``, ``jobs submit --wait`` and the demo.

One line on stderr, redrawn in place each time a wait looks at SQL::

    Waiting  [########            ]  40%  0:12  point 81/200

for one job (the progress and message its handler last reported), or for a
sweep its jobs done of all and its failures so far. It is drawn only while
stderr is a terminal: piped or redirected, not a byte of it is written, so a
script reads the command's output exactly as it would without it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import unicodedata
from collections.abc import Iterator
from typing import TextIO

from broker.models.lifecycle import Status
from broker.producer.reader import Standing, Watch

#: Characters of the bar itself, between its brackets.
BAR_CHARACTERS = 20
#: Assumed when the terminal does not say how wide it is.
DEFAULT_COLUMNS = 80
#: Back to the start of the line; and erase what a longer line left after it.
_RETURN, _ERASE_REST = "\r", "\x1b[K"


@contextlib.contextmanager
def live_bar(label: str, stream: TextIO | None = None) -> Iterator[Watch | None]:
    """A bar that follows a wait on a terminal: yields its ``watch``; None elsewhere.

    ``stream`` is stderr unless given. The bar's last line stays on the
    screen when the wait ends (or is interrupted), followed by a new line.
    """
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        yield None
        return
    bar = LiveBar(label, out)
    try:
        yield bar.show
    finally:
        bar.close()


class LiveBar:
    """One line on a terminal, redrawn in place: label, bar, percentage, elapsed, message."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self._label = label
        self._stream = stream
        self._started = time.monotonic()
        self._drawn = False

    def show(self, standing: Standing) -> None:
        self.draw(*describe(standing))

    def draw(self, fraction: float, message: str) -> None:
        elapsed = time.monotonic() - self._started
        line = bar_line(self._label, fraction, message, elapsed, _columns(self._stream))
        self._stream.write(_RETURN + line + _ERASE_REST)
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def describe(standing: Standing) -> tuple[float, str]:
    """How full the bar is and what it says, for one job or a sweep."""
    if standing.total == 1 and standing.status is not None:
        if standing.finished:
            return 1.0, standing.status.value
        if standing.status is Status.REGISTERED:
            return standing.progress or 0.0, "waiting to start"
        return standing.progress or 0.0, standing.progress_message or "running"
    fraction = standing.finished / standing.total if standing.total else 1.0
    words = f"{standing.finished}/{standing.total} jobs done, {standing.failed} failed"
    if standing.cancelled:
        words += f", {standing.cancelled} cancelled"
    return fraction, words


def bar_line(label: str, fraction: float, message: str, elapsed: float, columns: int) -> str:
    """The bar's line, at most ``columns - 1`` wide so that it never wraps."""
    share = min(1.0, max(0.0, fraction))
    filled = int(share * BAR_CHARACTERS)
    bar = "#" * filled + " " * (BAR_CHARACTERS - filled)
    head = f"{label}  [{bar}] {int(share * 100):3d}%  {_clock(elapsed)}  "
    return (head + printable(message, columns - 1 - len(head)))[: max(1, columns - 1)]


def printable(text: str, columns: int) -> str:
    """``text`` on one line of at most ``columns`` terminal cells, cut with ``…``.

    A handler's message is whatever its code wrote: a new line, a tab or an
    escape sequence would break the line or drive the terminal, so every
    character that is not printable becomes a space; wide characters count
    for two cells.
    """
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if _cells(flat) <= columns:
        return flat
    kept, used = [], 0
    for character in flat:
        width = _cells(character)
        if used + width > columns - 1:
            break
        kept.append(character)
        used += width
    return "".join(kept) + "…" if columns > 0 else ""


def _cells(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _clock(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03``."""
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (OSError, ValueError):
        return DEFAULT_COLUMNS
