"""``topchef keys``: the registration key pair, for a deployment ``topchef up`` does not make."""

from __future__ import annotations

from pathlib import Path

import click

from broker.cli.options import user_errors


@click.group()
def keys() -> None:
    """The registration keys: the core signs every job, lab workers check the signature."""


@keys.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--public-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the public key here instead (a directory lab workers may read).",
)
@user_errors
def keys_init(directory: Path, public_dir: Path | None) -> None:
    """Make the key pair in DIRECTORY, unless it is there already (it is never replaced).

    The private key (registration.key, mode 600) goes to producers, beat and
    the HTTP gateway as TOPCHEF_REGISTRATION_SIGNING_KEY; the public key
    (registration.pub) to every worker as TOPCHEF_REGISTRATION_PUBLIC_KEY.
    """
    from broker.settings import PUBLIC_KEY_FILE, SIGNING_KEY_FILE
    from broker.trust.registrations import ensure_pair
    from broker.trust.signing import read_public

    private, public = directory / SIGNING_KEY_FILE, (public_dir or directory) / PUBLIC_KEY_FILE
    ensure_pair(private, public)
    click.echo(f"TOPCHEF_REGISTRATION_SIGNING_KEY={private}  (producers, beat, the HTTP API)")
    click.echo(f"TOPCHEF_REGISTRATION_PUBLIC_KEY={public}  (workers; or its text:)")
    click.echo(f"  {read_public(str(public)).text}")
