"""A service's jobs: submit, list, peek at the queue, and claim the next one.

``next`` and ``queue`` are TopChef's read-only views: an HTTP worker reads
them, then claims a job with ``PATCH /jobs/<id>`` to WORKING (a 409 tells it
another worker was faster). Each shows the caller the jobs it holds first,
then the oldest unclaimed ones: TopChef's clients re-read them before every
step of the job they run, and must find that job again. ``POST .../jobs/claim``
does both in one atomic step and can wait for a job to arrive, so an HTTP
worker need not spin.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask, Response
from sqlalchemy.orm import Session

from broker.contract import times
from broker.gateway.context import caller_gone, find_service, gateway, http_worker, legacy
from broker.gateway.dispatch import MAX_WAIT
from broker.gateway.envelope import (
    DEFAULT_PAGE,
    MAX_PAGE,
    envelope,
    field,
    json_body,
    no_content,
    page_links,
    query_int,
    query_number,
    query_statuses,
    require,
)
from broker.gateway.links import link
from broker.gateway.representation import job_detail, job_meta
from broker.models.job import Job
from broker.models.service import Service
from broker.storage.tables import JobRow

#: TopChef's queue shows this many of the oldest REGISTERED jobs.
QUEUE_LENGTH = 10


def register(app: Flask) -> None:
    route = "/services/<service_id>"
    app.add_url_rule(f"{route}/jobs", "service_jobs", list_jobs, methods=["GET"])
    app.add_url_rule(f"{route}/jobs", "submit_job", submit_job, methods=["POST"])
    app.add_url_rule(f"{route}/jobs/next", "next_job", next_job, methods=["GET"])
    app.add_url_rule(f"{route}/queue", "queue", queue, methods=["GET"])
    app.add_url_rule(f"{route}/jobs/claim", "claim_job", claim_job, methods=["POST"])


def _job_url(job_id: object) -> str:
    return link("job", job_id=str(job_id))


def new_job_schema(service: Service) -> dict[str, Any]:
    """What ``POST /services/<id>/jobs`` must carry (TopChef's ``new_job_schema``)."""
    return {
        "title": "New Job Schema",
        "type": "object",
        "properties": {"parameters": service.job_registration_schema},
        "required": ["parameters"],
    }


def list_jobs(service_id: str) -> Response:
    statuses = query_statuses()
    offset = query_int("offset", 0, 0, 10**9)
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    with gateway().reading() as session:
        service = find_service(session, service_id)
        listing = service.jobs.with_status(*statuses) if statuses else service.jobs
        total = len(listing)
        page = listing.page(offset, limit, newest_first=False)
        data = [job_detail(job, legacy=legacy()) for job in page]
        meta = {
            "total": total,
            "offset": offset,
            "limit": limit,
            "new_job_schema": new_job_schema(service),
        }
    return envelope(data, meta=meta, links=page_links(offset, limit, total))


def submit_job(service_id: str) -> Response:
    body = json_body()
    require(body, ["parameters"])
    parameters = field(body, "parameters", dict, "a JSON object")
    not_before = _time(body, "not_before") if body.get("not_before") is not None else None
    options = {"priority": field(body, "priority", int, "an integer")} if "priority" in body else {}
    with gateway().writing() as session:
        service = find_service(session, service_id)
        job = service.new_job(
            parameters, submitted_by=http_worker()[0], not_before=not_before, **options
        )
        data, job_id = job_detail(job, legacy=legacy()), job.id
    location = _job_url(job_id)
    meta = {"message": f"new job ID is {job_id}"}
    if legacy():
        data = {"job_details": data}  # where TopChefClient's new_job reads the id
    return envelope(data, 201, meta=meta, links={"job": location}, headers={"Location": location})


def _time(body: dict[str, Any], name: str) -> datetime:
    """An ISO 8601 time with its zone (``Z`` or an offset), as JSON carries one.

    The same forms as the CLI's ``--not-before`` (``broker.contract.times``),
    but no delay from now: a program that speaks HTTP computes its times, and
    a delay would be counted from whenever the request happened to arrive.
    """
    text = field(body, name, str, f"a time with its zone, e.g. {times.EXAMPLE}")
    return times.parse_time(text, name)


def _visible(session: Session, service: Service, limit: int) -> list[JobRow]:
    """What ``next`` and ``queue`` show this caller: the jobs it holds, then unclaimed ones."""
    dispatcher = gateway().dispatcher
    worker, _chosen = http_worker()
    rows = dispatcher.holding(session, service.id, worker)[:limit]
    if len(rows) < limit:
        rows += dispatcher.unclaimed(session, service.id, limit - len(rows))
    return rows


def next_job(service_id: str) -> Response:
    with gateway().reading() as session:
        service = find_service(session, service_id)
        rows = _visible(session, service, 1)
        if not rows:
            return no_content()
        job = Job(rows[0])
        data = job_detail(job, legacy=legacy())
        return envelope(data, meta=job_meta(job), links={"job": _job_url(job.id)})


def queue(service_id: str) -> Response:
    """The first jobs this caller may run; empty is 204, but ``[]`` for TopChefClient.

    TopChefClient's ``is_queue_empty`` reads ``data`` of a 200, and nothing else.
    """
    with gateway().reading() as session:
        service = find_service(session, service_id)
        rows = _visible(session, service, QUEUE_LENGTH)
        if not rows and not legacy():
            return no_content()
        data = [job_detail(Job(row), legacy=legacy()) for row in rows]
        return envelope(data, meta={"count": len(rows)})


def claim_job(service_id: str) -> Response:
    """Hand the oldest unclaimed job to this caller alone, waiting up to ``?wait=`` s."""
    wait = query_number("wait", 0.0, 0.0, MAX_WAIT)
    worker, _chosen = http_worker()
    shared = gateway()
    with shared.reading() as session:
        service = find_service(session, service_id)
        key, timeout = service.id, service.timeout
    # A caller waiting for the service's jobs serves it, though none may come
    # (one that wins a job is counted with its claim).
    if wait > 0:
        shared.dispatcher.presence.arrive(worker, [key], timeout)
    gone = caller_gone()
    claimed = shared.dispatcher.claim_next(shared.writing, key, worker, wait, gone, timeout)
    if claimed is None:
        if wait <= 0:
            shared.dispatcher.presence.arrive(worker, [key], timeout)
        return no_content()
    with shared.reading() as session:
        row = session.get(JobRow, claimed)
        assert row is not None, "a claimed job's row exists"
        job = Job(row)
        meta = {**job_meta(job), "message": f"job claimed by {worker}"}
        answer = envelope(
            job_detail(job, legacy=legacy()), meta=meta, links={"job": _job_url(job.id)}
        )
    # The last moment before the answer leaves: a caller that hung up meanwhile
    # would never run the job, so it is given back rather than lost to the policy.
    # One that hangs up as the answer is written cannot be told from one that got
    # it: its job is then held, and its lease and the service's policy decide.
    if gone() and shared.dispatcher.give_back(shared.writing, claimed, worker):
        return no_content()
    return answer
