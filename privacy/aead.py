"""AES-256-GCM authenticated encryption for Shamir key shares.

GCM as specified in NIST SP 800-38D (McGrew and Viega, "The Galois/Counter Mode of
Operation"), through pyca/cryptography's ``AESGCM``. Secure aggregation encrypts each share
for one neighbour under a pair key (Bonawitz et al. 2017, §4, "AE.enc"); the coordinator
relays the ciphertext and must be unable to read or alter it, so any tampering, a wrong key
or a wrong associated data (which binds the ciphertext to sender, receiver, run and round)
is one error: :class:`DecryptionError`.

Wire format: ``nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)``. The nonce is random from the
OS CSPRNG; with fresh keys every round each key seals only a handful of messages, far below
the 2^32 random-nonce limit of SP 800-38D §8.3.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class AeadError(ValueError):
    """An AEAD input is malformed (e.g. a key of the wrong size)."""


class DecryptionError(AeadError):
    """A sealed message does not open: tampered, truncated, wrong key or wrong aad."""


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` (and authenticate ``aad``) under a 32-byte key;
    returns ``nonce ‖ ciphertext ‖ tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _cipher(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of a :func:`seal` output; :class:`DecryptionError` unless ``sealed`` was
    produced by ``seal`` under this key with this ``aad`` and is unmodified."""
    cipher = _cipher(key)
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(
            f"sealed message is {len(sealed)} bytes, shorter than nonce + tag "
            f"({NONCE_BYTES + TAG_BYTES} bytes)"
        )
    try:
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError(
            "authentication failed: tampered message, wrong key or wrong associated data"
        ) from None


def _cipher(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise AeadError(f"an AES-256-GCM key is {KEY_BYTES} bytes, got {len(key)}")
    return AESGCM(key)
