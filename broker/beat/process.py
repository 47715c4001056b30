"""The beat process: Celery beat plus a worker of its own for the tick, with the database.

The app comes in with the tick registered (``broker.tasks.beat.register``) by
the command that starts beat; no other app carries beat's schedule.
"""

from __future__ import annotations

import socket

from celery import Celery

from broker.messaging import keys
from broker.messaging.connections import redis_client, warn_unless_noeviction
from broker.settings import Settings

#: Celery's scheduler that keeps its schedule in memory. Beat's one entry, the
#: tick, needs no memory of its last run across a restart (the worst a fresh
#: start costs is one interval), so beat writes no schedule file: none for two
#: stacks on one machine, or two beats of one stack, to share or to corrupt.
IN_MEMORY_SCHEDULER = "celery.beat:Scheduler"


def start(app: Celery, settings: Settings, loglevel: str = "INFO") -> None:
    """Run beat in the foreground: the scheduler and the worker of its tick."""
    warn_unless_noeviction(redis_client(settings.broker_url))
    worker = app.Worker(
        queues=[keys.BEAT_QUEUE],
        pool="solo",
        concurrency=1,
        beat=True,
        scheduler=IN_MEMORY_SCHEDULER,
        loglevel=loglevel,
        # Named as Celery's command line would name it: Worker expands no ``%h``.
        hostname=f"topchef-beat@{socket.gethostname()}",
    )
    worker.start()
