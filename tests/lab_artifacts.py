"""Handlers whose results are of real size (``topchef worker lab_artifacts``): a
spectrometer's million points, a camera's frame, a file a handler wrote."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from broker.artifacts import artifact_schema
from broker.worker import handles

SPECTROMETER = "Spectrometer"
CAMERA = "Camera"
RECORDER = "Recorder"
ANALYZER = "Analyzer"
BACKGROUND: dict[str, Any] = {
    "type": "object",
    "properties": {
        "background": artifact_schema("application/x-npy", "float64", ndim=1),
        "scale": {"type": "number"},
    },
    "required": ["background", "scale"],
}
POINTS: dict[str, Any] = {
    "type": "object",
    "properties": {"points": {"type": "integer", "minimum": 1}},
    "required": ["points"],
}
ANY: dict[str, Any] = {"type": "object"}
SPECTRUM_RESULTS: dict[str, Any] = {
    "type": "object",
    "required": ["counts", "peak"],
    "properties": {
        "counts": artifact_schema("application/x-npy", "float64", ndim=1),
        "peak": {"type": "number"},
    },
}
FRAME_RESULTS: dict[str, Any] = {
    "type": "object",
    "required": ["frame"],
    "properties": {"frame": artifact_schema("application/x-npy", "uint16", ndim=2)},
}


@handles(SPECTROMETER)
def spectrometer(parameters: dict[str, Any]) -> dict[str, Any]:
    counts = np.sin(np.linspace(0.0, 20.0, parameters["points"])) ** 2
    return {"counts": counts, "peak": float(counts.max())}


@handles(CAMERA)
def camera(parameters: dict[str, Any]) -> dict[str, Any]:
    side = parameters["points"]
    return {"frame": (np.arange(side * side) % 65521).astype(np.uint16).reshape(side, side)}


@handles(RECORDER)
def recorder(parameters: dict[str, Any]) -> dict[str, Any]:
    log = Path(tempfile.mkdtemp()) / "run.log"
    log.write_text("".join(f"line {n}\n" for n in range(parameters["points"])))
    return {"log": log, "lines": parameters["points"]}


@handles(ANALYZER)
def analyzer(parameters: dict[str, Any]) -> dict[str, Any]:
    """Subtracts nothing, sums: what it was handed must be the producer's array."""
    background = parameters["background"]
    return {"total": float(np.asarray(background).sum()) * parameters["scale"]}
