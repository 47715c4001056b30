"""A run's progress reports, throttled, the last one never lost.

A handler may call ``progress`` in a tight loop; each report is a state entry
the mirror writes to SQL, so at most one goes every ``PROGRESS_INTERVAL``
seconds (a report of 1.0 always goes). One held back is not dropped: the
latest is sent when the run returns, before its outcome, so that a finished
job shows what its handler last said rather than what it said a moment
before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Progress reports closer together than this are held back (the latest is kept).
PROGRESS_INTERVAL = 0.25

#: Sends one report: its fraction and message.
Send = Callable[[float, str | None], None]


class ThrottledProgress:
    """One run's reporter (``broker.worker.handlers.ProgressReporter``), and its last word."""

    def __init__(
        self,
        send: Send,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._sent_at = -interval
        self._held: tuple[float, str | None] | None = None

    def __call__(self, fraction: float, message: str | None) -> None:
        now = self._clock()
        if fraction < 1.0 and now - self._sent_at < self._interval:
            self._held = (fraction, message)
            return
        self._sent_at, self._held = now, None
        self._send(fraction, message)

    def flush(self) -> None:
        """Send the report held back, if any: the run has returned."""
        held, self._held = self._held, None
        if held is not None:
            self._send(*held)
