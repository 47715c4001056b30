"""Jobs held until a time: through real worker and beat processes, HTTP and the CLI."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import lab
import lab_controls as lc
import pytest
from click.testing import CliRunner
from support import wait_for

from broker.cli import main
from broker.errors import DeserializationError

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
pytest_plugins = ["gateway_support"]


def _at(value):
    return datetime.fromisoformat(value)


def _held_and_cancelled(stack, seconds):
    """Two jobs held ``seconds`` from now, the second cancelled while it waits."""
    due = datetime.now(UTC) + timedelta(seconds=seconds)
    job = stack.producer.submit(lab.SQUARE, {"x": 3}, not_before=due)
    cancelled = stack.producer.submit(lab.SQUARE, {"x": 4}, not_before=due)
    assert stack.producer.cancel(cancelled)
    return due, job, cancelled


def _assert_waited_and_ran(stack, due, job, cancelled):
    ended = stack.wait_status(job, "COMPLETED")
    assert _at(ended["not_before"]) == due
    assert _at(ended["date_started"]) >= due
    assert ended["results"] == {"square": 9}
    never = stack.job(cancelled)
    assert never["status"] == "CANCELLED"
    assert never["date_started"] is None
    assert stack.claims.state(cancelled) == "cancelled"
    return ended


def test_a_held_job_waits_for_its_time_and_a_cancelled_one_never_starts(stack):
    stack.create_lab_services()
    stack.start_mirror()
    stack.worker()
    stack.process("beat", "--loglevel", "INFO")
    due, job, cancelled = _held_and_cancelled(stack, 3.0)

    # Until then nothing hands it to a worker: no message, no claim.
    wait_for(lambda: datetime.now(UTC) > due - timedelta(seconds=1), 10, "time to pass")
    assert stack.status(job) == "REGISTERED"
    assert stack.claims.state(job) is None

    ended = _assert_waited_and_ran(stack, due, job, cancelled)
    assert _at(ended["date_started"]) - due < timedelta(seconds=5)


def test_held_jobs_survive_a_beat_killed_while_they_wait(stack):
    stack.create_lab_services()
    stack.start_mirror()
    stack.worker()
    beat = stack.process("beat", "--loglevel", "INFO")
    due, job, cancelled = _held_and_cancelled(stack, 4.0)
    wait_for(lambda: "topchef.beat.due" in beat.log(), 30, "beat to run its due check")
    beat.kill()
    assert stack.status(job) == "REGISTERED"

    stack.process("beat", "--loglevel", "INFO")
    _assert_waited_and_ran(stack, due, job, cancelled)


def test_not_before_must_carry_its_zone(stack):
    stack.create_lab_services()
    with pytest.raises(DeserializationError):
        stack.producer.submit(lab.SQUARE, {"x": 1}, not_before=datetime(2026, 12, 24, 8))


def test_over_http_a_held_job_is_no_ones_before_its_time(api, stack):
    service = api.create_service(lc.FLAKY, lc.TAGGED_SCHEMA, lc.COUNT_RESULTS, retries=True)
    due = datetime.now(UTC) + timedelta(seconds=2)
    created = api.post(
        f"/services/{service}/jobs",
        json={"parameters": {"tag": "http"}, "not_before": due.isoformat().replace("+00:00", "Z")},
    )
    assert created.status_code == 201, created.text
    job = created.json()["data"]["id"]
    assert _at(api.job(job)["meta"]["not_before"]) == due

    assert api.get(f"/services/{service}/jobs/next").status_code == 204
    wait_for(lambda: datetime.now(UTC) > due, 10, "its time")
    assert api.get(f"/services/{service}/jobs/next").json()["data"]["id"] == job

    naive = api.post(
        f"/services/{service}/jobs",
        json={"parameters": {"tag": "x"}, "not_before": "2026-12-24T08:00:00"},
    )
    assert naive.status_code == 400


def test_over_http_abort_cancels_a_waiting_job_and_refuses_a_finished_one(api, stack):
    service = api.create_service(lc.FLAKY, lc.TAGGED_SCHEMA, lc.COUNT_RESULTS)
    job = api.submit(service, {"tag": "abort over http"})

    aborted = api.post(f"/jobs/{job}/abort", json={"reason": "wrong sample"})
    assert aborted.status_code == 200, aborted.text
    body = aborted.json()
    assert body["data"]["status"] == "CANCELLED"
    assert body["meta"]["abort"] == "cancelled"
    assert body["meta"]["detail"].startswith("aborted before it ran by http:")
    assert body["meta"]["detail"].endswith(": wrong sample")

    again = api.post(f"/jobs/{job}/abort")
    assert again.status_code == 409
    assert api.post(f"/jobs/{uuid.uuid4()}/abort").status_code == 404


def test_the_cli_submits_held_jobs_aborts_them_and_creates_retrying_services(stack, monkeypatch):
    monkeypatch.setenv("TOPCHEF_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("TOPCHEF_BROKER_URL", stack.settings.broker_url)
    runner = CliRunner()
    env: dict[str, str] = {}
    created = runner.invoke(
        main,
        [
            "services",
            "create",
            "CLI flaky",
            "--parameters",
            '{"type": "object"}',
            "--results",
            '{"type": "object"}',
            "--retries",
            "--retry-on",
            "TimeoutError",
            "--retry-backoff",
            "0.5",
        ],
        env=env,
    )
    assert created.exit_code == 0, created.output
    shown = runner.invoke(main, ["services", "show", "CLI flaky"], env=env)
    assert '"retry_on": [\n    "TimeoutError"\n  ]' in shown.output
    assert '"retries": true' in shown.output

    submitted = runner.invoke(
        main,
        ["jobs", "submit", "CLI flaky", "{}", "--not-before", "2099-12-24T08:00:00Z"],
        env=env,
    )
    assert submitted.exit_code == 0, submitted.output
    job = submitted.output.strip()
    show = runner.invoke(main, ["jobs", "show", job[:8]], env=env)
    assert '"not_before": "2099-12-24T08:00:00+00:00"' in show.output
    assert '"earlier_attempts": []' in show.output
    listed = runner.invoke(main, ["jobs", "list", "--service", "CLI flaky"], env=env)
    assert f"{job}  CLI flaky" in listed.output
    assert "REGISTERED" in listed.output
    assert "not before 2099-12-24 08:00:00Z" in listed.output

    aborted = runner.invoke(main, ["jobs", "abort", job, "--reason", "not needed"], env=env)
    assert aborted.exit_code == 0, aborted.output
    assert "cancelled" in aborted.output
    refused = runner.invoke(main, ["jobs", "abort", job], env=env)
    assert refused.exit_code == 1
    assert "CANCELLED" in refused.output
    naive = runner.invoke(
        main, ["jobs", "submit", "CLI flaky", "{}", "--not-before", "2099-12-24T08:00:00"], env=env
    )
    assert naive.exit_code == 1
    assert naive.output.strip().endswith(
        "'2099-12-24T08:00:00' has no zone: add Z for UTC or its "
        "offset (e.g. +01:00); without one it would name another "
        "moment on a PC in another zone"
    )
