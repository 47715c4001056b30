"""When a part of a ``topchef up`` stack that died is started again, and how its end is told.

A part that dies for any reason (a handler calling ``os._exit``, a driver's
segfault, the kernel's OOM killer, ``kill -9``) is started again after a delay
that doubles with each death in a row, so one that dies as soon as it starts
costs a start every minute at most, not a core. A part that stayed up a while
(``Backoff.steady``) died for a reason of its own: its next delay is the first
again.

The exception is a part that refuses its configuration (an unknown worker
module, a setting it cannot use): starting it again would refuse again, so it
exits with :data:`REFUSED`, and the stack stops, showing why.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

#: The exit status of a supervised part that refuses its configuration
#: (``EX_CONFIG`` of BSD's sysexits.h): it is not started again.
REFUSED = 78


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before a dead part is started again: ``first``, doubling to ``cap``."""

    first: float = 1.0
    cap: float = 60.0
    #: Up this long, a part that dies starts again after ``first``.
    steady: float = 60.0

    def deaths_in_row(self, before: int, uptime: float) -> int:
        """The count of deaths in a row, with this one after ``uptime`` seconds up."""
        return 1 if uptime >= self.steady else before + 1

    def delay(self, deaths_in_row: int) -> float:
        """How long to wait before starting a part that died ``deaths_in_row`` times in a row."""
        doublings = min(max(deaths_in_row, 1) - 1, 32)  # 2**32 s is past any cap
        return float(min(self.cap, self.first * 2**doublings))


def ending(returncode: int) -> str:
    """How a process ended, from its ``Popen.returncode`` (negative: the signal's number)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"
