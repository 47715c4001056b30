"""The ``topchef`` command: every process and every everyday operation."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import redis
import sqlalchemy.exc as sa_exc

from broker.errors import ConfigurationError, DeserializationError, SQLAlchemyError, TopChefError
from broker.models.interfaces.job import Job
from broker.settings import Settings, masked

if TYPE_CHECKING:
    from broker.producer.reader import Outcome

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(command: F) -> F:
    """Report a user's mistake, or a server out of reach, in one line: never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TopChefError as error:
            raise click.ClickException(_sentence(error)) from None
        except sa_exc.SQLAlchemyError as error:
            raise click.ClickException(_sentence(SQLAlchemyError(error))) from None
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise click.ClickException(f"cannot reach the message broker: {error}") from None
        except redis.RedisError as error:
            raise click.ClickException(f"message broker error: {error}") from None

    return wrapper  # type: ignore[return-value]


def _sentence(error: TopChefError) -> str:
    """The error as a lab user reads it: no serializer's jargon, one line for a server's."""
    if isinstance(error, ConfigurationError):
        return error.detail  # says what to set; "Configuration error:" adds nothing
    if type(error) is DeserializationError:
        return f"invalid {error.detail}"  # "invalid parameters.x: 'a' is not of type ..."
    if isinstance(error, SQLAlchemyError):
        underlying = error.underlying_exception
        reason = str(getattr(underlying, "orig", None) or underlying).strip().splitlines()
        first = reason[0] if reason else type(underlying).__name__
        if isinstance(underlying, sa_exc.OperationalError | sa_exc.InterfaceError):
            return f"cannot reach the database: {first}"
        return f"database error: {first}"
    return str(error)


def _settings(*, broker: bool = False, database: bool = False) -> Settings:
    """The settings, required to name the broker and/or database this command uses."""
    return Settings.from_env().require(broker=broker, database=database)


def _database(*, broker: bool = False) -> Settings:
    """Settings for a command that uses the database, which must exist with its schema.

    Checked first, so that no command but those that migrate (``db upgrade``,
    ``mirror``, ``beat``, ``api``, ``up``) creates a SQLite file, and a database
    with no schema is reported as such rather than as a failed query.
    """
    from broker.storage.migrate import check_schema

    settings = _settings(broker=broker, database=True)
    check_schema(settings.database_url)
    return settings


