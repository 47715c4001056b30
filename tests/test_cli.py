"""The ``topchef`` command: user mistakes give one clear line and a non-zero exit."""

from __future__ import annotations

import json
import uuid

import lab
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from broker.cli import main
from broker.storage.tables import JobRow, open_session

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
        "artifacts",
        "beat",
        "db",
        "demo",
        "flower",
        "jobs",
        "keys",
        "mirror",
        "services",
        "status",
        "up",
        "worker",
        "workers",
    }
    workers = run("workers", "--help")
    assert _commands(workers.output) == {"enroll", "list", "revoke"}
    jobs = run("jobs", "--help")
    assert jobs.exit_code == 0
    assert jobs.output.startswith("Usage: main jobs [OPTIONS] COMMAND [ARGS]...")
    assert _commands(jobs.output) == {
        "abort",
        "cancel",
        "history",
        "list",
        "resubmit",
        "show",
        "submit",
        "wait",
    }


def test_unknown_service(run):
    _one_line_error(run("jobs", "submit", "Nope", "{}"), "No service is named 'Nope'")


def test_bad_json(run):
    _one_line_error(run("jobs", "submit", lab.SQUARE, "{bad"), "not valid JSON")


def test_invalid_parameters_name_the_failing_path(run):
    result = run("jobs", "submit", lab.SQUARE, '{"x": "a"}')
    _one_line_error(result, 'invalid parameters.x: "a" is not of type "integer"')
    assert "Deserialization" not in result.output


def test_missing_schema_file(run):
    result = run(
        "services", "create", "New", "--parameters", "@/nonexistent.json", "--results", "{}"
    )
    _one_line_error(result, "no such file: '/nonexistent.json'")


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
    _one_line_error(run("jobs", "show", "not-a-uuid"), "'not-a-uuid' is not a job id")
    _one_line_error(run("jobs", "show", "8a9"), "at least its first 4 hex digits")


def test_a_unique_start_of_an_id_names_the_job(run):
    job = run("jobs", "submit", lab.SQUARE, '{"x": 3}').output.strip()
    assert json.loads(run("jobs", "show", job[:8]).output)["id"] == job
    assert json.loads(run("jobs", "show", job[:4].upper()).output)["id"] == job
    cancelled = run("jobs", "cancel", job[:8])
    assert (cancelled.exit_code, cancelled.output.strip()) == (0, f"cancelled {job}")
    again = run("jobs", "cancel", job[:8])
    assert (again.exit_code, again.output.strip()) == (0, f"job {job} is already cancelled")
    _one_line_error(run("jobs", "wait", job[:8], "--timeout", "1"), f"Job {job} was cancelled")


def test_an_ambiguous_start_of_an_id_says_how_many_jobs_match(run, stack):
    submitted = [run("jobs", "submit", lab.SQUARE, '{"x": 1}').output.strip() for _ in "ab"]
    with open_session(stack.settings.database_url) as session, session.begin():
        for index, job in enumerate(submitted, 1):
            alike = uuid.UUID(f"aaaa0000-0000-4000-8000-00000000000{index}")
            session.execute(sa.update(JobRow).where(JobRow.id == uuid.UUID(job)).values(id=alike))
    _one_line_error(run("jobs", "show", "aaaa"), "2 jobs have an id starting with aaaa")
    _one_line_error(run("jobs", "cancel", "aaaa0000"), "2 jobs have an id starting with aaaa0000")
    _one_line_error(run("jobs", "show", "bbbb"), "No job has an id starting with bbbb")
    shown = run("jobs", "show", "aaaa0000-0000-4000-8000-000000000002")
    assert json.loads(shown.output)["id"] == "aaaa0000-0000-4000-8000-000000000002"


def test_cancelling_a_finished_job_says_it_already_finished(run, stack):
    job = uuid.UUID(run("jobs", "submit", lab.SQUARE, '{"x": 2}').output.strip())
    with open_session(stack.settings.database_url) as session, session.begin():
        session.execute(sa.update(JobRow).where(JobRow.id == job).values(status="COMPLETED"))
    _one_line_error(run("jobs", "cancel", str(job)[:8]), f"job {job} already finished (COMPLETED)")


