"""Scenarios spread over parallel harness processes, each owning servers of its own.

Most of a scenario's time is waiting (processes starting, leases lapsing,
outages lasting), so two lanes finish a smoke run in little more than half the
time on two cores. Each lane is ``python -m bench.chaos --lane`` with its share
of the scenarios: its own redis-server, its own PostgreSQL cluster, so that a
restart in one lane never touches the other. The parent relays each lane's
progress lines and merges their JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from bench.chaos.processes import die_with_parent
from bench.servers import REPO

#: Rough relative length of each scenario, to balance the lanes.
COST = {
    "worker-kill": 3,
    "mirror-beat-kill": 2,
    "redis-restart": 3,
    "postgres-restart": 2,
    "worker-freeze": 3,
    "forged": 3,
    "http-disconnect": 2,
    "worker-before-service": 2,
}


def split(names: list[str], lanes: int) -> list[list[str]]:
    """Longest first, each onto the lane with the least work so far."""
    groups: list[list[str]] = [[] for _ in range(min(lanes, len(names)))]
    loads = [0] * len(groups)
    for name in sorted(names, key=lambda n: -COST.get(n, 2)):
        lane = loads.index(min(loads))
        groups[lane].append(name)
        loads[lane] += COST.get(name, 2)
    return [group for group in groups if group]


def _relay(stream: IO[str], prefix: str) -> None:
    for line in stream:
        print(f"{prefix} {line.rstrip()}", flush=True)


def run(groups: list[list[str]], passthrough: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """Run each group in a lane; return every scenario's result, and whether a lane broke."""
    directory = Path(tempfile.mkdtemp(prefix="topchef-chaos-lanes-"))
    lanes = []
    for index, group in enumerate(groups):
        output = directory / f"lane-{index}.json"
        args = [sys.executable, "-m", "bench.chaos", "--lane", *passthrough]
        args += ["--only", ",".join(group), "--json", str(output)]
        popen = subprocess.Popen(
            args,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert popen.stdout is not None
        relay = threading.Thread(target=_relay, args=(popen.stdout, f"lane {index}"), daemon=True)
        relay.start()
        lanes.append((popen, relay, output))
    results: list[dict[str, Any]] = []
    broke = False
    try:
        for popen, relay, output in lanes:
            code = popen.wait()
            relay.join(10)
            broke = broke or code == 2 or not output.exists()
            if output.exists():
                results += json.loads(output.read_text())["scenarios"]
    finally:
        for popen, _relay_thread, _output in lanes:
            if popen.poll() is None:
                popen.terminate()  # the lane cleans up its servers on SIGTERM
                popen.wait(60)
        for _popen, _relay_thread, output in lanes:
            output.unlink(missing_ok=True)
        directory.rmdir()
    return results, broke
