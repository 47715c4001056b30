"""What a signed registration costs: signing on the producer, verifying on the worker.

Measured in this process, on the bench's own job parameters: the digest of
each job's parameters (which the claim needs anyway) is taken once, and what
is timed is the signature alone, over one job (a job sent alone) and over a
packed message's jobs (one signature covers them all).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from bench.payload import parameters
from broker.messaging.messages import parameters_digest
from broker.trust.registrations import Registrar, RegistrationCheck
from broker.trust.signing import SigningKey


@dataclass(frozen=True)
class Cost:
    """Microseconds per message signed and verified, for messages of ``jobs`` jobs."""

    jobs: int
    sign_us: float
    verify_us: float


def cost(jobs: int, rounds: int) -> Cost:
    """The mean cost over ``rounds`` messages of ``jobs`` jobs each."""
    key = SigningKey.generate()
    registrar, check = Registrar(key), RegistrationCheck(key.verify_key)
    service = uuid.uuid4()
    registered = [(uuid.uuid4(), parameters_digest(parameters(i))) for i in range(jobs)]
    started = time.perf_counter()
    for _ in range(rounds):
        signature = registrar.sign(service, registered)
    signing = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        if not check.registers(service, registered, signature):
            raise AssertionError("a genuine registration did not verify")
    verifying = time.perf_counter() - started
    return Cost(jobs, signing / rounds * 1e6, verifying / rounds * 1e6)
