"""The lab worker: runs handlers for the services it serves, and says it is alive.

Lab code needs two names from here — ``handles`` and ``progress`` — and the
``topchef worker MODULE`` command does the rest. A worker knows only the
message broker: services are resolved through the directory in Redis, every
state change goes back on the state stream, and claims (``broker.claims``)
make sure a job runs once however often its message is delivered.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys
from broker.batches import Batches
from broker.claims import ClaimResult, Claims
from broker.connections import redis_client
from broker.contract import Contract, compile_contract
from broker.handlers import Declaration, Handler, handles, progress, reporting_to, stop_reporting
from broker.messages import ServiceDescriptor, StateMessage
from broker.models.errors import DeserializationError, ServiceWithNameNotFound
from broker.models.interfaces.job import Job
from broker.settings import Settings

__all__ = ["ServedService", "WorkerRuntime", "current_runtime", "handles", "install", "progress"]

log = logging.getLogger(__name__)
Status = Job.JobStatus

#: Progress reports closer together than this are dropped (the last one is kept).
PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class ServedService:
    """A service this worker serves: what the directory says of it, and its handler."""

    descriptor: ServiceDescriptor
    handler: Handler
    contract: Contract


def resolve(
    client: redis.Redis, declarations: Iterable[Declaration]
) -> dict[uuid.UUID, ServedService]:
    """Find each declared service in the directory; an unknown name is a clear error."""
    served: dict[uuid.UUID, ServedService] = {}
    for declaration in declarations:
        service_id = client.hget(keys.SERVICE_IDS, declaration.service_name)
        raw = client.hget(keys.SERVICE_DESCRIPTORS, service_id) if service_id else None
        if raw is None:
            raise ServiceWithNameNotFound(declaration.service_name)
        descriptor = ServiceDescriptor.from_json(raw)
        contract = compile_contract(descriptor.job_result_schema, source="job_result_schema")
        served[descriptor.id] = ServedService(descriptor, declaration.function, contract)
    return served


class WorkerRuntime:
    """Runs claimed jobs and keeps this worker's check-ins and leases alive."""

    def __init__(self, settings: Settings, services: Mapping[uuid.UUID, ServedService]) -> None:
        self.settings = settings
        self.services = dict(services)
        self._client = redis_client(settings.broker_url)
        self._claims = Claims(self._client, settings.lease_seconds)
        self._batches = Batches(self._client, settings.lease_seconds)
        #: Lease key → holder, for every job and batch this process is running.
        self._leases: dict[str, str] = {}
        self._leases_lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    @property
    def queues(self) -> list[str]:
        return [served.descriptor.queue for served in self.services.values()]

    @staticmethod
    def name() -> str:
        """This process, as the jobs it runs record it."""
        return f"{socket.gethostname()}:{os.getpid()}"

    # -- running jobs -------------------------------------------------------

    def run(
        self,
        job_id: str,
        service_id: str,
        parameters: dict[str, Any],
        attempt: int = 1,
        **_ignored: Any,
    ) -> str:
        """Run one delivery of a job, if it wins the claim; return what happened."""
        job, service = uuid.UUID(job_id), uuid.UUID(service_id)
        served = self.services.get(service)
        if served is None:
            log.error("job %s is for service %s, which this worker does not serve", job, service)
            return "not-served"
        worker = self.name()
        working = StateMessage(
            "status", service, job, status=Status.WORKING.value, attempt=attempt, worker=worker
        )
        claimed = self._claims.claim(job, attempt, worker, working)
        if claimed is not ClaimResult.CLAIMED:
            log.info("not running job %s (attempt %d): it is %s", job, attempt, claimed.value)
            return str(claimed.value)
        self._hold(keys.lease(job), worker)
        try:
            final = self._execute(served, job, parameters, attempt, worker)
        finally:
            self._release(keys.lease(job))
        if not self._claims.finish(job, attempt, final):
            log.warning("job %s finished after beat gave it up; its outcome is dropped", job)
            return "given-up"
        return final.status or ""

    def run_batch(
        self, batch_id: str, service_id: str, jobs: list[dict[str, Any]], **_ignored: Any
    ) -> dict[str, int]:
        """Run a batch's jobs one after another; return how many ended how.

        The batch is recorded (``broker.batches``) for as long as it runs, so
        that if this process dies, beat re-queues the jobs it had not started.
        A worker asked to shut down stops between jobs and leaves the rest to
        beat in the same way, rather than holding the shutdown for all of them.
        """
        worker = self.name()
        self._batches.open(batch_id, [job["job_id"] for job in jobs], worker)
        lease = keys.batch_lease(batch_id)
        self._hold(lease, worker)
        outcomes: dict[str, int] = {}
        try:
            for job in jobs:
                if self._draining.is_set():
                    log.info("shutting down: batch %s's unstarted jobs go back to beat", batch_id)
                    self._batches.abandon(batch_id)
                    return outcomes
                outcome = self.run(job["job_id"], service_id, job["parameters"], job["attempt"])
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            self._batches.close(batch_id)
            return outcomes
        finally:
            self._release(lease)

    def _execute(
        self,
        served: ServedService,
        job: uuid.UUID,
        parameters: dict[str, Any],
        attempt: int,
        worker: str,
    ) -> StateMessage:
        service = served.descriptor.id

        def outcome(status: Status, **fields: Any) -> StateMessage:
            return StateMessage(
                "status", service, job, status.value, attempt=attempt, worker=worker, **fields
            )

        token = reporting_to(self._progress_reporter(service, job))
        try:
            results = served.handler(parameters)
        except Exception as error:  # the handler's failure is the job's outcome
            log.info("job %s raised %s", job, error, exc_info=True)
            return outcome(Status.ERROR, detail=f"{type(error).__name__}: {error}")
        finally:
            stop_reporting(token)
        try:
            served.contract.validate(results, source="results")
        except DeserializationError as violation:
            return outcome(Status.ERROR, detail=f"invalid results: {violation.detail}")
        return outcome(Status.COMPLETED, results=results)

    def _progress_reporter(self, service: uuid.UUID, job: uuid.UUID) -> Any:
        last_sent = 0.0

        def report(fraction: float, message: str | None) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if fraction < 1.0 and now - last_sent < PROGRESS_INTERVAL:
                return
            last_sent = now
            entry = StateMessage("progress", service, job, progress=fraction, message=message)
            self._client.xadd(keys.STATE_STREAM, entry.to_fields())  # type: ignore[arg-type]

        return report

    # -- leases and check-ins ----------------------------------------------

    def _hold(self, lease: str, worker: str) -> None:
        with self._leases_lock:
            self._leases[lease] = worker
        self._ensure_thread("leases", self._keep_leases)

    def _release(self, lease: str) -> None:
        with self._leases_lock:
            self._leases.pop(lease, None)

    def _keep_leases(self) -> None:
        interval = self.settings.lease_seconds / 3
        while not self._stop.wait(interval):
            with self._leases_lock:
                held = dict(self._leases)
            try:
                self._claims.renew(held)
            except redis.RedisError:
                log.warning("could not renew leases; retrying", exc_info=True)

    def check_in(self, available: bool = True) -> None:
        """Tell the mirror every served service is alive (and available or not)."""
        pipeline = self._client.pipeline(transaction=False)
        for service in self.services:
            entry = StateMessage("checkin", service, available=available, worker=self.name())
            pipeline.xadd(keys.STATE_STREAM, entry.to_fields())  # type: ignore[arg-type]
        pipeline.execute()

    @property
    def check_in_interval(self) -> float:
        """A third of the shortest timeout: a live worker never times out."""
        timeouts = [served.descriptor.timeout for served in self.services.values()]
        return max(0.05, min(timeouts, default=30.0) / 3)

    def _keep_checking_in(self) -> None:
        while not self._stop.wait(self.check_in_interval):
            try:
                self.check_in(available=True)
            except redis.RedisError:
                log.warning("check-in failed; retrying", exc_info=True)

    def start(self) -> None:
        """Mark the services available and start checking in."""
        self.check_in(available=True)
        self._ensure_thread("check-ins", self._keep_checking_in)

    def drain(self) -> None:
        """Shutdown has begun: finish the jobs running, start no more of a batch's."""
        self._draining.set()

    def stop(self, clean: bool = True) -> None:
        """Stop background work; on a clean shutdown, mark the services unavailable."""
        self._stop.set()
        if clean:
            try:
                self.check_in(available=False)
            except redis.RedisError:
                log.warning("could not mark services unavailable", exc_info=True)

    def _ensure_thread(self, name: str, target: Any) -> None:
        # Keyed by pid too: a prefork child inherits the dict but not the threads.
        key = f"{name}:{os.getpid()}"
        thread = self._threads.get(key)
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=target, name=f"topchef-{name}", daemon=True)
            self._threads[key] = thread
            thread.start()


_runtime: WorkerRuntime | None = None


def install(runtime: WorkerRuntime) -> WorkerRuntime:
    """Make ``runtime`` the one this process's job tasks run on."""
    global _runtime
    _runtime = runtime
    return runtime


def current_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError(
            "no worker runtime installed: start workers with `topchef worker MODULE`"
        )
    return _runtime
