"""Handlers for the fleet workload's served services (``topchef worker bench.fleet_jobs``)."""

from __future__ import annotations

from typing import Any

from bench.payload import FLEET_SERVED, fleet_name
from broker.worker import handles


def _noop(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


for _index in range(FLEET_SERVED):
    handles(fleet_name(_index))(_noop)
