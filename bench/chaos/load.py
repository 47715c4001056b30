"""The producers of a scenario: jobs submitted at a steady pace, through the faults.

A submit that fails (the database is restarting) is retried once the servers
answer again, with a *new* token: the failed one may have committed all the
same (its reply was lost), and two jobs must never share a token, or the
ledger could not tell their runs apart. A job committed that way is still in
SQL, so it is counted and judged like any other.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.chaos.services import SPECS
from bench.chaos.stack import Stack, poll_until
from broker.producer import Producer

#: Tries of one job before the feeder gives it up (and says so in the report).
ATTEMPTS = 5

Submit = Callable[[str, dict[str, Any]], uuid.UUID]


class Feeder(threading.Thread):
    """Submits ``count`` jobs, cycling through ``services``, spread over ``seconds``."""

    def __init__(
        self,
        stack: Stack,
        services: list[str],
        count: int,
        seconds: float,
        ms: tuple[int, int],
        rng: random.Random,
        submit: Submit | None = None,
    ) -> None:
        super().__init__(name=f"feeder-{stack.name}", daemon=True)
        self.stack = stack
        self.services = services
        self.count = count
        self.seconds = seconds
        self.ms = ms
        self.rng = random.Random(rng.random())
        self._submit = submit
        self._halt = threading.Event()
        self.submitted: list[uuid.UUID] = []
        self.errors = 0
        self.given_up = 0
        self.last_error = ""

    def run(self) -> None:
        producer: Producer | None = None
        submit = self._submit
        if submit is None:
            producer = Producer(self.stack.settings)
            submit = producer.submit
        started = time.monotonic()
        try:
            for index in range(self.count):
                due = started + self.seconds * index / max(1, self.count)
                if self._halt.wait(max(0.0, due - time.monotonic())):
                    return
                service = self.services[index % len(self.services)]
                self._submit_one(submit, service)
        finally:
            if producer is not None:
                producer.app.close()

    def _submit_one(self, submit: Submit, service: str) -> None:
        for _attempt in range(ATTEMPTS):
            parameters = SPECS[service].parameters(self.rng.randint(*self.ms))
            try:
                self.submitted.append(submit(service, parameters))
                return
            except Exception as error:  # any fault of the servers: wait for them, then retry
                self.errors += 1
                self.last_error = f"{type(error).__name__}: {error}"[:300]
                poll_until(self._servers_answer, 60, 0.2)
        self.given_up += 1

    def _servers_answer(self) -> bool:
        return self.stack.postgres.responds() and self.stack.redis.responds()

    def stop(self) -> None:
        self._halt.set()

    def finish(self, timeout: float = 120.0) -> None:
        """Wait for every job to be submitted (the pace sets how long that takes)."""
        self.join(timeout)
        if self.is_alive():
            self.stop()
            self.join(30)

    def summary(self) -> dict[str, int]:
        return {"submit errors (retried)": self.errors, "submits given up": self.given_up}
