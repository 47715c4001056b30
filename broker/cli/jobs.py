"""``topchef jobs``: submit, list, show, wait for, cancel and abort jobs, and read their history."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from broker.artifacts.references import described
from broker.cli import display
from broker.cli.options import (
    SECONDS,
    database_settings,
    json_argument,
    user_errors,
)
from broker.errors import DeserializationError
from broker.models.interfaces.job import Job
from broker.ops.progress_bar import live_bar, printable

if TYPE_CHECKING:
    from broker.models.job import Job as StoredJob
    from broker.producer.reader import Outcome

#: ``--results``: the one switch from a summary that fits a screen to everything.
whole_results = click.option(
    "--results",
    "whole",
    is_flag=True,
    help="Print the results whole, as JSON, however large [default: summarised to fit a screen].",
)
#: Said on stderr when a summary left something out, so the next command gets it all.
SUMMARISED = "(summarised to fit a screen: --results prints the results whole)"
SUMMARISED_JOB = "(summarised to fit a screen: --results prints its results whole, --json the job)"


@click.group()
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
    help="With a JSON list of parameter sets: jobs per Celery message, 1 for each on its own "
    "[default: the service's, else chosen from its run times].",
)
@click.option(
    "--not-before",
    "not_before",
    default=None,
    help="Hold the job until this time, with its zone (ISO 8601, e.g. 2026-12-24T08:00Z), "
    "or for this long from now (+30s, +10m, +2h, +1d).",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    default=5,
    show_default=True,
    help="0 to 9, higher first: the service's workers start its highest-priority job first.",
)
@whole_results
@user_errors
def jobs_submit(
    service: str,
    parameters: str,
    wait_seconds: float | None,
    per_message: int | None,
    not_before: str | None,
    priority: int,
    whole: bool,
) -> None:
    """Submit a job to SERVICE (by name) with PARAMETERS (JSON, or @file.json).

    A JSON list of objects submits one job per object, all in one transaction
    (a sweep), and prints one id per line; with --wait, every job's outcome
    follows, then a summary, and the exit is non-zero unless all completed.
    On a terminal, --wait shows a progress bar (on stderr) while it waits.
    """
    from broker.contract import times
    from broker.producer import Producer

    value = json_argument(parameters, "parameters")
    when = None if not_before is None else times.parse_when(not_before, "--not-before")
    if isinstance(value, list) and not value:
        raise DeserializationError("parameters", "an empty list submits no job")
    if per_message is not None and not isinstance(value, list):
        raise click.ClickException(
            "--per-message applies to a sweep (a JSON list of parameter sets), not to one job"
        )
    producer = Producer(database_settings(broker=True))
    if isinstance(value, list):  # a sweep: an error names its point, parameters[3].x
        job_ids = producer.submit_many(
            service, value, jobs_per_message=per_message, not_before=when, priority=priority
        )
    else:
        job_ids = [producer.submit(service, value, not_before=when, priority=priority)]
    for job_id in job_ids:
        click.echo(str(job_id))
    if wait_seconds is None:
        return
    if not isinstance(value, list):
        with live_bar("Waiting") as watch:
            [results] = producer.reader.wait_all(job_ids[0:1], wait_seconds, watch=watch)
        _echo_results(results, whole)
        return
    with live_bar("Waiting") as watch:
        outcomes = producer.outcomes(job_ids, wait_seconds, watch=watch)
    lines = [_outcome_line(outcome, whole) for outcome in outcomes]
    for line, _ in lines:
        click.echo(line)
    summary, all_completed = _summary(outcomes, wait_seconds)
    click.echo(summary)
    if any(summarised for _, summarised in lines):
        click.echo(SUMMARISED, err=True)
    if not all_completed:
        raise SystemExit(1)


def _echo_results(results: Any, whole: bool, hint: str = SUMMARISED) -> None:
    """Results as indented JSON; summarised to fit a screen unless ``whole`` (``--results``).

    An artifact is summarised as one line (``topchef artifacts get`` fetches it).
    """
    if whole:
        click.echo(json.dumps(results, indent=2))
        return
    shown = display.block(described(results))
    click.echo(shown.text)
    if shown.summarised:
        click.echo(hint, err=True)


def _outcome_line(outcome: Outcome, whole: bool) -> tuple[str, bool]:
    """A sweep's job on one line (its results summarised to fit unless ``whole``)."""
    prefix = f"{outcome.job_id}  {outcome.status.value:<10} "
    if outcome.status.value == "COMPLETED":
        if whole:
            return prefix + json.dumps(outcome.results), False
        shown = display.one_line(described(outcome.results), display.LONGEST - len(prefix))
        return prefix + shown.text, shown.summarised
    if outcome.finished:
        return prefix + (outcome.detail or ""), False
    return prefix + "not finished", False


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
@whole_results
@click.option(
    "--json", "as_json", is_flag=True, help="Print the whole job, as JSON, however large."
)
@user_errors
def jobs_show(job_id: str, whole: bool, as_json: bool) -> None:
    """Show a job (JOB_ID: its id, or the start of it, e.g. the 8 digits the demo prints).

    The job, with its progress, earlier attempts and provenance, summarised
    to fit a screen; --results prints only its results, whole, and --json
    the whole job: both as JSON, for programs.
    """
    from broker.producer.reader import Reader

    if whole and as_json:
        raise click.UsageError("--results prints the results alone, --json the whole job: one")
    reader = Reader(database_settings().database_url)
    found = reader.find(job_id)
    shown = reader.job(found)
    if whole:
        click.echo(json.dumps(shown["results"], indent=2))
        return
    shown["earlier_attempts"] = reader.earlier_attempts(found)
    shown["provenance"] = reader.provenance(found)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    _echo_results(shown, whole=False, hint=SUMMARISED_JOB)


