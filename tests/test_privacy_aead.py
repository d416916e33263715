"""AES-256-GCM sealing of key shares (NIST SP 800-38D / McGrew–Viega)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedtune.privacy import aead

KEY = bytes(range(32))
AAD = b"run-1|round-3|alice->bob"


def test_aes_256_gcm_matches_mcgrew_viega_test_case_16() -> None:
    # "The Galois/Counter Mode of Operation", Test Case 16: AES-256, 60-byte plaintext, AAD.
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    plaintext = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    )
    aad = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    ciphertext = bytes.fromhex(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
    )
    tag = bytes.fromhex("76fc6ece0f4e1768cddf8853bb2d551b")
    assert AESGCM(key).encrypt(iv, plaintext, aad) == ciphertext + tag
    # seal's wire format is nonce ‖ ciphertext ‖ tag, so the vector opens through open_sealed.
    assert aead.open_sealed(key, iv + ciphertext + tag, aad) == plaintext


def test_seal_then_open_returns_the_plaintext() -> None:
    sealed = aead.seal(KEY, b"share bytes", AAD)
    assert aead.open_sealed(KEY, sealed, AAD) == b"share bytes"


def test_sealed_message_is_nonce_ciphertext_and_tag() -> None:
    sealed = aead.seal(KEY, b"x" * 64, AAD)
    assert len(sealed) == aead.NONCE_BYTES + 64 + aead.TAG_BYTES


def test_sealing_twice_uses_fresh_nonces() -> None:
    assert aead.seal(KEY, b"same", AAD) != aead.seal(KEY, b"same", AAD)


def test_empty_plaintext_round_trips() -> None:
    assert aead.open_sealed(KEY, aead.seal(KEY, b"", AAD), AAD) == b""


@pytest.mark.parametrize("position", [0, 12, 20, -1], ids=["nonce", "ciphertext", "mid", "tag"])
def test_any_flipped_bit_is_detected(position: int) -> None:
    sealed = bytearray(aead.seal(KEY, b"share bytes", AAD))
    sealed[position] ^= 0x01
    with pytest.raises(aead.DecryptionError, match="authentication failed"):
        aead.open_sealed(KEY, bytes(sealed), AAD)


def test_wrong_key_is_detected() -> None:
    sealed = aead.seal(KEY, b"share bytes", AAD)
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(bytes(32), sealed, AAD)


def test_wrong_associated_data_is_detected() -> None:
    sealed = aead.seal(KEY, b"share bytes", AAD)
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(KEY, sealed, b"run-1|round-4|alice->bob")


@pytest.mark.parametrize("length", [0, 11, 27])
def test_short_input_is_a_decryption_error(length: int) -> None:
    with pytest.raises(aead.DecryptionError, match=f"{length} bytes, shorter"):
        aead.open_sealed(KEY, bytes(length), AAD)


def test_truncated_message_is_detected() -> None:
    sealed = aead.seal(KEY, b"share bytes", AAD)
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(KEY, sealed[:-1], AAD)


@pytest.mark.parametrize("length", [16, 24, 33])
def test_key_that_is_not_256_bits_is_rejected(length: int) -> None:
    with pytest.raises(aead.AeadError, match=f"32 bytes, got {length}"):
        aead.seal(bytes(length), b"x", AAD)
