"""What crosses the message broker, as frozen dataclasses with a JSON wire form.

Job messages flow out to workers (Celery task kwargs); service descriptors tell
workers what they need of a service without a database; state messages flow
back to the mirror on a Redis stream.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from broker.messaging import keys, priorities


def parameters_digest(parameters: object) -> str:
    """A fingerprint of a job's parameters, the same wherever they are computed.

    The publisher records it with the job's registration and signs it
    (``broker.trust.registrations``); the worker computes it over the
    parameters a delivery carries, so a message altered on the way (or forged
    with a registered job's id) is refused. Keys are sorted and the text is
    ASCII, so the same JSON value always gives the same digest, whichever
    process parsed it. 256 bits: a signature covers it, so no two parameter
    sets may be found that share it.
    """
    text = json.dumps(parameters, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


@dataclass(frozen=True, slots=True)
class Signed:
    """What proves a job message's registration (``broker.trust.registrations``).

    ``signature`` is the core's over the message's own jobs; a job parked out
    of a batch carries the batch's, and the batch's id (``batch``), under
    which the worker that parked it stored the batch's registration
    (``keys.signed_batch``).
    """

    signature: str
    batch: str = ""

    def as_kwargs(self) -> dict[str, str]:
        kwargs = {SIGNATURE: self.signature}
        if self.batch:
            kwargs[SIGNED_BATCH] = self.batch
        return kwargs


#: The task keyword arguments that carry a message's ``Signed``.
SIGNATURE = "signature"
SIGNED_BATCH = "signed_batch"


def requeues_lost_work(worker_loss_policy: str) -> bool:
    """Whether a service's policy runs a job again after its worker was lost (else: ERROR)."""
    return worker_loss_policy == "requeue"


@dataclass(frozen=True, slots=True)
class JobMessage:
    """One job, as its service's worker receives it."""

    job_id: uuid.UUID
    service_id: uuid.UUID
    service_name: str
    parameters: dict[str, Any]
    requeue: bool = False
    attempt: int = 1
    #: How many jobs of a submission may share one Celery message (see ``JobBatch``).
    per_message: int = 1
    #: Higher starts first (``broker.messaging.priorities``).
    priority: int = priorities.DEFAULT

    @property
    def task_name(self) -> str:
        return keys.REQUEUE_JOB_TASK if self.requeue else keys.JOB_TASK

    @property
    def queue(self) -> str:
        return keys.service_queue(self.service_id)

    def task_kwargs(self, signed: Signed | None = None) -> dict[str, Any]:
        """The Celery task's keyword arguments (JSON-serialisable), with their proof."""
        kwargs = {
            "job_id": str(self.job_id),
            "service_id": str(self.service_id),
            "service_name": self.service_name,
            "parameters": self.parameters,
            "attempt": self.attempt,
            # The message's priority is kombu's; a worker that must park the
            # job (``broker.worker.parking``) sends it again with this one.
            "priority": self.priority,
        }
        if signed is not None:
            kwargs |= signed.as_kwargs()
        return kwargs


@dataclass(frozen=True, slots=True)
class JobBatch:
    """Several jobs of one service in one Celery message, run one after another.

    A Celery worker spends about a millisecond of CPU on each message it
    receives, whatever the job; a sweep of short simulation points pays that
    once per batch instead of once per point. Each job is still claimed, run
    and reported on its own, so cancelling one, or losing the worker midway,
    affects that job alone (``broker.messaging.batches`` hands an abandoned batch's
    unstarted jobs back to the queue).
    """

    batch_id: str
    jobs: tuple[JobMessage, ...]

    @property
    def first(self) -> JobMessage:
        return self.jobs[0]

    @property
    def queue(self) -> str:
        return self.first.queue

    @property
    def priority(self) -> int:
        return self.first.priority

    def task_kwargs(self, signed: Signed | None = None) -> dict[str, Any]:
        """The batch task's keyword arguments (JSON-serialisable), with their proof."""
        kwargs = {
            "batch_id": self.batch_id,
            "service_id": str(self.first.service_id),
            "service_name": self.first.service_name,
            "jobs": [
                {
                    "job_id": str(job.job_id),
                    "parameters": job.parameters,
                    "attempt": job.attempt,
                    "priority": job.priority,
                }
                for job in self.jobs
            ],
        }
        if signed is not None:
            kwargs |= signed.as_kwargs()
        return kwargs


def batched(messages: Sequence[JobMessage]) -> Iterator[JobMessage | JobBatch]:
    """The Celery messages that carry ``messages``, in order.

    Consecutive jobs of one queue, attempt and priority whose ``per_message``
    allows it share a batch of at most that many jobs; every other job travels
    alone.
    """
    run: list[JobMessage] = []
    for message in messages:
        if run and (
            len(run) >= run[0].per_message
            or (message.queue, message.attempt, message.per_message, message.priority)
            != (run[0].queue, run[0].attempt, run[0].per_message, run[0].priority)
        ):
            yield from _flush(run)
            run = []
        run.append(message)
    yield from _flush(run)


def _flush(run: list[JobMessage]) -> Iterator[JobMessage | JobBatch]:
    if len(run) == 1:
        yield run[0]
    elif run:
        yield JobBatch(str(uuid.uuid4()), tuple(run))


@dataclass(frozen=True, slots=True)
class ServiceDescriptor:
    """What a lab worker must know of a service, delivered through Redis."""

    id: uuid.UUID
    name: str
    job_result_schema: dict[str, Any]
    timeout: float
    worker_loss_policy: str = "fail"
    max_attempts: int = 3
    #: Lets a worker check a delivery's parameters itself, as a second line
    #: behind the registration check (``broker.messaging.claims``).
    job_registration_schema: dict[str, Any] = field(default_factory=dict)
    #: The service's opt-in to retries (``broker.worker.Retry``), the exception
    #: type names that ask for one, and the first retry's wait when none is named.
    retries: bool = False
    retry_on: list[str] = field(default_factory=list)
    retry_backoff: float = 1.0
    #: No job of the service starts while it is held (its claims park them).
    held: bool = False
    #: At most this many of its jobs run at once (None: no limit).
    max_running: int | None = None

    @property
    def queue(self) -> str:
        return keys.service_queue(self.id)

    def to_json(self) -> str:
        # Not ``asdict``: it deep-copies both schemas, for beat's every publish.
        data = {name: getattr(self, name) for name in _DESCRIPTOR_FIELDS}
        data["id"] = str(self.id)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ServiceDescriptor:
        data = json.loads(text)
        data["id"] = uuid.UUID(data["id"])
        return cls(**data)


_DESCRIPTOR_FIELDS = [field.name for field in fields(ServiceDescriptor)]


@dataclass(frozen=True, slots=True)
class StateMessage:
    """A state change reported by a worker (or a check-in), bound for the mirror.

    ``kind`` is ``"status"`` (``status`` plus ``results``/``detail``),
    ``"progress"``, ``"release"`` (the claim's holder gave the job back before
    running it), ``"retry"`` (the run asked for another attempt, ``extra["after"]``
    seconds later, and ``detail`` says why), ``"checkin"`` (``available`` says
    whether the worker is starting/running or shutting down) or ``"provenance"``
    (``extra`` is what runs the jobs whose reports name its digest in
    ``provenance``: ``broker.messaging.provenance``).
    """

    kind: str
    service_id: uuid.UUID
    job_id: uuid.UUID | None = None
    status: str | None = None
    results: dict[str, Any] | None = None
    detail: str | None = None
    progress: float | None = None
    message: str | None = None
    attempt: int = 1
    worker: str | None = None
    available: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The digest of the run's provenance, on a worker's status reports.
    provenance: str | None = None

    def to_fields(self) -> dict[str, str]:
        """The stream entry: one JSON field, so the mirror parses one thing.

        Built field by field rather than with ``dataclasses.asdict``, whose deep
        copy of the results cost more than the rest of a no-op job's report.
        """
        data: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if not self.extra:
            del data["extra"]
        data["service_id"] = str(self.service_id)
        if self.job_id is not None:
            data["job_id"] = str(self.job_id)
        return {"m": json.dumps(data, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> StateMessage:
        raw = fields.get(b"m", fields.get("m"))
        if not isinstance(raw, str | bytes):
            raise KeyError("a state entry has one field, 'm'")
        data = json.loads(raw)
        data["service_id"] = uuid.UUID(data["service_id"])
        if "job_id" in data:
            data["job_id"] = uuid.UUID(data["job_id"])
        return cls(**data)
