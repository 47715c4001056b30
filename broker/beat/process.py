"""The beat process: Celery beat plus a worker of its own for the tick, with the database.

Only this process registers the tick task, so no other app (a producer's, the
gateway's) carries beat's schedule or loads its chores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from broker.app import make_app
from broker.messaging import keys
from broker.messaging.connections import redis_client, warn_unless_noeviction
from broker.settings import Settings
from broker.tasks import beat


def start(settings: Settings, loglevel: str = "INFO") -> None:
    """Run beat in the foreground: the scheduler and the worker of its tick."""
    warn_unless_noeviction(redis_client(settings.broker_url))
    app = make_app(settings)
    beat.register(app, settings)
    schedule = Path(tempfile.gettempdir()) / "topchef-beat-schedule"
    worker = app.Worker(
        queues=[keys.BEAT_QUEUE],
        pool="solo",
        concurrency=1,
        beat=True,
        schedule_filename=str(schedule),
        loglevel=loglevel,
        hostname="topchef-beat@%h",
    )
    worker.start()
