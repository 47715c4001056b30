"""``topchef status``: what an operator wants to see at a glance."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import redis

from broker.messaging.claims import Claims
from broker.messaging.connections import redis_client
from broker.messaging.presence import Presence
from broker.models.lifecycle import Status
from broker.ops.census import ServiceReading, take_census
from broker.settings import Settings
from broker.storage.tables import open_session


def render_status(settings: Settings) -> str:
    """Services (availability, live workers, timeout, last check-in, jobs waiting and running).

    A service whose jobs need a worker while none is live is marked ``no
    worker`` (``ServiceReading.unserved``): it looks healthy otherwise, and
    nothing will happen. A held service says so, by whom, since when and why,
    on the line below it; ``running`` reads ``1/1`` for a service with a
    ``max_running``, and ``waiting`` (every REGISTERED job, queued or parked)
    says how many of them are parked, and how many wait for a later time
    (``not_before``, or a retry's backoff): a count that does not go down
    while workers are idle is not a stuck queue.
    """
    with open_session(settings.database_url) as session:
        census = take_census(session)
    workers = _live_workers(settings, census.services)
    parked = _parked(settings, census.services)
    lines = [
        f"{'service':<28} {'available':<9} {'workers':>7}  {'timed out':<9} {'check-in':>10} "
        f"{'waiting':>7} {'running':>7}",
    ]
    for service in census.services:
        live = workers.get(service.id)
        line = (
            f"{service.name[:28]:<28} {'yes' if service.available else 'no':<9} "
            f"{'?' if live is None else live:>7}  {'yes' if service.timed_out else 'no':<9} "
            f"{_age(service.seconds_since_check_in):>10} {service.waiting:>7} "
            f"{_running(service):>7}"
        )
        if live is not None and service.unserved(live) and service.held_at is None:
            line += "  no worker"
        if parked.get(service.id):
            line += f"  ({parked[service.id]} parked)"
        if service.scheduled:
            line += f"  ({service.scheduled} not before a later time)"
        lines.append(line)
        if service.held_at is not None:
            reason = f": {service.held_reason}" if service.held_reason else ""
            lines.append(
                f"  held by {service.held_by} since {service.held_at:%Y-%m-%d %H:%M:%S} UTC{reason}"
            )
    if not census.services:
        lines.append("(no services yet: topchef services create ...)")
    totals = census.totals()
    lines.append("")
    lines.append(
        "jobs: " + ", ".join(f"{status.value} {totals[status.value]}" for status in Status)
    )
    return "\n".join(lines)


def _running(service: ServiceReading) -> str:
    if service.max_running is None:
        return str(service.running)
    return f"{service.running}/{service.max_running}"


def _parked(settings: Settings, services: Sequence[ServiceReading]) -> dict[uuid.UUID, int]:
    ids = [service.id for service in services]
    try:
        counts = Claims.configured(redis_client(settings.broker_url), settings).parked(ids)
    except redis.RedisError:
        return {}
    return dict(zip(ids, counts, strict=True))


def _live_workers(settings: Settings, services: Sequence[ServiceReading]) -> dict[uuid.UUID, int]:
    try:
        return Presence(redis_client(settings.broker_url)).live([s.id for s in services])
    except redis.RedisError:
        return {}  # shown as "?": the broker is unreachable


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
