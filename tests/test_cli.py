"""The ``topchef`` command: user mistakes give one clear line and a non-zero exit."""

from __future__ import annotations

import json
import uuid

import lab
import pytest
from click.testing import CliRunner

from broker.cli import main

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def run(stack, monkeypatch):
    """Invoke ``topchef`` in-process against the stack's Redis and PostgreSQL."""
    monkeypatch.setenv("TOPCHEF_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("TOPCHEF_BROKER_URL", stack.settings.broker_url)
    stack.create_lab_services()

    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


def _one_line_error(result, expected: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expected in lines[0]


def _commands(help_text: str) -> set[str]:
    """The command names a ``--help`` lists in its own Commands section."""
    section = help_text.split("\nCommands:\n", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ")}


def test_help_lists_every_command(run):
    result = run("--help")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: main [OPTIONS] COMMAND [ARGS]...")
    # Command names also occur in one another's summaries ("workers" in up's, "jobs"
    # in the jobs group's): compare the listed names, not substrings of the page.
    assert _commands(result.output) == {
        "api",
        "beat",
        "db",
        "demo",
        "flower",
        "jobs",
        "mirror",
        "services",
        "status",
        "up",
        "worker",
    }
    jobs = run("jobs", "--help")
    assert jobs.exit_code == 0
    assert jobs.output.startswith("Usage: main jobs [OPTIONS] COMMAND [ARGS]...")
    assert _commands(jobs.output) == {"cancel", "list", "show", "submit", "wait"}


def test_unknown_service(run):
    _one_line_error(run("jobs", "submit", "Nope", "{}"), "No service is named 'Nope'")


def test_bad_json(run):
    _one_line_error(run("jobs", "submit", lab.SQUARE, "{bad"), "not valid JSON")


def test_invalid_parameters_name_the_failing_path(run):
    _one_line_error(
        run("jobs", "submit", lab.SQUARE, '{"x": "a"}'),
        'parameters.x: "a" is not of type "integer"',
    )


def test_missing_schema_file(run):
    result = run(
        "services", "create", "New", "--parameters", "@/nonexistent.json", "--results", "{}"
    )
    _one_line_error(result, "no such file: /nonexistent.json")


def test_invalid_schema(run, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "nonsense"}))
    result = run("services", "create", "New", "--parameters", f"@{schema}", "--results", "{}")
    _one_line_error(result, "Invalid JSON Schema")


def test_unknown_job(run):
    job = uuid.uuid4()
    _one_line_error(run("jobs", "show", str(job)), f"No job has the id {job}")
    _one_line_error(run("jobs", "cancel", str(job)), f"No job has the id {job}")


def test_malformed_job_id(run):
    result = run("jobs", "show", "not-a-uuid")
    assert result.exit_code != 0
    assert "is not a valid UUID" in result.output


def test_worker_module_that_does_not_exist(run):
    _one_line_error(run("worker", "no_such_module_here"), "cannot import 'no_such_module_here'")


def test_submit_show_list_cancel_and_status(run):
    submitted = run("jobs", "submit", lab.SQUARE, '{"x": 7}')
    assert submitted.exit_code == 0
    job = submitted.output.strip()
    shown = json.loads(run("jobs", "show", job).output)
    assert (shown["status"], shown["parameters"]) == ("REGISTERED", {"x": 7})
    assert job in run("jobs", "list", "--service", lab.SQUARE).output
    assert run("jobs", "cancel", job).exit_code == 0
    assert job in run("jobs", "list", "--status", "CANCELLED").output
    status = run("status").output
    assert lab.SQUARE in status
    assert "CANCELLED 1" in status


def test_a_list_of_parameter_sets_is_a_sweep_sent_in_batches(run, stack):
    submitted = run(
        "jobs", "submit", lab.SQUARE, json.dumps([{"x": x} for x in range(7)]), "--per-message", "3"
    )
    assert submitted.exit_code == 0, submitted.output
    jobs = submitted.output.split()
    assert len(jobs) == 7
    assert [json.loads(run("jobs", "show", j).output)["parameters"] for j in jobs] == [
        {"x": x} for x in range(7)
    ]
    assert stack.queue_length(lab.SQUARE) == 3  # 3 + 3 + 1 jobs


def test_a_sweep_with_one_invalid_point_submits_nothing(run, stack):
    _one_line_error(run("jobs", "submit", lab.SQUARE, '[{"x": 1}, {"x": "a"}]'), '"a" is not')
    assert stack.count_jobs() == 0


def test_services_create_list_show(run, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object"}))
    created = run(
        "services",
        "create",
        "Oven",
        "--parameters",
        f"@{schema}",
        "--results",
        '{"type": "object"}',
        "--timeout",
        "5",
        "--worker-loss",
        "requeue",
    )
    assert created.exit_code == 0, created.output
    assert "Oven" in run("services", "list").output
    shown = json.loads(run("services", "show", "Oven").output)
    assert (shown["timeout"], shown["worker_loss_policy"]) == (5.0, "requeue")
    _one_line_error(
        run("services", "create", "Oven", "--parameters", "{}", "--results", "{}"),
        "A service named 'Oven' already exists",
    )
