"""The benchmark harness in its smoke mode: every workload and peer, tiny sizes.

Figures from a smoke run mean nothing (one repetition of a few hundred jobs
on a busy machine); the test only keeps ``python -m bench`` from rotting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parent.parent


def test_smoke_run_measures_every_workload(postgres_url, tmp_path):
    pytest.importorskip("rq", reason="the bench extra is not installed (pip install -e .[bench])")
    pytest.importorskip("dramatiq", reason="the bench extra is not installed")
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary: the bench starts a Redis of its own")
    output = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPCHEF_")}
    env["TOPCHEF_BENCH_POSTGRES_URL"] = os.environ.get(
        "TOPCHEF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.read_text())
    workloads = {figure["workload"] for figure in result["figures"]}
    assert workloads == {
        "enqueue",
        "drain",
        "latency",
        "footprint",
        "sql",
        "memory",
        "not_before",
        "priority",
        "exclusive",
        "sweep",
        "fleet",
        "producers",
        "http",
        "signing",
        "reports",
        "cpu",
    }
    names = " ".join(figure["name"] for figure in result["figures"])
    for peer in ("celery", "rq", "dramatiq", "topchef"):
        assert peer in names
    signing = [f for f in result["figures"] if f["workload"] == "signing"]
    assert {f["name"].split()[0] for f in signing} == {"sign", "verify"}
    assert all(figure["values"] for figure in result["figures"])
    cpu = {f["name"]: f["median"] for f in result["figures"] if f["workload"] == "cpu"}
    assert set(cpu) == {"workers", "mirror", "redis", "postgresql", "producer", "total"}
    # The workers and the mirror did spend CPU on the drain.
    assert cpu["workers"] > 0
    assert cpu["mirror"] > 0
    assert cpu["total"] == pytest.approx(sum(v for name, v in cpu.items() if name != "total"))
    assert result["targets"], "the targets are evaluated"
    assert "median" in run.stdout  # the table is printed
