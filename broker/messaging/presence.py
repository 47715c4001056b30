"""Which workers serve a service now: each worker's own presence in Redis.

A service is available while any live worker serves it, so availability
cannot be one flag that each worker sets for the whole service: one of two
workers shutting down would mark the service unavailable while the other
still serves it. Each worker therefore keeps a presence of its own on each
service it serves, in a sorted set per service (``keys.service_workers``)
whose score is when that presence lapses, on Redis's clock:

- a Celery worker arrives at every check-in, for a few check-in intervals
  (``WorkerRuntime.presence_seconds``), and leaves on a clean shutdown;
- an HTTP worker arrives with ``PATCH /services/<id>`` ``is_available: true``
  or by claiming the service's jobs (for its service's timeout), is renewed
  by its later check-ins and claims, and leaves with ``is_available: false``;
- a worker that dies without leaving lapses on its own.

The SQL flag ``is_service_available`` is derived from what remains whenever a
worker leaves (by the mirror for Celery workers, by the gateway for HTTP ones):
the service stays available while a live presence remains. The counts are
what ``topchef status`` and ``topchef_service_workers`` show as workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import redis

from broker.messaging import keys
from broker.messaging.claims import LUA_SCRIPTS

#: What ``presence.lua`` can do with a worker's presence.
ARRIVE, RENEW, LEAVE, COUNT = "arrive", "renew", "leave", "count"

# Presence and its count change in one step, so whoever derives availability
# from a leave sees the set without the worker that left.
_PRESENCE = (LUA_SCRIPTS / "presence.lua").read_text(encoding="utf-8")


class Presence:
    """Workers' presences on services, through one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_PRESENCE)

    def arrive(
        self, worker: str, services: Sequence[uuid.UUID], seconds: float
    ) -> dict[uuid.UUID, int]:
        """``worker`` serves ``services`` for ``seconds`` more; returns the live workers of each."""
        return self._counts(services, self._run(worker, ARRIVE, services, seconds))

    def renew(
        self, worker: str, services: Sequence[uuid.UUID], seconds: float
    ) -> dict[uuid.UUID, int]:
        """Extend ``worker``'s presence where it has one (a check-in that says nothing more)."""
        return self._counts(services, self._run(worker, RENEW, services, seconds))

    def leave(self, worker: str, services: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """``worker`` stops serving ``services``; returns the live workers left on each."""
        return self._counts(services, self._run(worker, LEAVE, services))

    def live(self, services: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """How many live workers serve each service, in one round trip."""
        return self._counts(services, self._run("", COUNT, services))

    def queue(
        self,
        pipeline: redis.client.Pipeline,
        worker: str,
        what: str,
        services: Sequence[uuid.UUID],
        seconds: float = 0.0,
    ) -> None:
        """Queue a change in ``pipeline``, ahead of what must follow it (a worker's check-ins)."""
        self._run(worker, what, services, seconds, pipeline)

    def _run(
        self,
        worker: str,
        what: str,
        services: Sequence[uuid.UUID],
        seconds: float = 0.0,
        pipeline: redis.client.Pipeline | None = None,
    ) -> list[int]:
        if not services:
            return []
        reply = self._script(
            keys=[keys.service_workers(service) for service in services],
            args=[worker, what, max(1, int(seconds * 1000))],
            client=pipeline,
        )
        return [] if pipeline is not None else [int(count) for count in reply]

    @staticmethod
    def _counts(services: Sequence[uuid.UUID], counts: list[int]) -> dict[uuid.UUID, int]:
        return dict(zip(services, counts, strict=True)) if counts else {}
