"""A worker's shutdown: Ctrl-C once waits for the running jobs, twice aborts them.

Celery's own second Ctrl-C (its cold shutdown) cancels running tasks by
killing them: a prefork child is sent SIGTERM mid-run, and the threads and
solo pools, which cannot kill a task, fail with a traceback. Neither brings an
instrument to its safe state. So once Celery is ready, a TopChef worker takes
SIGINT and SIGQUIT over:

- the first Ctrl-C, or SIGTERM, is Celery's warm shutdown (no new job starts;
  a batch stops after its current job and leaves the rest to beat), with one
  line naming the jobs it waits for and what a second Ctrl-C does;
- a second Ctrl-C, or SIGQUIT, aborts every running handler as a user's abort
  would (``WorkerRuntime.abort_running``: its job ends CANCELLED, its
  ``on_abort`` callbacks run once), and the worker exits within ``bound``
  seconds even if a handler ignores it: that job is then left to its
  service's worker-loss policy, as after a crash, and said so in one line.

In a prefork pool the handlers run in child processes, which Celery makes
ignore Ctrl-C: the parent passes SIGTERM (drain) and SIGQUIT (abort) on to
them, and each child takes those two signals the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from celery.worker import state

from broker.settings import ABORT_GRACE_SECONDS
from broker.worker.running import REPORT_GRACE, HeldRun
from broker.worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: What a job aborted by a shutdown says of why (its detail ends with it).
SHUTDOWN_REASON = "the worker was shut down (a second Ctrl-C or SIGQUIT)"
#: Beyond the handlers' grace and their reports' (``REPORT_GRACE``): Celery's
#: own end, and a prefork parent's wait for its children's.
EXIT_MARGIN = 2.0
#: How long a worker that exits abandoning a run waits to withdraw its presence.
WITHDRAW_TIMEOUT = 2.0

_SignalHandler = Callable[[int, FrameType | None], Any]


def exit_bound(grace: float = ABORT_GRACE_SECONDS) -> float:
    """How long after a second Ctrl-C a worker with that ``grace`` has exited, at the latest."""
    return grace + REPORT_GRACE + EXIT_MARGIN


class Shutdown:
    """One worker process's answer to Ctrl-C, SIGTERM and SIGQUIT (see the module)."""

    def __init__(self, runtime: WorkerRuntime, pool: str, grace: float) -> None:
        self._runtime = runtime
        self._prefork = pool == "prefork"
        self._grace = grace
        self._pool: Any = None
        self._celery_warm: _SignalHandler | None = None
        self._warm = threading.Event()
        self._aborting = threading.Event()
        self._deadline = 0.0
        #: The prefork child whose signals are taken over (``install_child``).
        self._child = 0

    @property
    def bound(self) -> float:
        return exit_bound(self._grace)

    # -- the main process -----------------------------------------------------

    def install(self, consumer: Any) -> None:
        """Take Ctrl-C and SIGQUIT over from Celery, once it is ready (``worker_ready``).

        Celery's SIGTERM handler, its warm shutdown, is kept: the first Ctrl-C
        calls it.
        """
        celery_warm = signal.getsignal(signal.SIGTERM)
        if not callable(celery_warm) or threading.current_thread() is not threading.main_thread():
            log.warning("cannot take Ctrl-C over from Celery: a second Ctrl-C kills running jobs")
            return
        self._pool = getattr(consumer, "pool", None)
        self._celery_warm = celery_warm
        signal.signal(signal.SIGINT, self._interrupted)
        signal.signal(signal.SIGQUIT, self._quit)

    def warm(self, **_: Any) -> None:
        """Celery's warm shutdown has begun (``worker_shutting_down``): drain, and say so once."""
        self._runtime.drain()
        self._to_children(signal.SIGTERM)
        if not self._warm.is_set():
            self._warm.set()
            if not self._aborting.is_set():  # a SIGQUIT says what it aborts instead
                _say(self._waiting_line)

    def _interrupted(self, signum: int, frame: FrameType | None) -> None:
        if self._warm.is_set():
            self._abort()
        elif self._celery_warm is not None:
            self._celery_warm(signum, frame)  # Celery's warm shutdown, which calls ``warm``

    def _quit(self, signum: int, frame: FrameType | None) -> None:
        self._abort()
        if not self._warm.is_set() and self._celery_warm is not None:
            self._celery_warm(signum, frame)

    def _abort(self) -> None:
        if self._aborting.is_set():
            left = max(0.0, self._deadline - time.monotonic())
            _say(lambda: f"already aborting: the worker exits within {left:.0f} s")
            return
        self._aborting.set()
        self._deadline = time.monotonic() + self.bound
        threading.Thread(target=self._abort_then_exit, name="topchef-abort", daemon=True).start()

    def _abort_then_exit(self) -> None:
        """Abort every run, then exit if one's handler ignored it, or Celery did not end in time.

        A daemon thread: when Celery ends the warm shutdown first, as it does
        once every run has ended, the process exits and this thread with it.
        """
        running = [_label(fields, self._name(fields)) for fields in _active()]
        if running:
            log.warning(
                "aborting %s: each handler is told to stop, its on_abort callbacks run and its"
                " job ends CANCELLED; the worker exits within %.0f s",
                _listed(running),
                self.bound,
            )
        else:
            log.warning("no job is running; the worker exits within %.0f s", self.bound)
        try:
            if self._prefork:
                self._to_children(signal.SIGQUIT)
            elif left := self._runtime.abort_running(SHUTDOWN_REASON, self._grace):
                fates = [self._fate(_run_label(r), r.service.id, r.returned) for r in left]
                self._exit(fates)
        except Exception as error:  # the bound holds all the same
            log.warning("the abort failed (%s: %s)", type(error).__name__, error)
        time.sleep(max(0.0, self._deadline - time.monotonic()))
        # Still here: a prefork child's handler ignored the abort, or Celery hangs.
        left_over = _active() if self._prefork else []
        self._exit([self._fate(_label(f, self._name(f)), _service_id(f), False) for f in left_over])

    def _name(self, fields: dict[str, Any]) -> str:
        served = self._runtime.services.get(_service_id(fields) or uuid.UUID(int=0))
        return served.descriptor.name if served else "?"

    def _exit(self, fates: list[str]) -> None:
        """Leave now, without the runs that did not end; one line says what becomes of them."""
        log.warning("exiting: %s", "; ".join(fates) or "Celery did not finish its shutdown in time")
        if self._prefork:
            self._to_children(signal.SIGKILL)
        withdraw = threading.Thread(target=self._runtime.stop, daemon=True)
        withdraw.start()
        withdraw.join(WITHDRAW_TIMEOUT)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    def _fate(self, label: str, service_id: uuid.UUID | None, returned: bool) -> str:
        """What becomes of a run the worker exits without: its service's policy says.

        ``returned``: its handler did stop, but its report could not reach
        Redis in time (so nothing records it either).
        """
        served = self._runtime.services.get(service_id or uuid.UUID(int=0))
        policy = served.descriptor.worker_loss_policy if served else ""
        fate = _FATES.get(policy, "follows its service's worker-loss policy")
        why = (
            f"its report could not reach the broker within {REPORT_GRACE:g} s"
            if returned
            else f"its handler did not stop within {self._grace:g} s of the abort"
        )
        return f"{label}: {why}; as after a crash, it {fate} once its lease lapses"

    def _waiting_line(self) -> str:
        running = [_label(fields, self._name(fields)) for fields in _active()]
        if not running:
            return "warm shutdown: no job is running; stopping"
        them = "it" if len(running) == 1 else "them"
        return (
            f"warm shutdown: waiting for {_listed(running)} to end (a batch stops after its"
            f" current job); Ctrl-C again (or SIGQUIT) aborts {them}: the on_abort callbacks"
            f" run, and the worker exits within {self.bound:.0f} s"
        )

    def _to_children(self, signum: int) -> None:
        """Pass ``signum`` on to a prefork pool's children, which run the handlers."""
        if not self._prefork or self._pool is None:
            return
        try:
            children = self._pool.info.get("processes", [])
        except Exception:  # a pool Celery has already torn down: no child left
            return
        for pid in children:
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    os.kill(pid, signum)

    # -- a prefork child ------------------------------------------------------

    @staticmethod
    def shield_child(**_: Any) -> None:
        """In a new prefork child (``worker_process_init``): ignore SIGTERM and SIGQUIT for now.

        billiard then leaves them ignored, where it would make them exit the
        child (mid-run, or as it starts a task) — until ``install_child``
        gives them their meaning.
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    def install_child(self, **_: Any) -> None:
        """In a prefork child starting a task (``task_prerun``): SIGTERM drains, SIGQUIT aborts.

        Its parent passes both on; its first task's start is the first moment
        they can be taken after billiard's set-up.
        """
        if self._child == os.getpid():
            return
        self._child = os.getpid()
        self._aborting = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self._runtime.drain())
        signal.signal(signal.SIGQUIT, self._child_quit)

    def _child_quit(self, signum: int, frame: FrameType | None) -> None:
        if self._aborting.is_set():
            return
        self._aborting.set()
        threading.Thread(
            target=self._runtime.abort_running,
            args=(SHUTDOWN_REASON, self._grace),
            name="topchef-abort",
            daemon=True,
        ).start()


_FATES = {
    "fail": "ends ERROR (worker lost)",
    "requeue": "runs again on another worker (up to its max_attempts)",
}


def _active() -> list[dict[str, Any]]:
    """The fields of each job or batch message this worker runs now (Celery's active requests).

    In the main process, whatever the pool: a prefork pool's children run
    them, but its parent knows them.
    """
    for _ in range(3):  # the pool's threads may change the set meanwhile
        try:
            requests = list(state.active_requests)
        except RuntimeError:
            continue
        return [r.kwargs for r in requests if isinstance(r.kwargs, dict)]
    return []


def _service_id(fields: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(fields.get("service_id")))
    except ValueError:
        return None


def _label(fields: dict[str, Any], service: str) -> str:
    jobs = fields.get("jobs")
    if isinstance(jobs, list):
        return f"batch {str(fields.get('batch_id'))[:8]} ({len(jobs)} jobs of {service})"
    return f"job {str(fields.get('job_id'))[:8]} ({service})"


def _run_label(run: HeldRun) -> str:
    return f"job {run.job.hex[:8]} ({run.service.name})"


def _listed(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _say(line: Callable[[], str]) -> None:
    """Log a line from a thread of its own: a signal handler may interrupt a log write."""
    threading.Thread(target=lambda: log.warning(line()), name="topchef-say", daemon=True).start()
