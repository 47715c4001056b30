"""The OpenAPI 3 document of the gateway, served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify

from broker.gateway.context import gateway
from broker.gateway.dispatch import MAX_WAIT
from broker.gateway.envelope import MAX_PAGE
from broker.gateway.services import MAX_ATTEMPTS, MAX_TIMEOUT
from broker.messaging import priorities
from broker.models.lifecycle import Status
from broker.models.service import MAX_PER_MESSAGE, MAX_RETRY_BACKOFF, MAX_RUNNING

JSON = "application/json"
STATUSES = [status.value for status in Status]


def register(app: Flask) -> None:
    app.add_url_rule("/openapi.json", "openapi", serve, methods=["GET"])


def serve() -> Response:
    return jsonify(document(gateway().settings.version))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "meta", "links"],
        "properties": {"data": data, "meta": {"type": "object"}, "links": _ref("Links")},
    }


def _ok(description: str, data: dict[str, Any], code: str = "200") -> dict[str, Any]:
    return {code: {"description": description, "content": {JSON: {"schema": _envelope(data)}}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed JSON, or a value the schema or the service's contract refuses",
        401: "No bearer token (when the gateway requires one)",
        403: "A wrong bearer token",
        404: "A malformed or unknown id (or artifact digest)",
        409: "The job's state forbids it (claimed by another worker, finished, ...)",
        413: "The body is over the configured size",
    }
    error = {"content": {JSON: {"schema": _ref("Errors")}}}
    return {str(code): {"description": reasons[code], **error} for code in codes}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    common = _errors(401, 403)
    return {"summary": summary, "responses": {**common, **responses}, **extra}


_ID = {"type": "string", "description": "A UUID; anything else is a 404"}
_PAGING = [
    {"$ref": "#/components/parameters/offset"},
    {"$ref": "#/components/parameters/limit"},
    {"$ref": "#/components/parameters/status"},
]
_NO_JOB = {"204": {"description": "No job is waiting"}}


#: A service's cap on its jobs running at once; null (or 0) for none.
_MAX_RUNNING = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_RUNNING,
    "nullable": True,
    "description": "At most this many of its jobs WORKING at once; null or 0: no limit",
}

#: A service's jobs per Celery message for sweeps; null: chosen from its run times.
_JOBS_PER_MESSAGE = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_PER_MESSAGE,
    "nullable": True,
    "description": "Jobs of a Python sweep (submit_many) per Celery message; "
    "null: chosen from the service's run times",
}


def _paths() -> dict[str, Any]:
    service = [{"name": "service_id", "in": "path", "required": True, "schema": _ID}]
    job = [{"name": "job_id", "in": "path", "required": True, "schema": _ID}]
    job_list = {"type": "array", "items": _ref("Job")}
    return {
        "/": {
            "get": {
                "summary": "API metadata (never needs the token)",
                "security": [],
                "responses": _ok("Who maintains this API", _ref("Metadata")),
            }
        },
        "/services": {
            "get": _operation(
                "List services",
                _ok("Every service", {"type": "array", "items": _ref("ServiceOverview")}),
            ),
            "post": _operation(
                "Create a service; its id is in the body and in Location",
                {**_ok("Created", _ref("Service"), "201"), **_errors(400, 409, 413)},
                requestBody=_body(_ref("NewService")),
            ),
        },
        "/services/{service_id}": {
            "parameters": service,
            "get": _operation(
                "Read a service", {**_ok("The service", _ref("Service")), **_errors(404)}
            ),
            "patch": _operation(
                "Check in (always), and change what the body gives; no body: a pure check-in",
                {**_ok("Checked in", _ref("Service")), **_errors(400, 404, 409, 413)},
                requestBody=_body(_ref("ServicePatch"), required=False),
            ),
        },
        "/services/{service_id}/hold": {
            "parameters": service,
            "post": _operation(
                "Hold the service: its jobs are still accepted and queued, none starts (one "
                "running finishes) until it is resumed; the hold names the caller",
                {
                    **_ok("Held (meta.changed: false if it was held already)", _ref("Service")),
                    **_errors(400, 404),
                },
                requestBody=_body(_ref("Hold"), required=False),
            ),
        },
        "/services/{service_id}/resume": {
            "parameters": service,
            "post": _operation(
                "End the service's hold: its waiting jobs start, in their order",
                {
                    **_ok("Resumed (meta.changed: false if it was not held)", _ref("Service")),
                    **_errors(404),
                },
            ),
        },
        "/services/{service_id}/jobs": {
            "parameters": service,
            "get": _operation(
                "A page of the service's jobs, oldest first",
                {**_ok("Jobs", job_list), **_errors(400, 404)},
                parameters=_PAGING,
            ),
            "post": _operation(
                "Submit a job: validated, stored, and queued like one from Python",
                {**_ok("Created", _ref("Job"), "201"), **_errors(400, 404, 413)},
                requestBody=_body(_ref("NewJob")),
            ),
        },
        "/services/{service_id}/jobs/next": {
            "parameters": service,
            "get": _operation(
                "The caller's first held job, else the oldest unclaimed REGISTERED one "
                "(read only: claim it with PATCH)",
                {**_ok("The next job", _ref("Job")), **_NO_JOB, **_errors(404)},
            ),
        },
        "/services/{service_id}/queue": {
            "parameters": service,
            "get": _operation(
                "The caller's held jobs, then the oldest unclaimed REGISTERED ones: 10",
                {**_ok("The queue", job_list), **_NO_JOB, **_errors(404)},
            ),
        },
        "/services/{service_id}/jobs/claim": {
            "parameters": service,
            "post": _operation(
                "Claim the oldest unclaimed job for this caller alone (it becomes WORKING), "
                "waiting up to `wait` seconds for one. Name the worker with X-TopChef-Worker.",
                {**_ok("The claimed job", _ref("Job")), **_NO_JOB, **_errors(400, 404)},
                parameters=[
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                    },
                    {"$ref": "#/components/parameters/worker"},
                ],
            ),
        },
        "/jobs": {
            "get": _operation(
                "A page of every job, oldest first",
                {**_ok("Jobs", {"type": "array", "items": _ref("JobOverview")}), **_errors(400)},
                parameters=_PAGING,
            )
        },
        "/jobs/{job_id}": {
            "parameters": job,
            "get": _operation("Read a job", {**_ok("The job", _ref("Job")), **_errors(404)}),
            "patch": _operation(
                "Run a job: WORKING claims it (409 if someone else has; its holder may "
                "repeat it), results are validated (sent to a REGISTERED job, they claim "
                "it first), COMPLETED or ERROR end it, REGISTERED gives the holder's claim back",
                {**_ok("The job", _ref("Job")), **_errors(400, 404, 409, 413)},
                requestBody=_body(_ref("JobPatch")),
                parameters=[{"$ref": "#/components/parameters/worker"}],
            ),
            "delete": _operation(
                "Cancel a job nobody has claimed",
                {**_ok("Cancelled", _ref("Job")), **_errors(404, 409)},
            ),
        },
        "/jobs/{job_id}/history": {
            "parameters": job,
            "get": _operation(
                "Every move of a job, oldest first (its submission first); "
                "meta.provenance says who submitted it, its schemas' fingerprint and what ran it",
                {
                    **_ok("The history", {"type": "array", "items": _ref("Transition")}),
                    **_errors(404),
                },
            ),
        },
        "/jobs/{job_id}/abort": {
            "parameters": job,
            "post": _operation(
                "Abort a job: cancel it if it has not started, else ask its running handler "
                "to stop (it ends CANCELLED); meta.abort says which. 409 if it has finished",
                {**_ok("The job", _ref("Job")), **_errors(400, 404, 409, 413)},
                requestBody=_body(_ref("JobAbort"), required=False),
            ),
        },
        "/jobs/{job_id}/resubmit": {
            "parameters": job,
            "post": _operation(
                "Submit a new job with this job's parameters, validated against the "
                "service's contract as it is now, and linked to this one both ways",
                {**_ok("Created", _ref("Job"), "201"), **_errors(400, 404)},
            ),
        },
        "/validator": {
            "get": _operation("How to use the validator", _ok("Usage", {"type": "object"})),
            "post": _operation(
                "Validate an object against a JSON Schema",
                {**_ok("Valid", {"type": "object"}), **_errors(400, 413)},
                requestBody=_body(_ref("ValidatorRequest")),
            ),
        },
        "/artifacts/{digest}": {
            "parameters": [
                {
                    "name": "digest",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "description": "sha256:<64 hex>"},
                }
            ],
            "get": _operation(
                "An artifact's bytes, as a job's results name it ($artifact); Range "
                "requests give a slice (206); the ETag is the digest",
                {
                    "200": {
                        "description": "The bytes",
                        "content": {"application/octet-stream": {"schema": {}}},
                    },
                    "206": {
                        "description": "The range asked for",
                        "content": {"application/octet-stream": {"schema": {}}},
                    },
                    **_errors(404),
                },
            ),
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.0"}, **_errors(401, 403)},
            }
        },
    }


def _schemas() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    return {
        "Links": {
            "type": "object",
            "description": "URI references, as is Location: absolute paths (resolved against "
            "the URL asked), or URLs under the gateway's configured base URL",
            "required": ["self"],
            "properties": {"self": {"type": "string"}},
            "additionalProperties": {"type": "string"},
        },
        "Errors": {
            "type": "object",
            "required": ["errors"],
            "properties": {
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["status_code", "title", "detail"],
                        "properties": {
                            "status_code": {"type": "integer"},
                            "title": {"type": "string"},
                            "detail": {"type": "string"},
                        },
                    },
                }
            },
        },
        "Metadata": {
            "type": "object",
            "properties": {
                name: {"type": "string"}
                for name in (
                    "maintainer_name",
                    "maintainer_email",
                    "documentation_url",
                    "source_code_repository_url",
                    "version",
                )
            },
        },
        "ServiceOverview": {
            "type": "object",
            "required": ["id", "name", "description"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "description": {"type": "string"},
            },
        },
        "Service": {
            "allOf": [
                _ref("ServiceOverview"),
                {
                    "type": "object",
                    "properties": {
                        "job_registration_schema": {"type": "object"},
                        "job_result_schema": {"type": "object"},
                        "is_service_available": {"type": "boolean"},
                        "has_timed_out": {"type": "boolean"},
                        "timeout": {"type": "number"},
                    },
                },
            ]
        },
        "NewService": {
            "type": "object",
            "required": ["name", "description", "job_registration_schema", "job_result_schema"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": {"type": "string"},
                "job_registration_schema": {"type": "object"},
                "job_result_schema": {"type": "object"},
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": True,
                    "minimum": 0,
                    "maximum": MAX_TIMEOUT,
                },
                "worker_loss_policy": {"type": "string", "enum": ["fail", "requeue"]},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS},
                "retries": {"type": "boolean"},
                "retry_on": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "retry_backoff": {"type": "number", "minimum": 0, "maximum": MAX_RETRY_BACKOFF},
                "max_running": _MAX_RUNNING,
                "jobs_per_message": _JOBS_PER_MESSAGE,
            },
        },
        "Hold": {
            "type": "object",
            "properties": {"reason": {"type": "string", "nullable": True}},
        },
        "ServicePatch": {
            "type": "object",
            "properties": {
                "is_available": {
                    "type": "boolean",
                    "description": "The caller's own availability: true makes it one of the "
                    "service's live workers for one timeout; false withdraws it, and the "
                    "service stays available while another worker serves it.",
                },
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": {"type": "string"},
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": True,
                    "minimum": 0,
                    "maximum": MAX_TIMEOUT,
                },
                "max_running": _MAX_RUNNING,
                "jobs_per_message": _JOBS_PER_MESSAGE,
            },
        },
        "Job": {
            "type": "object",
            "required": ["id", "status", "parameters", "date_submitted"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": STATUSES},
                "parameters": {"type": "object"},
                "results": {"type": "object", "nullable": True},
                "date_submitted": time,
            },
        },
        "Transition": {
            "type": "object",
            "required": ["at", "from", "to", "by", "attempt", "detail"],
            "properties": {
                "at": time,
                "from": {"type": "string", "enum": [*STATUSES, None], "nullable": True},
                "to": {"type": "string", "enum": STATUSES},
                "by": {"type": "string", "nullable": True},
                "attempt": {"type": "integer", "nullable": True},
                "detail": {"type": "string", "nullable": True},
            },
        },
        "JobOverview": {
            "type": "object",
            "required": ["id", "status", "date_submitted"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": STATUSES},
                "date_submitted": time,
                "service_id": {"type": "string", "format": "uuid"},
            },
        },
        "NewJob": {
            "type": "object",
            "required": ["parameters"],
            "properties": {
                "parameters": {"type": "object"},
                "not_before": {
                    **time,
                    "description": "Hold the job until this time (with its zone)",
                },
                "priority": {
                    "type": "integer",
                    "minimum": priorities.LOWEST,
                    "maximum": priorities.HIGHEST,
                    "default": priorities.DEFAULT,
                    "description": "Higher starts first; FIFO within a priority",
                },
            },
        },
        "JobAbort": {
            "type": "object",
            "properties": {"reason": {"type": "string", "maxLength": 2000}},
        },
        "JobPatch": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": STATUSES},
                "results": {"type": "object", "nullable": True},
                "detail": {"type": "string", "description": "Why the job ended in ERROR"},
            },
        },
        "ValidatorRequest": {
            "type": "object",
            "required": ["schema", "object"],
            "properties": {"schema": {"type": "object"}, "object": {}},
        },
    }


def document(version: str) -> dict[str, Any]:
    """The whole document (built on each request: it is small, and never stale)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "TopChef",
            "version": version,
            "description": "TopChef's REST API, served by the broker's HTTP gateway. Every "
            "answer is {data, meta, links}; every failure {errors: [{status_code, title, "
            "detail}]}. X-HTTP-Method-Override turns a POST into PATCH, PUT or DELETE.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "parameters": {
                "offset": {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
                },
                "limit": {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                },
                "status": {
                    "name": "status",
                    "in": "query",
                    "description": "Only jobs in these statuses (repeat, or separate with commas)",
                    "schema": {"type": "string"},
                },
                "worker": {
                    "name": "X-TopChef-Worker",
                    "in": "header",
                    "description": "The calling worker's name; without it, its address "
                    "and User-Agent",
                    "schema": {"type": "string"},
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
