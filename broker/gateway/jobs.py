"""``/jobs`` and ``/jobs/<id>``: list, read, report on, cancel and resubmit jobs.

``PATCH /jobs/<id>`` is how TopChef's clients run a job, and each of its moves
goes through the job's claim (``broker.gateway.dispatch``):

- to WORKING, a claim: one caller wins, a second gets 409 Conflict, and a job a
  Celery worker runs is never handed out;
- ``results`` while WORKING (the Java client's ``setResult``) are validated and
  kept on the job, for its holder to complete it with;
- to COMPLETED or ERROR, validated results end the claim and the job;
- to CANCELLED, the same as ``DELETE``: only a job nobody has claimed;
- back to REGISTERED, only by the holder of its first attempt: the claim is
  given back and the job's message published again (the Java client restores
  a status this way), so the job is anyone's to claim once more;
- ``results`` sent to a REGISTERED job claim it for the sender first (the Java
  client reports without claiming); and a claim its holder repeats is granted
  again, whether or not it named itself (``context.http_worker``); but not
  from TopChefClient under ``/legacy``, which claims before reporting and
  never claims twice (``_apply``).

Other fields (``id``, ``parameters``, ``date_submitted``, which the Java client
sends back) are ignored, as TopChef ignored them. Under ``/legacy``
TopChefClient's ``PUT`` of the whole job is the same update, its ``result``
standing for ``results``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from sqlalchemy.orm import Session

from broker.contract import Contract, compile_contract
from broker.errors import DeserializationError, InvalidTransitionError, MethodNotAllowedError
from broker.gateway.context import find_job, gateway, http_worker, legacy
from broker.gateway.envelope import (
    DEFAULT_PAGE,
    MAX_PAGE,
    envelope,
    has_body,
    json_body,
    page_links,
    parse_id,
    query_int,
    query_statuses,
)
from broker.gateway.errors import (
    JobClaimedElsewhereError,
    JobNotClaimedError,
    JobNotGivenBackError,
    JobNotRunningError,
    claim_refused,
)
from broker.gateway.links import link
from broker.gateway.representation import job_detail, job_meta, job_overview
from broker.messaging.claims import ClaimResult
from broker.models import history
from broker.models.job import Job
from broker.models.job_list import JobList
from broker.models.lifecycle import TERMINAL, Status
from broker.storage.tables import JobRow, ServiceRow


def register(app: Flask) -> None:
    app.add_url_rule("/jobs", "jobs", list_jobs, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>", "job", show_job, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>/history", "job_history", show_history, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>", "update_job", update_job, methods=["PATCH"])
    app.add_url_rule("/jobs/<job_id>", "replace_job", replace_job, methods=["PUT"])
    app.add_url_rule("/jobs/<job_id>", "cancel_job", cancel_job, methods=["DELETE"])
    app.add_url_rule("/jobs/<job_id>/abort", "abort_job", abort_job, methods=["POST"])
    app.add_url_rule("/jobs/<job_id>/resubmit", "resubmit_job", resubmit_job, methods=["POST"])


def _render(job: Job, status: int = 200, **extra: Any) -> Response:
    service = link("service", service_id=str(job.service_id))
    return envelope(
        job_detail(job, legacy=legacy()),
        status,
        meta={**job_meta(job), **extra},
        links={"service": service},
    )


def list_jobs() -> Response:
    statuses = query_statuses()
    offset = query_int("offset", 0, 0, 10**9)
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    with gateway().reading() as session:
        listing = JobList(session)
        if statuses:
            listing = listing.with_status(*statuses)
        total = len(listing)
        data = [job_overview(job) for job in listing.page(offset, limit, newest_first=False)]
    meta = {"total": total, "offset": offset, "limit": limit}
    return envelope(data, meta=meta, links=page_links(offset, limit, total))


def show_job(job_id: str) -> Response:
    with gateway().reading() as session:
        return _render(Job(find_job(session, job_id)))


def show_history(job_id: str) -> Response:
    """Every move of the job, oldest first; its provenance in ``meta``."""
    with gateway().reading() as session:
        row = find_job(session, job_id)
        entries = [entry.as_dict() for entry in history.of_job(session, row.id)]
        meta = {"provenance": history.provenance(session, row.id)}
    job = link("job", job_id=str(row.id))
    return envelope(entries, meta=meta, links={"job": job})


def cancel_job(job_id: str) -> Response:
    """Cancel a job nobody has started: it becomes CANCELLED and never runs."""
    shared = gateway()
    shared.producer.cancel(parse_id(job_id), by=http_worker()[0])
    with shared.reading() as session:
        return _render(Job(find_job(session, job_id)))


def abort_job(job_id: str) -> Response:
    """Abort a job: a cancel if nobody started it, else a request its handler reads.

    The caller is named as its claims would name it (``http_worker``): the
    record says which HTTP caller aborted the run.
    """
    body = json_body() if has_body() else {}
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise DeserializationError("reason", f"must be a string of at most {MAX_REASON} characters")
    shared = gateway()
    caller, _chosen = http_worker()
    outcome = shared.producer.abort(parse_id(job_id), reason, by=caller)
    with shared.reading() as session:
        return _render(Job(find_job(session, job_id)), abort=outcome)


#: The longest reason an abort may give.
MAX_REASON = 2000


def resubmit_job(job_id: str) -> Response:
    """A new job with this one's parameters, validated again and linked to it (201)."""
    shared = gateway()
    new_id = shared.producer.resubmit(parse_id(job_id), by=http_worker()[0])
    with shared.reading() as session:
        response = _render(Job(find_job(session, str(new_id))), 201)
    response.headers["Location"] = link("job", job_id=str(new_id))
    return response


