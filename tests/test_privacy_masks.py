"""AES-256-CTR mask expansion (generated through AES-GCM) into Z_(2^b) and modular arithmetic on masks."""

from __future__ import annotations

import numpy as np
import pytest
from Crypto.Cipher import AES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedtune.privacy import key_agreement as ka
from fedtune.privacy import masks

KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
OTHER_KEY = bytes(range(32))
N = 200_000  # elements for the statistical checks; keys are fixed, so results are too


def test_aes_ctr_keystream_matches_sp800_38a_f55() -> None:
    # NIST SP 800-38A F.5.5 CTR-AES256.Encrypt: keystream = plaintext XOR ciphertext.
    plaintext = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
    )
    ciphertext = bytes.fromhex(
        "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
        "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
    )
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    stream = masks.aes_ctr_keystream(KEY, 64, counter)
    assert bytes(p ^ s for p, s in zip(plaintext, stream, strict=True)) == ciphertext


def test_default_keystream_starts_at_counter_zero_and_counts_up() -> None:
    # Block i of aes_ctr_keystream's default stream is AES_K(i), i a 128-bit big-endian counter.
    ecb = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(4))
    assert masks.aes_ctr_keystream(KEY, 64) == blocks


def test_mask_keystream_is_aes_ctr_from_the_mask_counter() -> None:
    # Block i of a mask's keystream is AES_K(0^96 || 2 + i): read 4 blocks as 16 words.
    ecb = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(bytes(12) + (2 + i).to_bytes(4, "big")) for i in range(4))
    assert masks.MASK_COUNTER == bytes(12) + (2).to_bytes(4, "big")
    np.testing.assert_array_equal(masks.expand_mask(KEY, 16, 32),
                                  np.frombuffer(blocks, dtype="<u4").astype(np.uint64))


def test_mask_keystream_matches_the_gcm_known_answer_for_a_zero_key() -> None:
    # McGrew and Viega, "The Galois/Counter Mode of Operation", test case 14: K = 0^256,
    # IV = 0^96, P = 0^128 gives C = cea7403d..., the first block of the zero key's keystream.
    first = np.frombuffer(bytes.fromhex("cea7403d4d606b6e074ec5d3baf39d18"), dtype="<u4")
    np.testing.assert_array_equal(masks.expand_mask(bytes(32), 4, 32), first.astype(np.uint64))


def test_mask_keystream_equals_ctr_mode_across_chunk_boundaries() -> None:
    # 800,012 bytes: three whole 256 KiB chunks and a part, none a multiple of the block size
    length = 200_003
    ctr = Cipher(algorithms.AES(KEY), modes.CTR(masks.MASK_COUNTER)).encryptor()
    expected = np.frombuffer(ctr.update(bytes(4 * length)), dtype="<u4").astype(np.uint64)
    np.testing.assert_array_equal(masks.expand_mask(KEY, length, 32), expected)
    acc = np.zeros(length, dtype=np.uint32)
    masks.accumulate_masks(acc, [(KEY, False)], 32)
    np.testing.assert_array_equal(acc.astype(np.uint64), expected)


