"""The services a chaos run creates, their contracts, and their jobs' parameters.

Every job's parameters carry a token unique to it, so that the ledger, which
knows no job ids, can tell which job a physical run belonged to.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

CHAOS = "Chaos"
CHAOS_REQUEUE = "ChaosRequeue"
THERMOMETER = "Thermometer"

TOKEN = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
MS = {"type": "integer", "minimum": 0, "maximum": 60000}

INSTRUMENT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"token": TOKEN, "ms": MS},
    "required": ["token", "ms"],
    "additionalProperties": False,
}
INSTRUMENT_RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "token": {"type": "string"},
        "run": {"type": "string"},
        "service": {"type": "string"},
        "pid": {"type": "integer"},
    },
    "required": ["token", "run", "service"],
}
#: A second kind of instrument, whose results the first cannot produce: a job
#: of one run by the other's handler is visibly wrong.
THERMOMETER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"token": TOKEN, "ms": MS, "sensor": {"type": "string"}},
    "required": ["token", "ms", "sensor"],
    "additionalProperties": False,
}
THERMOMETER_RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kelvin": {"type": "number"},
        "token": {"type": "string"},
        "run": {"type": "string"},
    },
    "required": ["kelvin", "token", "run"],
}


@dataclass(frozen=True)
class ServiceSpec:
    """One chaos service: its contract and what its worker-loss policy is."""

    name: str
    parameters_schema: dict[str, Any]
    results_schema: dict[str, Any]
    worker_loss_policy: str = "fail"
    max_attempts: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self, timeout: float) -> dict[str, Any]:
        return {
            "timeout": timeout,
            "worker_loss_policy": self.worker_loss_policy,
            "max_attempts": self.max_attempts,
        }

    def parameters(self, ms: int) -> dict[str, Any]:
        """A new job's parameters: a fresh token, ``ms`` of simulated instrument time."""
        return {"token": uuid.uuid4().hex, "ms": int(ms), **self.extra}


SPECS: dict[str, ServiceSpec] = {
    CHAOS: ServiceSpec(CHAOS, INSTRUMENT_PARAMETERS, INSTRUMENT_RESULTS),
    CHAOS_REQUEUE: ServiceSpec(
        CHAOS_REQUEUE, INSTRUMENT_PARAMETERS, INSTRUMENT_RESULTS, "requeue", max_attempts=5
    ),
    THERMOMETER: ServiceSpec(
        THERMOMETER, THERMOMETER_PARAMETERS, THERMOMETER_RESULTS, extra={"sensor": "cryostat-a"}
    ),
}
