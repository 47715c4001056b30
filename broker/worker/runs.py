"""A handler's run on a claimed job, and the outcome it comes to.

The runtime (``broker.worker.runtime``) claims a delivery and reports its end;
between the two, this module runs the lab's handler with its ``progress`` and
``aborted`` routed to the run, and turns what the handler did into the state
message the report carries.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from broker.artifacts import DirectoryStore
from broker.artifacts.stores import ArtifactError
from broker.artifacts.values import offload, resolve
from broker.contract import Contract, compile_contract
from broker.contract.bounds import check_payload
from broker.errors import DeserializationError
from broker.messaging.messages import ServiceDescriptor, StateMessage
from broker.models.interfaces.job import Job
from broker.worker import provenance
from broker.worker.controls import RunAbortWatch, abort_detail, asks_for_retry, judge_retry
from broker.worker.handlers import (
    Aborted,
    Declaration,
    Handler,
    ProgressReporter,
    reporting_to,
    stop_reporting,
    stop_watching,
    watching,
)

__all__ = ["ServedService", "execute", "serving"]

log = logging.getLogger(__name__)
Status = Job.JobStatus


@dataclass(frozen=True, slots=True)
class ServedService:
    """A service this worker serves: what the directory says of it, and its handler."""

    descriptor: ServiceDescriptor
    handler: Handler
    results: Contract
    parameters: Contract
    #: The handler's module, whose code version the jobs' provenance records.
    module: str
    #: Where its arrays, files and large values are stored (``broker.artifacts``).
    artifacts: DirectoryStore | None = None


def serving(
    descriptor: ServiceDescriptor, declaration: Declaration, artifacts: DirectoryStore | None = None
) -> ServedService:
    """What running ``declaration``'s handler for the service needs, its contracts compiled once."""
    module = declaration.function.__module__
    provenance.code_version(module)  # read now, once: a prefork child inherits it
    return ServedService(
        descriptor,
        declaration.function,
        compile_contract(descriptor.job_result_schema, source="job_result_schema"),
        compile_contract(descriptor.job_registration_schema, source="job_registration_schema"),
        module,
        artifacts,
    )


def execute(
    served: ServedService,
    job: uuid.UUID,
    parameters: dict[str, Any],
    attempt: int,
    worker: str,
    run: str,
    watch: RunAbortWatch,
    reporter: ProgressReporter,
) -> StateMessage:
    """Run the handler on a claimed job; return the outcome its report carries.

    Whatever the handler does is the run's outcome, never the worker's
    failure: results (checked against the result schema), an exception (ERROR,
    or a retry the service allows), or an abort it heeded (CANCELLED, with
    whatever partial results it returned). ``run`` is the provenance digest of
    what runs it; ``watch`` and ``reporter`` are what its ``aborted`` and
    ``progress`` calls reach.
    """
    service = served.descriptor.id

    def outcome(status: Status, **fields: Any) -> StateMessage:
        return StateMessage(
            "status",
            service,
            job,
            status.value,
            attempt=attempt,
            worker=worker,
            provenance=run,
            **fields,
        )

    def aborted(abort: Aborted, results: object = None, note: str = "") -> StateMessage:
        kept, dropped = _partial(results, served.artifacts)
        detail = abort_detail(abort, watch.called_back_by_worker) + note + dropped
        log.info("job %s was aborted while running: %s", job, detail)
        return outcome(Status.CANCELLED, results=kept, detail=detail, extra={"aborted": True})

    try:  # arrays and files passed as parameters: what the handler reads, checked
        parameters = resolve(parameters, served.artifacts)
    except (ArtifactError, OSError) as error:
        return outcome(Status.ERROR, detail=f"parameters could not be read: {error}")
    token = reporting_to(reporter)
    watch_token = watching(watch)
    try:
        results = served.handler(parameters)
    except Aborted as abort:  # the handler let the abort end its run
        return aborted(watch.seen or abort)
    except Exception as error:  # the handler's failure is the job's outcome
        log.info("job %s raised %s", job, error, exc_info=True)
        described = f"{type(error).__name__}: {error}"
        if watch.seen is not None:
            return aborted(watch.seen, note=f"; the handler then raised {described}")
        if not asks_for_retry(served.descriptor, error):
            return outcome(Status.ERROR, detail=described)
        verdict = judge_retry(served.descriptor, error, attempt)
        if verdict.after is None:
            return outcome(Status.ERROR, detail=verdict.detail)
        if (unseen := watch.unseen()) is not None:  # an abort asked meanwhile wins
            return aborted(unseen, note=f"; the handler had asked for a retry ({described})")
        return StateMessage(
            "retry",
            service,
            job,
            detail=verdict.detail,
            attempt=attempt,
            worker=worker,
            extra={"after": verdict.after},
        )
    finally:
        stop_watching(watch_token)
        stop_reporting(token)
    if watch.seen is not None:  # the handler caught the abort and returned
        return aborted(watch.seen, results)
    # A handler that never looked ran to its end: that is what happened
    # (its report adds that an abort was asked meanwhile, if one was).
    try:
        # Arrays, files and large values go to the store first, durably: the
        # report then names them, and nothing else carries their bytes.
        results = offload(results, served.artifacts)
    except OSError as error:
        return outcome(Status.ERROR, detail=f"results could not be stored: {error}")
    try:  # what is reported is the contract's plain copy: NumPy's values as JSON
        results = served.results.validate(results, source="results")
    except DeserializationError as violation:
        return outcome(Status.ERROR, detail=f"invalid results: {violation.detail}")
    return outcome(Status.COMPLETED, results=results)


def _partial(
    results: object, artifacts: DirectoryStore | None
) -> tuple[dict[str, Any] | None, str]:
    """An aborted run's partial results, if they are a JSON object; else none, and why.

    Partial results may be incomplete, so they are not held to the result
    schema; but only JSON is ever stored (arrays and files as artifacts).
    """
    if results is None:
        return None, ""
    try:
        kept = check_payload(offload(results, artifacts), "results").value
    except OSError as error:
        return None, f"; its results could not be stored: {error}"
    except DeserializationError as error:
        return None, f"; its results were dropped: {error.detail}"
    if not isinstance(kept, dict):
        return None, f"; its results were dropped: not a JSON object ({type(results).__name__})"
    return kept, ""