def test_a_mask_longer_than_one_key_may_expand_is_refused_before_any_allocation() -> None:
    too_long = masks.MAX_KEYSTREAM_BYTES // 4 + 1
    with pytest.raises(masks.MaskError, match="the most one key yields"):
        masks.expand_mask(KEY, too_long, 32)
    with pytest.raises(masks.MaskError, match="the most one key yields"):
        masks.expand_mask(KEY, masks.MAX_KEYSTREAM_BYTES // 8 + 1, 40)


def test_the_mask_generator_and_ctr_mode_rates_are_both_measured() -> None:
    assert masks.keystream_bytes_per_second(0.01, generator="ctr") > 1e6
    with pytest.raises(masks.MaskError, match="generator"):
        masks.keystream_bytes_per_second(0.01, generator="ofb")


@pytest.mark.parametrize("bits", [32, 40])
def test_mask_equals_independent_aes_ctr_read_little_endian(bits: int) -> None:
    width = 4 if bits <= 32 else 8
    reference = AES.new(KEY, AES.MODE_CTR, nonce=b"", initial_value=masks.MASK_COUNTER)
    stream = reference.encrypt(bytes(1000 * width))
    words = np.frombuffer(stream, dtype=f"<u{width}").astype(np.uint64)
    expected = words & np.uint64((1 << bits) - 1)
    np.testing.assert_array_equal(masks.expand_mask(KEY, 1000, bits), expected)


def test_same_key_gives_the_same_mask() -> None:
    np.testing.assert_array_equal(
        masks.expand_mask(KEY, 1000, 32), masks.expand_mask(KEY, 1000, 32)
    )


def test_shorter_mask_is_a_prefix_of_a_longer_one() -> None:
    np.testing.assert_array_equal(
        masks.expand_mask(KEY, 7, 20), masks.expand_mask(KEY, 100, 20)[:7]
    )


@pytest.mark.parametrize("bits", [1, 7, 31, 32, 33, 40, 62])
def test_mask_values_fill_z_2_to_the_bits(bits: int) -> None:
    mask = masks.expand_mask(KEY, 10_000, bits)
    assert mask.dtype == np.uint64
    assert mask.shape == (10_000,)
    assert int(mask.max()) < 2**bits
    assert int(mask.max()) >= 2 ** (bits - 1)  # the top bit is used


def test_empty_mask() -> None:
    assert masks.expand_mask(KEY, 0, 32).shape == (0,)


def test_mask_mean_is_near_half_the_modulus() -> None:
    mask = masks.expand_mask(KEY, N, 32).astype(np.float64)
    sigma_of_mean = 2**32 / np.sqrt(12 * N)
    assert abs(mask.mean() - 2**31) < 5 * sigma_of_mean


def test_every_mask_bit_is_balanced() -> None:
    mask = masks.expand_mask(KEY, N, 32)
    ones = [int(((mask >> np.uint64(b)) & np.uint64(1)).sum()) for b in range(32)]
    assert all(abs(count - N / 2) < 5 * np.sqrt(N) / 2 for count in ones), ones


def test_mask_top_byte_passes_chi_square() -> None:
    counts = np.bincount((masks.expand_mask(KEY, N, 32) >> np.uint64(24)).astype(np.int64),
                         minlength=256)
    expected = N / 256
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 377.1  # chi2(255) quantile at 1 - 1e-6


def _round_key(round_id: int, site_b: str = "bob") -> bytes:
    alice = ka.private_from_raw(bytes(range(1, 33)))
    bob_public = ka.public_from_private(ka.private_from_raw(bytes(range(2, 34))))
    return ka.derive_pair_key(alice, bob_public, run_id="r", round_id=round_id, purpose="mask",
                              site_a="alice", site_b=site_b)


@pytest.mark.parametrize(
    "other", [_round_key(2), _round_key(1, site_b="carol")], ids=["next-round", "other-pair"]
)
def test_masks_of_different_rounds_or_pairs_are_uncorrelated(other: bytes) -> None:
    one = masks.expand_mask(_round_key(1), N, 32).astype(np.float64)
    two = masks.expand_mask(other, N, 32).astype(np.float64)
    assert not np.array_equal(one, two)
    assert abs(np.corrcoef(one, two)[0, 1]) < 5 / np.sqrt(N)
    assert np.count_nonzero(one == two) < 5  # ~N / 2^32 expected


def test_adding_a_mask_and_its_negation_gives_back_the_input() -> None:
    bits = 32
    x = masks.expand_mask(OTHER_KEY, 1000, bits)
    mask = masks.expand_mask(KEY, 1000, bits)
    negated = masks.mod_sub(np.zeros(1000, dtype=np.uint64), mask, bits)
    np.testing.assert_array_equal(masks.mod_add(masks.mod_add(x, mask, bits), negated, bits), x)
    np.testing.assert_array_equal(masks.mod_sub(masks.mod_add(x, mask, bits), mask, bits), x)


def test_pairwise_masks_cancel_in_the_sum() -> None:
    # Bonawitz et al. 2017: u adds PRG(s_uv) for v > u and subtracts it for v < u.
    bits, length = 32, 500
    sites = ["a", "b", "c", "d"]
    pairs = {s: ka.generate_key_pair() for s in sites}
    inputs = {s: masks.expand_mask(bytes([i]) * 32, length, bits) for i, s in enumerate(sites)}
    masked = []
    for u in sites:
        y = inputs[u]
        for v in sites:
            if v == u:
                continue
            key = ka.derive_pair_key(pairs[u].private, pairs[v].public, run_id="r", round_id=1,
                                     purpose="mask", site_a=u, site_b=v)
            m = masks.expand_mask(key, length, bits)
            y = masks.mod_add(y, m, bits) if v > u else masks.mod_sub(y, m, bits)
        masked.append(y)
    np.testing.assert_array_equal(
        masks.mod_sum(masked, bits), masks.mod_sum(list(inputs.values()), bits)
    )


def test_mod_sum_equals_integer_sum_modulo_2_to_the_bits() -> None:
    bits = 20
    arrays = [masks.expand_mask(bytes([i]) * 32, 300, bits) for i in range(7)]
    expected = [sum(int(a[j]) for a in arrays) % 2**bits for j in range(300)]
    assert masks.mod_sum(arrays, bits).tolist() == expected


def test_mod_add_wraps_at_the_modulus() -> None:
    a = np.array([2**32 - 1, 5], dtype=np.uint64)
    b = np.array([2, 2**32 - 6], dtype=np.uint64)
    assert masks.mod_add(a, b, 32).tolist() == [1, 2**32 - 1]


def test_mod_sub_wraps_below_zero() -> None:
    a = np.array([0, 3], dtype=np.uint64)
    b = np.array([1, 5], dtype=np.uint64)
    assert masks.mod_sub(a, b, 8).tolist() == [255, 254]


def test_mod_sum_does_not_modify_its_inputs() -> None:
    a = np.array([200, 100], dtype=np.uint64)
    masks.mod_sum([a, a], 8)
    assert a.tolist() == [200, 100]


@pytest.mark.parametrize("bits", [0, 63, 64, -1])
def test_bits_outside_1_to_62_are_rejected(bits: int) -> None:
    with pytest.raises(masks.MaskError, match="bits must be an integer in 1..62"):
        masks.expand_mask(KEY, 10, bits)
    with pytest.raises(masks.MaskError, match="bits must be"):
        masks.mod_add(np.zeros(1, np.uint64), np.zeros(1, np.uint64), bits)


@pytest.mark.parametrize("length", [16, 24, 31])
def test_mask_key_must_be_256_bits(length: int) -> None:
    with pytest.raises(masks.MaskError, match=f"32 bytes \\(AES-256\\), got {length}"):
        masks.expand_mask(bytes(length), 10, 32)


def test_negative_mask_length_is_rejected() -> None:
    with pytest.raises(masks.MaskError, match="length must be >= 0"):
        masks.expand_mask(KEY, -1, 32)


def test_modular_operands_must_be_uint64() -> None:
    with pytest.raises(masks.MaskError, match="uint64"):
        masks.mod_add(np.zeros(3, np.int64), np.zeros(3, np.uint64), 32)


def test_modular_operands_must_have_the_same_shape() -> None:
    with pytest.raises(masks.MaskError, match="shape"):
        masks.mod_sub(np.zeros(3, np.uint64), np.zeros(4, np.uint64), 32)
    with pytest.raises(masks.MaskError, match=r"arrays\[1\] has shape"):
        masks.mod_sum([np.zeros(3, np.uint64), np.zeros(4, np.uint64)], 32)


def test_mod_sum_of_nothing_is_rejected() -> None:
    with pytest.raises(masks.MaskError, match="at least one array"):
        masks.mod_sum([], 32)


def test_keystream_rate_is_measured_in_bytes_per_second() -> None:
    assert masks.keystream_bytes_per_second(0.01) > 1e6


def test_keystream_rate_needs_a_positive_duration() -> None:
    with pytest.raises(masks.MaskError, match="> 0 seconds"):
        masks.keystream_bytes_per_second(0)


@pytest.mark.parametrize("bits", [16, 32, 40, 62])
@pytest.mark.parametrize("length", [1, 1000, 70_000])
def test_accumulating_a_mask_in_place_equals_adding_the_expanded_mask(bits, length):
    rng = np.random.default_rng(bits + length)
    x = rng.integers(0, 2 ** bits, size=length, dtype=np.uint64)
    key_a, key_b = bytes(range(32)), bytes(range(1, 33))
    expected = masks.mod_sub(masks.mod_add(x, masks.expand_mask(key_a, length, bits), bits),
                             masks.expand_mask(key_b, length, bits), bits)
    acc = x.astype(masks.word_dtype(bits))
    masks.accumulate_mask(acc, key_a, bits)
    masks.accumulate_mask(acc, key_b, bits, subtract=True)
    np.testing.assert_array_equal(masks.reduce_mod(acc, bits), expected)


@pytest.mark.parametrize("count", [1, 2, 7])
@pytest.mark.parametrize("bits", [32, 17, 40])
def test_word_sum_equals_mod_sum_of_the_widened_arrays(bits: int, count: int) -> None:
    rng = np.random.default_rng(11)
    wide = [rng.integers(0, 2**bits, size=1000, dtype=np.uint64) for _ in range(count)]
    words = [w.astype(masks.word_dtype(bits)) for w in wide]
    total = masks.word_sum(words, bits)
    assert total.dtype == masks.word_dtype(bits)  # in the ring's word, reduced
    np.testing.assert_array_equal(total, masks.mod_sum(wide, bits))
    for word, w in zip(words, wide):
        np.testing.assert_array_equal(word, w)  # the operands are not written


def test_word_sum_refuses_the_wrong_word_or_shapes() -> None:
    with pytest.raises(masks.MaskError, match="1-D uint32 array, got uint64"):
        masks.word_sum([np.zeros(3, np.uint64)], 32)
    with pytest.raises(masks.MaskError, match="arrays\\[1\\] has shape"):
        masks.word_sum([np.zeros(3, np.uint32), np.zeros(4, np.uint32)], 32)
    with pytest.raises(masks.MaskError, match="at least one"):
        masks.word_sum([], 32)


@pytest.mark.parametrize("bits", [32, 40])
@pytest.mark.parametrize("length", [1, 70_000, 140_001])
def test_accumulating_masks_together_equals_adding_each_expanded_mask(bits, length):
    # several masks streamed chunk by chunk (140,001 words cross two chunk boundaries at
    # 32 bits, four at 40): each key's keystream must continue across the chunks
    rng = np.random.default_rng(bits * length)
    x = rng.integers(0, 2 ** bits, size=length, dtype=np.uint64)
    keys = [(bytes([i]) * 32, i % 3 == 0) for i in range(1, 8)]
    expected = x
    for key, subtract in keys:
        op = masks.mod_sub if subtract else masks.mod_add
        expected = op(expected, masks.expand_mask(key, length, bits), bits)
    acc = x.astype(masks.word_dtype(bits))
    masks.accumulate_masks(acc, keys, bits)
    np.testing.assert_array_equal(masks.reduce_mod(acc, bits), expected)


def test_accumulating_masks_checks_every_key_before_writing() -> None:
    acc = np.arange(10, dtype=np.uint32)
    with pytest.raises(masks.MaskError, match="32 bytes"):
        masks.accumulate_masks(acc, [(bytes(32), False), (bytes(31), False)], 32)
    np.testing.assert_array_equal(acc, np.arange(10, dtype=np.uint32))


def test_threads_masking_at_once_get_their_own_masks() -> None:
    # accumulate_masks keeps one scratch buffer per thread: sites that mask concurrently (the
    # benchmark's site threads) must not see each other's keystream
    import threading

    length = 200_000  # several chunks each
    keys = [[(bytes([t + 1, i]) * 16, i % 2 == 1) for i in range(5)] for t in range(4)]
    expected = []
    for ks in keys:
        acc = np.zeros(length, dtype=np.uint32)
        for key, subtract in ks:
            masks.accumulate_mask(acc, key, 32, subtract=subtract)
        expected.append(acc)
    results = [np.zeros(length, dtype=np.uint32) for _ in keys]
    threads = [threading.Thread(target=masks.accumulate_masks, args=(results[t], keys[t], 32))
               for t in range(len(keys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
