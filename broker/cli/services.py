"""``topchef services``: create, list, show, hold, resume and set options of services."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
import redis

from broker.cli.options import (
    database_settings,
    json_argument,
    user_errors,
)


class CountOrWord(click.ParamType[int | None]):
    """A whole number, or one of ``words`` (the first is shown in help) meaning None."""

    def __init__(self, *words: str) -> None:
        self.name = f"N|{words[0]}"
        self._words = words

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None:
            return None
        if str(value).strip().lower() in self._words:
            return None
        if isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number nor {self._words[0]!r}", param, ctx)


#: A job limit: ``0``, ``none`` or ``unlimited`` for no limit.
MAX_RUNNING = CountOrWord("none", "0", "unlimited")
#: Jobs per message: ``auto`` to choose them from the service's run times.
PER_MESSAGE = CountOrWord("auto")


@click.group()
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
@click.option(
    "--retries/--no-retries",
    default=False,
    show_default=True,
    help="Let handlers ask for a retry (Retry), up to --max-attempts runs in all.",
)
@click.option(
    "--retry-on",
    multiple=True,
    help="An exception type name that asks for a retry (repeat for several); needs --retries.",
)
@click.option(
    "--retry-backoff",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds before the second attempt, doubling for each next one (capped at an hour).",
)
@click.option(
    "--max-running",
    type=MAX_RUNNING,
    default=None,
    help="At most this many of its jobs running at once, however many workers serve it "
    "(1: an exclusive instrument) [default: no limit].",
)
@click.option(
    "--jobs-per-message",
    type=PER_MESSAGE,
    default=None,
    help="Jobs of a sweep per Celery message, 1 for each on its own "
    "[default: auto, chosen from its run times].",
)
@user_errors
def services_create(
    name: str,
    description: str,
    registration: str,
    result: str,
    timeout: float,
    worker_loss: str,
    max_attempts: int,
    retries: bool,
    retry_on: tuple[str, ...],
    retry_backoff: float,
    max_running: int | None,
    jobs_per_message: int | None,
) -> None:
    """Create the service NAME."""
    from broker.producer import Producer

    service_id = Producer(database_settings(broker=True)).create_service(
        name,
        description,
        json_argument(registration, "job_registration_schema"),
        json_argument(result, "job_result_schema"),
        timeout=timeout,
        worker_loss_policy=worker_loss,
        max_attempts=max_attempts,
        retries=retries,
        retry_on=list(retry_on),
        retry_backoff=retry_backoff,
        max_running=max_running,
        jobs_per_message=jobs_per_message,
    )
    click.echo(str(service_id))


@services.command("list")
@user_errors
def services_list() -> None:
    """List every service."""
    from broker.models.service_list import ServiceList
    from broker.storage.tables import open_session

    with open_session(database_settings().database_url) as session:
        for service in ServiceList(session):
            state = "available" if service.is_service_available else "unavailable"
            timed_out = ", timed out" if service.has_timed_out else ""
            click.echo(f"{service.id}  {service.name}  ({state}{timed_out})")


@services.command("show")
@click.argument("name")
@user_errors
def services_show(name: str) -> None:
    """Show the service NAME: its schemas, options, hold, and jobs running and waiting."""
    from broker.models.lifecycle import Status
    from broker.models.service_list import ServiceList
    from broker.ops.census import take_census
    from broker.storage.tables import open_session

    settings = database_settings()
    with open_session(settings.database_url) as session:
        service = ServiceList(session).by_name(name)
        shown = service.as_dict()
        counts = take_census(session).jobs
        shown["jobs_running"] = counts.get((service.id, Status.WORKING.value), 0)
        # Queued or parked: every REGISTERED job waits for a worker, or for its service.
        shown["jobs_waiting"] = counts.get((service.id, Status.REGISTERED.value), 0)
    shown["jobs_parked"] = _parked(settings.broker_url, service.id)
    click.echo(json.dumps(shown, indent=2))


def _parked(broker_url: str, service_id: uuid.UUID) -> int | None:
    """How many of the service's waiting jobs are parked; None when Redis cannot say."""
    if not broker_url:
        return None
    from broker.messaging.claims import Claims
    from broker.messaging.connections import redis_client

    try:
        return Claims(redis_client(broker_url)).parked([service_id])[0]
    except redis.RedisError:
        return None


@services.command("hold")
@click.argument("name")
@click.option("--reason", default=None, help="Why, for whoever reads `topchef status`.")
@user_errors
def services_hold(name: str, reason: str | None) -> None:
    """Start no job of the service NAME until it is resumed.

    Jobs are still accepted and queued; one already running finishes.
    """
    from broker.producer import Producer

    if Producer(database_settings(broker=True)).hold_service(name, reason):
        click.echo(f"{name} held: no job starts until `topchef services resume {name}`")
    else:
        click.echo(f"{name} was held already (its hold is unchanged)")


@services.command("resume")
@click.argument("name")
@user_errors
def services_resume(name: str) -> None:
    """End the hold of the service NAME: its waiting jobs start, in their order."""
    from broker.producer import Producer

    if Producer(database_settings(broker=True)).resume_service(name):
        click.echo(f"{name} resumed")
    else:
        click.echo(f"{name} was not held")


@services.command("set")
@click.argument("name")
@click.option(
    "--max-running",
    type=MAX_RUNNING,
    default=None,
    help="At most this many of its jobs running at once; 0 or 'none' for no limit.",
)
@click.option(
    "--jobs-per-message",
    type=PER_MESSAGE,
    default=None,
    help="Jobs of a sweep per Celery message; 'auto' to choose from its run times.",
)
@click.pass_context
@user_errors
def services_set(
    context: click.Context, name: str, max_running: int | None, jobs_per_message: int | None
) -> None:
    """Change options of the service NAME (its max_running, its jobs_per_message)."""
    from broker.producer import Producer

    given = {
        option
        for option in ("max_running", "jobs_per_message")
        if context.get_parameter_source(option) is not click.core.ParameterSource.DEFAULT
    }
    if not given:
        raise click.UsageError("say what to change: --max-running and/or --jobs-per-message")
    producer = Producer(database_settings(broker=True))
    if "max_running" in given:
        producer.set_max_running(name, max_running)
        limit = "no limit" if max_running is None else f"at most {max_running}"
        click.echo(f"{name}: {limit} running at once")
    if "jobs_per_message" in given:
        producer.set_jobs_per_message(name, jobs_per_message)
        per = "chosen from its run times" if jobs_per_message is None else jobs_per_message
        click.echo(f"{name}: jobs per message: {per}")
