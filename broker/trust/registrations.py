"""What a registration's signature covers, and the one way it is made and checked.

A lab PC can write any claim hash and any job message in Redis, so what proves
that the core registered a job is a signature it cannot make: producers, the
HTTP gateway and beat sign each Celery message they publish with the private
registration key; workers hold the public key and verify the message over the
parameters they were handed before anything else happens.

One signature covers one Celery message: a job sent alone, or every job of a
batch (signing costs about as much as a short job's publish, verifying a
third of a packed job's run, so once per message keeps packing worth it).
What is signed is the *registration document*: which jobs, with which exact
parameters, are registered for which service. It is binary, of fixed-size
fields, so that no two registrations share their bytes:

    DOMAIN ‖ service id (16) ‖ count (4, big-endian) ‖ (job id (16) ‖ digest (32)), count times

The digest is that of the job's parameters (``messages.parameters_digest``,
a 256-bit BLAKE2b of their canonical JSON). The attempt and the priority are
not covered: neither changes what runs.
"""

from __future__ import annotations

import binascii
import struct
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from broker.errors import ConfigurationError
from broker.trust.signing import (
    SigningKey,
    VerifyKey,
    decode,
    encode,
    read_private,
    read_public,
    write_private,
)

#: Keeps these bytes from ever meaning anything else signed with the same key.
DOMAIN = b"topchef registration v1\x00"
#: The raw size of a parameters digest.
DIGEST_BYTES = 32
#: The largest document a worker accepts (a batch of 10,000 jobs; producers send at most 1,000).
MAX_JOBS = 10_000
#: Where each setting comes from, for errors that say what to set.
SIGNING_KEY_VARIABLE = "TOPCHEF_REGISTRATION_SIGNING_KEY"
PUBLIC_KEY_VARIABLE = "TOPCHEF_REGISTRATION_PUBLIC_KEY"

_ENTRY = 16 + DIGEST_BYTES
_HEAD = len(DOMAIN) + 16 + 4


def document(service_id: uuid.UUID, jobs: Sequence[tuple[uuid.UUID, str]]) -> bytes:
    """The bytes a registration's signature covers: ``jobs`` (id, digest in hex) of one service.

    Raises ``ValueError`` for a digest that is not ``DIGEST_BYTES`` of hex.
    """
    parts = [DOMAIN, service_id.bytes, struct.pack(">I", len(jobs))]
    for job_id, digest in jobs:
        raw = bytes.fromhex(digest)
        if len(raw) != DIGEST_BYTES:
            raise ValueError(f"a parameters digest is {DIGEST_BYTES} bytes, got {len(raw)}")
        parts += (job_id.bytes, raw)
    return b"".join(parts)


def entries(signed: bytes) -> tuple[uuid.UUID, frozenset[bytes]] | None:
    """A document's service and its (job id ‖ digest) entries; None if it is not one."""
    if len(signed) < _HEAD or not signed.startswith(DOMAIN):
        return None
    service = uuid.UUID(bytes=signed[len(DOMAIN) : len(DOMAIN) + 16])
    (count,) = struct.unpack(">I", signed[_HEAD - 4 : _HEAD])
    if count > MAX_JOBS or len(signed) != _HEAD + count * _ENTRY:
        return None
    body = signed[_HEAD:]
    return service, frozenset(body[i : i + _ENTRY] for i in range(0, len(body), _ENTRY))


def entry(job_id: uuid.UUID, digest: str) -> bytes:
    """One job's entry, as ``entries`` returns it."""
    return job_id.bytes + bytes.fromhex(digest)


class Registrar:
    """Signs registrations: held by the processes that write the record, never by lab PCs."""

    __slots__ = ("_key",)

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: str) -> Registrar:
        """The registrar of the private key in ``path``; a one-line error if there is none."""
        if not path:
            raise ConfigurationError(
                f"this process publishes jobs and has no registration signing key: set "
                f"{SIGNING_KEY_VARIABLE} to its private key file (`topchef keys init DIR` "
                "makes a pair; `topchef up` keeps one in .topchef/)"
            )
        return cls(read_private(Path(path)))

    @property
    def verify_key(self) -> VerifyKey:
        return self._key.verify_key

    def sign(self, service_id: uuid.UUID, jobs: Sequence[tuple[uuid.UUID, str]]) -> str:
        """The signature of ``document(service_id, jobs)``, as text."""
        return encode(self._key.sign(document(service_id, jobs)))


class RegistrationCheck:
    """Verifies registrations: what every lab worker holds (the public key only)."""

    __slots__ = ("key",)

    def __init__(self, key: VerifyKey) -> None:
        self.key = key

    @classmethod
    def from_setting(cls, source: str) -> RegistrationCheck:
        """The check of the public key ``source`` (its text, or its file); else what to set."""
        if not source.strip():
            raise ConfigurationError(
                f"a worker runs only jobs signed by the core and has no key to check them: "
                f"set {PUBLIC_KEY_VARIABLE} to the registration public key (its text, or its "
                "file: .topchef/registration.pub of `topchef up`, or `topchef keys init`'s)"
            )
        return cls(read_public(source))

    def verifies(self, signed: bytes, signature: object) -> bool:
        """Whether ``signature`` (as it came: any value) is the core's over exactly ``signed``.

        Never raises: whatever a message carries is an answer, True or False.
        """
        if not isinstance(signature, str) or len(signature) > 100:
            return False
        try:
            raw = decode(signature)
        except (ValueError, UnicodeError, binascii.Error):
            return False
        return self.key.verifies(signed, raw)

    def registers(
        self, service_id: uuid.UUID, jobs: Iterable[tuple[uuid.UUID, str]], signature: object
    ) -> bool:
        """Whether ``signature`` registers exactly ``jobs`` for the service (one message's)."""
        try:
            signed = document(service_id, list(jobs))
        except ValueError:
            return False
        return self.verifies(signed, signature)


def ensure_pair(private: Path, public: Path) -> None:
    """Make the registration key pair kept in ``private`` and ``public``, unless it exists.

    Never replaced once made: every message queued and parked was signed with
    it. The private file is its owner's alone; the public one may be copied to
    every lab PC. A public file gone missing or damaged is written again from
    the private one.
    """
    if private.exists():
        key = read_private(private)
    else:
        key = SigningKey.generate()
        write_private(key, private)
    try:
        kept = read_public(str(public)) if public.exists() else None
    except ConfigurationError:
        kept = None
    if kept != key.verify_key:
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_text(key.verify_key.text + "\n", encoding="ascii")
