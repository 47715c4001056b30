"""``topchef artifacts``: results of real size, fetched by their digest."""

from __future__ import annotations

from pathlib import Path

import click

from broker.cli.options import user_errors


@click.group()
def artifacts() -> None:
    """Arrays, files and large values jobs returned, kept by their SHA-256 (``jobs show``
    names them)."""


@artifacts.command("get")
@click.argument("digest")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True,
    help="The file to write the artifact's bytes to (an array: a .npy file NumPy opens).",
)
@user_errors
def artifacts_get(digest: str, output: Path) -> None:
    """Write the artifact DIGEST (sha256:…, as `jobs show` prints it) to a file, checked."""
    from broker.artifacts.stores import copy_out, store_for
    from broker.errors import ConfigurationError
    from broker.settings import Settings

    url = Settings.from_env().artifacts_url
    if not url:
        raise ConfigurationError(
            "no artifact store here: set TOPCHEF_ARTIFACTS_URL, or run in a `topchef up` directory"
        )
    store = store_for(url)
    store.verify(digest)
    size = copy_out(store, digest, output)
    click.echo(f"{output}: {size} bytes, {digest}")
