"""Handlers for the input tests' workers (``topchef worker lab_inputs``): what a handler receives
for an ``integer`` field, and results computed with NumPy, as a lab's analysis code returns them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from broker.worker import handles

COUNTER = "Counter"
COUNTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"points": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["points"],
}
SPECTRUM = "Spectrum"
SPECTRUM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"points": {"type": "integer"}, "gap": {"type": "boolean"}},
    "required": ["points"],
}
RESULTS: dict[str, Any] = {"type": "object"}


@handles(COUNTER)
def counter(parameters: dict[str, Any]) -> dict[str, Any]:
    """``range`` refuses a float: it runs only if ``points`` arrives as an int."""
    points = parameters["points"]
    return {"received": type(points).__name__, "steps": list(range(points))}


@handles(SPECTRUM)
def spectrum(parameters: dict[str, Any]) -> dict[str, Any]:
    """A measured trace, its peak and a count, straight from NumPy; a gap is a NaN point."""
    trace = np.linspace(0.0, 1.0, parameters["points"])
    if parameters.get("gap"):
        trace[1] = np.nan
    return {"spectrum": trace, "peak": np.nanmax(trace), "points": np.int64(trace.size)}
