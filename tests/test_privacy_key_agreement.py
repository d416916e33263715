"""X25519 (RFC 7748) and HKDF-SHA256 (RFC 5869) with fedtune's domain separation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedtune.privacy import key_agreement as ka

# RFC 7748 §6.1
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_SECRET = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# Points of small order on Curve25519 (and non-canonical encodings of them): X25519 with any
# of them gives the all-zero output (the list libsodium and RFC 7748 §6.1 warn about).
SMALL_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]

CONTEXT = {"run_id": "run-1", "round_id": 3, "purpose": "mask"}


def _pair_key(private: X25519PrivateKey, peer_public: bytes, **overrides: object) -> bytes:
    kwargs: dict = {**CONTEXT, "site_a": "alice", "site_b": "bob"}
    kwargs.update(overrides)
    return ka.derive_pair_key(private, peer_public, **kwargs)


def test_x25519_matches_rfc7748_section_6_1() -> None:
    alice = ka.private_from_raw(ALICE_PRIVATE)
    bob = ka.private_from_raw(BOB_PRIVATE)
    assert ka.public_from_private(alice) == ALICE_PUBLIC
    assert ka.public_from_private(bob) == BOB_PUBLIC
    assert alice.exchange(X25519PublicKey.from_public_bytes(BOB_PUBLIC)) == SHARED_SECRET
    assert bob.exchange(X25519PublicKey.from_public_bytes(ALICE_PUBLIC)) == SHARED_SECRET


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "length", "okm"),
    [
        pytest.param(  # RFC 5869 A.1
            bytes.fromhex("0b" * 22),
            bytes.fromhex("000102030405060708090a0b0c"),
            bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
            42,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
            id="rfc5869-case-1",
        ),
        pytest.param(  # RFC 5869 A.2: three expand blocks
            bytes(range(0x50)),
            bytes(range(0x60, 0xB0)),
            bytes(range(0xB0, 0x100)),
            82,
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
            "cc30c58179ec3e87c14c01d5c1f3434f1d87",
            id="rfc5869-case-2",
        ),
        pytest.param(  # RFC 5869 A.3: zero-length salt and info
            bytes.fromhex("0b" * 22),
            b"",
            b"",
            42,
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
            id="rfc5869-case-3",
        ),
    ],
)
def test_hkdf_sha256_matches_rfc5869(
    ikm: bytes, salt: bytes, info: bytes, length: int, okm: str
) -> None:
    assert ka.hkdf_sha256(ikm, info, length, salt).hex() == okm


def test_hkdf_without_salt_equals_hashlen_zero_salt() -> None:
    ikm = bytes.fromhex("0b" * 22)
    assert ka.hkdf_sha256(ikm, b"x") == ka.hkdf_sha256(ikm, b"x", salt=bytes(32))


def test_hkdf_rejects_output_longer_than_255_blocks() -> None:
    with pytest.raises(ka.KeyAgreementError, match="output length"):
        ka.hkdf_sha256(b"k", b"", 255 * 32 + 1)


def test_generated_key_pair_public_matches_private() -> None:
    pair = ka.generate_key_pair()
    assert len(pair.public) == 32
    assert ka.public_from_private(pair.private) == pair.public


def test_private_key_round_trips_through_raw_bytes() -> None:
    pair = ka.generate_key_pair()
    raw = ka.private_to_raw(pair.private)
    assert len(raw) == 32
    assert ka.public_from_private(ka.private_from_raw(raw)) == pair.public


def test_private_from_raw_rejects_wrong_length() -> None:
    with pytest.raises(ka.KeyAgreementError, match="32 bytes, got 31"):
        ka.private_from_raw(bytes(31))


def test_pair_key_agrees_at_both_ends() -> None:
    alice, bob = ka.generate_key_pair(), ka.generate_key_pair()
    at_alice = _pair_key(alice.private, bob.public, site_a="alice", site_b="bob")
    at_bob = _pair_key(bob.private, alice.public, site_a="bob", site_b="alice")
    assert at_alice == at_bob
    assert len(at_alice) == 32


def test_pair_key_encoding_is_pinned() -> None:
    # Every site must derive the same key; this pins the documented info encoding.
    def field(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    info = b"".join(
        field(f)
        for f in (b"fedtune/v1/pair-key", b"run-1", (3).to_bytes(8, "big"), b"mask", b"alice",
                  b"bob")
    )
    alice = ka.private_from_raw(ALICE_PRIVATE)
    assert _pair_key(alice, BOB_PUBLIC) == ka.hkdf_sha256(SHARED_SECRET, info)


@pytest.mark.parametrize(
    "change",
    [
        {"run_id": "run-2"},
        {"round_id": 4},
        {"purpose": "share-encryption"},
        {"site_b": "carol"},
    ],
    ids=["run", "round", "purpose", "pair"],
)
def test_pair_key_differs_by_run_round_purpose_and_pair(change: dict) -> None:
    alice, bob = ka.generate_key_pair(), ka.generate_key_pair()
    assert _pair_key(alice.private, bob.public) != _pair_key(alice.private, bob.public, **change)


def test_pair_key_fields_cannot_be_shifted_between_each_other() -> None:
    # Length prefixes: ("ab", "c") and ("a", "bc") must not collide.
    alice, bob = ka.generate_key_pair(), ka.generate_key_pair()
    one = _pair_key(alice.private, bob.public, run_id="ab", purpose="c")
    two = _pair_key(alice.private, bob.public, run_id="a", purpose="bc")
    assert one != two


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_small_order_peer_key_is_rejected(point: bytes) -> None:
    with pytest.raises(ka.KeyAgreementError, match="small order"):
        _pair_key(ka.generate_key_pair().private, point)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_peer_key_of_wrong_length_is_rejected(length: int) -> None:
    with pytest.raises(ka.KeyAgreementError, match=f"32 bytes, got {length}"):
        _pair_key(ka.generate_key_pair().private, bytes([9]) * length)


def test_pair_key_with_oneself_is_rejected() -> None:
    pair = ka.generate_key_pair()
    with pytest.raises(ka.KeyAgreementError, match="two different sites"):
        _pair_key(pair.private, pair.public, site_a="alice", site_b="alice")


@pytest.mark.parametrize("round_id", [-1, 2**64])
def test_round_id_outside_64_bits_is_rejected(round_id: int) -> None:
    alice, bob = ka.generate_key_pair(), ka.generate_key_pair()
    with pytest.raises(ka.KeyAgreementError, match="round_id"):
        _pair_key(alice.private, bob.public, round_id=round_id)


def test_site_key_is_deterministic_and_separated_by_context() -> None:
    seed = bytes(range(32))
    base = ka.derive_key(seed, run_id="r", round_id=1, purpose="self-mask", site="alice")
    assert base == ka.derive_key(seed, run_id="r", round_id=1, purpose="self-mask", site="alice")
    variants = {
        ka.derive_key(seed, run_id="r2", round_id=1, purpose="self-mask", site="alice"),
        ka.derive_key(seed, run_id="r", round_id=2, purpose="self-mask", site="alice"),
        ka.derive_key(seed, run_id="r", round_id=1, purpose="other", site="alice"),
        ka.derive_key(seed, run_id="r", round_id=1, purpose="self-mask", site="bob"),
        ka.derive_key(bytes(32), run_id="r", round_id=1, purpose="self-mask", site="alice"),
    }
    assert len(base) == 32
    assert base not in variants
    assert len(variants) == 5


def test_site_key_rejects_seed_of_wrong_length() -> None:
    with pytest.raises(ka.KeyAgreementError, match="32 bytes, got 16"):
        ka.derive_key(bytes(16), run_id="r", round_id=1, purpose="self-mask", site="alice")
