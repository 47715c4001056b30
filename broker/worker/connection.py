"""A lab worker's hold on its message broker: lost, it waits for it as long as it takes.

Celery's consumer retries a lost broker with growing pauses (2 s, then 4 s,
… up to 30 s) and gives up after ``broker_connection_max_retries`` tries,
leaving the worker running but deaf until someone restarts it. A lab PC's
worker outlives the PC that runs the broker: ``topchef up`` is stopped and
started again, that PC reboots. So a TopChef worker tries every
``RETRY_SECONDS``, forever, and says so — once when the broker goes, once a
minute while it stays away, once when it answers again — so that it serves
new jobs within seconds of the broker's return, however long it was away.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown
from kombu.connection import Connection

from broker.settings import masked

log = logging.getLogger(__name__)

#: The pause between two tries to reach a lost broker.
RETRY_SECONDS = 2.0
#: How often a worker that still cannot reach its broker says so again.
REMIND_SECONDS = 60.0


class PatientConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but its broker connection is waited for, forever, in words."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # At every lost connection Celery warns that 6.0 will cancel the jobs
        # running; celeryconfig decides that itself (an instrument's run goes
        # on), so the warning tells a lab nothing. Filtered here: the worker's
        # logging setup, which runs before its consumer is made, lets every
        # Celery deprecation warning through, overriding any filter set earlier.
        warnings.filterwarnings(
            "ignore",
            message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
            category=CPendingDeprecationWarning,
        )

    def ensure_connected(self, conn: Connection) -> Connection:
        outage = Outage(masked(conn.as_uri(include_password=True)))
        conn.ensure_connection(  # type: ignore[no-untyped-call]
            outage.failed,
            None,  # no limit
            interval_start=RETRY_SECONDS / 2,
            interval_step=RETRY_SECONDS / 2,
            interval_max=RETRY_SECONDS,
            callback=maybe_shutdown,  # a Ctrl-C meanwhile still stops the worker
        )
        outage.over()
        connected: Connection = super().ensure_connected(conn)  # Celery's own bookkeeping
        return connected


class Outage:
    """What a worker says while its broker is out of reach: a line now and then, not each try."""

    def __init__(self, where: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.clock = clock
        self.began: float | None = None
        self.said = 0.0

    def failed(self, error: Exception, interval: float) -> None:
        """kombu's errback: a try failed, and the next comes in ``interval`` s."""
        now = self.clock()
        if self.began is None:
            self.began = self.said = now
            log.warning(
                "the message broker %s is out of reach (%s); trying again every %g s "
                "until it answers, for as long as it takes",
                self.where,
                _reason(error),
                RETRY_SECONDS,
            )
        elif now - self.said >= REMIND_SECONDS:
            self.said = now
            log.warning(
                "the message broker %s is still out of reach after %.0f s (%s); still trying",
                self.where,
                now - self.began,
                _reason(error),
            )

    def over(self) -> None:
        if self.began is not None:
            log.info(
                "the message broker %s answers again after %.0f s; serving",
                self.where,
                self.clock() - self.began,
            )
            self.began = None


def _reason(error: Exception) -> str:
    return str(error).strip().rstrip(".") or type(error).__name__
