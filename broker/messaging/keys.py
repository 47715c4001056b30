"""Every queue name, Redis key and task name TopChef uses, in one place.

Keys are built from ids only, never from a service's name: names are free text
("Testing Service", "Rabi — 7 T magnet") and may change, ids never do.
"""

from __future__ import annotations

import uuid

PREFIX = "topchef"

#: The Celery task that runs a job (acknowledged after it ran).
JOB_TASK = "topchef.job"
#: The same, for services whose lost jobs are re-queued: a worker process that
#: dies mid-job has its message rejected back to the queue.
REQUEUE_JOB_TASK = "topchef.job.requeue"
#: The Celery task that runs a batch of jobs, one after another (``messages.JobBatch``).
JOB_BATCH_TASK = "topchef.jobs"
#: The queue beat's periodic tasks run on (consumed by ``topchef beat`` only).
BEAT_QUEUE = f"{PREFIX}.beat"

#: The Redis stream that carries state changes from workers to the mirror.
STATE_STREAM = f"{PREFIX}:state"
#: State entries the mirror could not apply, kept for an operator to inspect.
DEAD_STATE_STREAM = f"{PREFIX}:state:dead"
#: Whatever was found written over the state stream's key, moved aside by the mirror.
CLOBBERED_STATE = f"{PREFIX}:state:clobbered"
#: Hash: reason → how many state entries the mirror dead-lettered for it.
DEAD_STATE_REASONS = f"{PREFIX}:state:dead:reasons"
#: The consumer group of the state mirrors on that stream.
MIRROR_GROUP = "mirror"
#: Hash: service name → service id (the directory workers resolve names with).
SERVICE_IDS = f"{PREFIX}:service-ids"
#: Hash: service id → JSON descriptor (queue, result schema, timeout, policy).
SERVICE_DESCRIPTORS = f"{PREFIX}:services"
#: String: the token of beat's last full publish of the directory; gone, Redis lost it.
DIRECTORY_MARK = f"{PREFIX}:directory-mark"
#: Hash: batch id → JSON list of its job ids, while a worker runs the batch.
BATCHES = f"{PREFIX}:batches"
#: Set of ids of jobs whose message was published, until beat marks them so in SQL.
PUBLISHED = f"{PREFIX}:published"
#: Pub/sub channel on which the mirror announces jobs that reached an end.
FINISHED_CHANNEL = f"{PREFIX}:finished"
#: Hash: reason → how many deliveries workers refused for it (forged, altered, misrouted…).
REFUSED = f"{PREFIX}:refused"
#: Stream of the latest refused deliveries (capped), for an operator to inspect.
REFUSED_LOG = f"{PREFIX}:refused:log"


def service_queue(service_id: uuid.UUID) -> str:
    """The Celery queue of a service's jobs."""
    return f"{PREFIX}.service.{service_id}"


def claim(job_id: uuid.UUID | str) -> str:
    """Hash arbitrating who may run a job: what was registered, its state, attempt and worker."""
    return f"{PREFIX}:claim:{job_id}"


def claim_taker(take: int) -> str:
    """The claim's field naming the credential that took it the ``take``-th time (claim.lua)."""
    return f"by:{take}"


def lease(job_id: uuid.UUID | str) -> str:
    """Key that lives while a worker runs the job; it lapses when the worker dies."""
    return f"{PREFIX}:lease:{job_id}"


def http_jobs(service_id: uuid.UUID | str) -> str:
    """Set of a service's jobs claimed over the HTTP gateway, whose leases its check-ins renew."""
    return f"{PREFIX}:http-jobs:{service_id}"


def batch_lease(batch_id: str) -> str:
    """Key that lives while a worker runs the batch; it lapses when the worker dies."""
    return f"{PREFIX}:lease:batch:{batch_id}"


def signed_batch(batch_id: uuid.UUID | str) -> str:
    """A batch's signed registration, stored by a worker that parked one of its jobs.

    The parked job's message carries the batch's signature and id; the
    registration it covers is the batch's, every job of it (``broker.worker.registrations``).
    """
    return f"{PREFIX}:signed:batch:{batch_id}"


def service_workers(service_id: uuid.UUID | str) -> str:
    """Sorted set of the workers serving a service now: worker → when its presence lapses (ms)."""
    return f"{PREFIX}:workers:{service_id}"


def service_control(service_id: uuid.UUID | str) -> str:
    """Hash of what SQL says limits a service's starts (a hold, ``max_running``), for claims."""
    return f"{PREFIX}:control:{service_id}"


def running_jobs(service_id: uuid.UUID | str) -> str:
    """Set of the claim keys of a service's jobs running now: its slots taken."""
    return f"{PREFIX}:running:{service_id}"


def parked_jobs(service_id: uuid.UUID | str) -> str:
    """Sorted set of the claim keys of a service's parked jobs, by priority then arrival."""
    return f"{PREFIX}:parked:{service_id}"


def parked_arrivals(service_id: uuid.UUID | str) -> str:
    """Counter of the deliveries a service has parked: their order of arrival."""
    return f"{PREFIX}:parked-arrivals:{service_id}"


def slots(service_id: uuid.UUID | str) -> list[str]:
    """A service's running set, parked set and control hash: the keys ``slots.lua`` takes."""
    return [running_jobs(service_id), parked_jobs(service_id), service_control(service_id)]
