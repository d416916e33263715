"""X25519 key agreement and HKDF-SHA256 key derivation with domain separation.

Implements the Diffie–Hellman function X25519 of RFC 7748 (§5, §6.1) and the HKDF
extract-and-expand construction of RFC 5869 with SHA-256, both through pyca/cryptography.
This is the "KA" and "PRG seed" layer of secure aggregation (Bonawitz et al. 2017, §4;
Bell et al. 2020, SecAgg+): every pair of sites agrees on a key for encrypting Shamir shares
and on a key for their pairwise mask, and each site derives its self-mask key from a seed.

Why domain separation: one ECDH secret feeds several keys (share encryption, pairwise mask),
and key pairs are fresh per round. Binding every derived key to (run, round, purpose, pair)
in HKDF's ``info`` makes a key for one use useless for any other, so a coordinator that
replays or reroutes messages across runs, rounds or purposes cannot make two sites reuse a
key (RFC 5869 §3.2: ``info`` binds the derived key to application- and context-specific
information).

Pure: no files, sockets, clocks or global random state; private keys come from the OS CSPRNG
through ``cryptography``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
PAIR_KEY_DOMAIN = b"fedtune/v1/pair-key"
SITE_KEY_DOMAIN = b"fedtune/v1/site-key"

_HKDF_SHA256_MAX_LENGTH = 255 * 32  # RFC 5869 §2.3: L <= 255 * HashLen
_ROUND_ID_MAX = 2**64 - 1


class KeyAgreementError(ValueError):
    """A key is malformed, a peer key is of small order, or derivation inputs are invalid."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw encoding (RFC 7748 §5)."""

    private: X25519PrivateKey
    public: bytes


def generate_key_pair() -> KeyPair:
    """A fresh X25519 key pair from the OS CSPRNG."""
    private = X25519PrivateKey.generate()
    return KeyPair(private=private, public=_public_raw(private))


def private_from_raw(raw: bytes) -> X25519PrivateKey:
    """Load a private key from its 32 raw bytes (e.g. one reconstructed from Shamir shares)."""
    if len(raw) != KEY_BYTES:
        raise KeyAgreementError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def private_to_raw(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key (what the mask secret key's Shamir shares hide)."""
    return key.private_bytes(
        encoding=serialization.Encoding.Raw,
        format=serialization.PrivateFormat.Raw,
        encryption_algorithm=serialization.NoEncryption(),
    )


def public_from_private(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``key`` (to check a reconstructed key against the
    advertised public key: Shamir cannot tell a wrong reconstruction on its own)."""
    return _public_raw(key)


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869 §2): extract with ``salt`` (None = HashLen zero bytes), then
    expand to ``length`` bytes bound to ``info``."""
    if not 1 <= length <= _HKDF_SHA256_MAX_LENGTH:
        raise KeyAgreementError(
            f"HKDF-SHA256 output length must be in 1..{_HKDF_SHA256_MAX_LENGTH}, got {length}"
        )
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_pair_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    *,
    run_id: str,
    round_id: int,
    purpose: str,
    site_a: str,
    site_b: str,
) -> bytes:
    """The 32-byte key a pair of sites shares for one run, round and purpose.

    ``HKDF-SHA256(ikm = X25519(private, peer_public), info = encode(PAIR_KEY_DOMAIN, run_id,
    round_id, purpose, min(site_a, site_b), max(site_a, site_b)))``. The pair is ordered, so
    both ends derive the same key whichever of them is ``site_a``.

    Raises :class:`KeyAgreementError` if ``peer_public`` is not 32 bytes, if the ECDH output
    is all zero (a small-order peer key, RFC 7748 §6.1: a peer could otherwise force a
    known shared secret), or if ``site_a == site_b``.
    """
    if len(peer_public) != KEY_BYTES:
        raise KeyAgreementError(
            f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}"
        )
    if site_a == site_b:
        raise KeyAgreementError(f"a pair key needs two different sites, got {site_a!r} twice")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # cryptography refuses the all-zero output of a small-order point itself.
        raise KeyAgreementError(
            "peer public key is of small order (the X25519 output is all zero)"
        ) from None
    if shared == bytes(KEY_BYTES):
        raise KeyAgreementError("peer public key is of small order (the X25519 output is all zero)")
    low, high = sorted((site_a, site_b))
    info = _encode_info(PAIR_KEY_DOMAIN, run_id, round_id, purpose, low, high)
    return hkdf_sha256(shared, info)


def derive_key(secret: bytes, *, run_id: str, round_id: int, purpose: str, site: str) -> bytes:
    """A 32-byte key for one site's own use (the self-mask), derived from a 32-byte seed.

    ``HKDF-SHA256(ikm = secret, info = encode(SITE_KEY_DOMAIN, run_id, round_id, purpose,
    site))``: the same domain separation as :func:`derive_pair_key`, with a different domain
    tag so a site key can never equal a pair key.
    """
    if len(secret) != KEY_BYTES:
        raise KeyAgreementError(f"a key-derivation seed is {KEY_BYTES} bytes, got {len(secret)}")
    return hkdf_sha256(secret, _encode_info(SITE_KEY_DOMAIN, run_id, round_id, purpose, site))


def _encode_info(domain: bytes, run_id: str, round_id: int, purpose: str, *sites: str) -> bytes:
    """Unambiguous ``info``: each field length-prefixed (4 bytes, big-endian), the round as a
    fixed 8-byte big-endian integer, so no two different tuples encode to the same bytes."""
    if isinstance(round_id, bool) or not 0 <= round_id <= _ROUND_ID_MAX:
        raise KeyAgreementError(f"round_id must be an integer in 0..2**64-1, got {round_id!r}")
    fields = [domain, run_id.encode(), round_id.to_bytes(8, "big"), purpose.encode()]
    fields += [s.encode() for s in sites]
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )
