"""What a worker signs when it reports, and how the mirror checks it: one definition of both.

A state entry's report is its ``m`` field, the JSON of a ``StateMessage``.
The worker signs exactly those bytes, with its credential's name before them
and a prefix that no other TopChef signature starts with, so a signature made
for a report is never valid as a registration's, and a report signed under one
name never verifies under another. The entry carries the name (``by``) and the
signature (``sig``) beside ``m``; the Lua scripts that append a report pass the
three through unchanged. Fields a script adds itself (``take``, ``late``,
``since``) are Redis's word, not the worker's, and are not signed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.trust.signing import SIGNATURE_BYTES, SigningKey, VerifyKey, decode, encode

#: Starts every signed report: a signature over anything else is not one of these.
DOMAIN = b"topchef/report/v1\x00"
#: A credential's name: what ``topchef workers enroll`` accepts, and nothing else
#: is ever looked up (a name that cannot be enrolled cannot be one that verifies).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
#: The entry's fields: the report, who signed it, the signature.
REPORT, BY, SIGNATURE = "m", "by", "sig"
#: The longest signature text worth decoding (64 bytes in base64, unpadded, is 86).
_SIGNATURE_TEXT = 88


def signed_bytes(name: str, report: bytes) -> bytes:
    """The exact bytes a credential named ``name`` signs for ``report``."""
    return DOMAIN + name.encode("ascii") + b"\x00" + report


def sign(name: str, key: SigningKey, report: str) -> tuple[str, str]:
    """``(by, sig)``: the fields that go beside ``report`` in its entry."""
    return name, encode(key.sign(signed_bytes(name, report.encode())))


@dataclass(frozen=True, slots=True)
class Signed:
    """An entry's claim to be signed: the report's bytes, the name, the signature."""

    report: bytes
    name: str
    signature: bytes

    def verifies(self, key: VerifyKey) -> bool:
        return key.verifies(signed_bytes(self.name, self.report), self.signature)


def signed(fields: Mapping[Any, Any]) -> Signed | str:
    """The entry's signature as it claims it, or why it has none worth checking.

    Never raises, whatever the fields hold: an entry is the input of someone
    who may write anything to Redis.
    """
    report, name, signature = (_field(fields, field) for field in (REPORT, BY, SIGNATURE))
    if report is None:
        return "unsigned: no report"
    if not name or not signature:
        return "unsigned: no credential name or no signature"
    try:
        name_text = name.decode("ascii")
    except UnicodeDecodeError:
        return "forged: the credential name is not a name"
    if NAME.fullmatch(name_text) is None:
        return "forged: the credential name is not a name"
    if len(signature) > _SIGNATURE_TEXT:
        return "forged: the signature is not one"
    try:
        raw = decode(signature)
    except (ValueError, UnicodeError):
        return "forged: the signature is not one"
    if len(raw) != SIGNATURE_BYTES:
        return "forged: the signature is not one"
    return Signed(report, name_text, raw)


def _field(fields: Mapping[Any, Any], name: str) -> bytes | None:
    """A field as bytes, whether the client decoded it or not; None if absent or not text."""
    try:
        value = fields.get(name.encode(), fields.get(name))
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
