"""History and provenance of jobs run through real worker, mirror and beat processes.

What a job's history shows is read back from Python, the CLI and HTTP; a
worker killed mid-run under ``requeue`` leaves both attempts in it, and a
cancel names who cancelled.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from pathlib import Path

import lab
import pytest
from click.testing import CliRunner
from support import wait_for

from broker import actors
from broker.cli import main
from broker.contract import schema_fingerprint

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
pytest_plugins = ["gateway_support"]  # the gateway and api fixtures

CHECKOUT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


def test_a_job_run_by_real_processes_has_its_whole_history_and_provenance(stack, api, monkeypatch):
    stack.create_lab_services()
    stack.process("mirror")
    stack.process("beat", "--loglevel", "INFO")
    worker = stack.worker()
    job = stack.producer.submit(lab.SQUARE, {"x": 7})
    assert stack.producer.wait(job, timeout=60) == {"square": 49}

    runner = f"{socket.gethostname()}:{worker.pid}"
    moves = stack.producer.history(job)
    assert [(m["from"], m["to"], m["by"]) for m in moves] == [
        (None, "REGISTERED", actors.person()),
        ("REGISTERED", "WORKING", runner),
        ("WORKING", "COMPLETED", runner),
    ]
    assert [m["attempt"] for m in moves] == [None, 1, 1]
    shown = stack.job(job)
    assert [m["at"] for m in moves] == [
        shown["date_submitted"],
        shown["date_started"],
        shown["date_finished"],
    ]

    provenance = stack.producer.provenance(job)
    assert provenance == {
        "submitted_by": actors.person(),
        "schema_fingerprint": schema_fingerprint(lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS),
        "run": {
            "worker": runner,
            "module": "lab",
            "code_version": _commit(),  # the worker runs from this checkout
            "python": f"{platform.python_implementation()} {platform.python_version()}",
        },
        "earlier_runs": {},
    }

    # The CLI and HTTP say the same.
    monkeypatch.setenv("TOPCHEF_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("TOPCHEF_BROKER_URL", stack.settings.broker_url)
    cli = CliRunner()
    listed = cli.invoke(main, ["jobs", "history", str(job)[:8]], catch_exceptions=False)
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert len(lines) == 3
    assert "REGISTERED → WORKING" in lines[1]
    assert runner in lines[1]
    as_json = cli.invoke(main, ["jobs", "history", str(job), "--json"], catch_exceptions=False)
    assert json.loads(as_json.output) == moves
    show = cli.invoke(main, ["jobs", "show", str(job)], catch_exceptions=False)
    assert json.loads(show.output)["provenance"] == provenance

    answer = api.get(f"/jobs/{job}/history")
    assert answer.status_code == 200
    assert answer.json()["data"] == moves
    assert answer.json()["meta"]["provenance"] == provenance
    assert api.get("/jobs/00000000-0000-0000-0000-000000000000/history").status_code == 404


def test_a_requeued_job_shows_both_attempts_and_both_runs(stack):
    stack.create_lab_services(held_policy="requeue")
    stack.process("mirror")
    stack.process("beat", "--loglevel", "INFO")
    first = stack.worker()
    tag = "requeued-" + socket.gethostname()
    job = stack.producer.submit(lab.HELD, {"tag": tag})
    stack.wait_status(job, "WORKING")
    first.kill()  # SIGKILL mid-run
    stack.release(tag)
    second = stack.worker()
    stack.wait_status(job, "COMPLETED", timeout=60)

    lost, survivor = (f"{socket.gethostname()}:{p.pid}" for p in (first, second))
    moves = stack.producer.history(job)
    assert [(m["from"], m["to"], m["by"], m["attempt"]) for m in moves] == [
        (None, "REGISTERED", actors.person(), None),
        ("REGISTERED", "WORKING", lost, 1),
        ("WORKING", "WORKING", survivor, 2),
        ("WORKING", "COMPLETED", survivor, 2),
    ]
    assert "attempt 1 was given up for lost" in moves[2]["detail"]
    provenance = stack.producer.provenance(job)
    assert provenance["run"]["worker"] == survivor
    assert provenance["earlier_runs"]["1"]["worker"] == lost
    assert stack.runs(tag) == 2


def test_a_cancel_names_who_cancelled(stack, api):
    stack.create_lab_services()
    by_python = stack.producer.submit(lab.SQUARE, {"x": 1})
    by_http = stack.producer.submit(lab.SQUARE, {"x": 2})  # no worker serves it: both wait
    assert stack.producer.cancel(by_python)
    answer = api.delete(f"/jobs/{by_http}", headers={"X-TopChef-Worker": "rig-7"})
    assert answer.status_code == 200

    assert stack.producer.history(by_python)[-1]["by"] == actors.person()
    last = stack.producer.history(by_http)[-1]
    assert (last["from"], last["to"], last["by"]) == ("REGISTERED", "CANCELLED", "http:rig-7")


def test_a_job_posted_over_http_names_its_caller(stack, api):
    stack.create_lab_services()
    service = str(stack.service(lab.SQUARE).id)
    answer = api.post(
        f"/services/{service}/jobs",
        json={"parameters": {"x": 3}},
        headers={"X-TopChef-Worker": "labview-3"},
    )
    job = answer.json()["data"]["id"]
    submitted = wait_for(lambda: api.get(f"/jobs/{job}/history").json(), 10, "the history")
    assert submitted["data"][0]["by"] == "http:labview-3"
    assert submitted["meta"]["provenance"]["submitted_by"] == "http:labview-3"