@jobs.command("history")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the history as a JSON list.")
@user_errors
def jobs_history(job_id: str, as_json: bool) -> None:
    """Every move of a job, oldest first: when, from → to, by whom, attempt, detail."""
    from broker.producer.reader import Reader

    reader = Reader(database_settings().database_url)
    entries = reader.history(reader.find(job_id))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        move = f"{entry['from'] or '':>10} → {entry['to']:<10}"
        attempt = "" if entry["attempt"] is None else str(entry["attempt"])
        line = (
            f"{entry['at']}  {move}  {entry['by'] or '?':<28} {attempt:>3}  {entry['detail'] or ''}"
        )
        click.echo(line.rstrip())


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=SECONDS, default=60.0, show_default=True)
@whole_results
@user_errors
def jobs_wait(job_id: str, timeout: float, whole: bool) -> None:
    """Wait for a job (JOB_ID: its id, or the start of it) and print its results.

    On a terminal, a progress bar (on stderr) shows how far the job got: the
    fraction and message its handler last reported, and the time waited.
    """
    from broker.producer.reader import Reader

    reader = Reader(database_settings().database_url)
    found = reader.find(job_id)
    with live_bar("Waiting") as watch:
        [results] = reader.wait_all([found], timeout, watch=watch)
    _echo_results(results, whole)


@jobs.command("cancel")
@click.argument("job_id")
@user_errors
def jobs_cancel(job_id: str) -> None:
    """Cancel a job that has not started (JOB_ID: its id, or the start of it)."""
    from broker.errors import InvalidTransitionError
    from broker.producer import Producer

    producer = Producer(database_settings(broker=True))
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


@jobs.command("abort")
@click.argument("job_id")
@click.option("--reason", default="", help="Why, for the job's record.")
@user_errors
def jobs_abort(job_id: str, reason: str) -> None:
    """Abort a job (JOB_ID: its id, or the start of it): cancel it, or stop its run.

    A job that has not started is cancelled. A running job's handler learns of
    the abort at its next progress() or aborted() call, and the job ends
    CANCELLED, with whatever partial results the handler returns. A finished
    job cannot be aborted (exit status 1).
    """
    from broker.producer import Producer

    producer = Producer(database_settings(broker=True))
    found = producer.find_job(job_id)
    outcome = producer.abort(found, reason)
    click.echo(
        {
            "cancelled": f"cancelled {found} (it had not started)",
            "requested": f"abort requested: job {found}'s handler stops at its next check",
            "already": f"an abort of job {found} was already requested",
        }[outcome]
    )


@jobs.command("resubmit")
@click.argument("job_id")
@click.option(
    "--wait",
    "wait_seconds",
    type=SECONDS,
    default=None,
    help="Wait up to this many seconds and print the new job's results.",
)
@whole_results
@user_errors
def jobs_resubmit(job_id: str, wait_seconds: float | None, whole: bool) -> None:
    """Submit JOB_ID's parameters again, as a new job linked to it; print the new id.

    The parameters are validated against the service's contract as it is now.
    """
    from broker.producer import Producer

    producer = Producer(database_settings(broker=True))
    new_id = producer.resubmit(producer.find_job(job_id))
    click.echo(str(new_id))
    if wait_seconds is not None:
        with live_bar("Waiting") as watch:
            [results] = producer.reader.wait_all([new_id], wait_seconds, watch=watch)
        _echo_results(results, whole)


@jobs.command("list")
@click.option("--service", "service_name", default=None, help="Only this service's jobs.")
@click.option("--status", type=click.Choice([s.value for s in Job.JobStatus]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@user_errors
def jobs_list(service_name: str | None, status: str | None, limit: int) -> None:
    """List the newest jobs."""
    from broker.models.job_list import JobList
    from broker.models.service_list import ServiceList
    from broker.storage.tables import open_session

    with open_session(database_settings().database_url) as session:
        directory = ServiceList(session)
        listing = directory.by_name(service_name).jobs if service_name else JobList(session)
        if status:
            listing = listing.with_status(Job.JobStatus(status))
        names = {service.id: service.name for service in directory}
        for job in listing.page(0, limit):
            click.echo(
                f"{job.id}  {names.get(job.service_id, '?')[:24]:<24} {job.status.value:<10} "
                f"{job.date_submitted:%Y-%m-%d %H:%M:%S}{_waits(job)}{_progress(job)}"
            )


def _waits(job: Job) -> str:
    """``  not before <time>`` for a REGISTERED job held until a time (or a retry's backoff)."""
    held = getattr(job, "not_before", None)
    if held is None or job.status is not Job.JobStatus.REGISTERED:
        return ""
    return f"  not before {held:%Y-%m-%d %H:%M:%S}Z"


#: The characters of a progress message ``jobs list`` shows, to keep its line one line.
PROGRESS_NOTE = 40


def _progress(job: StoredJob) -> str:
    """``  40% point 81/200`` for a running job: what its handler last reported."""
    if job.status is not Job.JobStatus.WORKING or job.progress is None:
        return ""
    note = printable(job.progress_message or "", PROGRESS_NOTE)
    return f"  {job.progress:4.0%} {note}".rstrip()
