"""Job priorities, and the Redis lists kombu keeps for them.

The rule: a priority is an integer from ``LOWEST`` (0) to ``HIGHEST`` (9),
higher first, ``DEFAULT`` (5) when none is given. A service's workers start
its highest-priority waiting job first, and jobs of one priority in the order
they were submitted. It is strict: a lower-priority job waits for as long as
higher-priority ones are queued (no aging), so a steady stream of urgent work
can keep routine work waiting; submit routine work at the default and keep the
high priorities for what must jump the queue.

kombu's Redis transport emulates priorities with one list per priority step
(``priority_steps``): a queue ``q`` has lists ``q`` and ``q<sep>1`` …
``q<sep>9``, and a worker's BRPOP names them in that order, so kombu's
priority 0 is taken first from lists that hold jobs already. A worker
already waiting in BRPOP, though, is handed a job from whichever list is
pushed to first, so whatever pushes several priorities at once pushes the
highest first (``highest_first``). Ours is the other way round from kombu's
(higher first, as users read it), so a job of priority ``p`` carries kombu's
``HIGHEST - p``.
Every process configures the same ten steps (``broker.app``), and
``tests/test_wire_celery.py`` pins the list the publisher pushes to against
the one Celery's own ``send_task(priority=…)`` uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from broker.errors import DeserializationError


class _Prioritised(Protocol):
    @property
    def priority(self) -> int: ...


P = TypeVar("P", bound=_Prioritised)

LOWEST = 0
HIGHEST = 9
DEFAULT = 5
#: kombu's priority steps: one Redis list per priority.
STEPS = list(range(LOWEST, HIGHEST + 1))
#: kombu's Redis transport's default separator between a queue and its step.
SEPARATOR = "\x06\x16"


def check(value: object, field: str = "priority") -> int:
    """``value`` as a priority, or a ``DeserializationError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or not LOWEST <= value <= HIGHEST:
        raise DeserializationError(
            field, f"must be an integer from {LOWEST} to {HIGHEST} (higher first), got {value!r}"
        )
    return value


def kombu_priority(priority: int) -> int:
    """What the message's ``properties.priority`` says, for kombu (0 is taken first)."""
    return HIGHEST - priority


def queue_list(queue: str, priority: int) -> str:
    """The Redis list kombu keeps ``queue``'s messages of ``priority`` in."""
    step = kombu_priority(priority)
    return f"{queue}{SEPARATOR}{step}" if step else queue


def highest_first(jobs: Iterable[P]) -> list[P]:
    """``jobs`` in the order they must be pushed onto their queues' lists: highest first.

    A worker waiting in BRPOP on every list of its queue is not served from the
    first list it names but from the first one that received data: after each
    command (or each script or transaction) Redis serves its waiting clients in
    the order their lists were pushed to. So whatever pushes jobs of several
    priorities in one go pushes the highest first; jobs of one priority keep
    the order given. ``lua/slots.lua``'s ``release_parked`` keeps the same rule.
    """
    return sorted(jobs, key=lambda job: -job.priority)


def queue_lists(queue: str) -> list[str]:
    """Every list of ``queue``, highest priority first: what to count for its depth."""
    return [queue_list(queue, priority) for priority in reversed(STEPS)]
