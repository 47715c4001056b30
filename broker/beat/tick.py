"""One beat tick: the chores of ``broker.beat.recovery``, with the tools they need.

The Redis tools are made once per process; the chores that need not run every
tick (looking for jobs whose message vanished) say here when they are due.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from celery import Celery

from broker.beat.directory import Directory
from broker.beat.recovery import publish_due, tick
from broker.beat.refusals import Refusals
from broker.messaging.batches import Batches
from broker.messaging.claims import Claims
from broker.messaging.connections import redis_client
from broker.messaging.publisher import CeleryPublisher
from broker.settings import Settings
from broker.storage.tables import database_now, open_session

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _tools(
    app: Celery, settings: Settings
) -> tuple[Claims, Batches, CeleryPublisher, Directory, Refusals]:
    """The Redis tools, and this process's own state: its directory, its place in the refusals."""
    client = redis_client(settings.broker_url)
    lease = settings.lease_seconds
    claims = Claims.configured(client, settings)
    publisher = CeleryPublisher(app, client, settings.registration_signing_key)
    return claims, Batches(client, lease), publisher, Directory(client), Refusals(client)


class _Every:
    """Says when a chore that need not run every tick is due again (this process only)."""

    def __init__(self) -> None:
        self._last = -math.inf

    def due(self, seconds: float) -> bool:
        now = time.monotonic()
        if now - self._last < seconds:
            return False
        self._last = now
        return True


#: Looking for jobs whose message vanished reads every service's oldest jobs:
#: once per redelivery window is enough, since none can be found sooner.
_LOOKED_FOR_OVERTAKEN = _Every()


def run_tick(app: Celery, settings: Settings) -> dict[str, Any]:
    """One tick, in a fresh session; returns a summary for the task's log line."""
    claims, batches, publisher, directory, refusals = _tools(app, settings)
    overtaken = settings.redelivery_window + settings.beat_interval
    look = _LOOKED_FOR_OVERTAKEN.due(overtaken)
    with open_session(settings.database_url) as session:
        report = tick(
            session,
            claims,
            batches,
            publisher,
            settings.outbox_grace_seconds,
            overtaken_after=overtaken if look else None,
            directory=directory,
            refusals=refusals,
        )
    summary = {
        "timed_out": [str(s) for s in report.timed_out],
        "requeued": [str(j) for j in report.requeued],
        "failed": [str(j) for j in report.failed],
        "published": report.published,
        "republished": [str(j) for j in report.republished],
    }
    if any(summary.values()):
        log.info("beat tick: %s", summary)
    return summary


def run_due(app: Celery, settings: Settings) -> int:
    """Publish the jobs whose time has come, between ticks; returns how many.

    Its own schedule (``Settings.due_interval``), cheaper than a tick (one
    indexed query), so that a job held until a time starts within about a
    second of it, whatever ``beat_interval`` the other chores run at.
    """
    _claims, _batches, publisher, _directory, _refusals = _tools(app, settings)
    with open_session(settings.database_url) as session:
        published = publish_due(session, publisher, database_now(session))
        session.commit()
    if published:
        log.info("published %d job(s) whose time had come", published)
    return published