def test_large_results_are_summarised_unless_the_results_or_the_json_are_asked_for(run, stack):
    job = run("jobs", "submit", lab.SQUARE, '{"x": 2}').output.strip()
    results = {"points": list(range(57_034)), "square": 4}
    with open_session(stack.settings.database_url) as session, session.begin():
        finished = {"status": "COMPLETED", "results": results}
        session.execute(sa.update(JobRow).where(JobRow.id == uuid.UUID(job)).values(**finished))
    hint = "(summarised to fit a screen: --results prints {} results whole{})\n"
    shown = run("jobs", "show", job[:8])
    assert shown.exit_code == 0
    assert len(shown.stdout.splitlines()) <= 40
    assert '  "results": {\n    "points": <57,034 numbers: 0, 1, 2, ' in shown.stdout
    assert shown.stderr == hint.format("its", ", --json the job")
    assert json.loads(run("jobs", "show", job, "--results").stdout) == results
    whole = json.loads(run("jobs", "show", job, "--json").stdout)
    assert (whole["id"], whole["results"], whole["progress_message"]) == (job, results, None)
    assert "provenance" in whole
    waited = run("jobs", "wait", job, "--timeout", "1")
    assert waited.stdout.splitlines()[0::2] == ["{", '  "square": 4']
    assert waited.stdout.splitlines()[1].startswith('  "points": <57,034 numbers: 0, 1, 2, ')
    assert waited.stderr == hint.format("the", "")
    assert json.loads(run("jobs", "wait", job, "--results").stdout) == results
    both = run("jobs", "show", job, "--results", "--json")
    assert both.exit_code == 2
    assert "--results prints the results alone, --json the whole job: one" in both.stderr


def test_jobs_list_names_each_job_s_service(run):
    square = run("jobs", "submit", lab.SQUARE, '{"x": 1}').output.strip()
    failing = run("jobs", "submit", lab.FAILING, '{"x": 1}').output.strip()
    rows = {line.split()[0]: line for line in run("jobs", "list").output.splitlines()}
    assert rows[square].split()[1] == lab.SQUARE
    assert rows[failing].split()[1] == lab.FAILING


def test_submit_refuses_an_empty_sweep_a_negative_wait_and_batching_one_job(run, stack):
    _one_line_error(run("jobs", "submit", lab.SQUARE, "[]"), "invalid parameters: an empty list")
    negative = run("jobs", "submit", lab.SQUARE, '{"x": 1}', "--wait", "-1")
    assert negative.exit_code == 2
    assert "Invalid value for '--wait': '-1' is not a number of seconds >= 0" in negative.output
    assert run("jobs", "submit", lab.SQUARE, '{"x": 1}', "--wait", "nan").exit_code == 2
    assert run("jobs", "wait", str(uuid.uuid4()), "--timeout", "-5").exit_code == 2
    _one_line_error(
        run("jobs", "submit", lab.SQUARE, '{"x": 1}', "--per-message", "5"),
        "--per-message applies to a sweep",
    )
    assert stack.count_jobs() == 0


def test_a_sweep_that_does_not_finish_prints_every_job_and_a_summary(run):
    result = run("jobs", "submit", lab.SQUARE, '[{"x": 1}, {"x": 2}]', "--wait", "0.2")
    assert result.exit_code == 1  # no worker: nothing completed
    lines = result.output.splitlines()
    jobs = lines[:2]
    assert [line.split()[:2] for line in lines[2:4]] == [[job, "REGISTERED"] for job in jobs]
    assert lines[4] == "2 jobs: 0 completed, 0 failed, 0 cancelled, 2 not finished after 0.2 s"


def test_worker_module_that_does_not_exist(run):
    _one_line_error(run("worker", "no_such_module_here"), "cannot import 'no_such_module_here'")


@pytest.mark.parametrize("grace", ["-1", "soon", "nan", "inf", ""])
def test_a_worker_abort_grace_that_is_no_number_of_seconds_is_refused(run, grace):
    result = run("worker", "lab", "--abort-grace", grace)
    assert result.exit_code == 2
    assert "Invalid value for '--abort-grace'" in result.output
    assert "Traceback" not in result.output


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


@pytest.mark.slow  # starts a worker process
def test_a_sweep_with_failures_prints_every_outcome_then_a_summary_with_reasons(run, stack):
    stack.start_mirror()
    stack.worker()
    completed = run("jobs", "submit", lab.SQUARE, '[{"x": 2}, {"x": 3}]', "--wait", "30")
    assert completed.exit_code == 0, completed.output
    assert completed.output.splitlines()[2:] == [
        f'{completed.output.split()[0]}  COMPLETED  {{"square": 4}}',
        f'{completed.output.split()[1]}  COMPLETED  {{"square": 9}}',
        "2 jobs: 2 completed, 0 failed, 0 cancelled, 0 not finished after 30 s",
    ]
    failed = run("jobs", "submit", lab.FAILING, '[{"x": 1}, {"x": 2}, {"x": 3}]', "--wait", "30")
    assert failed.exit_code == 1
    lines = failed.output.splitlines()
    jobs = lines[:3]
    for job, line, x in zip(jobs, lines[3:6], (1, 2, 3), strict=True):
        assert line.startswith(f"{job}  ERROR")
        assert f"boom {x}" in line  # every job's outcome, not only the first failure's
    assert lines[6] == "3 jobs: 0 completed, 3 failed, 0 cancelled, 0 not finished after 30 s"
    assert [line.split(":")[0] for line in lines[7:]] == [f"failed {job}" for job in jobs]
    assert all("boom" in line for line in lines[7:])