def replace_job(job_id: str) -> Response:
    """TopChefClient's ``PUT`` of the whole job, under ``/legacy`` only: an update."""
    if not legacy():
        raise MethodNotAllowedError("PUT", ["DELETE", "GET", "PATCH"])
    return update_job(job_id)


def update_job(job_id: str) -> Response:
    body = json_body()
    for name in ("status", "detail"):
        if name in body and body[name] is None:
            raise DeserializationError(name, "is null: omit it to leave it as it is")
    wanted = _status(body)
    results = _results(body)
    clears = results is None and _nulls_results(body)
    detail = body.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise DeserializationError("detail", "must be a string")
    shared = gateway()
    if wanted is Status.CANCELLED:
        if results is not None:
            raise DeserializationError("results", "a cancelled job has no results")
        return cancel_job(job_id)
    worker, chosen = http_worker()
    with shared.writing() as session:
        row = find_job(session, job_id)
        service = session.get(ServiceRow, row.service_id)
        assert service is not None, "jobs.service_id is a foreign key"
        contract = compile_contract(service.job_result_schema, source="job_result_schema")
        if results is not None:  # kept as the contract hands it back (``Contract.validate``)
            results = contract.validate(results, source="results")
        listener = legacy() and not chosen
        if clears and row.results is not None:
            _clear_results(row, wanted, worker)
        _apply(session, row, service.timeout, contract, wanted, results, detail, worker, listener)
        return _render(Job(row))


