"""The site's input encoding: the clip that copies only when it must, and the in-place
quantisation of ``[w·Δ | metrics]`` (the hot path of a secure round's masked input)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.privacy import quantization as qz
from fedtune.privacy.input_encoding import InputEncoding, clip_update, decode_sum, encode

METRICS = {"weight": 3, "train_count": 40, "eval_correct": 7, "eval_count": 9,
           "train_loss_sum": 12.5, "eval_loss_sum": 3.25}


def _encoding(m: int) -> InputEncoding:
    return InputEncoding(bits=32, n_summands=5, length=m, value_range=0.1, max_weight=10,
                         max_examples=100, loss_bound=20)


def test_an_update_within_the_range_is_returned_without_a_copy() -> None:
    delta = np.array([0.125, -0.25, 0.25, 0.0], dtype=np.float32)  # the bound is inside
    clipped, n = clip_update(delta, 0.25)
    assert clipped is delta and n == 0


def test_an_update_beyond_the_range_is_clipped_in_float64_and_counted() -> None:
    # float32(0.1) is 0.100000001: clipping in float32 would round the bound outward
    delta = np.array([0.1, 0.3, -2.0, 0.05], dtype=np.float32)
    clipped, n = clip_update(delta, 0.1)
    assert clipped.dtype == np.float64
    assert n == 3  # 0.3, -2.0 and float32(0.1), which is above 0.1
    assert clipped.max() <= 0.1 and clipped.min() >= -0.1
    assert clipped[3] == np.float64(np.float32(0.05))
    assert np.array_equal(delta, np.array([0.1, 0.3, -2.0, 0.05], dtype=np.float32))


def test_nan_goes_through_the_clip_and_the_quantiser_refuses_it() -> None:
    delta = np.array([0.01, np.nan])
    clipped, _ = clip_update(delta, 0.1)
    assert np.isnan(clipped[1])
    with pytest.raises(qz.QuantizationError, match="NaN"):
        encode(delta, METRICS, _encoding(2), np.random.default_rng(0))


def test_encode_is_the_quantisation_of_each_part_in_one_vector() -> None:
    enc = _encoding(1000)
    update = np.random.default_rng(1).uniform(-1.0, 1.0, 1000)
    got = encode(update, METRICS, enc, np.random.default_rng(2))
    rng = np.random.default_rng(2)  # the same draws, in the same order
    expected = np.concatenate([
        qz.quantize(np.clip(update, -enc.update_bound, enc.update_bound), enc.update_scale,
                    32, rng),
        qz.quantize(np.array([3.0, 40, 7, 9]), enc.count_scale, 32, rng),
        qz.quantize(np.array([12.5, 3.25]), enc.loss_scale, 32, rng)])
    assert got.dtype == np.uint64 and np.array_equal(got, expected)


def test_a_float32_update_encodes_as_its_float64_value() -> None:
    enc = _encoding(500)
    update = np.random.default_rng(3).uniform(-0.9, 0.9, 500).astype(np.float32)
    before = update.copy()
    a = encode(update, METRICS, enc, np.random.default_rng(4))
    b = encode(update.astype(np.float64), METRICS, enc, np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert np.array_equal(update, before)  # never written
    total, sums = decode_sum(a, enc)
    assert np.max(np.abs(total - update)) < 1 / enc.update_scale
    assert sums["train_count"] == 40 and abs(sums["eval_loss_sum"] - 3.25) < 1 / enc.loss_scale


def test_encode_in_the_ring_word_is_the_same_residues() -> None:
    enc = _encoding(1000)
    update = np.random.default_rng(5).uniform(-1.0, 1.0, 1000)
    wide = encode(update, METRICS, enc, np.random.default_rng(6))
    words = encode(update, METRICS, enc, np.random.default_rng(6), word=True)
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(words.astype(np.uint64), wide)


@pytest.mark.parametrize("bits", [32, 12])
def test_quantize_into_a_uint32_out_gives_the_uint64_residues(bits: int) -> None:
    x = np.random.default_rng(7).uniform(-1, 1, 70_000)  # crosses a chunk boundary
    scale = qz.scale_for(3, 1.0, bits)
    wide = qz.quantize(x, scale, bits, np.random.default_rng(1))
    narrow = qz.quantize(x, scale, bits, np.random.default_rng(1),
                         out=np.empty(70_000, dtype=np.uint32))
    assert narrow.dtype == np.uint32
    np.testing.assert_array_equal(narrow.astype(np.uint64), wide)


def test_a_uint32_out_is_refused_above_32_bits() -> None:
    with pytest.raises(qz.QuantizationError, match="uint64 array of shape \\(3,\\) at 40 bits"):
        qz.quantize(np.zeros(3), 1.0, 40, np.random.default_rng(0),
                    out=np.zeros(3, dtype=np.uint32))


def test_quantize_writes_into_out_and_returns_it() -> None:
    x = np.array([0.5, -0.25, 1.0])
    out = np.full(5, 7, dtype=np.uint64)
    result = qz.quantize(x, 4.0, 8, np.random.default_rng(0), out=out[1:4])
    assert result.base is out or result.base is out.base
    assert out.tolist() == [7, 2, 256 - 1, 4, 7]


@pytest.mark.parametrize("out", [np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.uint64),
                                 np.zeros(6, dtype=np.uint64)[::2]],
                         ids=["dtype", "shape", "strided"])
def test_quantize_refuses_an_unfit_out(out: np.ndarray) -> None:
    with pytest.raises(qz.QuantizationError, match="out must be a contiguous uint64 or uint32"):
        qz.quantize(np.zeros(3), 1.0, 8, np.random.default_rng(0), out=out)
