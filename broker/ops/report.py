"""``topchef status``: what an operator wants to see at a glance."""

from __future__ import annotations

import redis
import sqlalchemy as sa

from broker.messaging import keys
from broker.messaging.connections import redis_client
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, database_now, open_session


def render_status(settings: Settings) -> str:
    """Services (availability, timeout, last check-in, queue depth) and job counts."""
    with open_session(settings.database_url) as session:
        now = database_now(session)
        services = session.scalars(sa.select(ServiceRow).order_by(ServiceRow.name)).all()
        counts = session.execute(
            sa.select(JobRow.status, sa.func.count()).group_by(JobRow.status)
        ).all()
    depths = _queue_depths(settings, services)
    lines = [
        f"{'service':<28} {'available':<9} {'timed out':<9} {'check-in':>10} {'queued':>7}",
    ]
    for service in services:
        age = (now - service.last_checked_in).total_seconds()
        timed_out = age > service.timeout
        depth = depths.get(str(service.id))
        lines.append(
            f"{service.name[:28]:<28} {'yes' if service.is_service_available else 'no':<9} "
            f"{'yes' if timed_out else 'no':<9} {_age(age):>10} "
            f"{'?' if depth is None else depth:>7}"
        )
    if not services:
        lines.append("(no services yet: topchef services create ...)")
    totals = dict(counts)
    lines.append("")
    lines.append(
        "jobs: "
        + ", ".join(
            f"{status} {totals.get(status, 0)}"
            for status in ("REGISTERED", "WORKING", "COMPLETED", "ERROR", "CANCELLED")
        )
    )
    return "\n".join(lines)


def _queue_depths(settings: Settings, services: object) -> dict[str, int]:
    rows = list(services)  # type: ignore[call-overload]
    try:
        pipeline = redis_client(settings.broker_url).pipeline(transaction=False)
        for service in rows:
            pipeline.llen(keys.service_queue(service.id))
        depths = pipeline.execute()
    except redis.RedisError:
        return {}  # shown as "?": the broker is unreachable
    return {str(service.id): int(depth) for service, depth in zip(rows, depths, strict=True)}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