def _apply(
    session: Session,
    row: JobRow,
    timeout: float,
    contract: Contract,
    wanted: Status | None,
    results: dict[str, Any] | None,
    detail: str | None,
    worker: str,
    listener: bool = False,
) -> None:
    """Make one report's move, each through the job's claim.

    ``listener``: the caller is TopChefClient's (``/legacy``, unnamed), which
    claims each job with ``PUT`` WORKING before anything else, and never twice.
    So from it a repeated claim is a second copy on the same machine, which
    must not run the job again; and a report on a job it never claimed is one
    meant for the job it held, whose claim lapsed while the first of its queue
    became another: both are refused (409), never recorded on the wrong job.
    """
    dispatcher = gateway().dispatcher
    current = Status(row.status)
    reporting = results is not None or wanted in (Status.COMPLETED, Status.ERROR)
    if listener and reporting and current is Status.REGISTERED:
        raise _unclaimed(row)
    if wanted in (Status.COMPLETED, Status.ERROR):
        # A "worker lost" ERROR is a presumption: its holder's late report still counts.
        presumed = current is Status.ERROR and row.presumed_lost_at is not None
        if current in TERMINAL and not presumed:
            raise InvalidTransitionError(row.id, current.value, wanted.value)
        final = results if results is not None else row.results
        if wanted is Status.COMPLETED:
            final = contract.validate(final, source="results")
        elif detail is None:
            detail = f"reported as ERROR by {worker}"
        dispatcher.finish(session, row, timeout, wanted, final, detail, worker)
        return
    if wanted is Status.REGISTERED and current is Status.WORKING:
        # The one move back: its holder gives the claim up (any results it carries go too).
        dispatcher.held(row, worker)
        if not dispatcher.release(session, row, timeout, worker):
            raise JobNotGivenBackError(
                row.id, f"Job {row.id} runs a later attempt: it cannot be given back"
            )
        session.expire(row)
        return
    sending = results is not None and wanted in (None, Status.REGISTERED)
    if current is Status.REGISTERED and (wanted is Status.WORKING or sending):
        claimed = dispatcher.claim(session, row, timeout, worker)
        if claimed is not ClaimResult.CLAIMED:
            raise claim_refused(row.id, claimed.value)
        current = Status.WORKING
        if results is None:
            return
    elif wanted is not None and wanted is not current:
        raise InvalidTransitionError(row.id, current.value, wanted.value)
    elif wanted is Status.WORKING and results is None:
        holder = dispatcher.held(row, worker)  # a claim repeated by its holder is granted again
        if listener:
            raise JobClaimedElsewhereError(
                row.id, f"Job {row.id} is already WORKING (held by {holder.worker})"
            )
    if results is not None:
        if current is Status.REGISTERED:
            raise _unclaimed(row)
        if current is not Status.WORKING:
            raise JobNotRunningError(row.id, f"Job {row.id} is {current.value}: it runs no more")
        dispatcher.held(row, worker)
        Job(row).results = results
    if current is Status.WORKING:
        dispatcher.renew(row.service_id, timeout, [str(row.id)])


def _nulls_results(body: dict[str, Any]) -> bool:
    """Whether the body sets the results to null (TopChef's clients send back what they read)."""
    names = ("result", "results") if legacy() else ("results",)
    given = [name for name in names if name in body]
    return bool(given) and all(body[name] is None for name in given)


def _clear_results(row: JobRow, wanted: Status | None, worker: str) -> None:
    """Apply ``"results": null`` to a job with results: only its holder's, while it runs.

    The Java client sets results back to null this way (``setResult(null)``),
    on a job it runs. Anywhere else a null would be quietly ignored, so it is
    refused, saying what would be kept.
    """
    if Status(row.status) is Status.WORKING and wanted in (None, Status.WORKING):
        gateway().dispatcher.held(row, worker)
        row.results = None  # kept results are not held to the result schema until the end
        return
    raise DeserializationError(
        "results",
        f"is null, but job {row.id} is {row.status} with results, which only the holder "
        "of a WORKING job may clear: omit the field to keep them",
    )


def _unclaimed(row: JobRow) -> JobNotClaimedError:
    return JobNotClaimedError(row.id, f"Job {row.id} is REGISTERED: claim it before reporting")


def _status(body: dict[str, Any]) -> Status | None:
    value = body.get("status")
    if value is None:
        return None
    choices = ", ".join(status.value for status in Status)
    if not isinstance(value, str):
        raise DeserializationError("status", f"must be one of {choices}")
    try:
        return Status(value.strip().upper())
    except ValueError:
        raise DeserializationError("status", f"must be one of {choices}, got {value!r}") from None


def _results(body: dict[str, Any]) -> dict[str, Any] | None:
    # TopChefClient sends back the job it read, with its new results as ``result``.
    name = "result" if legacy() and body.get("result") is not None else "results"
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise DeserializationError(name, "must be a JSON object")
    return value
