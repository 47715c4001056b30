"""The lab worker: runs handlers for the services it serves, and says it is alive.

Lab code needs two names from here — ``handles`` and ``progress`` — and the
``topchef worker MODULE`` command does the rest. A worker knows only the
message broker: services are resolved through the directory in Redis, every
state change goes back on the state stream, and claims (``broker.messaging.claims``)
make sure a job runs once however often its message is delivered, and only if a
producer registered it with exactly those parameters.

A worker may start before its services exist, or before beat has written them
to the directory: it waits for them and starts serving each as it appears
(``WorkerRuntime.discover``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from broker import actors
from broker.artifacts import store_for
from broker.errors import DeserializationError
from broker.messaging import keys, priorities
from broker.messaging.batches import Batches
from broker.messaging.claims import ClaimResult, Claims, Finish, RunEnd
from broker.messaging.connections import redis_client, text
from broker.messaging.messages import (
    SIGNATURE,
    SIGNED_BATCH,
    ServiceDescriptor,
    StateMessage,
    parameters_digest,
)
from broker.messaging.presence import ARRIVE, LEAVE, Presence
from broker.models.interfaces.job import Job
from broker.settings import Settings
from broker.trust import credentials
from broker.trust.registrations import RegistrationCheck
from broker.worker import provenance, runs
from broker.worker.controls import (
    RunAbortWatch,
    aborted_signal,
    unheeded_abort,
)
from broker.worker.handlers import (
    Aborted,
    Declaration,
    handles,
    progress,
)
from broker.worker.outcomes import RETRYING, UNSTARTED, Outcome
from broker.worker.parking import Parker
from broker.worker.progress_reports import Send, ThrottledProgress
from broker.worker.registrations import Proof, Registrations
from broker.worker.running import HeldRun, RunningJobs
from broker.worker.runs import ServedService

__all__ = [
    "Refused",
    "ServedService",
    "WorkerRuntime",
    "current_runtime",
    "handles",
    "install",
    "progress",
]

log = logging.getLogger(__name__)
Status = Job.JobStatus

#: How often a worker looks in the directory for services it waits for.
DISCOVERY_INTERVAL = 1.0
#: A run's report waits this long for Redis at first, doubling up to the most.
REPORT_RETRY_FIRST = 0.1
REPORT_RETRY_MOST = 5.0
#: Refused deliveries kept in ``keys.REFUSED_LOG`` for an operator (approximately).
REFUSED_LOG_LENGTH = 1000
#: A worker's presence on its services lapses after this many check-ins missed.
PRESENCE_CHECK_INS = 3


class Refused(Exception):
    """A delivery that is not registered work; it did not run and changed nothing.

    A control-flow signal between the runtime and its Celery task, outside the
    ``TopChefError`` tree: the task turns it into Celery's ``Reject``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Fields:
    """A job message's fields, read: what its signature is checked over."""

    job: uuid.UUID
    service: uuid.UUID
    parameters: dict[str, Any]
    attempt: int
    priority: int
    #: The digest of ``parameters``, exactly as handed over.
    digest: str


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A job message read and checked: what its claim and its run need."""

    served: ServedService
    job: uuid.UUID
    attempt: int
    priority: int
    parameters: dict[str, Any]
    worker: str
    #: The provenance digest of what runs the job here.
    run: str
    working: StateMessage
    digest: str
    #: Its signature, carried on in its message should it park.
    proof: Proof

    @property
    def claim_args(self) -> tuple[uuid.UUID, int, str, StateMessage, str]:
        """``Claims.claim``'s positional arguments for this delivery."""
        return self.job, self.attempt, self.worker, self.working, self.digest


