"""The service directory in Redis kept in step with SQL, at the cost of what changed.

Producers publish a service's descriptor, hold and ``max_running`` when they
commit a change (``broker.messaging.outbox``); beat is the safety net for a
Redis that lost its data, a producer that died between its commit and its
publish, and two publishes that landed out of order. Re-publishing every
service on every tick made beat's work grow with the number of services, so a
tick reads only the columns a service's descriptor can change by (one query)
and publishes:

- every service at this beat's first tick, and whenever Redis has lost the
  mark the last full publish left there (a restart without its data): no hold
  is forgotten for longer than a tick;
- the services whose columns differ from what this beat last published;
- a rolling slice of ``SLICE`` others, so that a publish that landed out of
  order is healed within ``services / SLICE`` ticks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.messaging import keys, outbox
from broker.messaging.outbox import Publisher
from broker.storage.tables import ServiceRow

#: Services re-published each tick whether or not they changed, in turn.
SLICE = 20

#: What a descriptor can change by: the service's setters (its schemas, policy
#: and retry options are fixed at creation; the id names the row).
_MUTABLE = (ServiceRow.name, ServiceRow.timeout, ServiceRow.held_at, ServiceRow.max_running)


class Directory:
    """What this beat last published of each service, and the mark of its last full publish."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._published: dict[uuid.UUID, tuple[Any, ...]] = {}
        self._mark = uuid.uuid4().hex
        self._cursor = 0

    def sync(self, session: Session, publisher: Publisher) -> list[uuid.UUID]:
        """Publish what changed (or everything, if Redis lost it); returns every service's id."""
        current = {
            row[0]: tuple(row[1:])
            for row in session.execute(sa.select(ServiceRow.id, *_MUTABLE)).all()
        }
        ids = sorted(current)
        full = self._client.get(keys.DIRECTORY_MARK) != self._mark.encode()
        if full:
            wanted = ids
        else:
            wanted = [i for i in ids if self._published.get(i) != current[i]]
            wanted += self._next_slice(ids, set(wanted))
        _publish(session, publisher, wanted)
        if full:
            self._client.set(keys.DIRECTORY_MARK, self._mark)
        self._published = {i: current[i] for i in ids}
        return ids

    def _next_slice(self, ids: list[uuid.UUID], taken: set[uuid.UUID]) -> list[uuid.UUID]:
        if not ids:
            return []
        start = self._cursor % len(ids)
        chosen = [i for i in (ids[start:] + ids[:start])[:SLICE] if i not in taken]
        self._cursor = start + SLICE
        return chosen


def _publish(session: Session, publisher: Publisher, ids: Sequence[uuid.UUID]) -> None:
    """Publish the descriptors of ``ids``, read in chunks (a descriptor carries its schemas)."""
    for start in range(0, len(ids), 500):
        rows = session.scalars(
            sa.select(ServiceRow).where(ServiceRow.id.in_(ids[start : start + 500]))
        ).all()
        publisher.publish_services([outbox.descriptor_of(row) for row in rows])
