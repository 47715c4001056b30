"""The run's table (stdout, and Markdown for RESULTS.md), its targets, and its JSON."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.stats import Figure, fmt

PACKAGES = ("celery", "kombu", "redis", "rq", "dramatiq", "sqlalchemy", "psycopg", "jsonschema")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["redis-server"] = _command(["redis-server", "--version"]).split(" v=")[-1].split()[0]
    versions["python"] = platform.python_version()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _command(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def table(figures: list[Figure], markdown: bool = False) -> str:
    header = ["workload", "case", "unit", "median", "min", "max", "note"]
    rows = [
        [f.workload, f.name, f.unit, fmt(f.median), fmt(f.low), fmt(f.high), f.note]
        for f in figures
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]], markdown: bool = False) -> str:
    rows = [[t["target"], t["measured"], "met" if t["met"] else "MISSED"] for t in targets]
    if markdown:
        lines = ["| target | measured | |", "|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    return "\n".join(
        f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}" for t in targets
    )


def markdown(result: dict[str, Any]) -> str:
    """A saved run (the JSON) as the Markdown of bench/RESULTS.md's tables."""
    info = result["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    figures = [
        Figure(f["workload"], f["name"], f["unit"], list(f["values"]), f["note"])
        for f in result["figures"]
    ]
    lines = [
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, "
        f"{info['platform']}",
        f"- load average at start / end: {_load(info['load_average_at_start'])} / "
        f"{_load(result['load_average_at_end'])}",
        f"- versions: {versions}",
        f"- command: `{info['command']}` ({result['seconds'] / 60:.0f} min)",
        "",
        table(figures, markdown=True),
        "",
        targets_table(result["targets"], markdown=True),
    ]
    return "\n".join(lines)


def _load(values: list[float]) -> str:
    return " ".join(f"{value:.2f}" for value in values)