class WorkerRuntime:
    """Runs claimed jobs and keeps this worker's check-ins and leases alive."""

    def __init__(self, settings: Settings, declarations: Iterable[Declaration]) -> None:
        self.settings = settings
        self._declared = {declaration.service_name: declaration for declaration in declarations}
        self._services: dict[uuid.UUID, ServedService] = {}
        self._services_lock = threading.Lock()
        # No keys, no worker: one line says what to set, before anything starts.
        check = RegistrationCheck.from_setting(settings.registration_public_key)
        #: Signs every report and check-in.
        self.credential = credentials.for_worker(settings.worker_key)
        self._client = redis_client(settings.broker_url)
        self._registrations = Registrations(self._client, check)
        self._claims = Claims.configured(self._client, settings, self.credential)
        #: Where results too large for a report go (none configured: they are refused).
        self.artifacts = store_for(settings.artifacts_url) if settings.artifacts_url else None
        self._batches = Batches(self._client, settings.lease_seconds)
        self._presence = Presence(self._client)
        self._parker = Parker()
        self._running = RunningJobs()
        #: Lease key → holder, for every job and batch this process is running.
        self._leases: dict[str, str] = {}
        self._leases_lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        #: (pid, module) → the digest of the provenance this process has reported.
        self._provenances: dict[tuple[int, str], str] = {}

    @property
    def services(self) -> dict[uuid.UUID, ServedService]:
        """The services found so far (a copy)."""
        with self._services_lock:
            return dict(self._services)

    @property
    def queues(self) -> list[str]:
        return [served.descriptor.queue for served in self.services.values()]

    @property
    def missing(self) -> list[str]:
        """Declared services not found in the directory yet."""
        found = {served.descriptor.name for served in self.services.values()}
        return sorted(name for name in self._declared if name not in found)

    @staticmethod
    def name() -> str:
        """This process, as the jobs it runs record it."""
        return actors.machine()

    # -- finding services ---------------------------------------------------

    def discover(self) -> list[ServedService]:
        """Look up the declared services not found yet; return those that now exist."""
        missing = self.missing
        if not missing:
            return []
        ids = self._client.hmget(keys.SERVICE_IDS, missing)
        found = [(name, text(sid)) for name, sid in zip(missing, ids, strict=True) if sid]
        if not found:
            return []
        raw = self._client.hmget(keys.SERVICE_DESCRIPTORS, [sid for _, sid in found])
        new = []
        for (name, _sid), descriptor_json in zip(found, raw, strict=True):
            if descriptor_json is None:
                continue
            descriptor = ServiceDescriptor.from_json(descriptor_json)
            new.append(self._serve(descriptor, self._declared[name]))
        return new

    def wait_for_services(
        self, stop: threading.Event, interval: float = DISCOVERY_INTERVAL
    ) -> bool:
        """Block until at least one declared service exists; False if ``stop`` came first.

        Says once what it waits for: a lab PC may boot before the one that
        creates its services, and Celery users expect a worker to wait.
        """
        self.discover()
        if self.services:
            return True
        log.warning(
            "waiting for the service%s %s to be created (looking every %.0f s)",
            "s" if len(self.missing) > 1 else "",
            ", ".join(repr(name) for name in self.missing),
            interval,
        )
        while not stop.wait(interval):
            if self._discover_quietly():
                return True
        return False

    def watch_directory(
        self, on_found: Callable[[ServedService], None], interval: float = DISCOVERY_INTERVAL
    ) -> None:
        """In the background, serve each missing service as soon as it appears."""
        if not self.missing:
            return

        def watch() -> None:
            log.warning("still waiting for %s", ", ".join(repr(name) for name in self.missing))
            while self.missing and not self._stop.wait(interval):
                for served in self._discover_quietly():
                    log.warning("service %r appeared: serving it", served.descriptor.name)
                    on_found(served)

        self._ensure_thread("directory", watch)

    def _discover_quietly(self) -> list[ServedService]:
        try:
            return self.discover()
        except redis.RedisError as error:
            log.warning(
                "cannot read the service directory (%s); retrying", error, exc_info=_unusual(error)
            )
            return []

    def _serve(self, descriptor: ServiceDescriptor, declaration: Declaration) -> ServedService:
        served = runs.serving(descriptor, declaration, self.artifacts)
        with self._services_lock:
            self._services[descriptor.id] = served
        return served

    def _served_for(self, service_id: uuid.UUID) -> ServedService | None:
        """The service a delivery names, if this worker serves it.

        A prefork child was forked before services found later were added in
        its parent, so it looks them up in the directory itself.
        """
        served = self.services.get(service_id)
        if served is not None:
            return served
        raw = self._client.hget(keys.SERVICE_DESCRIPTORS, str(service_id))
        if raw is None:
            return None
        descriptor = ServiceDescriptor.from_json(raw)
        declaration = self._declared.get(descriptor.name)
        return None if declaration is None else self._serve(descriptor, declaration)

    # -- running jobs -------------------------------------------------------

    def run(
        self,
        /,
        job_id: object = None,
        service_id: object = None,
        parameters: object = None,
        attempt: object = 1,
        priority: object = priorities.DEFAULT,
        **fields: Any,
    ) -> Outcome:
        """Run one delivery of a job, if it is registered work and wins the claim.

        Returns what happened (the run's status and detail, or the claim state
        that kept it from running: cancelled, or a duplicate); raises
        ``Refused`` for a delivery that is not registered work: first of all,
        one whose signature does not register exactly these parameters.
        """
        read = self._fields(job_id, service_id, parameters, attempt, priority)
        proof = self._registrations.single(
            read.service, read.job, read.digest, fields.get(SIGNATURE), fields.get(SIGNED_BATCH)
        )
        if proof is None:
            raise self.refuse("forged", read.job, _forged(fields.get(SIGNATURE)))
        delivery = self._delivery(read, proof)
        claimed = self._claims.claim(*delivery.claim_args)
        if (skipped := self._take(delivery, claimed)) is not None:
            return skipped
        return self._end(delivery, self._execute_held(delivery))

    def _fields(
        self,
        job_id: object,
        service_id: object,
        parameters: object,
        attempt: object,
        priority: object,
    ) -> _Fields:
        """A job message's fields, read; ``Refused`` (malformed) if they cannot be."""
        try:
            return _read(job_id, service_id, parameters, attempt, priority)
        except (TypeError, ValueError, RecursionError, DeserializationError) as error:
            raise self.refuse("malformed", None, f"unreadable job message: {error}") from None

    def _delivery(self, read: _Fields, proof: Proof) -> _Delivery:
        """A signed delivery, checked against its service's contract."""
        job, service, parameters, attempt = read.job, read.service, read.parameters, read.attempt
        served = self._served_for(service)
        if served is None:
            raise self.refuse("misrouted", job, f"this worker does not serve service {service}")
        try:
            served.parameters.validate(parameters, source="parameters")
        except DeserializationError as violation:
            raise self.refuse("invalid", job, f"invalid parameters: {violation}") from None
        worker = self.name()
        run = self._provenance(served)
        working = StateMessage(
            "status",
            service,
            job,
            status=Status.WORKING.value,
            attempt=attempt,
            worker=worker,
            provenance=run,
        )
        return _Delivery(
            served,
            job,
            attempt,
            read.priority,
            parameters,
            worker,
            run,
            working,
            read.digest,
            proof,
        )

    def _take(self, delivery: _Delivery, claimed: ClaimResult) -> Outcome | None:
        """None if the delivery won its claim; else why it does not run (parked, a duplicate).

        Raises ``Refused`` for a delivery whose claim says it is not registered work.
        """
        if claimed is ClaimResult.MUST_PARK:
            served, job = delivery.served, delivery.job
            self._registrations.keep(delivery.proof)  # a batch's, for its job to verify later
            parking = self._parker.parking(
                served.descriptor,
                job,
                delivery.parameters,
                delivery.attempt,
                delivery.priority,
                delivery.proof.signed,
            )
            claimed = self._claims.claim(*delivery.claim_args, parking=parking)
        if claimed.refused:
            raise self.refuse(claimed.value, delivery.job, _REFUSAL_DETAIL[claimed])
        if claimed is not ClaimResult.CLAIMED:
            log.info(
                "not running job %s (attempt %d): it is %s",
                delivery.job,
                delivery.attempt,
                claimed.value,
            )
            return Outcome(str(delivery.job), str(claimed.value))
        return None

    def _execute_held(self, delivery: _Delivery) -> StateMessage:
        """Run a claimed delivery's handler while this worker renews the job's lease."""
        lease = keys.lease(delivery.job)
        self._hold(lease, delivery.worker)
        watch = RunAbortWatch(self._claims, delivery.job)
        if self._running.start(HeldRun(delivery.job, delivery.served.descriptor, watch)):
            self._ask_abort(delivery.job, self._running.aborting or "")
        progress = ThrottledProgress(
            self._progress_sender(delivery.served.descriptor.id, delivery.job, delivery.attempt)
        )
        try:
            return runs.execute(
                delivery.served,
                delivery.job,
                delivery.parameters,
                delivery.attempt,
                delivery.worker,
                delivery.run,
                watch,
                progress,
            )
        finally:
            progress.flush()  # ahead of the outcome on the stream
            self._running.returned(delivery.job)
            self._release(lease)

    def _reported(self, delivery: _Delivery, final: StateMessage, landed: Finish) -> Outcome:
        """A reported run's outcome, as its Celery task ends."""
        self._running.reported(delivery.job)
        if not landed.on_time:
            log.warning(
                "job %s (attempt %d) finished after beat presumed its worker lost (%s); "
                "its outcome is reported all the same",
                delivery.job,
                delivery.attempt,
                landed.lateness,
            )
        if final.kind == "retry" and landed.on_time:
            return Outcome(str(delivery.job), RETRYING, final.detail)
        return Outcome(str(delivery.job), final.status or "", final.detail, final.results)

    def _provenance(self, served: ServedService) -> str:
        """The digest of what runs ``served``'s jobs in this process, reported once.

        The record goes on the state stream before this process's first claim
        of the module's jobs, so the mirror stores it before (or with) the
        reports that name it; every later report carries only the digest.
        """
        key = (os.getpid(), served.module)
        digest = self._provenances.get(key)
        if digest is None:
            record = provenance.of_module(served.module)
            digest = record.digest
            entry = StateMessage(
                "provenance", served.descriptor.id, worker=record.worker, extra=record.as_dict()
            )
            self._client.xadd(keys.STATE_STREAM, self._signed(entry))
            self._provenances[key] = digest
        return digest

    def _report(self, job: uuid.UUID, attempt: int, final: StateMessage) -> Finish:
        """Report a run's outcome, however long Redis takes to come back.

        The run has happened: its outcome is what a lab measured, so a broker
        outage must delay the report, never lose it. Meanwhile the lease may
        lapse; the report then lands late, and is recorded all the same. A
        retry whose claim this attempt no longer holds (beat presumed the
        worker lost meanwhile) is reported as the ERROR it was instead.
        """
        delay = REPORT_RETRY_FIRST
        unheeded = _asks_for_unheeded_abort(final)
        while True:
            try:
                if final.kind == "retry":
                    state = self._claims.retry(job, attempt, final)
                    if state == RETRYING:
                        return Finish("")
                    final = dataclasses.replace(
                        final,
                        kind="status",
                        status=Status.ERROR.value,
                        detail=f"{final.detail}; not retried: the job's claim is {state}",
                        extra={},
                    )
                landed = self._claims.finish(job, attempt, final, unless_aborted=unheeded)
                if landed.abort is None:
                    return landed
                final, unheeded = unheeded_abort(final, aborted_signal(landed.abort)), False
            except redis.RedisError as error:
                log.warning("cannot report job %s yet (%s); retrying in %.1f s", job, error, delay)
                time.sleep(delay)  # waiting for Redis to come back, not for another thread
                delay = min(REPORT_RETRY_MOST, delay * 2)

    def _signed(self, entry: StateMessage) -> Any:
        """``entry``'s stream fields, with this worker's credential's MAC (``broker.trust``)."""
        return self.credential.fields(entry.to_fields()["m"])

    def refuse(self, reason: str, job: uuid.UUID | None, detail: str) -> Refused:
        """Log and count a refused delivery once; the caller raises what this returns."""
        log.warning("refused a delivery of job %s (%s): %s", job, reason, detail)
        try:
            pipeline = self._client.pipeline(transaction=False)
            pipeline.hincrby(keys.REFUSED, reason, 1)
            entry = {"reason": reason, "job_id": str(job), "worker": self.name(), "detail": detail}
            pipeline.xadd(keys.REFUSED_LOG, entry, maxlen=REFUSED_LOG_LENGTH, approximate=True)  # type: ignore[arg-type]
            pipeline.execute()
        except redis.RedisError:
            log.warning("could not count the refused delivery", exc_info=True)
        return Refused(reason, detail)

    def run_batch(
        self,
        batch_id: str,
        service_id: str,
        jobs: list[dict[str, Any]],
        signature: object = None,
        **_ignored: Any,
    ) -> list[Outcome]:
        """Run a batch's jobs one after another; return how each ended, in order.

        Nothing of the batch runs unless its signature registers every job it
        carries, with exactly those parameters (one check for the message):
        else each job's outcome is ``refused:forged`` (or ``refused:malformed``
        for a message that cannot be read), counted once for the message.
        The batch is recorded (``broker.messaging.batches``) for as long as it runs, so
        that if this process dies, beat re-queues the jobs it had not started.
        A worker asked to shut down stops between jobs and leaves the rest to
        beat in the same way, rather than holding the shutdown for all of them.
        A job of the batch that is refused (not registered work) is skipped, its
        outcome ``refused:<reason>``; one left to beat is ``unstarted``.
        """
        worker = self.name()
        job_ids = [str(job.get("job_id")) for job in jobs if isinstance(job, dict)]
        checked = self._signed_batch(batch_id, service_id, jobs, signature)
        if isinstance(checked, list):
            return checked  # refused: nothing of it ran
        reads, proof = checked
        self._batches.open(batch_id, job_ids, worker)
        lease = keys.batch_lease(batch_id)
        self._hold(lease, worker)
        outcomes: list[Outcome] = []
        # A run whose report waits for the next job's claim, to go with it.
        ended: tuple[_Delivery, StateMessage] | None = None
        try:
            for index, read in enumerate(reads):
                if self._draining.is_set():
                    log.info("shutting down: batch %s's unstarted jobs go back to beat", batch_id)
                    outcomes += self._report_ended(ended)
                    ended = None
                    self._batches.abandon(batch_id)
                    return outcomes + [Outcome(job_id, UNSTARTED) for job_id in job_ids[index:]]
                try:
                    delivery = self._delivery(read, proof)
                    if ended is None:
                        claimed = self._claims.claim(*delivery.claim_args)
                    else:
                        claimed, reported = self._finish_then_claim(ended, delivery)
                        ended = None
                        outcomes.append(reported)
                    if (skipped := self._take(delivery, claimed)) is not None:
                        outcomes.append(skipped)
                        continue
                except Refused as refusal:
                    outcomes += self._report_ended(ended)
                    ended = None
                    outcomes.append(Outcome(job_ids[index], f"refused:{refusal.reason}"))
                    continue
                final = self._execute_held(delivery)
                if final.kind == "retry":  # retry.lua, not finish.lua, ends it: alone
                    outcomes.append(self._end(delivery, final))
                else:
                    ended = delivery, final
            outcomes += self._report_ended(ended)
            ended = None
            self._batches.close(batch_id)
            return outcomes
        finally:
            # Whatever stops the batch, a run that happened is reported.
            self._report_ended(ended)
            self._release(lease)

    def _signed_batch(
        self, batch_id: str, service_id: str, jobs: list[dict[str, Any]], signature: object
    ) -> tuple[list[_Fields], Proof] | list[Outcome]:
        """A batch's jobs, read, and its proof; or, refused, each job's outcome."""
        job_ids = [str(job.get("job_id")) for job in jobs]
        try:
            reads = [
                _read(
                    job.get("job_id"),
                    service_id,
                    job.get("parameters"),
                    job.get("attempt", 1),
                    job.get("priority", priorities.DEFAULT),
                )
                for job in jobs
            ]
        except (TypeError, ValueError, RecursionError, DeserializationError) as error:
            self.refuse("malformed", None, f"unreadable batch {batch_id[:100]!r}: {error}")
            return [Outcome(job_id, "refused:malformed") for job_id in job_ids]
        service = reads[0].service if reads else uuid.UUID(int=0)
        proof = self._registrations.batch(
            batch_id, service, [(read.job, read.digest) for read in reads], signature
        )
        if proof is None:
            detail = f"batch {batch_id[:100]!r} of {len(reads)} job(s): {_forged(signature)}"
            self.refuse("forged", None, detail)
            return [Outcome(job_id, "refused:forged") for job_id in job_ids]
        return reads, proof

    def _finish_then_claim(
        self, ended: tuple[_Delivery, StateMessage], delivery: _Delivery
    ) -> tuple[ClaimResult, Outcome]:
        """Report a batch's last run and claim its next job in one round trip.

        Should the round trip fail, which of the two landed is unknown: the
        caller reports the run again (``_report`` waits for Redis) and the
        claim fails as a lone claim would. A run that finds an abort it never
        learnt of is reported alone, the way ``_report`` says so, and the claim follows.
        """
        previous, final = ended
        end = RunEnd(previous.job, previous.attempt, final, _asks_for_unheeded_abort(final))
        landed, claimed = self._claims.finish_then_claim(end, *delivery.claim_args)
        if claimed is None:
            landed = self._report(previous.job, previous.attempt, final)
            claimed = self._claims.claim(*delivery.claim_args)
        return claimed, self._reported(previous, final, landed)

    def _report_ended(self, ended: tuple[_Delivery, StateMessage] | None) -> list[Outcome]:
        """Report a run whose report waited for a next claim that will not come."""
        return [] if ended is None else [self._end(*ended)]

    def _end(self, delivery: _Delivery, final: StateMessage) -> Outcome:
        """Report a run's outcome on its own (``_report``); return it as its task ends."""
        return self._reported(delivery, final, self._report(delivery.job, delivery.attempt, final))

    def _progress_sender(self, service: uuid.UUID, job: uuid.UUID, attempt: int) -> Send:
        def send(fraction: float, message: str | None) -> None:
            # The attempt too: only the holder of the job's attempt may report on it.
            entry = StateMessage(
                "progress", service, job, progress=fraction, message=message, attempt=attempt
            )
            try:
                self._client.xadd(keys.STATE_STREAM, self._signed(entry))
            except redis.RedisError as error:  # progress is a courtesy: never fail the run for it
                log.warning("could not report job %s's progress: %s", job, error)

        return send

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
            except redis.RedisError as error:
                log.warning("cannot renew leases (%s); retrying", error, exc_info=_unusual(error))

    def check_in(self, available: bool = True) -> None:
        """Tell the mirror every served service is alive; ``available=False``: this worker leaves.

        This worker's presence (``broker.messaging.presence``) changes first, in
        the same round trip: the mirror, reading a leave, then finds only the
        workers that remain, and keeps the service available if any does.
        """
        services = list(self.services)
        worker = self.name()
        pipeline = self._client.pipeline(transaction=False)
        if available:
            self._presence.queue(pipeline, worker, ARRIVE, services, self.presence_seconds)
        else:
            self._presence.queue(pipeline, worker, LEAVE, services)
        for service in services:
            entry = StateMessage("checkin", service, available=available, worker=worker)
            pipeline.xadd(keys.STATE_STREAM, self._signed(entry))
        pipeline.execute()

    @property
    def presence_seconds(self) -> float:
        """How long a check-in keeps this worker present: a few check-in intervals."""
        return PRESENCE_CHECK_INS * self.check_in_interval

    @property
    def check_in_interval(self) -> float:
        """A third of the shortest timeout: a live worker never times out."""
        timeouts = [served.descriptor.timeout for served in self.services.values()]
        return max(0.05, min(timeouts, default=30.0) / 3)

    def _keep_checking_in(self) -> None:
        while not self._stop.wait(self.check_in_interval):
            try:
                self.check_in(available=True)
            except redis.RedisError as error:
                log.warning("check-in failed (%s); retrying", error, exc_info=_unusual(error))

    def start(self) -> None:
        """Mark the services available and start checking in."""
        self.check_in(available=True)
        self._ensure_thread("check-ins", self._keep_checking_in)

    def drain(self) -> None:
        """Shutdown has begun: finish the jobs running, start no more of a batch's."""
        self._draining.set()

    def abort_running(self, reason: str, grace: float) -> list[HeldRun]:
        """A shutdown's abort of every run here; the runs that had not ended when it gave up.

        Each is aborted as a user would abort it (``Claims.abort``), by this
        worker, for ``reason``, so that it ends CANCELLED the same way
        (``RunningJobs.abort_all`` says how long each step waits). No batch
        starts another job.
        """
        self._draining.set()
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return self._running.abort_all(
            Aborted(reason, self.name(), now), lambda job: self._ask_abort(job, reason), grace
        )

    def _ask_abort(self, job: uuid.UUID, reason: str) -> None:
        try:
            asked, _at = self._claims.abort(job, reason, self.name())
        except redis.RedisError as error:  # its callbacks still run (``RunningJobs.abort_all``)
            log.warning("could not record the abort of job %s: %s", job, error)
            return
        if asked not in ("requested", "already"):
            log.info("job %s was not aborted: its claim is %s", job, asked)

    def stop(self, clean: bool = True) -> None:
        """Stop background work; on a clean shutdown, withdraw this worker's presence."""
        self._stop.set()
        if clean:
            try:
                self.check_in(available=False)
            except redis.RedisError as error:
                log.warning(
                    "could not withdraw this worker from its services (%s)",
                    error,
                    exc_info=_unusual(error),
                )

    def _ensure_thread(self, name: str, target: Any) -> None:
        # Keyed by pid too: a prefork child inherits the dict but not the threads.
        key = f"{name}:{os.getpid()}"
        thread = self._threads.get(key)
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=target, name=f"topchef-{name}", daemon=True)
            self._threads[key] = thread
            thread.start()


