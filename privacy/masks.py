"""Mask expansion with AES-256-CTR into Z_(2^b), and modular arithmetic on mask vectors.

Secure aggregation hides each update under masks expanded from short keys by a PRG (Bonawitz
et al. 2017, §4, "PRG"); fedtune's PRG is AES-256 in counter mode (NIST SP 800-38A §6.5),
from pyca/cryptography, never a seeded statistical generator (DESIGN.md §3.4): a mask must
be unpredictable to anyone without the key, and numpy's or Python's generators are not.

Keystream layout. A mask's first counter block is :data:`MASK_COUNTER`, 96 zero bits and
then the 32-bit big-endian integer 2; each further block adds 1 to those last 32 bits
(SP 800-38A Appendix B.1 allows incrementing any m low bits). At most
:data:`MAX_KEYSTREAM_BYTES` come from one key, so the counter never wraps and the same stream
is what cryptography's ``modes.CTR(MASK_COUNTER)`` (a 128-bit increment) yields. A fixed
counter is safe only because of this module's invariant: **every key expands exactly one
mask** (keys are derived per run, round, purpose and pair by
:mod:`fedtune.privacy.key_agreement`, and key pairs are fresh per round). Reusing a key for
two different masks would reuse the keystream.

Why that counter. The keystream is generated through OpenSSL's AES-GCM encryptor with a
96-bit zero IV: GCM encrypts with exactly this counter sequence (SP 800-38D §7.1: the blocks
``inc32(J0)``, ``inc32(inc32(J0))``, ... with ``J0 = IV || 0^31 || 1``), so its ciphertext of
zeros *is* the AES-256-CTR keystream above. GHASH runs alongside, but no tag is ever
produced (the context is never finalised). OpenSSL runs GCM with VAES / AVX-512 where the
CPU has them and CTR without: 9.5 GB/s against 4.6 GB/s for AES-256 on these machines
(docs/decisions.md §16). Tests check the stream against ``modes.CTR``, pycryptodome's CTR and
the GCM known answer for a zero key.

For ``bits <= 32`` each element takes 4 keystream bytes read as a little-endian uint32; for
``33 <= bits <= 62`` 8 bytes as a little-endian uint64; the value is then reduced to its low
``bits`` bits. Since 2^bits divides 2^32 (or 2^64), every value in Z_(2^bits) is equally
likely: masks are uniform, so a masked value is uniform whatever the update.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32
BLOCK_BYTES = 16
ZERO_COUNTER = bytes(BLOCK_BYTES)
#: GCM's 96-bit IV for every mask: one key, one mask, so the IV may be fixed
_MASK_IV = bytes(12)
#: the counter block of a mask's first keystream block: inc32(IV || 0^31 || 1)
MASK_COUNTER = _MASK_IV + (2).to_bytes(4, "big")
#: the most keystream one key yields: 2^32 - 2 blocks, until the 32-bit counter from 2 would
#: wrap (also GCM's plaintext limit of 2^39 - 256 bits)
MAX_KEYSTREAM_BYTES = (2**32 - 2) * BLOCK_BYTES
MIN_BITS = 1
MAX_BITS = 62
_CHUNK_BYTES = 1 << 18  # keystream written per update_into call (cache-sized)
#: the plaintext CTR encrypts into keystream, shared read-only by every call and thread
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
#: each thread's keystream scratch buffer (with update_into's 15 bytes of slack), kept across
#: calls: a fresh one costs page faults on every mask
_SCRATCH = threading.local()

U64Array = npt.NDArray[np.uint64]


class MaskError(ValueError):
    """Invalid mask key, length, bit width or operand arrays."""


def aes_ctr_keystream(key: bytes, n_bytes: int, counter_block: bytes = ZERO_COUNTER) -> bytes:
    """``n_bytes`` of AES-256-CTR keystream from ``counter_block`` (SP 800-38A §6.5).

    Through cryptography's ``modes.CTR``. Masks use the same keystream from
    :data:`MASK_COUNTER` (module docstring); the parameter exists so the keystream can be
    checked against the SP 800-38A F.5.5 known-answer vector, and
    :mod:`fedtune.privacy.distributed_dp` draws its public rotation signs from
    :data:`ZERO_COUNTER`.
    """
    _check_key(key)
    if n_bytes < 0:
        raise MaskError(f"keystream length must be >= 0 bytes, got {n_bytes}")
    if len(counter_block) != BLOCK_BYTES:
        raise MaskError(
            f"an AES-CTR counter block is {BLOCK_BYTES} bytes, got {len(counter_block)}"
        )
    buf = bytearray(n_bytes + BLOCK_BYTES - 1)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter_block)).encryptor()
    _keystream_into(encryptor, n_bytes, buf)
    return bytes(buf[:n_bytes])


def expand_mask(key: bytes, length: int, bits: int) -> U64Array:
    """A uniform mask of ``length`` elements of Z_(2^bits) (uint64) from a 32-byte key.

    Deterministic: the same key gives the same mask. Each key must expand one mask only
    (module docstring).
    """
    _check_key(key)
    _check_bits(bits)
    if length < 0:
        raise MaskError(f"mask length must be >= 0, got {length}")
    _check_length(length, 4 if bits <= 32 else 8)
    modulus_mask = np.uint64(_modulus_mask(bits))
    if bits <= 32:
        # 4 keystream bytes per element, widened to uint64 and reduced in one pass.
        buf = np.empty(4 * length + BLOCK_BYTES - 1, dtype=np.uint8)  # not zero-filled
        _keystream_into(keystream_encryptor(key), 4 * length, buf.data)
        words = np.frombuffer(buf, dtype="<u4", count=length)
        mask: U64Array = np.empty(length, dtype=np.uint64)
        np.bitwise_and(words, modulus_mask, out=mask)
        return mask
    # 8 bytes per element: the cipher writes straight into the result; astype is free on
    # little-endian machines and a byte-swapping copy on big-endian ones.
    wide = np.empty(length + 2, dtype="<u8")  # update_into needs 15 bytes of slack
    _keystream_into(keystream_encryptor(key), 8 * length, wide.data)
    mask = wide[:length].astype(np.uint64, copy=False)
    mask &= modulus_mask
    return mask


def word_dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    """The accumulator word for Z_(2^bits): uint32 up to 32 bits (it wraps mod 2^32, and
    2^bits divides 2^32), else uint64."""
    _check_bits(bits)
    return np.uint32 if bits <= 32 else np.uint64


def accumulate_mask(acc: npt.NDArray[Any], key: bytes, bits: int, subtract: bool = False) -> None:
    """``acc ± expand_mask(key, len(acc), bits)`` in place, without materialising the mask.

    Same mask as :func:`expand_mask` (same keystream bytes per element), added with
    wrap-around in ``acc``'s own word (:func:`word_dtype`); call :func:`reduce_mod` once after
    the last mask. One key of :func:`accumulate_masks`.
    """
    accumulate_masks(acc, [(key, subtract)], bits)


def accumulate_masks(acc: npt.NDArray[Any], keys: Sequence[tuple[bytes, bool]],
                     bits: int) -> None:
    """``acc ± expand_mask(key, len(acc), bits)`` for every ``(key, subtract)`` in ``keys``,
    in place. This is the hot loop of masking.

    The masks are streamed together, one cache-sized chunk of ``acc`` at a time: every key's
    AES-CTR context writes the next chunk of its keystream into one buffer, which is added to
    (or subtracted from) the chunk while both are in cache. The chunk of ``acc`` is read from
    and written back to memory once for all the masks, instead of once per mask (about 20 %
    less CPU time per site with several sites masking at once, measured). Each key's
    keystream is exactly :func:`expand_mask`'s: a CTR context's output continues across
    ``update_into`` calls.
    """
    for key, _ in keys:
        _check_key(key)
    dtype = word_dtype(bits)
    if acc.dtype != dtype or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise MaskError(f"accumulator must be a contiguous 1-D {np.dtype(dtype).name} array")
    width = np.dtype(dtype).itemsize
    n = acc.shape[0]
    _check_length(n, width)
    per_chunk = _CHUNK_BYTES // width
    streams = [(keystream_encryptor(key), np.subtract if subtract else np.add)
               for key, subtract in keys]
    buf = _scratch()
    view = buf.data.cast("B")
    zeros = _ZEROS
    little = "<u4" if width == 4 else "<u8"
    for start in range(0, n, per_chunk):
        m = min(per_chunk, n - start)
        chunk = acc[start:start + m]
        words = np.frombuffer(buf, dtype=little, count=m)
        for encryptor, op in streams:
            encryptor.update_into(zeros[: m * width], view[: m * width + BLOCK_BYTES - 1])
            op(chunk, words, out=chunk, casting="unsafe")


def reduce_mod(acc: npt.NDArray[Any], bits: int) -> U64Array:
    """The accumulator's values mod 2^bits, as uint64."""
    out: U64Array = acc.astype(np.uint64)
    out &= np.uint64(_modulus_mask(bits))
    return out


