"""t-of-n Shamir sharing of 32-byte secrets (pycryptodome's GF(2^128) on two halves), and
fedtune's batched combine checked bit for bit against pycryptodome's."""

from __future__ import annotations

import itertools
import random

import pytest
from Crypto.Protocol.SecretSharing import Shamir, _Element

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


# -- the batched combine against pycryptodome ------------------------------------------------

FIELD_EDGES = [0, 1, 2, 0x87, 1 << 127, (1 << 128) - 1, (1 << 128) - 2, 0x87 << 120]


def _library_combine(points: dict[int, bytes]) -> bytes:
    """pycryptodome's own interpolation at 0 of each 16-byte half."""
    low = [(x, y[:16]) for x, y in points.items()]
    high = [(x, y[16:]) for x, y in points.items()]
    return Shamir.combine(low, ssss=False) + Shamir.combine(high, ssss=False)


def _random_points(rng: random.Random, size: int) -> dict[int, bytes]:
    """Arbitrary points (not necessarily one sharing) at ``size`` distinct x in 1..255, in
    random (unsorted) insertion order."""
    return {x: rng.randbytes(32) for x in rng.sample(range(1, 256), size)}


def test_field_multiplication_equals_pycryptodome() -> None:
    rng = random.Random(1)
    values = FIELD_EDGES + [rng.getrandbits(128) for _ in range(60)] + list(range(1, 256, 17))
    for a in values:
        for b in rng.sample(values, 8) + FIELD_EDGES:
            assert shamir.gf128_mul(a, b) == int(_Element(a) * _Element(b)), (a, b)


def test_field_inverse_equals_pycryptodome() -> None:
    rng = random.Random(2)
    for a in [v for v in FIELD_EDGES if v] + [rng.getrandbits(128) for _ in range(100)]:
        inverse = shamir.gf128_inverse(a)
        assert inverse == int(_Element(a).inverse()), a
        assert shamir.gf128_mul(a, inverse) == 1


def test_combine_of_arbitrary_points_equals_pycryptodome_bit_for_bit() -> None:
    rng = random.Random(3)
    for size in list(range(1, 9)) * 8 + [13, 20]:
        points = _random_points(rng, size)
        assert shamir.combine_shares(points) == _library_combine(points), sorted(points)


@pytest.mark.parametrize(("threshold", "n_shares"), [(1, 1), (2, 3), (3, 7), (11, 13), (5, 255)])
def test_combine_of_real_sharings_with_t_or_more_shares_equals_pycryptodome(
    threshold: int, n_shares: int
) -> None:
    rng = random.Random(threshold * 1000 + n_shares)
    secret = rng.randbytes(32)
    shares = shamir.split_secret(secret, threshold, n_shares)
    for size in sorted({threshold, min(threshold + 1, n_shares), min(threshold + 4, n_shares)}):
        xs = rng.sample(range(1, n_shares + 1), size)  # unsorted, may include x = 255
        points = _points(shares, tuple(xs))
        assert shamir.combine_shares(points) == _library_combine(points) == secret, xs


def test_one_basis_combines_many_sharings_at_its_points() -> None:
    rng = random.Random(4)
    xs = [255, 3, 17, 128, 1, 200, 9, 64, 42, 250, 100]  # 11 points, unsorted
    lagrange = shamir.LagrangeAtZero(xs)
    for _ in range(3):
        secret = rng.randbytes(32)
        shares = shamir.split_secret(secret, 11, 255)
        points = {x: shares[x - 1] for x in reversed(xs)}
        assert lagrange.combine(points) == secret
        assert lagrange.combine(points) == _library_combine(points)


def test_combine_many_matches_one_combine_per_secret_over_mixed_x_sets() -> None:
    rng = random.Random(5)
    batch = [_random_points(rng, 4), _random_points(rng, 6)]
    same_xs = list(batch[0])
    batch += [{x: rng.randbytes(32) for x in reversed(same_xs)} for _ in range(3)]
    assert shamir.combine_many(batch) == [_library_combine(points) for points in batch]
    assert shamir.combine_many([]) == []


def test_the_basis_is_the_same_whatever_the_order_of_its_points() -> None:
    points = _random_points(random.Random(6), 7)
    forward = shamir.LagrangeAtZero(sorted(points))
    backward = shamir.LagrangeAtZero(sorted(points, reverse=True))
    assert forward.combine(points) == backward.combine(points) == _library_combine(points)


