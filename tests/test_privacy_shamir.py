"""t-of-n Shamir sharing of 32-byte secrets (pycryptodome's GF(2^128) on two halves)."""

from __future__ import annotations

import itertools

import pytest
from Crypto.Protocol.SecretSharing import Shamir

from fedtune.privacy import shamir

SECRET = bytes(range(100, 132))


def _points(shares: list[bytes], xs: tuple[int, ...]) -> dict[int, bytes]:
    return {x: shares[x - 1] for x in xs}


def test_split_gives_n_shares_of_32_bytes() -> None:
    shares = shamir.split_secret(SECRET, 3, 5)
    assert len(shares) == 5
    assert all(len(s) == 32 for s in shares)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_any_threshold_or_more_shares_reconstruct(size: int) -> None:
    shares = shamir.split_secret(SECRET, 3, 5)
    for xs in itertools.combinations(range(1, 6), size):
        assert shamir.combine_shares(_points(shares, xs)) == SECRET, xs


def test_threshold_minus_one_shares_give_a_wrong_secret_without_error() -> None:
    shares = shamir.split_secret(SECRET, 3, 5)
    for xs in itertools.combinations(range(1, 6), 2):
        assert shamir.combine_shares(_points(shares, xs)) != SECRET, xs


def test_a_corrupted_share_gives_a_wrong_secret_without_error() -> None:
    shares = shamir.split_secret(SECRET, 2, 3)
    points = _points(shares, (1, 2))
    points[2] = bytes(b ^ 1 for b in points[2])
    assert shamir.combine_shares(points) != SECRET


def test_threshold_one_means_every_share_reconstructs_alone() -> None:
    shares = shamir.split_secret(SECRET, 1, 4)
    for x in range(1, 5):
        assert shamir.combine_shares({x: shares[x - 1]}) == SECRET


def test_threshold_equal_to_n_needs_every_share() -> None:
    shares = shamir.split_secret(SECRET, 4, 4)
    assert shamir.combine_shares(_points(shares, (1, 2, 3, 4))) == SECRET
    assert shamir.combine_shares(_points(shares, (1, 2, 3))) != SECRET


def test_splitting_twice_gives_different_shares() -> None:
    assert shamir.split_secret(SECRET, 2, 3) != shamir.split_secret(SECRET, 2, 3)


def test_each_half_is_a_pycryptodome_share_at_x_equal_position_plus_one() -> None:
    shares = shamir.split_secret(SECRET, 3, 5)
    first_halves = [(x, shares[x - 1][:16]) for x in (2, 4, 5)]
    second_halves = [(x, shares[x - 1][16:]) for x in (1, 3, 5)]
    assert Shamir.combine(first_halves, ssss=False) == SECRET[:16]
    assert Shamir.combine(second_halves, ssss=False) == SECRET[16:]


def test_shares_made_by_pycryptodome_directly_combine() -> None:
    low = Shamir.split(2, 4, SECRET[:16], ssss=False)
    high = Shamir.split(2, 4, SECRET[16:], ssss=False)
    points = {x: y_low + y_high for (x, y_low), (_, y_high) in zip(low, high, strict=True)}
    assert shamir.combine_shares({3: points[3], 1: points[1]}) == SECRET


def test_largest_allowed_share_count_works() -> None:
    shares = shamir.split_secret(SECRET, 2, 255)
    assert shamir.combine_shares({7: shares[6], 255: shares[254]}) == SECRET


@pytest.mark.parametrize(
    ("threshold", "n_shares", "message"),
    [
        (0, 3, "threshold must be in 1..n_shares=3"),
        (4, 3, "threshold must be in 1..n_shares=3"),
        (1, 0, "n_shares must be in 1..255"),
        (2, 256, "n_shares must be in 1..255"),
    ],
)
def test_invalid_sharing_parameters_are_rejected(
    threshold: int, n_shares: int, message: str
) -> None:
    with pytest.raises(shamir.ShamirError, match=message):
        shamir.split_secret(SECRET, threshold, n_shares)


@pytest.mark.parametrize("length", [16, 31, 33])
def test_secret_that_is_not_32_bytes_is_rejected(length: int) -> None:
    with pytest.raises(shamir.ShamirError, match=f"32 bytes, got {length}"):
        shamir.split_secret(bytes(length), 2, 3)


def test_combining_no_shares_is_rejected() -> None:
    with pytest.raises(shamir.ShamirError, match="at least one share"):
        shamir.combine_shares({})


@pytest.mark.parametrize("x", [0, 256, -1])
def test_x_coordinate_outside_1_to_255_is_rejected(x: int) -> None:
    with pytest.raises(shamir.ShamirError, match="x-coordinates"):
        shamir.combine_shares({x: bytes(32), 1: bytes(32)})


def test_share_of_wrong_length_is_rejected() -> None:
    with pytest.raises(shamir.ShamirError, match="share at x=2 must be 32 bytes, got 16"):
        shamir.combine_shares({1: bytes(32), 2: bytes(16)})
