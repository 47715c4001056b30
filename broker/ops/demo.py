"""``topchef demo``: the whole broker, end to end, in well under a minute.

Starts a stack (embedded Redis and SQLite unless configured), submits a sweep
of simulated Rabi-oscillation experiments, follows them with a progress bar,
prints their results as read back from SQL, and shuts everything down.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from broker.errors import WaitTimeoutError
from broker.ops.progress_bar import live_bar
from broker.ops.supervisor import Supervisor, local_stack
from broker.producer import Producer, Standing
from broker.settings import Settings, masked
from broker.storage.tables import JobRow, open_session

RABI = "Rabi oscillation"


def sweep(jobs: int) -> list[dict[str, Any]]:
    """Rabi frequencies from 0.5 to 5 MHz: a parameter sweep, as a lab submits it."""
    return [
        {
            "rabi_frequency_mhz": round(0.5 + 4.5 * index / max(1, jobs - 1), 3),
            "max_pulse_us": 2.0,
            "points": 41,
            "shots": 200,
            "seconds_per_point": 0.005,
        }
        for index in range(jobs)
    ]


def run_demo(jobs: int = 12, timeout: float = 45.0, directory: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="topchef-demo-") as scratch:
        where = directory or Path(scratch)
        click.echo(f"Starting the stack in {where} ...")
        with local_stack(where) as (settings, supervisor):
            _wait_until_serving(settings, supervisor, timeout)
            producer = Producer(settings)
            click.echo(
                f"Broker: {masked(settings.broker_url)}\nDatabase: {masked(settings.database_url)}"
            )
            job_ids = producer.submit_many(RABI, sweep(jobs))
            click.echo(f"Submitted {len(job_ids)} Rabi jobs (validated, one transaction).")
            _follow(producer, supervisor, job_ids, timeout)
            _print_results(settings, job_ids)
            click.echo("Shutting down ...")
    click.echo("Done.")


def _wait_until_serving(settings: Settings, supervisor: Supervisor, timeout: float) -> None:
    """Wait for the workers' first check-in to reach SQL through the mirror."""
    from broker.models.service_list import ServiceList

    deadline = time.monotonic() + timeout
    while True:
        supervisor.check()
        with open_session(settings.database_url) as session:
            if ServiceList(session).by_name(RABI).is_service_available:
                return
        if time.monotonic() > deadline:
            raise WaitTimeoutError(uuid.UUID(int=0), "starting", timeout)
        time.sleep(0.1)


def _follow(
    producer: Producer, supervisor: Supervisor, job_ids: list[uuid.UUID], timeout: float
) -> None:
    """Wait for the sweep, with the progress bar ``topchef jobs wait`` draws, on a terminal.

    Each look at SQL also tends the stack's processes: one that died is
    started again, and one that cannot be (or a dead Redis) ends the demo at
    once rather than at the timeout.
    """
    with live_bar("Running") as bar:

        def watch(standing: Standing) -> None:
            supervisor.check()
            if bar is not None:
                bar(standing)

        outcomes = producer.outcomes(job_ids, timeout, watch=watch)
    unfinished = [outcome for outcome in outcomes if not outcome.finished]
    if unfinished:
        raise WaitTimeoutError(unfinished[0].job_id, unfinished[0].status.value, timeout)


def _print_results(settings: Settings, job_ids: list[uuid.UUID]) -> None:
    with open_session(settings.database_url) as session:
        rows = session.scalars(
            sa.select(JobRow).where(JobRow.id.in_(job_ids)).order_by(JobRow.date_submitted)
        ).all()
    header = (
        f"{'job':<10} {'set (MHz)':>9} {'fitted (MHz)':>12} {'peak P(e)':>9} "
        f"{'status':<10} {'run (s)':>7}"
    )
    click.echo("\n" + header + "\n" + "-" * len(header))
    for row in sorted(rows, key=lambda r: r.parameters["rabi_frequency_mhz"]):
        peak = (row.results or {}).get("peak_population")
        fitted = (row.results or {}).get("fitted_rabi_frequency_mhz")
        seconds = (
            (row.date_finished - row.date_started).total_seconds()
            if row.date_finished and row.date_started
            else None
        )
        click.echo(
            f"{str(row.id)[:8]:<10} {row.parameters['rabi_frequency_mhz']:>9.3f} "
            f"{'' if fitted is None else f'{fitted:.2f}':>12} "
            f"{'' if peak is None else f'{peak:.3f}':>9} {row.status:<10} "
            f"{'' if seconds is None else f'{seconds:.2f}':>7}"
        )
    completed = sum(row.status == "COMPLETED" for row in rows)
    click.echo(f"\n{completed}/{len(rows)} jobs COMPLETED (read back from SQL).")
