"""``topchef status``: what an operator wants to see at a glance."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import redis

from broker.messaging import keys
from broker.messaging.connections import redis_client
from broker.models.lifecycle import Status
from broker.ops.census import ServiceReading, take_census
from broker.settings import Settings
from broker.storage.tables import open_session


def render_status(settings: Settings) -> str:
    """Services (availability, timeout, last check-in, queue depth) and job counts."""
    with open_session(settings.database_url) as session:
        census = take_census(session)
    depths = _queue_depths(settings, census.services)
    lines = [
        f"{'service':<28} {'available':<9} {'timed out':<9} {'check-in':>10} {'queued':>7}",
    ]
    for service in census.services:
        depth = depths.get(service.id)
        lines.append(
            f"{service.name[:28]:<28} {'yes' if service.available else 'no':<9} "
            f"{'yes' if service.timed_out else 'no':<9} {_age(service.seconds_since_check_in):>10} "
            f"{'?' if depth is None else depth:>7}"
        )
    if not census.services:
        lines.append("(no services yet: topchef services create ...)")
    totals = census.totals()
    lines.append("")
    lines.append(
        "jobs: " + ", ".join(f"{status.value} {totals[status.value]}" for status in Status)
    )
    return "\n".join(lines)


def _queue_depths(settings: Settings, services: Sequence[ServiceReading]) -> dict[uuid.UUID, int]:
    try:
        pipeline = redis_client(settings.broker_url).pipeline(transaction=False)
        for service in services:
            pipeline.llen(keys.service_queue(service.id))
        depths = pipeline.execute()
    except redis.RedisError:
        return {}  # shown as "?": the broker is unreachable
    return {service.id: int(depth) for service, depth in zip(services, depths, strict=True)}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
