"""Keys as text and signatures: what verifies, and that nothing malformed raises past us."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import ConfigurationError
from broker.trust.signing import (
    SigningKey,
    VerifyKey,
    read_private,
    read_public,
    write_private,
)

KEY = SigningKey.generate()


def test_a_signature_verifies_over_exactly_its_data_and_key() -> None:
    signature = KEY.sign(b"job 1")
    assert KEY.verify_key.verifies(b"job 1", signature)
    assert not KEY.verify_key.verifies(b"job 2", signature)
    assert not SigningKey.generate().verify_key.verifies(b"job 1", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not KEY.verify_key.verifies(b"job 1", flipped)


@given(st.binary(max_size=200))
def test_any_bytes_as_a_signature_verify_false_and_never_raise(signature: bytes) -> None:
    assert not KEY.verify_key.verifies(b"job 1", signature)


@given(st.text(max_size=80))
def test_any_text_as_a_key_is_a_key_or_a_configuration_error(text: str) -> None:
    for kind in (VerifyKey, SigningKey):
        with contextlib.suppress(ConfigurationError):
            kind(text)


def test_a_private_key_file_is_its_owners_only_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "registration.key"
    write_private(KEY, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_private(path).verify_key == KEY.verify_key
    assert KEY.text not in repr(KEY)


def test_a_public_key_reads_from_its_text_or_its_file(tmp_path: Path) -> None:
    path = tmp_path / "registration.pub"
    path.write_text(KEY.verify_key.text + "\n")
    assert read_public(str(path)) == KEY.verify_key
    assert read_public(KEY.verify_key.text) == KEY.verify_key
    with pytest.raises(ConfigurationError, match="cannot read the public key"):
        read_public(str(tmp_path / "absent.pub"))
    with pytest.raises(ConfigurationError, match="not an Ed25519 public key"):
        read_public("not-a-key")
