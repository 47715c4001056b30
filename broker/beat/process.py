"""The beat process: Celery beat plus a worker of its own for the tick, with the database.

The app comes in with the tick registered (``broker.tasks.beat.register``) by
the command that starts beat; no other app carries beat's schedule.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from celery import Celery

from broker.messaging import keys
from broker.messaging.connections import redis_client, warn_unless_noeviction
from broker.settings import Settings


def start(app: Celery, settings: Settings, loglevel: str = "INFO") -> None:
    """Run beat in the foreground: the scheduler and the worker of its tick."""
    warn_unless_noeviction(redis_client(settings.broker_url))
    schedule = Path(tempfile.gettempdir()) / "topchef-beat-schedule"
    worker = app.Worker(
        queues=[keys.BEAT_QUEUE],
        pool="solo",
        concurrency=1,
        beat=True,
        schedule_filename=str(schedule),
        loglevel=loglevel,
        # Celery's command line expands %h; a Worker made in code does not.
        hostname=f"topchef-beat@{socket.gethostname()}",
    )
    worker.start()
