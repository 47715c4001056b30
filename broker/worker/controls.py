"""What a running job's controls come to in the worker: its abort request, its retries.

An abort is asked in Redis (``Claims.abort``) and read here, by the handler's
own calls to ``progress`` and ``aborted``: one HMGET at most every
``ABORT_POLL_INTERVAL`` seconds, so a handler that reports in a tight loop pays
nothing for it. A retry is the handler's request (``Retry``) or an exception
type its service names (``retry_on``); whether it is granted is decided here,
by the service's opt-in and its ``max_attempts``, so that one rule answers it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from broker.messaging.claims import AbortRequest, Claims
from broker.messaging.messages import ServiceDescriptor, StateMessage
from broker.worker.handlers import Aborted, Retry

log = logging.getLogger(__name__)

#: A handler's abort checks closer together than this reuse the last answer.
ABORT_POLL_INTERVAL = 0.25
#: The longest wait the doubling backoff grows to (an hour).
RETRY_BACKOFF_CAP = 3600.0


def aborted_signal(request: AbortRequest) -> Aborted:
    """The exception a handler sees for ``request``, its time on Redis's clock."""
    at = datetime.fromtimestamp(request.at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return Aborted(request.reason, request.by, at)


def abort_detail(abort: Aborted, called_back_by_worker: bool = False) -> str:
    """The detail of a job that ended CANCELLED because it was aborted while running.

    ``called_back_by_worker``: its handler never looked, and a shutdown called
    its safe-state callbacks (``RunAbortWatch.call_back``); the detail says so,
    since whatever it returned was measured with the instrument made safe.
    """
    reason = f": {abort.reason}" if abort.reason else ""
    detail = f"aborted while running at {abort.at} by {abort.by}{reason}"
    if called_back_by_worker:
        detail += "; its handler had not looked for the abort, so the worker called its on_abort"
    return detail


def unheeded_abort(final: StateMessage, abort: Aborted) -> StateMessage:
    """``final``, its detail saying that ``abort`` was asked but never heeded.

    For a run whose handler never checked: its outcome stands, since that is
    what physically happened, and says what it did not hear.
    """
    reason = f" ({abort.reason})" if abort.reason else ""
    note = (
        f"an abort was requested at {abort.at} by {abort.by}{reason}"
        " but the handler never checked for it and ran to its end"
    )
    return dataclasses.replace(final, detail=f"{final.detail}; {note}" if final.detail else note)


class RunAbortWatch:
    """One run's view of its abort request: polled lazily, its callbacks called once.

    The handler's thread asks (``requested``); at a shutdown, the worker's own
    thread may call the callbacks of an abort the handler has not seen yet
    (``call_back``). A lock makes the two agree on who calls them: exactly once.
    """

    def __init__(
        self,
        claims: Claims,
        job_id: uuid.UUID,
        interval: float = ABORT_POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._claims = claims
        self._job_id = job_id
        self._interval = interval
        self._clock = clock
        self._last = -interval
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        #: The abort, once the handler has been told of it.
        self.seen: Aborted | None = None
        #: Whether the worker, not the handler, called the callbacks (at a shutdown).
        self.called_back_by_worker = False

    def requested(self) -> Aborted | None:
        if self.seen is not None:
            return self.seen
        now = self._clock()
        if now - self._last < self._interval:
            return None
        self._last = now
        found = self._read()
        if found is not None:
            self._see(found)
        return self.seen

    def on_abort(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if self.seen is None:
                self._callbacks.append(callback)
                return
        _call_safely(callback)

    def call_back(self, fallback: Aborted) -> bool:
        """Call the safe-state callbacks of an abort the handler has not seen; True if any ran.

        For a shutdown that cannot wait for a handler to look: its instrument
        is made safe all the same, and the run counts as aborted from then on
        (its ``progress`` raises, its ``aborted()`` is True, and it ends
        CANCELLED whatever it returns). The abort is the one Redis records, or
        ``fallback`` if Redis cannot say: safety does not wait for the broker.
        A run with no callback is left alone: nothing was made safe, so its
        outcome stays its handler's.
        """
        if self.seen is not None or not self._callbacks:
            return False
        return self._see(self._read() or fallback, by_worker=True)

    def unseen(self) -> Aborted | None:
        """An abort requested that the handler never asked about (read now, unthrottled)."""
        return None if self.seen is not None else self._read()

    def _see(self, abort: Aborted, by_worker: bool = False) -> bool:
        """Record ``abort`` as seen and call the callbacks, unless another thread did first.

        ``by_worker``: only if there is a callback to call (see ``call_back``).
        """
        with self._lock:
            if self.seen is not None or (by_worker and not self._callbacks):
                return False
            self.seen = abort
            self.called_back_by_worker = by_worker
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call_safely(callback)
        return True

    def _read(self) -> Aborted | None:
        try:
            request = self._claims.abort_request(self._job_id)
        except redis.RedisError as error:  # asked again at the next check
            log.warning("cannot read job %s's abort request yet: %s", self._job_id, error)
            return None
        return None if request is None else aborted_signal(request)


def _call_safely(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # the abort goes on: a failing callback is logged, not the run's end
        log.exception("an abort callback failed")


@dataclass(frozen=True, slots=True)
class RetryVerdict:
    """Whether a failed run runs again: ``after`` seconds from now, or not (None)."""

    after: float | None
    detail: str


def asks_for_retry(descriptor: ServiceDescriptor, error: Exception) -> bool:
    """Whether ``error`` asks for a retry: a ``Retry``, or a type the service names."""
    if isinstance(error, Retry):
        return True
    names = set(descriptor.retry_on)
    return any(
        kind.__name__ in names or f"{kind.__module__}.{kind.__qualname__}" in names
        for kind in type(error).__mro__
    )


def judge_retry(descriptor: ServiceDescriptor, error: Exception, attempt: int) -> RetryVerdict:
    """The one rule for retries: the service opts in, and attempts stay within ``max_attempts``.

    A service that did not opt in never runs a job again because its handler
    asked: the job ends ERROR, saying so, rather than retrying silently.
    """
    described = f"{type(error).__name__}: {error}"
    if not descriptor.retries:
        return RetryVerdict(
            None,
            f"{described}; service {descriptor.name!r} does not allow retries "
            "(create it with retries=True), so the job was not run again",
        )
    if attempt >= descriptor.max_attempts:
        return RetryVerdict(None, f"{described}; gave up after {attempt} attempts (max_attempts)")
    after = error.after if isinstance(error, Retry) else None
    if after is None:
        after = min(RETRY_BACKOFF_CAP, descriptor.retry_backoff * 2 ** (attempt - 1))
    return RetryVerdict(after, f"attempt {attempt}: {described}; retrying in {after:g} s")