class _Seconds(click.ParamType[float]):
    """A duration: a finite number of seconds, not negative."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a number of seconds >= 0", param, ctx)
        return seconds


SECONDS = _Seconds()


def _json_argument(text: str, what: str) -> Any:
    source = text
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise DeserializationError(what, f"no such file: {path}")
        source = path.read_text()
    try:
        return json.loads(source)
    except json.JSONDecodeError as error:
        raise DeserializationError(what, f"not valid JSON: {error}") from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@click.group()
@click.version_option(package_name="topchef-broker")
def main() -> None:
    """TopChef: a job broker for laboratory instruments.

    Configure with TOPCHEF_BROKER_URL (Redis) and TOPCHEF_DATABASE_URL (SQL);
    unset, a command uses the `topchef up` in its working directory.
    """


@main.command()
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
@click.option("--loglevel", default="INFO", show_default=True)
@_user_errors
def worker(modules: tuple[str, ...], pool: str, concurrency: int, loglevel: str) -> None:
    """Serve every handler declared in MODULES (e.g. workers.echo workers.rabi).

    Services that do not exist yet are waited for, and served as they appear.
    """
    from broker.app import make_app
    from broker.tasks import job
    from broker.worker.boot import serve

    _logging(loglevel)
    settings = _settings(broker=True)
    app = make_app(settings)
    job.register(app)
    sys.path.insert(0, os.getcwd())
    serve(app, settings, modules, pool=pool, concurrency=concurrency, loglevel=loglevel)


@main.command()
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@_user_errors
def mirror(batch_size: int, loglevel: str) -> None:
    """Mirror job states from the message broker into SQL."""
    from broker.mirror.process import Mirror
    from broker.storage.migrate import upgrade

    _logging(loglevel)
    settings = _settings(broker=True, database=True)
    upgrade(settings.database_url)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics = None
    if settings.metrics_port:
        from broker.ops.metrics import serve

        metrics = serve(settings, settings.metrics_port, host=settings.metrics_host)
        click.echo(f"metrics on http://{settings.metrics_host}:{metrics.port}/metrics", err=True)
    click.echo("mirroring job states into SQL", err=True)
    try:
        Mirror(settings, batch_size=batch_size).run(stop)
    finally:
        if metrics is not None:
            metrics.close()


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@_user_errors
def beat(loglevel: str) -> None:
    """Run the periodic tasks: timeouts, lost workers' jobs, the outbox."""
    from broker.app import make_app
    from broker.beat import process as beat_process
    from broker.storage.migrate import upgrade
    from broker.tasks import beat as beat_tasks

    _logging(loglevel)
    settings = _settings(broker=True, database=True)
    upgrade(settings.database_url)
    app = make_app(settings)
    beat_tasks.register(app, settings)
    beat_process.start(app, settings, loglevel)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Requests served at once; each waiting claim holds one.",
)
@click.option("--loglevel", default="INFO", show_default=True)
@_user_errors
def api(host: str, port: int, threads: int, loglevel: str) -> None:
    """Serve TopChef's REST API (the HTTP gateway) for non-Python clients.

    Set TOPCHEF_API_TOKEN to require 'Authorization: Bearer <token>' (do, on
    any shared network).
    """
    from broker.gateway import Server
    from broker.storage.migrate import upgrade

    _logging(loglevel)
    settings = _settings(broker=True, database=True)
    upgrade(settings.database_url)
    server = Server(settings, host, port, threads)
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    auth = "bearer token required" if settings.api_token else "no token required"
    click.echo(f"TopChef API on {server.url}/ ({auth})", err=True)
    server.run()  # until Ctrl-C or SIGTERM
    click.echo("stopped", err=True)


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@_user_errors
def db_upgrade() -> None:
    """Apply the schema migrations (a database made before them is stamped)."""
    from broker.storage.migrate import upgrade

    url = _settings(database=True).database_url
    upgrade(url)
    click.echo(f"the schema of {masked(url)} is up to date")


@main.group()
def services() -> None:
    """Create and inspect services."""


@services.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the service does.")
@click.option(
    "--parameters",
    "registration",
    required=True,
    help="Registration schema: JSON text, or @file.json.",
)
@click.option("--results", "result", required=True, help="Result schema: JSON text, or @file.json.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between check-ins before the service times out.",
)
@click.option(
    "--worker-loss",
    type=click.Choice(["fail", "requeue"]),
    default="fail",
    show_default=True,
    help="What happens to a job whose worker dies mid-run.",
)
@click.option("--max-attempts", type=int, default=3, show_default=True)
@_user_errors
def services_create(
    name: str,
    description: str,
    registration: str,
    result: str,
    timeout: float,
    worker_loss: str,
    max_attempts: int,
) -> None:
    """Create the service NAME."""
    from broker.producer import Producer

    service_id = Producer(_database(broker=True)).create_service(
        name,
        description,
        _json_argument(registration, "job_registration_schema"),
        _json_argument(result, "job_result_schema"),
        timeout=timeout,
        worker_loss_policy=worker_loss,
        max_attempts=max_attempts,
    )
    click.echo(str(service_id))


@services.command("list")
@_user_errors
def services_list() -> None:
    """List every service."""
    from broker.models.service_list import ServiceList
    from broker.storage.tables import open_session

    with open_session(_database().database_url) as session:
        for service in ServiceList(session):
            state = "available" if service.is_service_available else "unavailable"
            timed_out = ", timed out" if service.has_timed_out else ""
            click.echo(f"{service.id}  {service.name}  ({state}{timed_out})")


@main.group()
def jobs() -> None:
    """Submit, inspect, wait for and cancel jobs."""