def test_a_basis_refuses_shares_at_other_points() -> None:
    lagrange = shamir.LagrangeAtZero([1, 2, 3])
    with pytest.raises(shamir.ShamirError, match=r"shares are at x=\[1, 2, 4\], the "
                                                 r"coefficients are for x=\[1, 2, 3\]"):
        lagrange.combine({1: bytes(32), 2: bytes(32), 4: bytes(32)})
    with pytest.raises(shamir.ShamirError, match=r"shares are at x=\[1, 2\]"):
        lagrange.combine({1: bytes(32), 2: bytes(32)})


def test_a_basis_with_a_repeated_point_is_rejected() -> None:
    with pytest.raises(shamir.ShamirError, match="duplicate x-coordinate 5"):
        shamir.LagrangeAtZero([1, 5, 5])


@pytest.mark.parametrize("x", [0, 256, -1, True, 2.0])
def test_a_basis_point_outside_1_to_255_is_rejected(x: object) -> None:
    with pytest.raises(shamir.ShamirError, match=r"integers in 1\.\.255, got"):
        shamir.LagrangeAtZero([1, x])  # type: ignore[list-item]


def test_a_basis_with_no_points_is_rejected() -> None:
    with pytest.raises(shamir.ShamirError, match="at least one x-coordinate"):
        shamir.LagrangeAtZero([])


def test_a_basis_refuses_a_share_of_the_wrong_length() -> None:
    with pytest.raises(shamir.ShamirError, match="share at x=3 must be 32 bytes, got 33"):
        shamir.LagrangeAtZero([1, 3]).combine({1: bytes(32), 3: bytes(33)})


def test_combine_many_names_the_bad_secret_s_share() -> None:
    with pytest.raises(shamir.ShamirError, match="share at x=7 must be 32 bytes, got 31"):
        shamir.combine_many([{1: bytes(32)}, {7: bytes(31)}])
    with pytest.raises(shamir.ShamirError, match="at least one share"):
        shamir.combine_many([{1: bytes(32)}, {}])


@pytest.mark.parametrize("value", [-1, 1 << 128])
def test_a_field_element_outside_128_bits_is_rejected(value: int) -> None:
    with pytest.raises(shamir.ShamirError, match="integer in 0..2\\^128-1"):
        shamir.gf128_mul(value, 1)
    with pytest.raises(shamir.ShamirError, match="integer in 0..2\\^128-1"):
        shamir.gf128_inverse(value)


def test_zero_has_no_inverse() -> None:
    with pytest.raises(shamir.ShamirError, match="0 has no inverse"):
        shamir.gf128_inverse(0)


# -- the split against pycryptodome ------------------------------------------------------------


def test_polynomial_evaluation_equals_pycryptodome_horner() -> None:
    """``evaluate`` is pycryptodome's ``make_share``: ``share = x·share + c`` over the
    coefficients, highest degree first, in ``_Element`` arithmetic."""
    rng = random.Random(4)
    for degree in (0, 1, 10, 50):
        coefficients = [rng.choice(FIELD_EDGES) if i % 3 == 0 else rng.getrandbits(128)
                        for i in range(degree + 1)]
        for x in (1, 2, 3, 17, 128, 255):
            expected = _Element(0)
            for c in coefficients:
                expected = _Element(x) * expected + _Element(c)
            assert shamir.evaluate(coefficients, x) == int(expected), (degree, x)


def test_split_shares_combine_with_pycryptodome_at_every_threshold_subset() -> None:
    shares = shamir.split_secret(SECRET, 4, 7)
    for xs in itertools.combinations(range(1, 8), 4):
        assert _library_combine(_points(shares, xs)) == SECRET, xs


def test_split_of_a_large_sharing_combines_with_pycryptodome() -> None:
    shares = shamir.split_secret(SECRET, 51, 100)
    xs = tuple(random.Random(5).sample(range(1, 101), 51))
    assert _library_combine(_points(shares, xs)) == SECRET
    assert shamir.combine_shares(_points(shares, xs)) == SECRET


def test_evaluate_rejects_a_point_or_coefficient_outside_the_field() -> None:
    with pytest.raises(shamir.ShamirError, match="x-coordinates"):
        shamir.evaluate([1, 2], 0)
    with pytest.raises(shamir.ShamirError, match="GF\\(2\\^128\\) element"):
        shamir.evaluate([1 << 128, 2], 3)
