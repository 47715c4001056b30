"""The job every workload submits: a no-op whose parameters are a realistic 5-field object."""

from __future__ import annotations

from typing import Any

SERVICE = "BenchNoop"
PROBE_SERVICE = "BenchProbe"
#: The service-control workloads' instruments (``bench.controls``): one
#: without a limit, one with ``max_running=1``.
INSTRUMENT_SERVICE = "BenchInstrument"
EXCLUSIVE_SERVICE = "BenchExclusive"
INSTRUMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"index": {"type": "integer"}, "seconds": {"type": "number", "minimum": 0}},
    "required": ["index", "seconds"],
}

#: What a sweep point of a pulsed-measurement instrument might look like.
PARAMETERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sample": {"type": "string", "minLength": 1, "maxLength": 64},
        "frequency_hz": {"type": "number", "minimum": 0},
        "amplitude": {"type": "number", "minimum": 0, "maximum": 1},
        "repetitions": {"type": "integer", "minimum": 1, "maximum": 100000},
        "index": {"type": "integer", "minimum": 0},
    },
    "required": ["sample", "frequency_hz", "amplitude", "repetitions", "index"],
    "additionalProperties": False,
}
RESULTS_SCHEMA: dict[str, Any] = {"type": "object"}


def parameters(index: int) -> dict[str, Any]:
    """The ``index``-th point of a frequency sweep."""
    return {
        "sample": "Si-28 wafer 7",
        "frequency_hz": 5.1e9 + 1e5 * index,
        "amplitude": 0.25,
        "repetitions": 200,
        "index": index,
    }


#: The fleet workload (``bench.fleet``): services in all, and how many have a worker.
FLEET_SERVED = 10


def fleet_name(index: int) -> str:
    return f"BenchFleet{index:04}"