def mod_add(a: U64Array, b: U64Array, bits: int) -> U64Array:
    """``(a + b) mod 2^bits`` element-wise."""
    _check_bits(bits)
    _check_operands(a, b)
    out = np.add(a, b)  # uint64 wraps mod 2^64, and 2^bits divides 2^64
    out &= np.uint64(_modulus_mask(bits))
    return out


def mod_sub(a: U64Array, b: U64Array, bits: int) -> U64Array:
    """``(a - b) mod 2^bits`` element-wise."""
    _check_bits(bits)
    _check_operands(a, b)
    out = np.subtract(a, b)
    out &= np.uint64(_modulus_mask(bits))
    return out


def mod_sum(arrays: Sequence[U64Array], bits: int) -> U64Array:
    """``(Σ arrays) mod 2^bits`` element-wise, over one or more uint64 arrays."""
    _check_bits(bits)
    if len(arrays) == 0:
        raise MaskError("mod_sum needs at least one array")
    first = arrays[0]
    _check_operand("arrays[0]", first)
    total = first.copy()
    for i, other in enumerate(arrays[1:], 1):
        _check_operand(f"arrays[{i}]", other)
        if other.shape != total.shape:
            raise MaskError(f"arrays[{i}] has shape {other.shape}, arrays[0] has {total.shape}")
        np.add(total, other, out=total)
    total &= np.uint64(_modulus_mask(bits))
    return total


