"""Where a drained job's CPU goes: microseconds of CPU per job, process by process.

On two cores every process of the stack competes for the same CPU, so a
drain's rate is set by the sum of what each one spends on a job, not by any
one of them. This workload drains the recommended way (2 processes of 2 threads,
jobs per message chosen) and reads each process's CPU time from
``/proc`` before and after: the workers, the mirror, Redis, PostgreSQL (every
``postgres`` process on this machine: other databases' work counts too, so
run it on a quiet server) and the producer (this process, submitting).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: The parts of the stack, each the processes whose CPU it spent.
Parts = dict[str, Callable[[], list[int]]]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes ``pids`` have spent (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (after the name)
    return total / _TICKS


def named(command: str) -> list[int]:
    """The processes whose command name is ``command``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def sample(parts: Parts) -> dict[str, float]:
    """Each part's CPU seconds so far."""
    return {name: cpu_seconds(pids()) for name, pids in parts.items()}


def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """Each part's CPU in µs per job between two samples, and their total."""
    spent = {name: (after[name] - before[name]) / jobs * 1e6 for name in before}
    spent["total"] = sum(spent.values())
    return spent
