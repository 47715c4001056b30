"""The commands that run TopChef's processes.

Each makes its own Celery app and registers only its own process's tasks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import click

from broker.cli.options import (
    SECONDS,
    configure_logging,
    required_settings,
    user_errors,
)
from broker.settings import ABORT_GRACE_SECONDS, masked


@click.command()
@click.argument("modules", nargs=-1, required=True)
@click.option(
    "--pool",
    type=click.Choice(["threads", "prefork", "solo"]),
    default="threads",
    show_default=True,
    help="How jobs run: threads suit instruments, prefork CPU-bound work.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs run at once by this worker.",
)
@click.option(
    "--abort-grace",
    type=SECONDS,
    default=ABORT_GRACE_SECONDS,
    show_default=True,
    help="Seconds running handlers have to stop after a second Ctrl-C.",
)
@click.option("--loglevel", default="INFO", show_default=True)
@user_errors
def worker(
    modules: tuple[str, ...], pool: str, concurrency: int, abort_grace: float, loglevel: str
) -> None:
    """Serve every handler declared in MODULES (e.g. workers.echo workers.rabi).

    Services that do not exist yet are waited for, and served as they appear.
    Ctrl-C waits for the running jobs; a second Ctrl-C aborts them (their
    on_abort callbacks run) and exits.
    """
    from broker.app import make_app
    from broker.ops.supervisor import follow_supervisor
    from broker.tasks import job
    from broker.worker.boot import serve

    configure_logging(loglevel)
    follow_supervisor()
    settings = required_settings(broker=True)
    app = make_app(settings)
    job.register(app)
    sys.path.insert(0, os.getcwd())
    serve(
        app,
        settings,
        modules,
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
        abort_grace=abort_grace,
    )


@click.command()
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@user_errors
def mirror(batch_size: int, loglevel: str) -> None:
    """Mirror job states from the message broker into SQL."""
    from broker.mirror.process import Mirror
    from broker.ops.supervisor import follow_supervisor
    from broker.storage.migrate import upgrade

    configure_logging(loglevel)
    follow_supervisor()
    settings = required_settings(broker=True, database=True)
    upgrade(settings.database_url)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics = None
    if settings.metrics_port:
        from broker.ops.exposure import is_loopback
        from broker.ops.metrics import serve

        metrics = serve(settings, settings.metrics_port, host=settings.metrics_host)
        # Opened by TOPCHEF_METRICS_HOST alone, for a scraper elsewhere: said, not refused.
        reach = "" if is_loopback(settings.metrics_host) else " (no login: anyone who reaches it)"
        click.echo(
            f"metrics on http://{settings.metrics_host}:{metrics.port}/metrics{reach}", err=True
        )
    click.echo("mirroring job states into SQL", err=True)
    try:
        Mirror(settings, batch_size=batch_size).run(stop)
    finally:
        if metrics is not None:
            metrics.close()


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
@user_errors
def beat(loglevel: str) -> None:
    """Run the periodic tasks: timeouts, lost workers' jobs, the outbox."""
    from broker.app import make_app
    from broker.beat import process as beat_process
    from broker.ops.supervisor import follow_supervisor
    from broker.storage.migrate import upgrade
    from broker.tasks import beat as beat_tasks

    configure_logging(loglevel)
    follow_supervisor()
    settings = required_settings(broker=True, database=True)
    upgrade(settings.database_url)
    app = make_app(settings)
    beat_tasks.register(app, settings)
    beat_process.start(app, settings, loglevel)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Requests served at once; each waiting claim holds one.",
)
@click.option(
    "--base-url",
    metavar="URL",
    help="The URL clients reach this API at (e.g. https://lab.example/topchef), which "
    "links and Location start with. Default: TOPCHEF_API_BASE_URL; unset, links are paths.",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Serve on a --host other PCs reach without TOPCHEF_API_TOKEN: anyone there "
    "may then submit, run and cancel jobs.",
)
@click.option("--loglevel", default="INFO", show_default=True)
@user_errors
def api(
    host: str,
    port: int,
    threads: int,
    base_url: str | None,
    allow_unauthenticated: bool,
    loglevel: str,
) -> None:
    """Serve TopChef's REST API (the HTTP gateway) for non-Python clients.

    Set TOPCHEF_API_TOKEN to require 'Authorization: Bearer <token>': on an
    address other PCs reach, the API refuses to start without one.
    """
    from broker.gateway import Server
    from broker.ops.exposure import require_guarded
    from broker.settings import base_url as checked_base_url
    from broker.storage.migrate import upgrade

    configure_logging(loglevel)
    settings = required_settings(broker=True, database=True)
    if base_url is not None:
        settings = replace(settings, api_base_url=checked_base_url(base_url, "--base-url"))
    open_door = require_guarded(
        "the API",
        host,
        guarded=bool(settings.api_token),
        forced=allow_unauthenticated,
        how="set TOPCHEF_API_TOKEN",
    )
    upgrade(settings.database_url)
    server = Server(settings, host, port, threads)
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    auth = "bearer token required" if settings.api_token else "no token required"
    if open_door:
        auth += ": anyone on the network may submit, run and cancel jobs"
    links = f"; links start with {settings.api_base_url}" if settings.api_base_url else ""
    click.echo(f"TopChef API on {server.url}/ ({auth}{links})", err=True)
    server.run()  # until Ctrl-C or SIGTERM
    click.echo("stopped", err=True)


