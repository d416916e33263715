"""Ed25519 statements: keys loaded once, bad keys and signatures refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedtune.privacy import signatures as sg


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_a_public_key_is_loaded_once_and_still_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    raw = _raw(key)
    loaded = sg.public_key_from_raw(raw)
    assert sg.public_key_from_raw(bytearray(raw)) is loaded  # any bytes-like spelling
    sg.verify(loaded, sg.sign(key, b"statement"), b"statement")
    with pytest.raises(sg.SignatureError, match="does not verify"):
        sg.verify(loaded, sg.sign(key, b"statement"), b"another statement")


def test_keys_of_different_sites_stay_apart() -> None:
    one, two = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = sg.sign(one, b"m")
    sg.verify(sg.public_key_from_raw(_raw(one)), signature, b"m")
    with pytest.raises(sg.SignatureError):
        sg.verify(sg.public_key_from_raw(_raw(two)), signature, b"m")


@pytest.mark.parametrize("length", [0, 31, 33])
def test_a_public_key_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(sg.SignatureError, match="32 bytes"):
        sg.public_key_from_raw(bytes(length))
