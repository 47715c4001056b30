"""Ed25519 keys, kept as short text, and the one way TopChef signs and verifies.

A key is its 32 raw bytes in URL-safe base64 (43 characters): short enough for
an environment variable or one line of a file, and the same text in every
language. Signatures are the 64 raw bytes, base64 the same way, where they
travel as text. The library is ``cryptography`` (OpenSSL's Ed25519); nothing
here is our own cryptography.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from broker.errors import ConfigurationError

#: The length of a signature, raw.
SIGNATURE_BYTES = 64


def encode(raw: bytes) -> str:
    """Bytes as URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(text: str | bytes) -> bytes:
    """The bytes of ``encode``'s text; ``ValueError`` for anything else."""
    raw = text.encode("ascii", "strict") if isinstance(text, str) else text
    try:
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not base64 text: {error}") from None


class VerifyKey:
    """A public key: checks signatures, makes none."""

    __slots__ = ("_key", "text")

    def __init__(self, text: str) -> None:
        try:
            raw = decode(text.strip())
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, UnicodeError) as error:
            raise ConfigurationError(f"not an Ed25519 public key: {error}") from None
        #: The key as text (what ``topchef`` prints and files hold).
        self.text = encode(raw)

    def verifies(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's over exactly ``data``."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"VerifyKey({self.text!r})"


class SigningKey:
    """A private key. Its text never appears in ``repr`` or logs."""

    __slots__ = ("_key", "verify_key")

    def __init__(self, text: str) -> None:
        try:
            raw = decode(text.strip())
            self._key = Ed25519PrivateKey.from_private_bytes(raw)
        except (ValueError, UnicodeError) as error:
            raise ConfigurationError(f"not an Ed25519 private key: {error}") from None
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        #: The public half, for those that verify.
        self.verify_key = VerifyKey(encode(public))

    @classmethod
    def generate(cls) -> SigningKey:
        raw = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return cls(encode(raw))

    @property
    def text(self) -> str:
        """The private key as text: write it only to a file of mode 0600."""
        raw = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return encode(raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.verify_key.text!r})"


def write_private(key: SigningKey, path: Path) -> None:
    """Write ``key`` to ``path``, readable by its owner only from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(key.text + "\n")
    path.chmod(0o600)


def read_private(path: Path) -> SigningKey:
    """The private key in ``path``; a ``ConfigurationError`` naming the file otherwise."""
    try:
        return SigningKey(path.read_text(encoding="ascii"))
    except (OSError, UnicodeError) as error:
        raise ConfigurationError(f"cannot read the private key {path}: {error}") from None
    except ConfigurationError as error:
        raise ConfigurationError(f"{path}: {error.detail}") from None


def read_public(source: str) -> VerifyKey:
    """A public key given as its text, or as the path of a file that holds it."""
    text = source.strip()
    if os.sep in text or text.endswith(".pub"):
        try:
            text = Path(text).read_text(encoding="ascii")
        except (OSError, UnicodeError) as error:
            raise ConfigurationError(f"cannot read the public key {source}: {error}") from None
    return VerifyKey(text)