@click.command()
@click.option(
    "--jobs",
    "job_count",
    type=click.IntRange(1, 500),
    default=12,
    show_default=True,
    help="How many Rabi experiments to run.",
)
@click.option("--timeout", type=SECONDS, default=45.0, show_default=True)
@user_errors
def demo(job_count: int, timeout: float) -> None:
    """Run the whole broker end to end: no configuration, nothing left behind."""
    from broker.ops.demo import run_demo

    run_demo(job_count, timeout)


@click.command()
@click.option(
    "--worker",
    "workers",
    multiple=True,
    default=("workers.echo", "workers.rabi"),
    show_default=True,
    help="Worker modules to serve (repeat for several).",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Jobs each worker runs at once (one worker process per module).",
)
@click.option(
    "--listen",
    metavar="ADDRESS",
    help="Open the embedded Redis to other PCs on this IP address too (0.0.0.0: every "
    "interface), behind a password kept in .topchef/network.json.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Its port with --listen (kept for the next starts); default: the one kept, "
    "else a free one.",
)
@user_errors
def up(workers: tuple[str, ...], concurrency: int, listen: str | None, port: int | None) -> None:
    """Run mirror, beat and workers in the foreground until Ctrl-C (a lab's main PC).

    Unconfigured, it starts an embedded Redis and uses topchef.sqlite3 here;
    other `topchef` commands run in this directory find it. With --listen,
    workers on other PCs join it too, with the URL it prints (the same at
    every start). A worker, the mirror or beat that dies is started again,
    after 1 s doubling to 60 s while it keeps dying; the stack stops if its
    embedded Redis dies.
    """
    from broker.errors import ConfigurationError
    from broker.ops.network import Listen, another_pc, listen_address
    from broker.ops.supervisor import local_stack
    from broker.settings import STATE_DIR, Settings

    if port is not None and listen is None:
        raise ConfigurationError("--port is the port of --listen: give --listen too, or no --port")
    opening = None if listen is None else Listen(listen_address(listen), port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    here = Path.cwd()
    embedded = not Settings.from_env(os.environ).broker_url  # else it is reached as it is set
    with local_stack(here, workers, concurrency, listen=opening) as (settings, supervisor):
        click.echo(
            f"TopChef is up. Broker: {masked(settings.broker_url)}  "
            f"Database: {masked(settings.database_url)}"
        )
        click.echo("Logs: .topchef/logs/   Stop with Ctrl-C.")
        for line in another_pc(settings, opening, here / STATE_DIR, embedded=embedded):
            click.echo(line)
        while not stop.wait(0.5):
            supervisor.check()
    click.echo("stopped")


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Serve on an --address other PCs reach without a login: anyone there may "
    "then read every job's parameters and results.",
)
@user_errors
def flower(port: int, address: str, allow_unauthenticated: bool) -> None:
    """Start the Flower dashboard on the configured broker.

    Set FLOWER_BASIC_AUTH=user:password to require a login (or FLOWER_AUTH,
    Flower's OAuth): on an address other PCs reach, Flower refuses to start without one.
    """
    from broker.app import make_app
    from broker.ops.exposure import FLOWER_BASIC_AUTH, flower_logins, require_guarded

    settings = required_settings(broker=True)
    basic_auth, login = flower_logins(os.environ)
    open_door = require_guarded(
        "Flower",
        address,
        guarded=login,
        forced=allow_unauthenticated,
        how=f"set {FLOWER_BASIC_AUTH}=user:password",
    )
    if open_door:
        click.echo(
            f"Flower on {address}:{port} with no login: anyone on the network may read "
            "every job's parameters and results",
            err=True,
        )
    args = ["flower", f"--port={port}", f"--address={address}"]
    if basic_auth is not None:
        args.append(f"--basic-auth={basic_auth}")
    make_app(settings).start(args)