@jobs.command("submit")
@click.argument("service")
@click.argument("parameters")
@click.option(
    "--wait",
    "wait_seconds",
    type=SECONDS,
    default=None,
    help="Wait up to this many seconds and print the results.",
)
@click.option(
    "--per-message",
    type=click.IntRange(1, 1000),
    default=None,
    help="With a JSON list of parameter sets: jobs per Celery message, for short jobs "
    "[default: 1].",
)
@_user_errors
def jobs_submit(
    service: str, parameters: str, wait_seconds: float | None, per_message: int | None
) -> None:
    """Submit a job to SERVICE (by name) with PARAMETERS (JSON, or @file.json).

    A JSON list of objects submits one job per object, all in one transaction
    (a sweep), and prints one id per line; with --wait, every job's outcome
    follows, then a summary, and the exit is non-zero unless all completed.
    """
    from broker.producer import Producer

    value = _json_argument(parameters, "parameters")
    if isinstance(value, list) and not value:
        raise DeserializationError("parameters", "an empty list submits no job")
    if per_message is not None and not isinstance(value, list):
        raise click.ClickException(
            "--per-message applies to a sweep (a JSON list of parameter sets), not to one job"
        )
    producer = Producer(_database(broker=True))
    sweep = value if isinstance(value, list) else [value]
    job_ids = producer.submit_many(service, sweep, jobs_per_message=per_message or 1)
    for job_id in job_ids:
        click.echo(str(job_id))
    if wait_seconds is None:
        return
    if not isinstance(value, list):
        click.echo(json.dumps(producer.wait(job_ids[0], wait_seconds), indent=2))
        return
    outcomes = producer.outcomes(job_ids, wait_seconds)
    for outcome in outcomes:
        click.echo(_outcome_line(outcome))
    summary, all_completed = _summary(outcomes, wait_seconds)
    click.echo(summary)
    if not all_completed:
        raise SystemExit(1)


def _outcome_line(outcome: Outcome) -> str:
    if outcome.status.value == "COMPLETED":
        shown = json.dumps(outcome.results)
    elif outcome.finished:
        shown = outcome.detail or ""
    else:
        shown = "not finished"
    return f"{outcome.job_id}  {outcome.status.value:<10} {shown}"


def _summary(outcomes: list[Outcome], waited: float) -> tuple[str, bool]:
    """One line of counts, then each failed job with its reason; and whether all completed."""
    counts = {status: 0 for status in ("COMPLETED", "ERROR", "CANCELLED")}
    unfinished = 0
    for outcome in outcomes:
        if outcome.finished:
            counts[outcome.status.value] += 1
        else:
            unfinished += 1
    lines = [
        f"{len(outcomes)} jobs: {counts['COMPLETED']} completed, {counts['ERROR']} failed, "
        f"{counts['CANCELLED']} cancelled, {unfinished} not finished after {waited:g} s"
    ]
    lines += [
        f"failed {outcome.job_id}: {outcome.detail or 'no detail'}"
        for outcome in outcomes
        if outcome.status.value == "ERROR"
    ]
    return "\n".join(lines), counts["COMPLETED"] == len(outcomes)


@jobs.command("show")
@click.argument("job_id")
@_user_errors
def jobs_show(job_id: str) -> None:
    """Show a job (JOB_ID: its id, or the start of it, e.g. the 8 digits the demo prints)."""
    from broker.producer.reader import Reader

    reader = Reader(_database().database_url)
    click.echo(json.dumps(reader.job(reader.find(job_id)), indent=2))


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=SECONDS, default=60.0, show_default=True)
@_user_errors
def jobs_wait(job_id: str, timeout: float) -> None:
    """Wait for a job (JOB_ID: its id, or the start of it) and print its results."""
    from broker.producer.reader import Reader

    reader = Reader(_database().database_url)
    click.echo(json.dumps(reader.wait_all([reader.find(job_id)], timeout)[0], indent=2))