def word_sum(arrays: Sequence[npt.NDArray[Any]], bits: int) -> npt.NDArray[Any]:
    """``(Σ arrays) mod 2^bits`` over arrays in the ring's accumulator word
    (:func:`word_dtype`; the wire format of masked inputs), summed with the word's own
    wrap-around and returned in that word. At 32 bits this reads 4 bytes per coordinate
    where :func:`mod_sum` on widened copies reads 8, and nothing is widened afterwards:
    :func:`fedtune.privacy.secagg.unmask_sum` and
    :func:`fedtune.privacy.quantization.dequantize` take the word as it is."""
    dtype = word_dtype(bits)
    if len(arrays) == 0:
        raise MaskError("word_sum needs at least one array")
    for i, arr in enumerate(arrays):
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
            got = getattr(arr, "dtype", type(arr).__name__)
            raise MaskError(f"arrays[{i}] must be a 1-D {np.dtype(dtype).name} array, got {got}")
        if arr.shape != arrays[0].shape:
            raise MaskError(f"arrays[{i}] has shape {arr.shape}, arrays[0] has {arrays[0].shape}")
    # the first add writes the result: no separate copy of arrays[0]
    total = np.add(arrays[0], arrays[1]) if len(arrays) > 1 else arrays[0].copy()
    for other in arrays[2:]:
        np.add(total, other, out=total)
    return reduce_word(total, bits)


def reduce_word(total: npt.NDArray[Any], bits: int) -> npt.NDArray[Any]:
    """``total mod 2^bits`` in place, in its own unsigned word (uint32 or uint64); at
    ``bits`` equal to the word's width the word's wrap-around already did it."""
    if bits < 8 * total.itemsize:
        total &= total.dtype.type(_modulus_mask(bits))
    return total


