"""A simulated Rabi-oscillation experiment, TopChef's original showcase.

A two-level system driven on resonance oscillates between its states; the
probability of finding it excited after a pulse of length t is
sin²(Ω t / 2), measured here with shot noise. The handler sweeps the pulse
length, reporting progress as it goes, and estimates the Rabi frequency back
from the noisy data by least squares over a grid of candidate frequencies.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from broker.worker import handles, progress

NAME = "Rabi oscillation"
DESCRIPTION = "Simulated Rabi oscillation: excited-state population versus pulse length."
REGISTRATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rabi_frequency_mhz": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
        "max_pulse_us": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
        "points": {"type": "integer", "minimum": 2, "maximum": 10000},
        "shots": {"type": "integer", "minimum": 1, "maximum": 100000},
        "seconds_per_point": {"type": "number", "minimum": 0, "maximum": 10, "default": 0},
    },
    "required": ["rabi_frequency_mhz", "max_pulse_us", "points", "shots"],
    "additionalProperties": False,
}
RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pulse_us": {"type": "array", "items": {"type": "number"}},
        "excited_population": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "peak_population": {"type": "number", "minimum": 0, "maximum": 1},
        "fitted_rabi_frequency_mhz": {"type": "number", "minimum": 0},
    },
    "required": ["pulse_us", "excited_population", "peak_population", "fitted_rabi_frequency_mhz"],
}


@handles(NAME)
def rabi(parameters: dict[str, Any]) -> dict[str, Any]:
    omega = 2 * math.pi * parameters["rabi_frequency_mhz"]  # rad/µs
    points = parameters["points"]
    shots = parameters["shots"]
    delay = parameters.get("seconds_per_point", 0)
    rng = random.Random(hash((omega, points, shots)))
    pulses, populations = [], []
    for index in range(points):
        pulse = parameters["max_pulse_us"] * index / (points - 1)
        probability = math.sin(omega * pulse / 2) ** 2
        excited = sum(rng.random() < probability for _ in range(shots))
        pulses.append(pulse)
        populations.append(excited / shots)
        if delay:
            time.sleep(delay)  # the instrument's acquisition time
        progress((index + 1) / points, f"pulse {index + 1}/{points}")
    return {
        "pulse_us": pulses,
        "excited_population": populations,
        "peak_population": max(populations),
        "fitted_rabi_frequency_mhz": fit_frequency(pulses, populations),
    }


def fit_frequency(pulses: list[float], populations: list[float]) -> float:
    """The frequency (MHz) whose sin²(π f t) best matches the data, to 0.01 MHz.

    Sampling limits what can be told apart: the grid stops at the Nyquist
    frequency of the pulse spacing.
    """
    spacing = pulses[1] - pulses[0]
    nyquist = 1 / (2 * spacing) if spacing > 0 else 1.0
    best, best_error = 0.0, math.inf
    steps = max(1, int(nyquist / 0.01))
    for step in range(1, steps + 1):
        frequency = step * 0.01
        error = sum(
            (math.sin(math.pi * frequency * t) ** 2 - p) ** 2
            for t, p in zip(pulses, populations, strict=True)
        )
        if error < best_error:
            best, best_error = frequency, error
    return round(best, 2)
