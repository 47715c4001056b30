"""``topchef services``: create, list and show services."""

from __future__ import annotations

import json

import click

from broker.cli.options import (
    database_settings,
    json_argument,
    user_errors,
)


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
    """Show the service NAME, with its schemas."""
    from broker.models.service_list import ServiceList
    from broker.storage.tables import open_session

    with open_session(database_settings().database_url) as session:
        click.echo(json.dumps(ServiceList(session).by_name(name).as_dict(), indent=2))
