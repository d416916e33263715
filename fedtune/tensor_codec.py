"""Tensors on the wire: raw little-endian bytes with dtype and shape, in chunks, never pickled.

A tensor travels as a :class:`fedtune.v1.TensorSpec` (numpy dtype string, shape, byte length
and sha256 of the bytes) followed by chunks of its raw bytes. Chunking keeps every gRPC
message far below the message-size limit, so a 100 M-parameter vector (400 MB) streams
through. The receiver checks every claim of the spec before it trusts a single value: dtype
in an allow-list, length = product of the shape × item size, no byte beyond the declared
length, the sha256 of what arrived, and (for floats) no NaN or Inf.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator

import numpy as np

from fedtune.proto import fedtune_pb2 as pb

#: Default chunk: 1 MiB of payload per gRPC message.
CHUNK_BYTES = 1 << 20
#: Largest tensor a peer may announce (bytes): 100 M float32 parameters and some headroom.
MAX_TENSOR_BYTES = 512 << 20
#: dtypes that may cross the wire (little-endian only; integers for the masked ring).
ALLOWED_DTYPES = ("<f4", "<f8", "<u4", "<u8", "<i8")


class TensorError(ValueError):
    """A tensor on the wire is malformed: wrong dtype, shape, length, digest or values."""


def spec_for(array: np.ndarray) -> pb.TensorSpec:
    le = _little_endian(array)
    return pb.TensorSpec(
        dtype=le.dtype.str,
        shape=list(le.shape),
        nbytes=le.nbytes,
        sha256=hashlib.sha256(le.reshape(-1).view(np.uint8)).digest(),  # no copy
    )


def to_bytes(array: np.ndarray) -> bytes:
    return _little_endian(array).tobytes()


def iter_chunks(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.TensorChunk]:
    """Yield the tensor as chunks; the first chunk carries the spec."""
    yield from iter_raw_chunks(spec_for(array), to_bytes(array), chunk_bytes)


def iter_raw_chunks(spec: pb.TensorSpec, raw: bytes,
                    chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.TensorChunk]:
    """Chunks of bytes already in wire form (``raw`` must match ``spec``)."""
    if chunk_bytes <= 0:
        raise TensorError(f"chunk size must be positive, got {chunk_bytes}")
    data = memoryview(raw)
    if len(data) == 0:
        yield pb.TensorChunk(spec=spec, offset=0, data=b"")
        return
    for offset in range(0, len(data), chunk_bytes):
        chunk = pb.TensorChunk(offset=offset, data=bytes(data[offset: offset + chunk_bytes]))
        if offset == 0:
            chunk.spec.CopyFrom(spec)
        yield chunk


def check_spec(spec: pb.TensorSpec, expected: pb.TensorSpec | None = None,
               max_bytes: int = MAX_TENSOR_BYTES) -> None:
    """Validate a spec on its own and, if given, against the layout the receiver expects."""
    if spec.dtype not in ALLOWED_DTYPES:
        raise TensorError(f"dtype {spec.dtype!r} is not allowed (allowed: {', '.join(ALLOWED_DTYPES)})")
    itemsize = np.dtype(spec.dtype).itemsize
    count = math.prod(int(d) for d in spec.shape)  # Python ints: a huge shape cannot wrap to 0
    if count * itemsize != spec.nbytes:
        raise TensorError(
            f"shape {list(spec.shape)} of {spec.dtype} needs {count * itemsize} bytes, spec says {spec.nbytes}"
        )
    if spec.nbytes > max_bytes:
        raise TensorError(f"tensor of {spec.nbytes} bytes exceeds the limit of {max_bytes} bytes")
    if len(spec.sha256) != 32:
        raise TensorError("sha256 must be 32 bytes")
    if expected is not None:
        if spec.dtype != expected.dtype:
            raise TensorError(f"dtype {spec.dtype} does not match the expected {expected.dtype}")
        if list(spec.shape) != list(expected.shape):
            raise TensorError(f"shape {list(spec.shape)} does not match the expected {list(expected.shape)}")
        if expected.sha256 and spec.sha256 != expected.sha256:
            # e.g. a coordinator that offers one model and serves another
            raise TensorError("sha256 differs from the announced tensor's")


class TensorAssembler:
    """Reassembles a tensor from chunks, refusing anything the spec does not allow."""

    def __init__(self, spec: pb.TensorSpec, expected: pb.TensorSpec | None = None,
                 max_bytes: int = MAX_TENSOR_BYTES) -> None:
        check_spec(spec, expected, max_bytes)
        self.spec = spec
        self._buffer = bytearray(spec.nbytes)
        self._filled = 0

    def add(self, data: bytes, offset: int | None = None) -> None:
        start = self._filled if offset is None else offset
        if start != self._filled:
            raise TensorError(f"chunk at offset {start} out of order (expected {self._filled})")
        end = start + len(data)
        if end > self.spec.nbytes:
            raise TensorError(f"received more than the declared {self.spec.nbytes} bytes")
        self._buffer[start:end] = data
        self._filled = end

    def finish(self, allow_non_finite: bool = False) -> np.ndarray:
        if self._filled != self.spec.nbytes:
            raise TensorError(f"truncated: received {self._filled} of {self.spec.nbytes} bytes")
        if hashlib.sha256(self._buffer).digest() != self.spec.sha256:
            raise TensorError("sha256 of the received bytes does not match the spec")
        array = np.frombuffer(self._buffer, dtype=np.dtype(self.spec.dtype))  # no copy
        array = array.reshape(tuple(int(d) for d in self.spec.shape))
        if array.dtype.kind == "f" and not allow_non_finite and not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            raise TensorError(f"{bad} values are NaN or Inf")
        return array


def assemble(chunks: Iterable[pb.TensorChunk], expected: pb.TensorSpec | None = None) -> np.ndarray:
    """Receive a whole chunk stream (the first chunk must carry the spec)."""
    assembler: TensorAssembler | None = None
    for chunk in chunks:
        if assembler is None:
            if not chunk.HasField("spec"):
                raise TensorError("the first chunk carries no spec")
            assembler = TensorAssembler(chunk.spec, expected)
        assembler.add(chunk.data, chunk.offset)
    if assembler is None:
        raise TensorError("empty stream")
    return assembler.finish()


def _little_endian(array: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np.little_endian):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a
