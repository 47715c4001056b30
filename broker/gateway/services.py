"""``/services`` and ``/services/<id>``: create, list, read, check in and modify services."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flask import Flask, Response

from broker.errors import DeserializationError
from broker.gateway.context import find_service, gateway, http_worker, legacy
from broker.gateway.envelope import envelope, field, has_body, json_body, require
from broker.gateway.links import link
from broker.gateway.representation import service_detail, service_meta, service_overview
from broker.models.service import Service
from broker.models.service_list import ServiceList

#: PostgreSQL's INTEGER holds max_attempts; nobody retries a job a thousand times.
MAX_ATTEMPTS = 1000
#: Python's timedelta (which judges timeouts) ends near 10**14 s; no instrument waits 30 years.
MAX_TIMEOUT = 1e9
NEW_SERVICE_FIELDS = ("name", "description", "job_registration_schema", "job_result_schema")


def register(app: Flask) -> None:
    app.add_url_rule("/services", "services", list_services, methods=["GET"])
    app.add_url_rule("/services", "create_service", create_service, methods=["POST"])
    app.add_url_rule("/services/<service_id>", "service", show_service, methods=["GET"])
    app.add_url_rule("/services/<service_id>", "check_in", check_in, methods=["PATCH"])
    app.add_url_rule("/services/<service_id>/hold", "hold", hold_service, methods=["POST"])
    app.add_url_rule("/services/<service_id>/resume", "resume", resume_service, methods=["POST"])


def _links(service_id: object) -> dict[str, str]:
    return {
        name: link(endpoint, service_id=str(service_id))
        for name, endpoint in (
            ("jobs", "service_jobs"),
            ("next", "next_job"),
            ("queue", "queue"),
            ("claim", "claim_job"),
        )
    }


def list_services() -> Response:
    with gateway().reading() as session:
        data = [service_overview(service) for service in ServiceList(session)]
    return envelope(data, meta={"count": len(data)})


def show_service(service_id: str) -> Response:
    with gateway().reading() as session:
        service = find_service(session, service_id)
        return envelope(
            service_detail(service), meta=service_meta(service), links=_links(service.id)
        )


def create_service() -> Response:
    body = json_body()
    require(body, NEW_SERVICE_FIELDS)
    options: dict[str, Any] = {}
    if "timeout" in body:
        options["timeout"] = _seconds(body, "timeout")
    if "worker_loss_policy" in body:
        options["worker_loss_policy"] = field(body, "worker_loss_policy", str, "a string")
    if "max_attempts" in body:
        attempts = field(body, "max_attempts", int, "a whole number")
        if not 1 <= attempts <= MAX_ATTEMPTS:
            raise DeserializationError("max_attempts", f"must be from 1 to {MAX_ATTEMPTS}")
        options["max_attempts"] = attempts
    for name in ("retries", "retry_on", "retry_backoff", "jobs_per_message"):  # Service.new checks
        if name in body:
            options[name] = body[name]
    if "max_running" in body:
        options["max_running"] = _max_running(body)
    with gateway().writing() as session:
        service = Service.new(
            body["name"],
            body["description"],
            body["job_registration_schema"],
            body["job_result_schema"],
            session,
            **options,
        )
        data, meta, service_id = service_detail(service), service_meta(service), service.id
    location = link("service", service_id=str(service_id))
    meta["message"] = "service successfully created"
    if legacy():
        data = {"service_details": data}  # where TopChefClient's new_service reads the id
    return envelope(data, 201, meta=meta, links=_links(service_id), headers={"Location": location})


def check_in(service_id: str) -> Response:
    """Always a check-in; a body may also change the service (TopChef's PATCH).

    A body that is not JSON changes nothing, not even the check-in.
    ``is_available`` is the caller's own word (``broker.messaging.presence``):
    ``true`` makes it one of the service's workers for one timeout, renewed by
    its later check-ins (as does a claim: ``Dispatcher.claim``); ``false``
    withdraws it alone, and the service stays available while another worker,
    HTTP or Celery, still serves it.
    """
    changes = json_body() if has_body() else {}
    available = _flag(changes)
    name = field(changes, "name", str, "a string") if "name" in changes else None
    description = (
        field(changes, "description", str, "a string") if "description" in changes else None
    )
    timeout = _seconds(changes, "timeout") if "timeout" in changes else None
    limit = "max_running" in changes
    max_running = _max_running(changes) if limit else None
    packing = "jobs_per_message" in changes
    shared = gateway()
    with shared.writing() as session:
        service = find_service(session, service_id)
        if name is not None:
            service.name = name
        if description is not None:
            service.description = description
        if timeout is not None:
            service.timeout = timeout
        if limit:
            service.max_running = max_running
        if packing:
            service.jobs_per_message = changes["jobs_per_message"]  # checked by the setter
        _presence(service, available)
        service.check_in()
        data, meta = service_detail(service), service_meta(service)
        key, lease = service.id, service.timeout
    shared.dispatcher.renew(key, lease)
    if limit:
        shared.producer.release_parked(key)  # a raised limit frees slots now
    meta["message"] = f"Service checked in at {meta['last_checked_in']}"
    return envelope(data, meta=meta, links=_links(key))


def hold_service(service_id: str) -> Response:
    """Hold the service: jobs are still accepted and queued, none starts (``reason`` optional).

    The hold names its caller as the gateway knows it (``http_worker``).
    """
    body = json_body() if has_body() else {}
    reason = field(body, "reason", str, "a string") if body.get("reason") is not None else None
    caller = _caller()
    return _held(service_id, lambda name: gateway().producer.hold_service(name, reason, by=caller))


def resume_service(service_id: str) -> Response:
    """End the service's hold: its waiting jobs start, in their order."""
    return _held(service_id, lambda name: gateway().producer.resume_service(name))


def _held(service_id: str, change: Callable[[str], bool]) -> Response:
    with gateway().reading() as session:
        name = find_service(session, service_id).name
    changed = change(name)
    with gateway().reading() as session:
        service = find_service(session, service_id)
        data, meta = service_detail(service), service_meta(service)
    meta["changed"] = changed
    return envelope(data, meta=meta, links=_links(service.id))


def _caller() -> str:
    worker, _named = http_worker()
    return worker


def _max_running(body: dict[str, Any]) -> int | None:
    """``max_running``: a whole number of jobs, or null (or 0) for no limit."""
    if body["max_running"] is None:
        return None
    most: int = field(body, "max_running", int, "a whole number or null")
    return most or None


def _presence(service: Service, available: bool | None) -> None:
    """Record the caller's presence on the service, and derive the service's availability."""
    worker, _named = http_worker()
    presence, services = gateway().dispatcher.presence, [service.id]
    if available is None:
        presence.renew(worker, services, service.timeout)
    elif available:
        presence.arrive(worker, services, service.timeout)
        service.is_service_available = True
    else:
        service.is_service_available = bool(presence.leave(worker, services)[service.id])


def _flag(changes: dict[str, Any]) -> bool | None:
    for name in ("is_available", "is_service_available"):  # TopChef's name, and the model's
        if name in changes:
            flag: bool = field(changes, name, bool, "true or false")
            return flag
    return None


def _seconds(body: dict[str, Any], name: str) -> float:
    value = field(body, name, (int, float), "a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:
        raise DeserializationError(name, "is too large") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
        raise DeserializationError(
            name, f"must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}, got {value!r}"
        )
    return seconds