@jobs.command("cancel")
@click.argument("job_id")
@_user_errors
def jobs_cancel(job_id: str) -> None:
    """Cancel a job that has not started (JOB_ID: its id, or the start of it)."""
    from broker.errors import InvalidTransitionError
    from broker.producer import Producer

    producer = Producer(_database(broker=True))
    found = producer.find_job(job_id)
    try:
        cancelled = producer.cancel(found)
    except InvalidTransitionError as error:
        if error.current == "WORKING":
            raise click.ClickException(
                f"job {found} is already running: only a job that has not started can be cancelled"
            ) from None
        raise click.ClickException(
            f"job {found} already finished ({error.current}): there is nothing to cancel"
        ) from None
    click.echo(f"cancelled {found}" if cancelled else f"job {found} is already cancelled")


@services.command("show")
@click.argument("name")
@_user_errors
def services_show(name: str) -> None:
    """Show the service NAME, with its schemas."""
    from broker.models.service_list import ServiceList
    from broker.storage.tables import open_session

    with open_session(_database().database_url) as session:
        click.echo(json.dumps(ServiceList(session).by_name(name).as_dict(), indent=2))


@jobs.command("list")
@click.option("--service", "service_name", default=None, help="Only this service's jobs.")
@click.option("--status", type=click.Choice([s.value for s in Job.JobStatus]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@_user_errors
def jobs_list(service_name: str | None, status: str | None, limit: int) -> None:
    """List the newest jobs."""
    from broker.models.job_list import JobList
    from broker.models.service_list import ServiceList
    from broker.storage.tables import open_session

    with open_session(_database().database_url) as session:
        directory = ServiceList(session)
        listing = directory.by_name(service_name).jobs if service_name else JobList(session)
        if status:
            listing = listing.with_status(Job.JobStatus(status))
        names = {service.id: service.name for service in directory}
        for job in listing.page(0, limit):
            click.echo(
                f"{job.id}  {names.get(job.service_id, '?')[:24]:<24} {job.status.value:<10} "
                f"{job.date_submitted:%Y-%m-%d %H:%M:%S}"
            )


@main.command()
@_user_errors
def status() -> None:
    """Show every service (availability, check-ins, queue depth) and job counts."""
    from broker.ops.report import render_status

    settings = _database(broker=True)
    click.echo(f"broker:   {masked(settings.broker_url)}")
    click.echo(f"database: {masked(settings.database_url)}\n")
    click.echo(render_status(settings))


@main.command()
@click.option(
    "--jobs",
    "job_count",
    type=click.IntRange(1, 500),
    default=12,
    show_default=True,
    help="How many Rabi experiments to run.",
)
@click.option("--timeout", type=SECONDS, default=45.0, show_default=True)
@_user_errors
def demo(job_count: int, timeout: float) -> None:
    """Run the whole broker end to end: no configuration, nothing left behind."""
    from broker.ops.demo import run_demo

    run_demo(job_count, timeout)


@main.command()
@click.option(
    "--worker",
    "workers",
    multiple=True,
    default=("workers.echo", "workers.rabi"),
    show_default=True,
    help="Worker modules to serve (repeat for several).",
)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=4, show_default=True)
@_user_errors
def up(workers: tuple[str, ...], concurrency: int) -> None:
    """Run mirror, beat and workers in the foreground until Ctrl-C (a single-PC lab).

    Unconfigured, it starts an embedded Redis and uses topchef.sqlite3 here;
    other `topchef` commands run in this directory find it.
    """
    from broker.ops.supervisor import local_stack

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with local_stack(Path.cwd(), workers, concurrency) as (settings, supervisor):
        click.echo(
            f"TopChef is up. Broker: {masked(settings.broker_url)}  "
            f"Database: {masked(settings.database_url)}"
        )
        click.echo("Logs: .topchef/logs/   Stop with Ctrl-C.")
        while not stop.wait(0.5):
            supervisor.check()
    click.echo("stopped")


@main.command()
@click.option("--port", type=int, default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@_user_errors
def flower(port: int, address: str) -> None:
    """Start the Flower dashboard on the configured broker.

    Set FLOWER_BASIC_AUTH=user:password to require a login (do, on any shared network).
    """
    from broker.app import make_app

    settings = _settings(broker=True)
    args = ["flower", f"--port={port}", f"--address={address}"]
    basic_auth = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
    if basic_auth:
        args.append(f"--basic-auth={basic_auth}")
    make_app(settings).start(args)
