"""``topchef workers``: enroll, revoke and list the credentials workers report with."""

from __future__ import annotations

from pathlib import Path

import click

from broker.cli.options import database_settings, user_errors

#: Where ``enroll`` writes the credential unless told: a file named after it, here.
KEY_SUFFIX = ".key"


@click.group()
def workers() -> None:
    """The credentials workers authenticate their reports with (one per worker PC)."""


@workers.command()
@click.argument("name")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the worker's credential (mode 0600); default: NAME.key here.",
)
@click.option(
    "--reuse",
    is_flag=True,
    help="If the key file holds NAME's credential already, check that it is enrolled (and "
    "enroll it if the database does not know it) instead of refusing: for a container's "
    "every start.",
)
@user_errors
def enroll(name: str, key_file: Path | None, reuse: bool) -> None:
    """Enroll a worker as NAME: make its secret key, record it, write it to a file.

    The file is a secret: whoever reads it can report as NAME. Copy it to the
    worker's PC (and nowhere else), and start the worker there with
    TOPCHEF_WORKER_KEY set to its path.
    """
    from broker.models import credentials as enrollment
    from broker.storage.tables import open_session
    from broker.trust import credentials
    from broker.trust.reports import ReportKey

    credentials.check_name(name)
    path = key_file if key_file is not None else Path(f"{name}{KEY_SUFFIX}")
    settings = database_settings()
    if reuse and path.exists():
        kept = credentials.read(path)
        if kept.name != name:
            raise click.ClickException(f"{path} holds the credential {kept.name!r}, not {name!r}")
        with open_session(settings.database_url) as session, session.begin():
            enrollment.ensure_enrolled(session, name, kept.key)
        click.echo(f"{name!r} is enrolled with the key in {path}")
        return
    if path.exists():
        raise click.ClickException(f"{path} exists already: choose another --key-file")
    credential = credentials.Credential(name, ReportKey.generate())
    with open_session(settings.database_url) as session, session.begin():
        enrollment.enroll(session, name, credential.key)
        # Written before the commit: a file that cannot be written enrolls nothing.
        credentials.write(path, credential)
    click.echo(f"enrolled {name!r}; its credential is in {path} (keep it secret: mode 0600)")
    click.echo("On the worker's PC:")
    click.echo(f"  export TOPCHEF_WORKER_KEY=/path/to/{path.name}")
    click.echo("  topchef worker YOUR_MODULE")


@workers.command()
@click.argument("name")
@user_errors
def revoke(name: str) -> None:
    """Revoke NAME: the mirror refuses its reports from now on, and its jobs' later outcomes."""
    from broker import actors
    from broker.models import credentials as enrollment
    from broker.storage.tables import open_session

    settings = database_settings()
    with open_session(settings.database_url) as session, session.begin():
        revoked = enrollment.revoke(session, name)
        failed = enrollment.fail_held(session, name, actors.person())
    at = revoked.revoked_at.isoformat(timespec="seconds") if revoked.revoked_at else "now"
    click.echo(f"revoked {name!r} at {at}: its reports are refused from now on")
    if failed:
        click.echo(f"{len(failed)} job(s) it was running ended ERROR (`topchef jobs resubmit ID`)")


@workers.command("list")
@user_errors
def list_workers() -> None:
    """List the enrolled credentials, and those revoked."""
    from broker.models import credentials as enrollment
    from broker.storage.tables import open_session

    settings = database_settings()
    with open_session(settings.database_url) as session:
        rows = enrollment.enrolled(session)
    if not rows:
        click.echo("no worker is enrolled: `topchef workers enroll NAME` enrolls one")
        return
    for row in rows:
        enrolled = row.enrolled_at.isoformat(timespec="seconds")
        state = (
            f"revoked {row.revoked_at.isoformat(timespec='seconds')}"
            if row.revoked_at is not None
            else "enrolled"
        )
        click.echo(f"{row.name:<24} {state:<34} since {enrolled}  key {row.fingerprint}")
