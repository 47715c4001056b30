"""Beat's periodic task: one tick of ``broker.beat.recovery`` every ``beat_interval``."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from broker.app import make_app
from broker.beat.tick import run_due, run_tick
from broker.messaging import keys
from broker.settings import Settings

log = logging.getLogger(__name__)

TICK_TASK = "topchef.beat.tick"
DUE_TASK = "topchef.beat.due"


def register(app: Celery, settings: Settings) -> None:
    """Register the tick and schedule it on beat's own queue.

    Ticks expire after one interval: after downtime, beat resumes with one
    tick, not a burst of stale ones.

    A tick is beat's housekeeping, not a job: it sends no task events, and
    beat's app announces no ``task-sent`` for it, or Flower's task list would
    gain a row every few seconds and bury the jobs (``inspect stats`` still
    counts the ticks run). The jobs a tick sends again go through an app of
    their own that announces them, as a producer's do.
    """
    announcing = make_app(settings)

    def tick() -> dict[str, Any]:
        return run_tick(announcing, settings)

    app.task(name=TICK_TASK, ignore_result=True, acks_late=False, send_events=False)(tick)

    def due() -> int:
        return run_due(announcing, settings)

    app.task(name=DUE_TASK, ignore_result=True, acks_late=False, send_events=False)(due)

    app.conf.task_send_sent_event = False
    app.conf.task_routes = {
        TICK_TASK: {"queue": keys.BEAT_QUEUE},
        DUE_TASK: {"queue": keys.BEAT_QUEUE},
    }
    app.conf.beat_schedule = {
        "topchef-tick": {
            "task": TICK_TASK,
            "schedule": settings.beat_interval,
            "options": {"queue": keys.BEAT_QUEUE, "expires": settings.beat_interval},
        },
        "topchef-due": {
            "task": DUE_TASK,
            "schedule": settings.due_interval,
            "options": {"queue": keys.BEAT_QUEUE, "expires": settings.due_interval},
        },
    }
