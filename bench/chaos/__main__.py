"""``python -m bench.chaos [--smoke] [--only a,b] [--json PATH] [--jobs N] [--strict]``.

Runs each scenario against a redis-server and a PostgreSQL cluster the run
owns (both removed at the end, whatever happens) and prints one row per
scenario: jobs submitted, ended, lost, run twice, run without registration,
outcomes dropped. The exit status says whether the *harness* worked (0) or
broke (2); ``--strict`` also fails (1) when any of the counts is non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.chaos import lanes, report
from bench.chaos.plan import SMOKE, Plan
from bench.chaos.report import Outcome
from bench.chaos.scenarios import SCENARIOS
from bench.chaos.servers import PostgresCluster, RedisServer, run_directory
from bench.chaos.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): well under 90 s")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--jobs", type=int, help="jobs per scenario")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedules")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any count is non-zero")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    parser.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="scenarios run in this many parallel harnesses (default: 2 with --smoke, else 1)",
    )
    parser.add_argument("--lane", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; know {list(SCENARIOS)}")
    plan = SMOKE if args.smoke else Plan()
    if args.jobs:
        plan = replace(plan, jobs=args.jobs)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    lane_count = args.lanes or (2 if args.smoke else 1)

    # SIGTERM (and SIGINT, which a background job ignores) still runs the cleanup.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = time.monotonic()
    if lane_count > 1 and len(only) > 1 and not args.lane:
        passthrough = ["--seed", str(seed)]
        passthrough += ["--smoke"] if args.smoke else []
        passthrough += ["--jobs", str(args.jobs)] if args.jobs else []
        passthrough += ["--keep-logs"] if args.keep_logs else []
        results, broke = lanes.run(lanes.split(only, lane_count), passthrough)
        results.sort(key=lambda result: only.index(result["name"]))
    else:
        results, broke = run_here(only, plan, seed, args.keep_logs, started)
    seconds = time.monotonic() - started
    if not args.lane:
        print()
        print(report.table(results))
        print()
        print(report.context(results))
        print(f"\n{len(results)} scenarios in {seconds:.0f} s (seed {seed})")
    if args.json:
        summary = {
            "smoke": args.smoke,
            "seed": seed,
            "seconds": round(seconds, 1),
            "lanes": 1 if args.lane else min(lane_count, len(only)),
            "plan": asdict(plan),
            "source": report.source(),
            "scenarios": results,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if broke or len(results) != len(only):
        return 2
    return 1 if args.strict and any(report.failing(result) for result in results) else 0


def run_here(
    names: list[str], plan: Plan, seed: int, keep_logs: bool, started: float
) -> tuple[list[dict[str, Any]], bool]:
    """Run the scenarios one after another on servers this process owns."""
    directory = run_directory()
    # The broker's own logging in this process (the producers) goes to a file:
    # the faults make it loud, and stdout is for the results.
    (directory / "logs").mkdir()
    logging.basicConfig(
        filename=directory / "logs" / "harness.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    results: list[dict[str, Any]] = []
    broke = False
    redis_server: RedisServer | None = None
    postgres: PostgresCluster | None = None
    try:
        redis_server = RedisServer(directory / "redis")
        postgres = PostgresCluster(directory / "postgres")
        for name in names:
            # Seeded by name, so a scenario repeats whichever lane or order it runs in.
            scenario_seed = seed + list(SCENARIOS).index(name)
            outcome = run_one(name, plan, redis_server, postgres, directory, scenario_seed)
            broke = broke or outcome.error is not None
            results.append(report.as_json(outcome))
            elapsed = time.monotonic() - started
            print(f"[{elapsed:5.0f} s] {name}: {report.brief(results[-1])}", flush=True)
    finally:
        if postgres is not None:
            postgres.close()
        if redis_server is not None:
            redis_server.close()
        if keep_logs or broke:
            print(f"logs kept in {directory / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return results, broke


def run_one(
    name: str,
    plan: Plan,
    redis_server: RedisServer,
    postgres: PostgresCluster,
    directory: Path,
    seed: int,
) -> Outcome:
    """One scenario on fresh data; a failure of the harness is recorded, not raised."""
    outcome = Outcome(name)
    began = time.monotonic()
    stack: Stack | None = None
    try:
        # A previous scenario may have left a server down (it failed mid-fault).
        if not redis_server.responds():
            redis_server.start()
        if not postgres.running:
            postgres.start()
        stack = Stack(name, redis_server, postgres, directory / "logs", plan.timings)
        outcome.verdict = SCENARIOS[name](stack, plan, random.Random(seed))
    except Exception as error:  # the harness broke: say how, and go on with the next scenario
        outcome.error = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        if stack is not None:
            for child in stack.children:
                if child.returncode not in (None, 0) and child.killed_at is None:
                    outcome.notes.append(f"{child.name} log ends: {child.log_tail(5)}")
    finally:
        if stack is not None:
            stack.close()
            outcome.notes = stack.notes + outcome.notes
    outcome.seconds = time.monotonic() - began
    return outcome


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
