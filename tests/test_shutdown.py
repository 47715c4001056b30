"""A shutdown leaves no finished job WORKING, and times are those of the transitions.

``topchef up`` stopped with Ctrl-C while a job runs: its worker finishes the job
during the warm shutdown, and the mirror applies the report before it stops,
so SQL is true at once, not at the next start, and the job's end is stamped
when it happened.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import lab
import pytest
from support import environment, wait_for

from broker.storage.tables import JobRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_ctrl_c_on_topchef_up_records_the_job_finished_during_shutdown(stack, tmp_path):
    stack.create_lab_services()
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "broker", "up", "--worker", "lab", "--concurrency", "1"],
        cwd=tmp_path,
        env=environment(stack.settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker_log = tmp_path / ".topchef" / "logs" / "worker.log"
    try:
        tag = uuid.uuid4().hex
        job = stack.producer.submit(lab.HELD, {"tag": tag})
        stack.wait_status(job, "WORKING", timeout=60)

        up.send_signal(signal.SIGINT)  # Ctrl-C
        wait_for(
            lambda: "warm shutdown" in worker_log.read_text(errors="replace").lower(),
            30,
            "the worker's warm shutdown",
        )
        released_at = datetime.now(UTC)
        stack.release(tag)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()

    # SQL is already true: no mirror runs any more.
    with open_session(stack.settings.database_url) as session:
        row = session.get(JobRow, job)
        assert (row.status, row.results) == ("COMPLETED", {"tag": tag})
        # Stamped when the run ended, not when a mirror got round to it.
        assert abs((row.date_finished - released_at).total_seconds()) < 2.0
    assert not stack.service(lab.HELD).is_service_available
