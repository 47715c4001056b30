"""The Celery app: one per process, configured from ``celeryconfig`` and the settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from broker.messaging import priorities
from broker.messaging.connections import celery_url
from broker.settings import Settings


def make_app(settings: Settings, **overrides: Any) -> Celery:
    """A Celery app on ``settings.broker_url``, configured but with no task registered.

    The command that starts a worker (``broker.worker.boot``) or beat
    (``broker.beat.process``) registers its own tasks, so a producer's app
    loads neither.

    The Redis visibility timeout is short (a duplicate delivery is refused by
    the job's claim), and unacknowledged messages of dead workers are swept
    back to their queue every few seconds rather than every 100.

    Every process names the same priority steps, one Redis list per priority
    (``broker.messaging.priorities``): a worker's BRPOP reads the lists the
    publisher pushes to.
    """
    app = Celery("topchef", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = celery_url(settings.broker_url)
    app.conf.broker_transport_options = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": 1,
        "priority_steps": priorities.STEPS,
        "sep": priorities.SEPARATOR,
    }
    app.conf.update(overrides)
    return app
