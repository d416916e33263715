"""Tensors cross the wire as raw little-endian bytes in chunks; the receiver checks every claim."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedtune.proto import fedtune_pb2 as pb
from fedtune.tensor_codec import (
    TensorAssembler,
    TensorError,
    assemble,
    check_spec,
    iter_chunks,
    spec_for,
)


def test_round_trip_preserves_values_dtype_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    out = assemble(iter_chunks(a, chunk_bytes=10))
    assert out.dtype == np.dtype("<f4") and out.shape == (3, 4)
    np.testing.assert_array_equal(out, a)


def test_big_endian_input_is_sent_little_endian():
    a = np.arange(5, dtype=">f4")
    spec = spec_for(a)
    assert spec.dtype == "<f4"
    np.testing.assert_array_equal(assemble(iter_chunks(a)), a.astype("<f4"))


def test_every_chunk_is_at_most_the_chunk_size_and_only_the_first_carries_the_spec():
    chunks = list(iter_chunks(np.zeros(1000, dtype=np.float32), chunk_bytes=1024))
    assert len(chunks) == 4
    assert all(len(c.data) <= 1024 for c in chunks)
    assert chunks[0].HasField("spec") and not any(c.HasField("spec") for c in chunks[1:])


def test_a_pickled_or_object_dtype_is_refused():
    spec = pb.TensorSpec(dtype="|O", shape=[1], nbytes=8, sha256=bytes(32))
    with pytest.raises(TensorError, match="not allowed"):
        check_spec(spec)


def test_a_shape_that_does_not_match_the_byte_count_is_refused():
    spec = pb.TensorSpec(dtype="<f4", shape=[3], nbytes=8, sha256=bytes(32))
    with pytest.raises(TensorError, match="needs 12 bytes"):
        check_spec(spec)


def test_the_expected_layout_is_enforced():
    spec = spec_for(np.zeros(4, dtype=np.float32))
    with pytest.raises(TensorError, match="shape"):
        check_spec(spec, expected=spec_for(np.zeros(5, dtype=np.float32)))
    with pytest.raises(TensorError, match="dtype"):
        check_spec(spec_for(np.zeros(4, dtype=np.float64)), expected=spec)


def test_truncated_extra_and_altered_bytes_are_detected():
    a = np.ones(8, dtype=np.float32)
    truncated = TensorAssembler(spec_for(a))
    truncated.add(a.tobytes()[:-4])
    with pytest.raises(TensorError, match="truncated"):
        truncated.finish()
    extra = TensorAssembler(spec_for(a))
    with pytest.raises(TensorError, match="more than"):
        extra.add(a.tobytes() + b"\0\0\0\0")
    altered = TensorAssembler(spec_for(a))
    altered.add(np.zeros(8, dtype=np.float32).tobytes())
    with pytest.raises(TensorError, match="sha256"):
        altered.finish()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    a = np.ones(4, dtype=np.float32)
    a[2] = bad
    with pytest.raises(TensorError, match="NaN or Inf"):
        assemble(iter_chunks(a))


def test_an_announced_tensor_beyond_the_limit_is_refused_before_any_allocation():
    spec = pb.TensorSpec(dtype="<f4", shape=[10**10], nbytes=4 * 10**10, sha256=bytes(32))
    with pytest.raises(TensorError, match="exceeds the limit"):
        TensorAssembler(spec)


def test_a_100m_parameter_vector_streams_through_in_bounded_chunks():
    n = 100_000_000
    a = np.zeros(n, dtype=np.float32)
    a[::9_999_991] = 1.5
    assembler = None
    count = 0
    for chunk in iter_chunks(a):
        assert chunk.ByteSize() < (1 << 20) + 256  # far below the 8 MiB message limit
        if assembler is None:
            assembler = TensorAssembler(chunk.spec)
        assembler.add(chunk.data, chunk.offset)
        count += 1
    out = assembler.finish()
    assert count == 382 and out.shape == (n,)
    assert hashlib.sha256(out.tobytes()).digest() == spec_for(a).sha256
