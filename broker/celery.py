"""The app Celery's own command finds: ``celery -A broker inspect active_queues``.

Celery's ``-A broker`` looks for a submodule ``celery`` holding an ``app``
(``celery.app.utils.find_app``); this is it, so that ``inspect``, ``status``,
``events``, ``purge`` and Flower run on the same configuration as every
``topchef`` command (``Settings.from_env()``: ``TOPCHEF_BROKER_URL``, or the
``topchef up`` stack of the working directory). Nothing in TopChef imports
it: it is made when Celery's command imports it, and only then.

Its known queues are the queues of the services in the directory (and
beat's), read from Redis when the app is made, so that ``celery -A broker
purge`` finds them. It is no worker's app: a plain ``celery worker`` would
run jobs without TopChef's runtime (no claim, no report), and ``celery beat``
without its chores, so both are refused at start with the command to use.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis
from celery import Celery
from celery.beat import Scheduler
from celery.signals import celeryd_init
from kombu.entity import Queue

from broker.app import make_app
from broker.errors import TopChefError
from broker.messaging import keys
from broker.messaging.connections import redis_client, text
from broker.settings import Settings


def known_queues(settings: Settings) -> list[str]:
    """Every service's queue, as the directory in Redis names them, then beat's.

    Empty when Redis cannot be reached: the command run next reports that
    itself, in Celery's words.
    """
    try:
        service_ids = redis_client(settings.broker_url).hvals(keys.SERVICE_IDS)
    except (redis.RedisError, OSError):
        return []
    services = sorted({keys.service_queue(uuid.UUID(text(sid))) for sid in service_ids})
    return [*services, keys.BEAT_QUEUE]


class NoSchedule(Scheduler):  # type: ignore[misc]
    """Beat's scheduler on this app: it refuses to start, before any schedule file is made."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise SystemExit("`celery -A broker beat` has none of TopChef's chores: run `topchef beat`")


def make_tools_app(settings: Settings) -> Celery:
    """The app of Celery's own command: TopChef's configuration, the service queues known."""
    app = make_app(settings)
    queues = known_queues(settings)
    if queues:
        app.conf.task_queues = [Queue(name) for name in queues]  # type: ignore[no-untyped-call]

    def refuse_worker(instance: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is app:
            raise SystemExit(
                "`celery -A broker worker` is not a TopChef worker (it would run jobs without "
                "their claims and reports): run `topchef worker MODULE`"
            )

    # SystemExit passes through Celery's signal dispatch, which catches Exception only.
    celeryd_init.connect(refuse_worker, weak=False)
    app.conf.beat_scheduler = f"{__name__}:NoSchedule"
    return app


try:
    app = make_tools_app(Settings.from_env().require(broker=True))
except TopChefError as error:  # a setting is wrong: one line, as every topchef command says it
    raise SystemExit(f"Error: {error}") from None