def keystream_bytes_per_second(seconds: float = 0.2, generator: str = "mask") -> float:
    """MEASUREMENT HELPER (not part of the pure protocol layer): the raw AES-256 keystream
    rate of this machine, in bytes per second, measured for about ``seconds``.

    ``generator="mask"`` measures the generator masks use (OpenSSL's GCM encryptor, module
    docstring); ``"ctr"`` measures cryptography's ``modes.CTR``, the same keystream through
    OpenSSL's CTR code, for comparison. The benchmark divides per-site masking time by
    (keystream bytes generated ÷ the mask generator's rate) to show how close masking is to
    the cipher's physical bound. This is the only function in ``privacy/`` that reads a clock;
    its key is random and its output is discarded.
    """
    if not (math.isfinite(seconds) and seconds > 0):
        raise MaskError(f"measurement time must be > 0 seconds, got {seconds}")
    key = os.urandom(KEY_BYTES)
    if generator == "mask":
        encryptor = keystream_encryptor(key)
    elif generator == "ctr":
        encryptor = Cipher(algorithms.AES(key), modes.CTR(MASK_COUNTER)).encryptor()
    else:
        raise MaskError(f"generator must be 'mask' or 'ctr', got {generator!r}")
    chunk = _CHUNK_BYTES
    zeros = bytes(chunk)
    buf = bytearray(chunk + BLOCK_BYTES - 1)
    encryptor.update_into(zeros, buf)  # warm-up
    done = 0
    start = time.perf_counter()
    while True:
        encryptor.update_into(zeros, buf)
        done += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def keystream_encryptor(key: bytes) -> Any:
    """The AES-256-CTR keystream from :data:`MASK_COUNTER` for ``key``, as an encryptor whose
    ciphertext of zeros is that keystream: AES-GCM with the zero 96-bit IV (module
    docstring). Its tag is never computed or used. Masks and
    :class:`fedtune.privacy.quantization.RoundingCoins` draw from it; give it at most
    :data:`MAX_KEYSTREAM_BYTES` of zeros."""
    _check_key(key)
    return Cipher(algorithms.AES(key), modes.GCM(_MASK_IV)).encryptor()


def _keystream_into(encryptor: Any, n_bytes: int, buf: bytearray | memoryview) -> None:
    """Write ``n_bytes`` of ``encryptor``'s keystream into ``buf`` (which has 15 bytes of
    slack, as ``update_into`` requires). Encrypting zeros yields the keystream; doing it in
    chunks into the caller's buffer keeps the zero input in cache and allocates no
    intermediate bytes, which measured about twice as fast as one ``update()`` call for
    mask-sized outputs. The encryptor is not finalised (no tag is wanted)."""
    out = memoryview(buf).cast("B")
    zeros = _ZEROS
    for start in range(0, n_bytes, _CHUNK_BYTES):
        size = min(_CHUNK_BYTES, n_bytes - start)
        encryptor.update_into(zeros[:size], out[start : start + size + BLOCK_BYTES - 1])


def _scratch() -> npt.NDArray[np.uint8]:
    buf: npt.NDArray[np.uint8] | None = getattr(_SCRATCH, "buf", None)
    if buf is None:
        buf = _SCRATCH.buf = np.empty(_CHUNK_BYTES + BLOCK_BYTES - 1, dtype=np.uint8)
    return buf


def _modulus_mask(bits: int) -> int:
    return (1 << bits) - 1


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise MaskError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def _check_length(length: int, width: int) -> None:
    if length * width > MAX_KEYSTREAM_BYTES:
        raise MaskError(f"a mask of {length} elements of {width} bytes needs more than "
                        f"{MAX_KEYSTREAM_BYTES} keystream bytes, the most one key yields")


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise MaskError(f"a mask key is {KEY_BYTES} bytes (AES-256), got {len(key)}")


def _check_operand(name: str, arr: U64Array) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint64:
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise MaskError(f"{name} must be a uint64 numpy array, got {dtype}")


def _check_operands(a: U64Array, b: U64Array) -> None:
    _check_operand("a", a)
    _check_operand("b", b)
    if a.shape != b.shape:
        raise MaskError(f"operand shapes differ: {a.shape} vs {b.shape}")
