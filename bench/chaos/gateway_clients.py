"""HTTP clients of the gateway: lab workers that behave, and callers that hang up.

A well-behaved worker claims a job, runs its instrument (writing the ledger as
the Celery handlers do), and reports it COMPLETED with the same
``X-TopChef-Worker`` name it claimed with, checking the service in meanwhile.
A hanging-up caller asks for a job, waiting, and closes the connection before
the answer comes: a job the server claims for it after that is held by nobody.
A caller whose answer *does* come in time got the job fairly, and runs it.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.chaos.ledger import record
from bench.chaos.services import CHAOS

#: A claim waits this long for a job to arrive.
CLAIM_WAIT = 5.0


class Client:
    """One HTTP connection's worth of gateway calls."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        worker: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=timeout or self.timeout
        )
        try:
            headers = {"Content-Type": "application/json"}
            if worker:
                headers["X-TopChef-Worker"] = worker
            payload = json.dumps(body) if body is not None else ""
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            connection.close()


class HttpWorker(threading.Thread):
    """Claims, runs and completes the service's jobs until stopped."""

    def __init__(self, port: int, service_id: uuid.UUID, name: str, ledger: Path, checkin: float):
        super().__init__(name=f"http-{name}", daemon=True)
        self.client = Client(port)
        self.service_id = service_id
        self.worker = name
        self.ledger = str(ledger)
        self.checkin = checkin
        self._halt = threading.Event()
        self._last_checkin = 0.0
        self.completed = 0
        self.refused = 0
        self.errors = 0

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._check_in()
                status, body = self.client.call(
                    "POST", f"/services/{self.service_id}/jobs/claim?wait=2", worker=self.worker
                )
                if status == 200:
                    self.run_job(self.client, body["data"], self.worker)
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                self._halt.wait(0.2)

    def _check_in(self) -> None:
        if time.monotonic() - self._last_checkin >= self.checkin:
            self.client.call("PATCH", f"/services/{self.service_id}", body={})
            self._last_checkin = time.monotonic()

    def run_job(self, client: Client, job: dict[str, Any], worker: str) -> None:
        run_job(client, job, worker, self.ledger, self)

    def stop(self) -> None:
        self._halt.set()


def run_job(
    client: Client, job: dict[str, Any], worker: str, ledger: str, tally: Any = None
) -> None:
    """The instrument at work for one claimed job, then its outcome reported."""
    parameters = job["parameters"]
    run = uuid.uuid4().hex
    record("start", CHAOS, parameters, path=ledger, run=run)
    time.sleep(max(0, int(parameters.get("ms", 0))) / 1000)  # the simulated instrument
    results = {"token": parameters.get("token"), "run": run, "service": CHAOS, "pid": os.getpid()}
    record("end", CHAOS, parameters, path=ledger, run=run, results=results)
    status, _body = client.call(
        "PATCH",
        f"/jobs/{job['id']}",
        body={"status": "COMPLETED", "results": results},
        worker=worker,
    )
    if tally is not None:
        if status == 200:
            tally.completed += 1
        else:
            tally.refused += 1


class HangingUpCaller(threading.Thread):
    """Asks for a job and hangs up before the answer, over and over."""

    def __init__(self, port: int, service_id: uuid.UUID, name: str, ledger: Path, seed: float):
        super().__init__(name=f"caller-{name}", daemon=True)
        self.port = port
        self.service_id = service_id
        self.worker = name
        self.ledger = str(ledger)
        self.rng = random.Random(seed)
        self._halt = threading.Event()
        self.hung_up = 0
        self.answered = 0
        #: (asked, hung up) of every claim this caller gave up on, on the wall clock.
        self.abandoned: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self._halt.is_set():
            # Mostly shorter than a claim takes when jobs are waiting (tens of ms).
            patience = self.rng.uniform(0.005, 0.3)
            client = Client(self.port, timeout=patience)
            path = f"/services/{self.service_id}/jobs/claim?wait={CLAIM_WAIT:g}"
            asked = time.time()
            try:
                status, body = client.call("POST", path, worker=self.worker)
            except TimeoutError:
                self.hung_up += 1  # the connection is closed: the caller went away
                self.abandoned.append((asked, time.time()))
                continue
            except (OSError, http.client.HTTPException, ValueError):
                self._halt.wait(0.2)
                continue
            self.answered += 1
            if status == 200:  # answered in time: the job is fairly this caller's
                run_job(Client(self.port), body["data"], self.worker, self.ledger)

    def was_waiting(self, at: float) -> bool:
        """Whether one of this caller's abandoned claims was still open at ``at``."""
        return any(asked <= at <= hung_up for asked, hung_up in self.abandoned)

    def stop(self) -> None:
        self._halt.set()