def _asks_for_unheeded_abort(final: StateMessage) -> bool:
    """Whether a run's report asks for an abort its handler never learnt of.

    An ERROR or COMPLETED run never learnt of one (one it learnt of ends it
    CANCELLED): its report asks, to say the abort went unheeded.
    """
    return final.kind == "status" and final.status != Status.CANCELLED.value


def _read(
    job_id: object, service_id: object, parameters: object, attempt: object, priority: object
) -> _Fields:
    """A job message's fields, read and their digest taken; raises what it cannot read."""
    job, service = uuid.UUID(str(job_id)), uuid.UUID(str(service_id))
    if not isinstance(parameters, dict):
        raise ValueError("parameters must be an object")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ValueError(f"attempt must be a positive integer, got {attempt!r}")
    rank = priorities.check(priority)
    return _Fields(job, service, parameters, attempt, rank, parameters_digest(parameters))


def _forged(signature: object) -> str:
    """Why a delivery's signature does not register it, for the refusal's log."""
    if signature is None:
        return "it carries no signature of the core"
    return "its signature is not the core's over this job, service and parameters"


_REFUSAL_DETAIL: Mapping[ClaimResult, str] = {
    ClaimResult.UNREGISTERED: "no producer registered this job",
    ClaimResult.MISROUTED: "the job belongs to another service",
    ClaimResult.ALTERED: "its parameters differ from those registered",
}


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


def _unusual(error: redis.RedisError) -> bool:
    """Whether an error deserves its traceback: a broker out of reach is said in one line."""
    return not isinstance(error, redis.ConnectionError | redis.TimeoutError)
