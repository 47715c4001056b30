"""The runs a worker process holds, for its shutdown to abort and to wait for.

A run is held from its claim until its outcome is reported: first while its
handler runs, then while its report is on its way. A shutdown that aborts
(``broker.worker.shutdown``) asks each handler to stop, calls the safe-state
callbacks of those that do not look in time, and waits for the runs to end;
a run whose handler has returned is never cut off before its report lands,
so that what an instrument measured is not lost to the shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from broker.messaging.messages import ServiceDescriptor
from broker.worker.controls import RunAbortWatch
from broker.worker.handlers import Aborted

log = logging.getLogger(__name__)

#: A run whose handler returned before the abort's grace ran out gets this long
#: more for its report to land, before the worker exits without it.
REPORT_GRACE = 5.0


@dataclass(slots=True)
class HeldRun:
    """A run this process holds: its job, its service, and how far it got."""

    job: uuid.UUID
    service: ServiceDescriptor
    watch: RunAbortWatch
    #: The handler has returned (or raised): only the report is left.
    returned: bool = False


class RunningJobs:
    """This process's held runs, and the abort of all of them that a shutdown asks."""

    def __init__(self) -> None:
        self._runs: dict[uuid.UUID, HeldRun] = {}
        self._changed = threading.Condition()
        #: The reason every run is aborted for, once a shutdown asked (runs that
        #: start afterwards are aborted as they start).
        self.aborting: str | None = None

    def start(self, run: HeldRun) -> bool:
        """Hold ``run``; True if a shutdown is aborting runs, so this one must be too."""
        with self._changed:
            self._runs[run.job] = run
            return self.aborting is not None

    def returned(self, job: uuid.UUID) -> None:
        with self._changed:
            if (run := self._runs.get(job)) is not None:
                run.returned = True
            self._changed.notify_all()

    def reported(self, job: uuid.UUID) -> None:
        with self._changed:
            self._runs.pop(job, None)
            self._changed.notify_all()

    def held(self) -> list[HeldRun]:
        with self._changed:
            return list(self._runs.values())

    def abort_all(
        self, abort: Aborted, ask: Callable[[uuid.UUID], None], grace: float
    ) -> list[HeldRun]:
        """Abort every held run; return those that have not ended when it gives up.

        ``ask`` records the abort of one job (``Claims.abort``, as a user's
        abort is recorded); ``abort`` is what it records, for the callbacks
        to run with should Redis not answer. Half the grace is the handlers'
        to see the abort themselves, at a ``progress()`` or ``aborted()``,
        and call their ``on_abort`` callbacks in their own thread; then this
        thread calls the callbacks of those that did not look, so every
        instrument is made safe. The other half is theirs to return. Runs whose handler returned
        are waited for until their reports land (at most ``REPORT_GRACE``
        more). What is left is the caller's to give up: handlers still
        running, and (with Redis out of reach) reports that could not land.
        """
        with self._changed:
            self.aborting = abort.reason
            jobs = list(self._runs)
        for job in jobs:
            ask(job)
        start = time.monotonic()
        self._wait(lambda runs: all(r.returned or r.watch.seen for r in runs), start + grace / 2)
        for run in self.held():
            if not run.returned and run.watch.call_back(abort):
                log.info(
                    "job %s's handler had not looked for the abort: its on_abort callbacks were"
                    " called by the worker",
                    run.job,
                )
        self._wait(lambda runs: not runs, start + grace)
        self._wait(lambda runs: all(not r.returned for r in runs), start + grace + REPORT_GRACE)
        return self.held()

    def _wait(self, done: Callable[[list[HeldRun]], bool], deadline: float) -> None:
        with self._changed:
            while not done(list(self._runs.values())):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                # Woken by every change; the timeout also lets a handler's own
                # ``seen`` (set in its thread, not notified) be noticed.
                self._changed.wait(min(left, 0.1))
