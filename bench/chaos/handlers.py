"""The chaos instruments: ``topchef worker bench.chaos.handlers``.

Each handler writes to the ledger before it does anything and just before it
returns, so a run the broker forgets or repeats is still on record. Which
services this process serves comes from ``CHAOS_SERVICES`` (comma-separated;
all of them by default): a scenario decides which worker may receive what.

Handlers never trust their parameters (that is the point of some scenarios):
a missing or wild ``ms`` is clamped, not raised on, so that a forged delivery
still reaches the ledger's ``end``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.chaos.ledger import record
from bench.chaos.services import CHAOS, CHAOS_REQUEUE, SPECS, THERMOMETER
from broker.worker import handles

SERVED_ENV = "CHAOS_SERVICES"
#: No delivery, however forged, makes a handler sleep longer than this.
LONGEST_MS = 30_000


def _measure(parameters: dict[str, Any]) -> None:
    try:
        ms = int(parameters.get("ms", 0))
    except (TypeError, ValueError):
        ms = 0
    time.sleep(min(max(ms, 0), LONGEST_MS) / 1000)  # the simulated instrument at work


def instrument(service: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A handler that measures for ``ms`` milliseconds and returns where it ran."""

    def handler(parameters: dict[str, Any]) -> dict[str, Any]:
        run = uuid.uuid4().hex
        record("start", service, parameters, run=run)
        _measure(parameters)
        results = {
            "token": str(parameters.get("token")),
            "run": run,
            "service": service,
            "pid": os.getpid(),
        }
        record("end", service, parameters, run=run, results=results)
        return results

    handler.__qualname__ = f"instrument[{service}]"
    return handler


def thermometer(parameters: dict[str, Any]) -> dict[str, Any]:
    run = uuid.uuid4().hex
    record("start", THERMOMETER, parameters, run=run)
    _measure(parameters)
    results = {"kelvin": 4.2, "token": str(parameters.get("token")), "run": run}
    record("end", THERMOMETER, parameters, run=run, results=results)
    return results


HANDLERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    CHAOS: instrument(CHAOS),
    CHAOS_REQUEUE: instrument(CHAOS_REQUEUE),
    THERMOMETER: thermometer,
}


def served() -> list[str]:
    wanted = os.environ.get(SERVED_ENV, "").strip()
    names = [name.strip() for name in wanted.split(",") if name.strip()] if wanted else list(SPECS)
    unknown = set(names) - set(HANDLERS)
    if unknown:
        raise ValueError(f"{SERVED_ENV} names unknown chaos services: {sorted(unknown)}")
    return names


for _name in served():
    handles(_name)(HANDLERS[_name])
