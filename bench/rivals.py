"""Raw Celery, RQ and Dramatiq: enqueue rate and drain time, driven like TopChef."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.payload import parameters
from bench.peers import DONE, QUEUE
from bench.servers import PYTHON, Child, python_env, wait_until


@dataclass(frozen=True)
class WorkerSetup:
    """How a peer's workers run: a label for the table and the command line."""

    label: str
    args: list[str]
    processes: int = 1


class Peer:
    """One library, on a Redis database of its own on the bench's server."""

    name = ""
    db = 0

    def __init__(self, server_url: Callable[[int], str], log_dir: Path) -> None:
        self.url = server_url(self.db)
        self.redis = redis.Redis.from_url(self.url)
        self.log_dir = log_dir
        os.environ["BENCH_REDIS_URL"] = self.url
        self.workers: list[Child] = []

    def env(self) -> dict[str, str]:
        return python_env(BENCH_REDIS_URL=self.url)

    def send(self, index: int) -> None:
        raise NotImplementedError

    def purge(self) -> None:
        self.redis.flushdb()

    def enqueue(self, n: int) -> float:
        """Messages per second sent one at a time, with no worker consuming."""
        self.purge()
        self.send(0)  # connections and first-use caches are warm
        started = time.perf_counter()
        for index in range(n):
            self.send(index)
        rate = n / (time.perf_counter() - started)
        self.purge()
        return rate

    def start_workers(self, setup: WorkerSetup) -> None:
        self.purge()
        self.workers = [
            Child(
                [arg.replace("{index}", str(index)) for arg in setup.args],
                self.env(),
                self.log_dir,
                f"{self.name}-{setup.label}-{index}",
            )
            for index in range(setup.processes)
        ]
        self.redis.delete(DONE)
        self.send(0)
        wait_until(lambda: self._done() >= 1, 60, f"{self.name} workers to start")

    def stop_workers(self) -> None:
        for child in self.workers:
            child.stop()
        self.workers = []

    def _done(self) -> int:
        for child in self.workers:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        return int(self.redis.get(DONE) or 0)

    def drain(self, n: int) -> float:
        """Seconds from the first send until the workers ran all ``n`` jobs."""
        self.redis.delete(DONE)
        started = time.perf_counter()
        for index in range(n):
            self.send(index)
        wait_until(lambda: self._done() >= n, max(120.0, n / 20), f"{self.name} drain", 0.002)
        return time.perf_counter() - started

    def setups(self, concurrency: int) -> list[WorkerSetup]:
        raise NotImplementedError


class RawCelery(Peer):
    name = "celery"
    db = 1

    def __init__(self, server_url: Callable[[int], str], log_dir: Path) -> None:
        super().__init__(server_url, log_dir)
        module: Any = importlib.import_module("bench.peers.celery_tasks")
        self.app = module.app
        self.app.conf.broker_url = self.url
        self.task = module.noop
        self.producer = self.app.producer_or_acquire().__enter__()

    def send(self, index: int) -> None:
        self.task.apply_async((parameters(index),), producer=self.producer)

    def worker(self, pool: str, concurrency: int, processes: int = 1) -> WorkerSetup:
        args = [PYTHON, "-m", "celery", "-A", "bench.peers.celery_tasks", "worker"]
        args += ["--pool", pool, "--concurrency", str(concurrency), "-Q", QUEUE]
        args += ["--loglevel", "WARNING", "--hostname", "bench-{index}@%h"]
        return WorkerSetup(f"{pool}{concurrency}x{processes}", args, processes)


class RQ(Peer):
    name = "rq"
    db = 2

    def __init__(self, server_url: Callable[[int], str], log_dir: Path) -> None:
        super().__init__(server_url, log_dir)
        from rq import Queue

        self.queue = Queue(QUEUE, connection=self.redis)

    def send(self, index: int) -> None:
        self.queue.enqueue("bench.peers.rq_tasks.noop", parameters(index))

    def worker(self, worker_class: str, processes: int = 1) -> WorkerSetup:
        rq = str(Path(PYTHON).parent / "rq")
        args = [rq, "worker", "--url", self.url, "--quiet"]
        args += ["--worker-class", f"rq.worker.{worker_class}", QUEUE]
        return WorkerSetup(f"{worker_class}x{processes}", args, processes)


class Dramatiq(Peer):
    name = "dramatiq"
    db = 3

    def __init__(self, server_url: Callable[[int], str], log_dir: Path) -> None:
        super().__init__(server_url, log_dir)
        module: Any = importlib.import_module("bench.peers.dramatiq_actors")
        self.actor = module.noop

    def send(self, index: int) -> None:
        self.actor.send(parameters(index))

    def worker(self, threads: int, processes: int = 1) -> WorkerSetup:
        args = [PYTHON, "-m", "dramatiq", "bench.peers.dramatiq_actors"]
        args += ["--processes", "1", "--threads", str(threads), "--queues", QUEUE]
        return WorkerSetup(f"1p{threads}t", args, processes)
