"""Beat's periodic task: one tick of ``broker.beat.recovery`` every ``beat_interval``."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from broker.beat.tick import run_tick
from broker.messaging import keys
from broker.settings import Settings

log = logging.getLogger(__name__)

TICK_TASK = "topchef.beat.tick"


def register(app: Celery, settings: Settings) -> None:
    """Register the tick and schedule it on beat's own queue.

    Ticks expire after one interval: after downtime, beat resumes with one
    tick, not a burst of stale ones.
    """

    def tick() -> dict[str, Any]:
        return run_tick(app, settings)

    app.task(name=TICK_TASK, ignore_result=True, acks_late=False)(tick)

    app.conf.task_routes = {TICK_TASK: {"queue": keys.BEAT_QUEUE}}
    app.conf.beat_schedule = {
        "topchef-tick": {
            "task": TICK_TASK,
            "schedule": settings.beat_interval,
            "options": {"queue": keys.BEAT_QUEUE, "expires": settings.beat_interval},
        }
    }
