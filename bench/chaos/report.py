"""The run's table, each scenario's context, and the JSON of it all.

The table holds the counts that must be zero; the context (how jobs
ended, what the harness had to restart, examples of each failure) is what a
reader needs to tell a broker bug from an expected consequence of a fault.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.audit import Verdict
from bench.servers import REPO


@dataclass
class Outcome:
    """A scenario as the report shows it."""

    name: str
    seconds: float = 0.0
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


COLUMNS = (
    "scenario",
    "jobs submitted",
    "terminal",
    "lost",
    "run twice (fail policy)",
    "run without registration",
    "outcomes dropped",
    "forged outcomes recorded",
    "mirror exits",
)
#: The counts that must be zero, as ``as_json`` names them, in the table's order.
COUNTS = ("lost", "run_twice", "unregistered", "dropped", "forged_outcomes", "mirror_exits")


def _row(result: dict[str, Any]) -> list[str]:
    if "submitted" not in result:
        return [result["name"], "harness error", *[""] * (len(COLUMNS) - 2)]
    counts = ("submitted", "terminal", *COUNTS)
    return [result["name"], *(str(result.get(count, 0)) for count in counts)]


def table(results: list[dict[str, Any]]) -> str:
    """The counts that must be zero, one row per scenario (``as_json`` form)."""
    rows = [list(COLUMNS), *(_row(result) for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(" | ".join(cells))
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def context(results: list[dict[str, Any]]) -> str:
    """Per scenario: how long it took, its context counts, notes and failure examples."""
    lines = []
    for result in results:
        lines.append(f"{result['name']} ({result['seconds']:.0f} s)")
        if result.get("error"):
            lines.append(f"  HARNESS ERROR: {result['error']}")
        counts = result.get("context", {})
        if counts:
            lines.append("  " + ", ".join(f"{name} {value}" for name, value in counts.items()))
        lines += [f"  note: {note}" for note in result.get("notes", [])]
        for name, examples in result.get("examples", {}).items():
            lines += [f"  e.g. {name}: {example}" for example in examples]
    return "\n".join(lines)


def brief(result: dict[str, Any]) -> str:
    """One progress line's worth of a scenario."""
    if "submitted" not in result:
        return f"harness error ({result.get('error')})"
    return (
        f"{result['submitted']} jobs, lost {result['lost']}, run twice {result['run_twice']},"
        f" unregistered {result['unregistered']}, dropped {result['dropped']},"
        f" forged outcomes {result.get('forged_outcomes', 0)},"
        f" mirror exits {result.get('mirror_exits', 0)}"
    )


def failing(result: dict[str, Any]) -> bool:
    return any(result.get(count) for count in COUNTS)


def as_json(outcome: Outcome) -> dict[str, Any]:
    verdict = outcome.verdict
    data: dict[str, Any] = {
        "name": outcome.name,
        "seconds": round(outcome.seconds, 1),
        "error": outcome.error,
        "notes": outcome.notes,
    }
    if verdict is not None:
        data.update(
            submitted=verdict.submitted,
            terminal=verdict.terminal,
            lost=verdict.lost,
            run_twice=verdict.run_twice,
            unregistered=verdict.unregistered,
            dropped=verdict.dropped,
            forged_outcomes=verdict.forged_outcomes,
            mirror_exits=verdict.mirror_exits,
            context=verdict.context,
            examples=verdict.examples,
            outcome_stores=verdict.stores,
        )
    return data


def source() -> dict[str, Any]:
    """Which code was under test: the commit, and whether the tree had changes on top."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", *args],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "changed_files": git("status", "--porcelain")}
