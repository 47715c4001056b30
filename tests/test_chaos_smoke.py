"""The chaos suite in its smoke mode: every scenario, tiny sizes, and nothing may go wrong.

``python -m bench.chaos --smoke`` kills, freezes and restarts real TopChef
processes and servers, forges deliveries and hangs up on the HTTP gateway,
then holds an independent ledger of every instrument run against SQL. Each
scenario must lose no job, run no fail-policy job twice, run nothing that no
producer registered, drop no measured outcome, record no forged one, and
never see its state mirror exit.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REPO = Path(__file__).resolve().parent.parent
COUNTS = ("lost", "run_twice", "unregistered", "dropped", "forged_outcomes", "mirror_exits")


def _missing_servers() -> str | None:
    """Why the harness cannot start servers of its own here, if it cannot."""
    if shutil.which("redis-server") is None:
        return "no redis-server binary: the chaos suite starts a Redis of its own"
    if not (
        os.environ.get("TOPCHEF_CHAOS_PG_BIN")
        or glob.glob("/usr/lib/postgresql/*/bin/initdb")
        or shutil.which("initdb")
    ):
        return "no PostgreSQL server binaries (initdb): the chaos suite makes a cluster of its own"
    return None


def test_smoke_run_loses_repeats_forges_and_drops_nothing(tmp_path):
    reason = _missing_servers()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    output = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPCHEF_")}
    if "TOPCHEF_CHAOS_PG_BIN" in os.environ:
        env["TOPCHEF_CHAOS_PG_BIN"] = os.environ["TOPCHEF_CHAOS_PG_BIN"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--smoke", "--json", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, f"the harness broke:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    result = json.loads(output.read_text())
    scenarios = result["scenarios"]
    assert {s["name"] for s in scenarios} == {
        "worker-kill",
        "mirror-beat-kill",
        "redis-restart",
        "postgres-restart",
        "worker-freeze",
        "forged",
        "forged-reports",
        "http-disconnect",
        "worker-before-service",
    }
    for scenario in scenarios:
        assert scenario["error"] is None, scenario
        assert scenario["submitted"] > 0, scenario
    failing = {
        s["name"]: {count: s[count] for count in COUNTS if s[count]}
        for s in scenarios
        if any(s[count] for count in COUNTS)
    }
    assert not failing, f"{failing}\n\n{run.stdout[-6000:]}"
