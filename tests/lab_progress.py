"""A handler that reports progress and holds there (``topchef worker lab_progress``).

For the tests of what a user sees while waiting: the job stops at 40 %,
with a message, until the test releases it, so that a waiting command is
seen showing it, whatever the machine's speed.
"""

from __future__ import annotations

import time
from typing import Any

from lab import _redis, release_key

from broker.worker import handles, progress

STEPS = "Steps"

STEPS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "points": {"type": "integer", "minimum": 1},
        "tag": {"type": "string"},
        "note": {"type": "string"},
        "fail": {"type": "boolean"},
    },
}
POINTS_RESULTS: dict[str, Any] = {"type": "object"}


@handles(STEPS)
def steps(parameters: dict[str, Any]) -> dict[str, Any]:
    """Reports 40 % (``point 81/200`` for 200 points, or ``note``), holds while tagged,
    then returns its points; ``fail`` raises instead."""
    if parameters.get("fail"):
        raise ValueError("no sample in the holder")
    points = parameters.get("points", 1)
    progress(0.4, parameters.get("note", f"point {int(points * 0.4) + 1}/{points}"))
    tag = parameters.get("tag")
    if tag:
        client = _redis()
        deadline = time.monotonic() + 120
        while not client.exists(release_key(tag)) and time.monotonic() < deadline:
            time.sleep(0.02)
    return {"points": list(range(points))}
