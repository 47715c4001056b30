"""A delivery's registration, checked against the core's signature before its claim.

Whoever holds the Redis password can write a claim hash and queue a message,
so a delivery runs only if it carries the core's signature over its job's id,
service and the digest of the very parameters it hands the handler
(``broker.trust.registrations``). The check comes before the claim, before
the parameters are validated, before anything of the job is reported.

A job parked out of a batch goes back to its queue alone, yet its signature
covers the whole batch. The worker that parks it stores the batch's signed
registration once (``keys.signed_batch``), and the parked message names the
batch: whoever takes it later reads that registration, verifies it, and finds
the job in it. Rewriting the stored registration only makes it fail to verify.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from broker.messaging import keys
from broker.messaging.claims import CLAIM_TTL_SECONDS
from broker.messaging.messages import Signed
from broker.trust import registrations
from broker.trust.registrations import RegistrationCheck

#: Verified batch registrations kept in memory, for the next of their parked jobs.
VERIFIED_KEPT = 32
#: The longest batch id a message may name (a uuid has 36 characters).
MAX_BATCH_ID = 100
#: The largest stored registration read: the most jobs a registration may hold.
MAX_DOCUMENT = 64 + registrations.MAX_JOBS * 48


@dataclass(frozen=True, slots=True)
class Proof:
    """What lets a delivery run, carried on should it park: its ``Signed``, and its batch's.

    ``document`` is the registration of the batch the job came in, stored
    before a job of it parks (``Registrations.keep``); None for a job sent alone.
    """

    signed: Signed
    document: bytes | None = None


class Registrations:
    """The worker's side: verify each delivery; keep a batch's registration for its parked jobs."""

    def __init__(self, client: redis.Redis, check: RegistrationCheck) -> None:
        self._client = client
        self._check = check
        #: (batch, signature) → the entries of a stored registration that verified.
        self._verified: OrderedDict[tuple[str, str], tuple[uuid.UUID, frozenset[bytes]]] = (
            OrderedDict()
        )
        #: Batches whose registration this process has stored already.
        self._kept: OrderedDict[str, None] = OrderedDict()

    def single(
        self, service: uuid.UUID, job: uuid.UUID, digest: str, signature: object, batch: object
    ) -> Proof | None:
        """The proof of a one-job message, if its signature registers exactly this job, or None."""
        if batch is None:
            if self._check.registers(service, [(job, digest)], signature):
                return Proof(Signed(str(signature)))
            return None
        if not isinstance(batch, str) or not 0 < len(batch) <= MAX_BATCH_ID:
            return None
        found = self._stored(batch, signature)
        if found is None or found[0] != service:
            return None
        if registrations.entry(job, digest) not in found[1]:
            return None
        return Proof(Signed(str(signature), batch))

    def batch(
        self,
        batch_id: str,
        service: uuid.UUID,
        jobs: Sequence[tuple[uuid.UUID, str]],
        signature: object,
    ) -> Proof | None:
        """The proof of a batch's message, if its signature registers exactly ``jobs``, or None."""
        if not 0 < len(batch_id) <= MAX_BATCH_ID or not isinstance(signature, str):
            return None
        try:
            signed = registrations.document(service, jobs)
        except ValueError:
            return None
        if not self._check.verifies(signed, signature):
            return None
        return Proof(Signed(signature, batch_id), signed)

    def keep(self, proof: Proof) -> None:
        """Store a batch's registration for its parked jobs (once per batch in this process).

        It lives as long as a claim that waits: a job parked for longer finds
        it gone, is refused, and is sent again by beat as a job that never ran.
        """
        batch = proof.signed.batch
        if proof.document is None or batch in self._kept:
            return
        self._client.set(keys.signed_batch(batch), proof.document, ex=CLAIM_TTL_SECONDS)
        self._kept[batch] = None
        while len(self._kept) > VERIFIED_KEPT:
            self._kept.popitem(last=False)

    def _stored(self, batch: str, signature: object) -> tuple[uuid.UUID, frozenset[bytes]] | None:
        """The stored registration of ``batch``, if ``signature`` is the core's over it."""
        if not isinstance(signature, str):
            return None
        cached = self._verified.get((batch, signature))
        if cached is not None:
            self._verified.move_to_end((batch, signature))
            return cached
        raw = self._client.getrange(keys.signed_batch(batch), 0, MAX_DOCUMENT)
        stored = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
        if len(stored) > MAX_DOCUMENT or not self._check.verifies(stored, signature):
            return None
        found = registrations.entries(stored)
        if found is not None:
            self._verified[(batch, signature)] = found
            while len(self._verified) > VERIFIED_KEPT:
                self._verified.popitem(last=False)
        return found
