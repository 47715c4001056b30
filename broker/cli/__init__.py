"""The ``topchef`` command: every process and every everyday operation.

Each command's module imports what its command runs only when it runs, so
``topchef jobs show`` loads no worker runtime and no beat.
"""

from __future__ import annotations

import click

from broker.cli import artifacts, jobs, keys, processes, services, stack, workers


@click.group()
@click.version_option(package_name="topchef-broker")
def main() -> None:
    """TopChef: a job broker for laboratory instruments.

    Configure with TOPCHEF_BROKER_URL (Redis) and TOPCHEF_DATABASE_URL (SQL);
    unset, a command uses the `topchef up` in its working directory.
    """


for command in (
    processes.worker,
    processes.mirror,
    processes.beat,
    processes.api,
    stack.db,
    services.services,
    jobs.jobs,
    stack.status,
    processes.demo,
    processes.up,
    processes.flower,
    keys.keys,
    workers.workers,
    artifacts.artifacts,
):
    main.add_command(command)

__all__ = ["main"]
