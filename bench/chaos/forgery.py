"""Deliveries no producer made, sent the way anyone with the Redis URL could.

A plain Celery app, knowing only TopChef's task name, queue names and the
shape of a job message's keyword arguments (``broker.messaging.messages.JobMessage.
task_kwargs``), spelled out here by hand as an outsider would: nothing of the
broker's own publishing code is used, so whatever the broker adds to its own
messages, these carry only what a forger can know.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celery
import redis

#: TopChef's task that runs one job (``broker.messaging.keys.JOB_TASK``), as seen from outside.
JOB_TASK = "topchef.job"


def queue_of(service_id: uuid.UUID) -> str:
    return f"topchef.service.{service_id}"


@dataclass(frozen=True)
class Forgery:
    """One forged delivery: what it claims to be, and where it is sent."""

    label: str
    queue: str
    job_id: uuid.UUID
    service_id: uuid.UUID
    service_name: str
    parameters: dict[str, Any]

    def kwargs(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "service_id": str(self.service_id),
            "service_name": self.service_name,
            "parameters": self.parameters,
            "attempt": 1,
        }


def send(broker_url: str, forgeries: list[Forgery]) -> None:
    app = celery.Celery("forger", broker=broker_url, set_as_current=False)
    app.conf.task_serializer = "json"
    try:
        for forgery in forgeries:
            app.send_task(JOB_TASK, kwargs=forgery.kwargs(), queue=forgery.queue)
    finally:
        app.close()


# -- what a Redis writer can do beyond sending messages --------------------------------
#
# Spelled out by hand, as an outsider who read the broker's source would: the
# claim hash's field names, the digest's recipe, the state stream's one field.

#: The stream workers report on (``broker.messaging.keys.STATE_STREAM``), as seen from outside.
STATE_STREAM = "topchef:state"
#: What a forger puts in every result it makes up, so the audit can find it anywhere.
FORGED_RUN = "forged-"


def claim_key(job_id: uuid.UUID) -> str:
    return f"topchef:claim:{job_id}"


def digest(parameters: dict[str, Any]) -> str:
    """The unkeyed digest a registration used to be: anyone can compute it."""
    text = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def register_by_hand(
    client: redis.Redis, service_id: uuid.UUID, job_id: uuid.UUID, parameters: dict[str, Any]
) -> None:
    """Write a claim hash as the publisher would, for work SQL never saw."""
    client.hset(
        claim_key(job_id), mapping={"service": str(service_id), "digest": digest(parameters)}
    )


def rewrite_parked(
    client: redis.Redis, job_id: uuid.UUID, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> bool:
    """Rewrite a parked job's kept message and its claim's digest; False if none is parked."""
    key = claim_key(job_id)
    raw = client.hget(key, "parked_message")
    if raw is None:
        return False
    envelope = json.loads(raw)
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    kwargs["parameters"] = change(kwargs["parameters"])
    envelope["body"] = base64.b64encode(json.dumps([args, kwargs, embed]).encode()).decode()
    client.hset(
        key,
        mapping={"parked_message": json.dumps(envelope), "digest": digest(kwargs["parameters"])},
    )
    return True


def report(client: redis.Redis, fields: dict[str, Any], entry_id: str = "*") -> str | None:
    """XADD one state entry; the error Redis answers, if it refuses it."""
    try:
        client.xadd(STATE_STREAM, fields, id=entry_id)
    except redis.ResponseError as error:
        return str(error)
    return None


def outcome(
    job_id: uuid.UUID, service_id: uuid.UUID, results: dict[str, Any], attempt: int = 1
) -> dict[str, str]:
    """A COMPLETED status report in the stream's one-field form."""
    return {
        "m": json.dumps(
            {
                "kind": "status",
                "service_id": str(service_id),
                "job_id": str(job_id),
                "status": "COMPLETED",
                "results": results,
                "attempt": attempt,
                "worker": "forger@lab-pc",
            }
        )
    }


def check_in(service_id: uuid.UUID) -> dict[str, str]:
    """A check-in saying the service has a worker, from a worker that does not exist."""
    return {
        "m": json.dumps(
            {
                "kind": "checkin",
                "service_id": str(service_id),
                "available": True,
                "worker": "forger@lab-pc",
            }
        )
    }


def poison(service_id: uuid.UUID, job_id: uuid.UUID) -> list[tuple[str, dict[str, str], str]]:
    """Entries that once stopped the mirror: (what, fields, entry id)."""
    status = {
        "kind": "status",
        "service_id": str(service_id),
        "job_id": str(job_id),
        "status": "WORKING",
        "attempt": 1,
        "worker": "forger@lab-pc",
    }
    deep = "[" * 100_000 + "]" * 100_000
    year_ms = int(time.time() * 1000) + 365 * 24 * 3600 * 1000
    return [
        ("unknown status", {"m": json.dumps({**status, "status": "BOGUS"})}, "*"),
        ("attempt of the wrong type", {"m": json.dumps({**status, "attempt": "one"})}, "*"),
        ("100,000-deep JSON", {"m": '{"kind":"status","results":' + deep + "}"}, "*"),
        ("not JSON", {"m": "\x00\xff{"}, "*"),
        ("no 'm' field", {"x": "1"}, "*"),
        ("an id a year ahead", {"m": json.dumps(status)}, f"{year_ms}-0"),
        ("the largest id", {"m": json.dumps(status)}, "18446744073709551615-18446744073709551615"),
    ]  # fmt: skip
