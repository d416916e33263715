"""Ed25519 identity signatures with domain separation (pure: no files, no clocks).

Every signed statement starts with a domain tag naming its purpose and version, followed by
length-prefixed fields, so a signature made for one purpose (authenticating a connection)
can never be replayed as another (advertising keys, approving a survivor list).
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

AUTH_DOMAIN = b"fedtune/v1/authenticate"


class SignatureError(ValueError):
    """A signature does not verify, or a key is malformed."""


def statement(domain: bytes, *fields: bytes) -> bytes:
    """Unambiguous encoding of a signed statement: domain, then each field length-prefixed."""
    out = bytearray(len(domain).to_bytes(2, "big") + domain)
    for f in fields:
        out += len(f).to_bytes(4, "big") + f
    return bytes(out)


def auth_statement(run_id: str, site_id: str, nonce: bytes) -> bytes:
    """What a site signs to prove possession of its identity key for one connection."""
    return statement(AUTH_DOMAIN, run_id.encode(), site_id.encode(), nonce)


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message)


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key with these 32 raw bytes. Loaded keys are kept (they are
    immutable): a site checks the same peers' keys in every round, and loading one costs a
    quarter of a verification."""
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return _loaded_public_key(bytes(raw))


@functools.lru_cache(maxsize=4096)
def _loaded_public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is valid for ``message``."""
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature is 64 bytes, got {len(signature)}")
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None


ADVERTISE_DOMAIN = b"fedtune/v1/advertise-keys"
SURVIVORS_DOMAIN = b"fedtune/v1/survivors"


def advertisement_statement(advertisement: bytes) -> bytes:
    """What a site signs over its round keys (the deterministic KeyAdvertisement bytes)."""
    return statement(ADVERTISE_DOMAIN, advertisement)


def survivors_statement(run_id: str, round_id: int, survivors: list[str],
                        dropouts: list[str]) -> bytes:
    """The survivor and dropout lists of one round, as the coordinator and the sites sign them.

    Lists are sorted, so two parties agree on the statement exactly when they agree on the sets.
    """
    return statement(SURVIVORS_DOMAIN, run_id.encode(), str(round_id).encode(),
                     "\n".join(sorted(survivors)).encode(), "\n".join(sorted(dropouts)).encode())
