"""Stochastic-rounding fixed-point quantisation into Z_(2^b) and its error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedtune.privacy import masks
from fedtune.privacy import quantization as qz


def _signed(q: np.ndarray, bits: int) -> list[int]:
    return [v - 2**bits if v >= 2 ** (bits - 1) else v for v in (int(x) for x in q)]


def test_scale_leaves_room_for_n_rounded_up_summands() -> None:
    for n, bound, bits in [(1, 1.0, 8), (20, 1.0, 32), (50, 3.5, 24), (7, 1000.0, 62)]:
        scale = qz.scale_for(n, bound, bits)
        limit = 2 ** (bits - 1) - 1
        assert n * (bound * scale + 1) <= limit
        assert n * math.ceil(bound * scale) <= limit  # the largest |q| a summand can have
        assert scale == pytest.approx((limit / n - 1) / bound, rel=1e-9)


def test_scale_below_one_names_the_bits_to_use() -> None:
    with pytest.raises(qz.QuantizationError, match="increase bits to at least 18"):
        qz.scale_for(1000, 100.0, 16)


@pytest.mark.parametrize(
    ("n", "bound", "bits"), [(0, 1.0, 32), (3, 0.0, 32), (3, math.inf, 32), (3, 1.0, 1),
                             (3, 1.0, 63)]
)
def test_invalid_scale_parameters_are_rejected(n: int, bound: float, bits: int) -> None:
    with pytest.raises(qz.QuantizationError):
        qz.scale_for(n, bound, bits)


def test_one_vector_round_trips_within_one_step() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 10_000)
    scale = qz.scale_for(10, 1.0, 16)
    q = qz.quantize(x, scale, 16, rng)
    assert q.dtype == np.uint64
    assert np.max(np.abs(qz.dequantize(q, scale, 16) - x)) < 1 / scale


def test_dequantised_sum_is_within_n_over_scale_of_the_float_sum() -> None:
    rng = np.random.default_rng(2)
    n, bits, bound = 20, 16, 1.0
    scale = qz.scale_for(n, bound, bits)
    xs = [np.clip(rng.normal(0, 0.5, 5_000), -bound, bound) for _ in range(n)]
    total = masks.mod_sum([qz.quantize(x, scale, bits, rng) for x in xs], bits)
    error = np.abs(qz.dequantize(total, scale, bits) - np.sum(xs, axis=0))
    assert np.max(error) < n / scale


def test_modular_sum_of_quantised_vectors_equals_their_integer_sum() -> None:
    rng = np.random.default_rng(3)
    n, bits = 9, 32
    scale = qz.scale_for(n, 2.0, bits)
    qs = [qz.quantize(rng.uniform(-2, 2, 1_000), scale, bits, rng) for _ in range(n)]
    integer_sum = [sum(column) for column in zip(*(_signed(q, bits) for q in qs), strict=True)]
    modular_sum = masks.mod_sum(qs, bits)
    assert modular_sum.tolist() == [s % 2**bits for s in integer_sum]
    assert _signed(modular_sum, bits) == integer_sum  # no wrap: the signed reading is exact


def _coins(seed: int) -> qz.RoundingCoins:
    return qz.RoundingCoins(bytes([seed]) * 32)  # fixed keys: the results are fixed too


SOURCES = {"generator": lambda seed: np.random.default_rng(seed), "coins": _coins}


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("value", [0.3, -0.7, 2.25, -1.999])
def test_stochastic_rounding_is_unbiased(value: float, source: str) -> None:
    draws = 40_000
    q = qz.quantize(np.full(draws, value), 1.0, 16, SOURCES[source](4))
    decoded = qz.dequantize(q, 1.0, 16)
    frac = value - math.floor(value)
    sigma_of_mean = math.sqrt(frac * (1 - frac) / draws)
    assert abs(decoded.mean() - value) < 5 * sigma_of_mean
    assert set(decoded.tolist()) == {math.floor(value), math.floor(value) + 1}


def test_quantize_never_writes_the_callers_array() -> None:
    # the site keeps its clipped update after quantising it (instrumentation, distributed DP)
    x = np.array([0.25, -0.75, 0.5], dtype=np.float64)
    before = x.copy()
    qz.quantize(x, 1000.5, 32, np.random.default_rng(0))
    assert np.array_equal(x, before)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_values_already_on_the_grid_are_exact(source: str) -> None:
    q = qz.quantize(np.array([0.0, 0.25, -0.5, 3.0]), 4.0, 8, SOURCES[source](5))
    assert q.tolist() == [0, 1, 256 - 2, 12]


def test_negative_values_are_twos_complement() -> None:
    q = qz.quantize(np.array([-1.0, -0.25]), 4.0, 32, np.random.default_rng(6))
    assert q.tolist() == [2**32 - 4, 2**32 - 1]
    assert qz.dequantize(q, 4.0, 32).tolist() == [-1.0, -0.25]


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["upper", "lower"])
def test_sum_at_the_bound_does_not_wrap(sign: float) -> None:
    rng = np.random.default_rng(7)
    n, bits, bound = 7, 12, 1.5
    scale = qz.scale_for(n, bound, bits)
    qs = [qz.quantize(np.full(2_000, sign * bound), scale, bits, rng) for _ in range(n)]
    decoded = qz.dequantize(masks.mod_sum(qs, bits), scale, bits)
    assert np.all(np.sign(decoded) == sign)
    assert np.max(np.abs(decoded - sign * n * bound)) < n / scale


def test_worst_case_rounding_at_the_bound_still_fits() -> None:
    # Every summand at the bound and every coordinate rounded up: the sum's magnitude is
    # n·ceil(bound·scale), which scale_for keeps at or below 2^(bits-1) - 1.
    n, bits, bound = 5, 10, 1.0
    scale = qz.scale_for(n, bound, bits)
    top = math.ceil(bound * scale)
    q = np.full(1, top, dtype=np.uint64)
    total = masks.mod_sum([q] * n, bits)
    assert qz.dequantize(total, scale, bits)[0] == pytest.approx(n * top / scale)
    assert qz.dequantize(masks.mod_sub(np.zeros(1, np.uint64), total, bits), scale, bits)[0] < 0


def test_same_generator_seed_gives_the_same_quantisation() -> None:
    x = np.linspace(-1, 1, 101)
    one = qz.quantize(x, 1000.3, 24, np.random.default_rng(8))
    two = qz.quantize(x, 1000.3, 24, np.random.default_rng(8))
    np.testing.assert_array_equal(one, two)


def test_value_beyond_the_range_is_rejected() -> None:
    with pytest.raises(qz.QuantizationError, match="clip x"):
        qz.quantize(np.array([0.0, 200.0]), 1.0, 8, np.random.default_rng(9))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    with pytest.raises(qz.QuantizationError, match="NaN or infinite"):
        qz.quantize(np.array([0.0, bad]), 1.0, 16, np.random.default_rng(10))


def test_dequantize_rejects_values_that_are_not_residues() -> None:
    with pytest.raises(qz.QuantizationError, match="not a residue mod 2\\^8"):
        qz.dequantize(np.array([256], dtype=np.uint64), 1.0, 8)


def test_dequantize_rejects_signed_arrays() -> None:
    with pytest.raises(qz.QuantizationError, match="uint64"):
        qz.dequantize(np.array([1], dtype=np.int64), 1.0, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [32, 17, 2])
def test_dequantize_reads_the_32_bit_word_as_the_wide_residues(bits: int) -> None:
    # unmasking returns the sum in uint32 up to 32 bits: the same floats as from uint64
    edges = [0, 1, 2 ** (bits - 1) - 1, 2 ** (bits - 1), 2**bits - 1]
    wide = np.concatenate([np.array(edges, dtype=np.uint64),
                           np.random.default_rng(bits).integers(0, 2**bits, 1000, dtype=np.uint64)])
    got = qz.dequantize(wide.astype(np.uint32), 3.5, bits)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, qz.dequantize(wide, 3.5, bits))
    assert got[3] == -(2 ** (bits - 1)) / 3.5 and got[4] == -1 / 3.5


def test_dequantize_refuses_a_32_bit_word_beyond_its_bits() -> None:
    with pytest.raises(qz.QuantizationError, match="not a residue mod 2\\^17"):
        qz.dequantize(np.array([2**17], dtype=np.uint32), 1.0, 17)
    with pytest.raises(qz.QuantizationError, match="uint64 numpy array at 40 bits"):
        qz.dequantize(np.array([1], dtype=np.uint32), 1.0, 40)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan])
def test_scale_must_be_positive_and_finite(scale: float) -> None:
    with pytest.raises(qz.QuantizationError, match="scale must be"):
        qz.quantize(np.zeros(2), scale, 16, np.random.default_rng(11))


def _reference_quantize(x: np.ndarray, scale: float, bits: int,
                        rng: np.random.Generator) -> np.ndarray:
    """The definition in one whole-vector expression: floor(v) + [u < v - floor(v)]."""
    v = np.asarray(x, dtype=np.float64) * scale
    floor = np.floor(v)
    signed = (floor + (rng.random(v.shape) < v - floor)).astype(np.int64)
    return signed.view(np.uint64) & np.uint64((1 << bits) - 1)


@pytest.mark.parametrize("length", [1, 65_536, 150_001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_quantisation_equals_the_whole_vector_definition(length: int, dtype) -> None:
    # 150,001 coordinates cross two chunk boundaries; the draws must come in the same order
    x = np.random.default_rng(length).uniform(-3, 3, length).astype(dtype)
    scale = qz.scale_for(4, 3.0, 32)
    got = qz.quantize(x, scale, 32, np.random.default_rng(8))
    np.testing.assert_array_equal(got, _reference_quantize(x, scale, 32, np.random.default_rng(8)))


def test_a_non_finite_value_in_a_later_chunk_is_refused() -> None:
    x = np.zeros(150_001)
    x[140_000] = np.nan
    with pytest.raises(qz.QuantizationError, match="NaN or infinite"):
        qz.quantize(x, 1.0, 32, np.random.default_rng(0))


def _reference_coin_quantize(x: np.ndarray, scale: float, bits: int, key: bytes) -> np.ndarray:
    """The coin definition in one expression, with the words from cryptography's modes.CTR:
    floor(v) + [word + ceil((v - floor(v))·2^32) >= 2^32] (exact in float64)."""
    v = np.asarray(x, dtype=np.float64) * scale
    floor = np.floor(v)
    ctr = Cipher(algorithms.AES(key), modes.CTR(masks.MASK_COUNTER)).encryptor()
    words = np.frombuffer(ctr.update(bytes(4 * v.size)), dtype="<u4")
    up = words.astype(np.float64) + np.ceil((v - floor) * 2.0**32) >= 2.0**32
    signed = (floor + up).astype(np.int64)
    return signed.view(np.uint64) & np.uint64((1 << bits) - 1)


@pytest.mark.parametrize("length", [1, 65_536, 150_001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coin_quantisation_equals_its_definition_with_an_independent_keystream(
        length: int, dtype) -> None:
    # the words continue across chunks (150,001 crosses two boundaries), into a uint32 out too
    x = np.random.default_rng(length).uniform(-3, 3, length).astype(dtype)
    scale = qz.scale_for(4, 3.0, 32)
    key = bytes(range(32))
    expected = _reference_coin_quantize(x, scale, 32, key)
    np.testing.assert_array_equal(qz.quantize(x, scale, 32, qz.RoundingCoins(key)), expected)
    word = np.empty(length, dtype=np.uint32)
    qz.quantize(x, scale, 32, qz.RoundingCoins(key), out=word)
    np.testing.assert_array_equal(word.astype(np.uint64), expected)


def test_coins_at_the_edge_of_32_bits_neither_overflow_nor_lose_the_grid() -> None:
    # |v| up to 2^31 - 2 is allowed at 32 bits: ceil(v·2^32) + word stays below 2^63 in int64,
    # values on the grid come back exactly, and the uint32 path equals the definition
    edge = 2.0**31 - 2
    x = np.array([edge, -edge, edge - 0.5, -edge + 0.25, 0.0, -0.0, 1.0, -1.0, 2.0**-40, -2.0**-40])
    key = bytes(range(7, 39))
    word = np.empty(x.size, dtype=np.uint32)
    qz.quantize(x, 1.0, 32, qz.RoundingCoins(key), out=word)
    np.testing.assert_array_equal(word.astype(np.uint64), _reference_coin_quantize(x, 1.0, 32, key))
    signed = word.view(np.int32).astype(np.int64)
    assert signed[[0, 1, 4, 5, 6, 7]].tolist() == [2**31 - 2, -(2**31) + 2, 0, 0, 1, -1]
    assert np.all(np.abs(signed - x) < 1)


class _ChosenWords(qz.RoundingCoins):
    """Coins whose words are chosen by the test, to probe the rule at its boundary."""

    def __init__(self, value: int) -> None:
        super().__init__(bytes(32))
        self.value = value

    def words(self, count: int) -> np.ndarray:
        return np.full(count, self.value, dtype=np.uint32)


@pytest.mark.parametrize("word", [np.uint64, np.uint32])
def test_the_coin_rule_is_exact_at_its_boundary(word) -> None:
    # frac·2^32 = 2^-8 (far below one word step) and 0.25·2^32: up exactly when
    # word + ceil(frac·2^32) >= 2^32; a rule with floor (or '>') would be off by one word
    x = np.array([2.0**-40, 5.25, -5.75])  # fracs 2^-40, 0.25, 0.25
    ceil = [1, 2**30, 2**30]
    for value in (2**32 - 1, 2**32 - 2, 2**32 - 2**30, 2**32 - 2**30 - 1, 0):
        q = qz.quantize(x, 1.0, 32, _ChosenWords(value), out=np.empty(3, dtype=word))
        got = q.astype(np.uint64).astype(np.uint32).view(np.int32).tolist()
        expected = [math.floor(v) + (value + c >= 2**32) for v, c in zip(x, ceil)]
        assert got == expected, (value, got, expected)


@pytest.mark.parametrize("word", [np.uint64, np.uint32])
def test_coins_round_a_fraction_up_as_often_as_its_size(word) -> None:
    # frac = 1/3: the share of round-ups is 1/3 within 5 sigma over 10^6 coordinates, on both
    # the float path (uint64) and the integer path (uint32)
    q = qz.quantize(np.full(1_000_000, 1 / 3), 1.0, 16, qz.RoundingCoins(bytes(32)),
                    out=np.empty(1_000_000, dtype=word))
    ups = int(np.count_nonzero(q == 1))
    assert int(np.count_nonzero(q == 0)) + ups == 1_000_000
    assert abs(ups / 1e6 - 1 / 3) < 5 * math.sqrt(2 / 9 / 1e6)


def test_rounding_coins_need_a_32_byte_key() -> None:
    with pytest.raises(qz.QuantizationError, match="rounding coins"):
        qz.RoundingCoins(bytes(16))


def test_quantize_refuses_another_source_of_randomness() -> None:
    with pytest.raises(qz.QuantizationError, match="Generator or RoundingCoins"):
        qz.quantize(np.zeros(3), 1.0, 16, np.random.RandomState(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("position", [0, 150_000])
def test_a_refused_input_leaves_out_untouched(position: int) -> None:
    x = np.zeros(150_001)
    x[position] = 1e12  # beyond 32 bits at scale 1
    out = np.full(150_001, 7, dtype=np.uint32)
    with pytest.raises(qz.QuantizationError, match="clip x"):
        qz.quantize(x, 1.0, 32, _coins(1), out=out)
    assert np.all(out == 7)


def test_rounding_coins_continue_mid_block_like_ctr_mode() -> None:
    # encode() shares one RoundingCoins across three quantize calls of m, 4 and 2 words: the
    # stream must continue inside a 16-byte block exactly as one CTR stream does
    key = bytes(range(32, 64))
    coins = qz.RoundingCoins(key)
    got = np.concatenate([coins.words(n).copy() for n in (3, 5, 1, 65_536, 7)])
    ctr = Cipher(algorithms.AES(key), modes.CTR(masks.MASK_COUNTER)).encryptor()
    np.testing.assert_array_equal(got, np.frombuffer(ctr.update(bytes(4 * got.size)), "<u4"))


@pytest.mark.parametrize("scale_type", [float, np.float64, np.float32])
def test_the_range_check_is_exact_whatever_type_the_scale_has(scale_type) -> None:
    # 2^54 at 55 bits is beyond 2^54 - 2 (what 55 bits hold after rounding): refused also when
    # the scale is a numpy scalar, whose arithmetic would round the limit
    with pytest.raises(qz.QuantizationError, match="clip x"):
        qz.quantize(np.array([2.0**54]), scale_type(1.0), 55, np.random.default_rng(0))
