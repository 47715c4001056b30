"""Starting a lab worker: Celery's worker signals wired to TopChef's runtime.

The app comes in with the job tasks already registered by the command that
starts the worker (``broker.tasks.job.register``); an app made anywhere else
(a producer's, the gateway's) has no task and never loads this runtime.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import (
    task_prerun,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from broker.errors import ConfigurationError
from broker.messaging.connections import redis_client, warn_unless_noeviction
from broker.settings import ABORT_GRACE_SECONDS, Settings
from broker.worker import handlers
from broker.worker.connection import PatientConsumer
from broker.worker.runtime import ServedService, WorkerRuntime, install
from broker.worker.shutdown import Shutdown

log = logging.getLogger(__name__)


def serve(
    app: Celery,
    settings: Settings,
    modules: Iterable[str],
    *,
    pool: str = "threads",
    concurrency: int = 1,
    loglevel: str = "INFO",
    abort_grace: float = ABORT_GRACE_SECONDS,
) -> None:
    """Import the lab modules, wait for their services, and serve them until shut down.

    Services that do not exist yet are waited for and served as they appear
    (within one directory sync), so lab PCs may boot in any order. The first
    Ctrl-C waits for the running jobs; a second aborts them, giving their
    handlers ``abort_grace`` seconds to stop (``broker.worker.shutdown``).
    """
    modules = list(modules)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigurationError(f"cannot import {module!r}: {error}") from None
    declarations = handlers.declared().values()
    if not declarations:
        raise ConfigurationError(
            f"{', '.join(modules)} declares no handler (use @broker.worker.handles)"
        )
    warn_unless_noeviction(redis_client(settings.broker_url))
    runtime = install(WorkerRuntime(settings, declarations))
    if not runtime.wait_for_services(threading.Event()):
        return
    nodename = f"topchef-worker-{os.getpid()}@{socket.gethostname()}"

    def serve_new(served: ServedService) -> None:
        app.control.add_consumer(served.descriptor.queue, destination=[nodename], reply=False)
        runtime.check_in(available=True)

    shutdown = Shutdown(runtime, pool, abort_grace)

    def ready(sender: Any = None, **_: Any) -> None:
        runtime.start()
        runtime.watch_directory(serve_new)
        shutdown.install(sender)

    worker_ready.connect(ready, weak=False)
    if pool == "prefork":  # the handlers run in child processes
        worker_process_init.connect(shutdown.shield_child, weak=False)
        task_prerun.connect(shutdown.install_child, weak=False)
    worker_shutting_down.connect(shutdown.warm, weak=False)
    worker_shutdown.connect(lambda **_: runtime.stop(clean=True), weak=False)
    names = ", ".join(served.descriptor.name for served in runtime.services.values())
    log.info("serving %s (%s, concurrency %d)", names, pool, concurrency)
    app.Worker(
        queues=runtime.queues,
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
        hostname=nodename,
        consumer_cls=PatientConsumer,
        # Other workers' events (gossip) and a census at each connect (mingle) serve
        # Celery's revokes and elections, which TopChef does without (a job's claim
        # decides); Celery 5.7 logs a traceback restarting gossip after a lost broker,
        # and mingle costs a second at every reconnect.
        without_gossip=True,
        without_mingle=True,
    ).start()
