"""``topchef status`` and ``topchef db``: what a stack holds, and its schema."""

from __future__ import annotations

import click

from broker.cli.options import (
    database_settings,
    required_settings,
    user_errors,
)
from broker.settings import masked


@click.command()
@user_errors
def status() -> None:
    """Show every service (availability, live workers, check-ins, waiting and running jobs)."""
    from broker.ops.report import render_status

    settings = database_settings(broker=True)
    click.echo(f"broker:   {masked(settings.broker_url)}")
    click.echo(f"database: {masked(settings.database_url)}\n")
    click.echo(render_status(settings))


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@user_errors
def db_upgrade() -> None:
    """Apply the schema migrations (a database made before them is stamped)."""
    from broker.storage.migrate import upgrade

    url = required_settings(database=True).database_url
    upgrade(url)
    click.echo(f"the schema of {masked(url)} is up to date")
