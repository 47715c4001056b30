"""What a worker authenticates when it reports, and how the mirror checks it: one definition.

A state entry's report is its ``m`` field, the JSON of a ``StateMessage``.
The worker authenticates exactly those bytes with HMAC-SHA256 under its
credential's secret key, with the credential's name before them and a prefix
no other TopChef MAC or signature starts with, so a tag made for a report is
never valid for anything else, and a report tagged under one name never
verifies under another. The entry carries the name (``by``) and the tag
(``sig``) beside ``m``; the Lua scripts that append a report pass the three
through unchanged. Fields a script adds itself (``take``, ``late``,
``since``) are Redis's word, not the worker's, and are not covered.

Why a MAC and not a signature (``broker.trust.signing``): the only verifier of
a report is the mirror, which holds the database and every worker's secret
anyway; workers never check each other's reports. A secret of its own per
worker lets a lab PC authenticate reports as itself and as no one else, the
guarantee signatures gave here, at a small fraction of the mirror's cost per
report, and the mirror is one process that checks two reports per job.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import ConfigurationError
from broker.trust.signing import decode, encode

#: Starts every authenticated report: a tag over anything else is not one of these.
DOMAIN = b"topchef/report/v1\x00"
#: A credential's name: what ``topchef workers enroll`` accepts, and nothing else
#: is ever looked up (a name that cannot be enrolled cannot be one that verifies).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
#: The entry's fields: the report, whose credential authenticated it, its tag.
REPORT, BY, SIGNATURE = "m", "by", "sig"
#: The length of a key and of a tag (HMAC-SHA256's), raw.
KEY_BYTES = MAC_BYTES = 32
#: The longest tag text worth decoding (32 bytes in base64, unpadded, is 43).
_SIGNATURE_TEXT = 44


class ReportKey:
    """A credential's secret key: makes and checks the tags of its reports.

    Its text never appears in ``repr`` or logs: whoever reads it can report
    as its credential.
    """

    __slots__ = ("_raw",)

    def __init__(self, text: str) -> None:
        try:
            raw = decode(text.strip())
        except (ValueError, UnicodeError) as error:
            raise ConfigurationError(f"not a report key: {error}") from None
        if len(raw) != KEY_BYTES:
            raise ConfigurationError(f"not a report key: {len(raw)} bytes, not {KEY_BYTES}")
        self._raw = raw

    @classmethod
    def generate(cls) -> ReportKey:
        return cls(encode(secrets.token_bytes(KEY_BYTES)))

    @property
    def text(self) -> str:
        """The key as text: write it only to a file of mode 0600, or the core's database."""
        return encode(self._raw)

    @property
    def fingerprint(self) -> str:
        """A short digest that tells keys apart (``topchef workers list``) and reveals none."""
        return hashlib.sha256(b"topchef/key-fingerprint\x00" + self._raw).hexdigest()[:16]

    def mac(self, data: bytes) -> bytes:
        return hmac.digest(self._raw, data, hashlib.sha256)

    def verifies(self, data: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is this key's over exactly ``data`` (in constant time)."""
        return hmac.compare_digest(self.mac(data), tag)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReportKey) and hmac.compare_digest(other._raw, self._raw)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"ReportKey(fingerprint={self.fingerprint!r})"


def signed_bytes(name: str, report: bytes) -> bytes:
    """The exact bytes a credential named ``name`` authenticates for ``report``."""
    return DOMAIN + name.encode("ascii") + b"\x00" + report


def sign(name: str, key: ReportKey, report: str) -> tuple[str, str]:
    """``(by, sig)``: the fields that go beside ``report`` in its entry."""
    return name, encode(key.mac(signed_bytes(name, report.encode())))


@dataclass(frozen=True, slots=True)
class Signed:
    """An entry's claim to be authenticated: the report's bytes, the name, the tag."""

    report: bytes
    name: str
    signature: bytes

    def verifies(self, key: ReportKey) -> bool:
        return key.verifies(signed_bytes(self.name, self.report), self.signature)


def signed(fields: Mapping[Any, Any]) -> Signed | str:
    """The entry's tag as it claims it, or why it has none worth checking.

    Never raises, whatever the fields hold: an entry is the input of someone
    who may write anything to Redis.
    """
    report, name, signature = (_field(fields, field) for field in _FIELDS)
    if report is None:
        return "unsigned: no report"
    if not name or not signature:
        return "unsigned: no credential name or no MAC"
    try:
        name_text = name.decode("ascii")
    except UnicodeDecodeError:
        return "forged: the credential name is not a name"
    if NAME.fullmatch(name_text) is None:
        return "forged: the credential name is not a name"
    if len(signature) > _SIGNATURE_TEXT:
        return "forged: the MAC is not one"
    try:
        raw = decode(signature)
    except (ValueError, UnicodeError):
        return "forged: the MAC is not one"
    if len(raw) != MAC_BYTES:
        return "forged: the MAC is not one"
    return Signed(report, name_text, raw)


#: Each field's name as bytes (what redis-py gives) and as text (a decoding client's).
_FIELDS = tuple((field.encode(), field) for field in (REPORT, BY, SIGNATURE))


def _field(fields: Mapping[Any, Any], names: tuple[bytes, str]) -> bytes | None:
    """A field as bytes, whether the client decoded it or not; None if absent or not text."""
    try:
        value = fields.get(names[0])
        if value is None:
            value = fields.get(names[1])
    except (TypeError, AttributeError):
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeError:
            return None
    return None
