"""Outcomes come only from the worker that ran them: forged state entries through a real stack.

Anyone with the Redis password can ``XADD topchef:state``. Each test here
writes what such a lab PC could — a COMPLETED for a job that never ran, one
over a running job's real result, a report signed by an enrolled credential
that does not hold the job, a revoked credential's report, a check-in for a
service nobody serves — and counts what the record kept: forged outcomes
recorded 0, valid outcomes dropped 0. The mirror is ``topchef mirror``, the
worker ``topchef worker``, each a process of its own.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import uuid

import lab
import pytest
from stack import Stack, enroll_worker, trust_refusals
from support import environment, wait_for

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.trust import credentials
from broker.trust.credentials import Credential
from broker.trust.reports import ReportKey

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.forgeries]


def _mirror(stack: Stack) -> None:
    stack.process("mirror", "--loglevel", "INFO")


def _refused(stack: Stack, count: int) -> list[str]:
    """Wait until the mirror has refused ``count`` entries for their signature or holder."""
    return wait_for(
        lambda: (found := trust_refusals(stack.redis)) and len(found) >= count and found,
        30,
        f"{count} refused entries",
    )


def _signed(credential: Credential, message: StateMessage) -> dict[str, str]:
    """The entry a worker holding ``credential`` appends for ``message``."""
    return credential.fields(message.to_fields()["m"])


def _forged_sig(message: StateMessage, name: str) -> dict[str, str]:
    """An entry that names ``name`` but is signed by a key that is not its."""
    return Credential(name, ReportKey.generate()).fields(message.to_fields()["m"])


def _intruder(stack: Stack) -> Credential:
    """A second enrolled credential: a lab PC of the facility, but not the one running the job."""
    return credentials.read(enroll_worker(stack.settings.database_url, stack.tmp_path, "intruder"))


def test_a_forged_completed_never_finishes_a_job_that_did_not_run(stack):
    stack.create_lab_services()
    _mirror(stack)
    service = stack.service(lab.SQUARE).id
    job = stack.producer.submit(lab.SQUARE, {"x": 7})
    forged = StateMessage("status", service, job, "COMPLETED", results={"square": 1000})
    intruder = _intruder(stack)
    stack.redis.xadd(keys.STATE_STREAM, forged.to_fields())  # unsigned
    stack.redis.xadd(keys.STATE_STREAM, _forged_sig(forged, stack.credential.name))  # not its key
    # An enrolled credential that starts the job on the stream alone, without taking its claim.
    working = StateMessage("status", service, job, "WORKING", worker="intruder:1")
    stack.redis.xadd(keys.STATE_STREAM, {**_signed(intruder, working), "take": "1"})
    stack.redis.xadd(keys.STATE_STREAM, _signed(intruder, forged))  # enrolled, holds nothing
    ghost = Credential("ghost", ReportKey.generate())
    stack.redis.xadd(keys.STATE_STREAM, _signed(ghost, forged))  # never enrolled

    reasons = _refused(stack, 5)
    assert sorted(reason.split(":")[0] for reason in reasons) == [
        "forged",
        "not the holder",
        "not the holder",
        "unknown credential",
        "unsigned",
    ]
    assert any("'intruder' did not take" in reason for reason in reasons)
    assert (stack.status(job), stack.job(job)["results"]) == ("REGISTERED", None)

    stack.worker()  # the genuine run: its outcome is recorded, nothing of the forgeries
    done = stack.wait_status(job, "COMPLETED")
    assert done["results"] == {"square": 49}
    assert int(stack.redis.xlen(keys.DEAD_STATE_STREAM)) == 5


def test_a_forged_completed_over_a_running_job_loses_to_its_real_result(stack):
    stack.create_lab_services()
    _mirror(stack)
    stack.worker()
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lab.HELD, {"tag": tag})
    stack.wait_status(job, "WORKING")
    service = stack.service(lab.HELD).id
    intruder = _intruder(stack)
    forged = StateMessage("status", service, job, "COMPLETED", results={"tag": "forged"})
    working = StateMessage("status", service, job, "WORKING", worker="intruder:1")
    stack.redis.xadd(keys.STATE_STREAM, forged.to_fields())
    stack.redis.xadd(keys.STATE_STREAM, _signed(intruder, working))  # a second start of attempt 1
    stack.redis.xadd(keys.STATE_STREAM, _signed(intruder, forged))
    progress = StateMessage("progress", service, job, progress=0.99, message="forged")
    stack.redis.xadd(keys.STATE_STREAM, _signed(intruder, progress))
    stack.redis.xadd(keys.STATE_STREAM, _signed(intruder, dataclasses.replace(forged, attempt=2)))

    reasons = _refused(stack, 5)
    assert all(r.startswith(("unsigned", "not the holder")) for r in reasons), reasons
    running = stack.job(job)
    assert (running["status"], running["results"], running["progress"]) == ("WORKING", None, None)

    stack.release(tag)
    done = stack.wait_status(job, "COMPLETED")
    assert done["results"] == {"tag": tag}
    assert stack.runs(tag) == 1


def test_a_revoked_credential_reports_nothing_more(stack, cli):
    stack.create_lab_services()
    _mirror(stack)
    stack.worker()
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lab.HELD, {"tag": tag})
    stack.wait_status(job, "WORKING")

    name = stack.credential.name
    said = cli("workers", "revoke", name)
    assert f"revoked '{name}'" in said
    assert "1 job(s) it was running ended ERROR" in said  # its outcome could never be recorded
    ended = stack.job(job)
    assert ended["status"] == "ERROR"
    assert f"('{name}') was revoked" in ended["detail"]
    stack.release(tag)  # the run ends after its credential was revoked
    reasons = _refused(stack, 1)
    assert any(r.startswith("revoked") for r in reasons), reasons
    assert (stack.status(job), stack.job(job)["results"]) == ("ERROR", None)
    assert "revoked" in cli("workers", "list").splitlines()[0]


def test_a_forged_check_in_shows_no_service_available(stack):
    stack.create_lab_services()
    _mirror(stack)
    square = stack.service(lab.SQUARE)
    checkin = StateMessage("checkin", square.id, available=True, worker="nobody:1")
    stack.redis.xadd(keys.STATE_STREAM, checkin.to_fields())
    stack.redis.xadd(keys.STATE_STREAM, _forged_sig(checkin, stack.credential.name))
    reasons = _refused(stack, 2)
    assert all(reason.endswith("(a check-in)") for reason in reasons)
    after = stack.service(lab.SQUARE)
    assert (after.is_service_available, after.last_checked_in) == (False, square.last_checked_in)

    stack.worker()  # a genuine worker's check-in counts
    stack.wait_available(lab.SQUARE)


def test_forged_outcomes_recorded_0_valid_outcomes_dropped_0(stack):
    """Real jobs run while a lab PC forges a report of every kind on each: the record stays true."""
    stack.create_lab_services()
    _mirror(stack)
    stack.worker("--concurrency", "4")
    service = stack.service(lab.SQUARE).id
    intruder = _intruder(stack)
    jobs = {stack.producer.submit(lab.SQUARE, {"x": x}): x for x in range(40)}
    for job in jobs:
        forged = StateMessage("status", service, job, "COMPLETED", results={"square": -1})
        stack.redis.xadd(keys.STATE_STREAM, forged.to_fields())
        stack.redis.xadd(keys.STATE_STREAM, _signed(intruder, forged))
        stack.redis.xadd(keys.STATE_STREAM, _forged_sig(forged, stack.credential.name))
    finished = {job: stack.wait_status(job, "COMPLETED") for job in jobs}
    forged_recorded = sum(job["results"] == {"square": -1} for job in finished.values())
    valid_dropped = sum(finished[job]["results"] != {"square": x * x} for job, x in jobs.items())
    assert (forged_recorded, valid_dropped) == (0, 0)
    _refused(stack, 3 * len(jobs))


def test_a_worker_without_a_credential_does_not_start_and_says_how_to_enroll(
    stack_settings, tmp_path
):
    env = environment(dataclasses.replace(stack_settings, worker_key=""))
    done = subprocess.run(
        [sys.executable, "-m", "broker", "worker", "lab"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "topchef workers enroll NAME" in lines[0]
    assert "TOPCHEF_WORKER_KEY" in lines[0]


def test_enroll_writes_a_private_file_and_refuses_a_name_taken(stack, cli, tmp_path):
    path = tmp_path / "pc-2.key"
    out = cli("workers", "enroll", "pc-2", "--key-file", str(path))
    assert "export TOPCHEF_WORKER_KEY=" in out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    credential = credentials.read(path)
    assert credential.name == "pc-2"
    listed = cli("workers", "list")
    assert credential.key.fingerprint in listed
    assert credential.key.text not in listed  # the key is a secret: shown nowhere
    again = cli.invoke("workers", "enroll", "pc-2", "--key-file", str(tmp_path / "other.key"))
    assert again.exit_code != 0
    assert "already" in again.output
    for name in ("core", "bad name", "x" * 101, "_under", "a/b"):
        refused = cli.invoke("workers", "enroll", name, "--key-file", str(tmp_path / "k"))
        assert refused.exit_code != 0, name
        assert len(refused.output.strip().splitlines()) == 1, refused.output
    cli("workers", "revoke", "pc-2")
    back = cli.invoke("workers", "enroll", "pc-2", "--key-file", str(tmp_path / "back.key"))
    assert back.exit_code != 0
    assert "revoked" in back.output
