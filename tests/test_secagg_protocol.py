"""The secure-aggregation recipe without a network: masks cancel exactly, dropouts recover,
and a site never reveals both shares of one neighbour."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedtune.privacy.input_encoding import InputEncoding, decode_sum, encode
from fedtune.privacy.masks import mod_sum
from fedtune.privacy.quantization import dequantize, quantize, scale_for
from fedtune.privacy.secagg import (
    MASK_KEY,
    SELF_MASK,
    RoundParameters,
    SecAggError,
    SiteRound,
    unmask_sum,
)

BITS = 32


def _round(n: int, threshold: int = 0, degree: int = 0, round_id: int = 1):
    sites = {f"s{i}": SiteRound(f"s{i}") for i in range(n)}
    keys = {s: (r.encryption.public, r.masking.public) for s, r in sites.items()}
    digests = [hashlib.sha256(s.encode() + keys[s][0] + keys[s][1]).digest() for s in keys]
    params = RoundParameters.derive("run", round_id, BITS, sites, threshold, degree,
                                    b"\x07" * 32, digests)
    shares = {s: r.share_keys(params, keys) for s, r in sites.items()}
    return sites, keys, params, shares


def _deliver(sites, shares, senders):
    """Relay to each site the shares sent to it by ``senders``; return who masks with whom."""
    relayed = {}
    for s, r in sites.items():
        if s not in senders:
            continue
        incoming = {snd: shares[snd][s] for snd in senders if snd != s and s in shares[snd]}
        r.receive_shares(incoming)
        relayed[s] = tuple(sorted(incoming))
    return relayed


def _run(n, dropouts=(), unmask_drop=(), length=1000, threshold=0, degree=0, seed=0):
    sites, keys, params, shares = _round(n, threshold, degree)
    relayed = _deliver(sites, shares, set(sites))
    rng = np.random.default_rng(seed)
    x = {s: rng.integers(0, 2 ** BITS, size=length, dtype=np.uint64) for s in sites}
    survivors = sorted(set(sites) - set(dropouts))
    masked = {s: sites[s].mask(x[s]) for s in survivors}
    revealed: dict = {}
    for s in survivors:
        if s in unmask_drop:
            continue
        for owner, kind, share in sites[s].reveal(survivors, sorted(dropouts)):
            revealed.setdefault(owner, {}).setdefault(kind, {})[s] = share
    total = unmask_sum(params, mod_sum(list(masked.values()), BITS), survivors, sorted(dropouts),
                       {s: keys[s][1] for s in sites}, relayed, revealed)
    expected = mod_sum([x[s] for s in survivors], BITS)
    return total, expected, masked, x


def test_the_unmasked_sum_equals_the_integer_sum_exactly():
    total, expected, _, _ = _run(5)
    np.testing.assert_array_equal(total, expected)


@pytest.mark.parametrize("n, dropouts", [(5, ["s3"]), (7, ["s0", "s6"]), (10, ["s2", "s5", "s9"])])
def test_the_sum_is_exact_when_sites_drop_after_sharing_keys(n, dropouts):
    total, expected, _, _ = _run(n, dropouts=dropouts)
    np.testing.assert_array_equal(total, expected)


def test_a_survivor_that_vanishes_before_unmasking_does_not_stop_the_round():
    total, expected, _, _ = _run(6, dropouts=["s1"], unmask_drop=["s4"])
    np.testing.assert_array_equal(total, expected)


def test_a_sparse_neighbour_graph_still_gives_the_exact_sum():
    total, expected, _, _ = _run(12, dropouts=["s3"], threshold=7, degree=8)
    np.testing.assert_array_equal(total, expected)


def test_fewer_than_t_reveals_cannot_unmask():
    with pytest.raises(SecAggError, match="threshold"):
        _run(5, unmask_drop=["s0", "s1", "s2"])


def test_the_float_sum_comes_back_within_the_documented_quantisation_bound():
    n, m = 6, 2000
    enc = InputEncoding(bits=BITS, n_summands=n, length=m, value_range=0.5, max_weight=100,
                        max_examples=100, loss_bound=20)
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-0.5, 0.5, m) * w for w in range(10, 10 + n)]
    encoded = [encode(u, {"weight": 10 + i, "eval_count": 7, "eval_correct": 3,
                          "train_count": 12, "train_loss_sum": 1.25, "eval_loss_sum": 0.5},
                      enc, rng) for i, u in enumerate(updates)]
    update_sum, metrics = decode_sum(mod_sum(encoded, BITS), enc)
    bound = n / enc.update_scale
    assert np.max(np.abs(update_sum - np.sum(updates, axis=0))) <= bound
    assert metrics["weight"] == sum(range(10, 10 + n))  # counts are exact
    assert metrics["eval_count"] == 7 * n and metrics["eval_correct"] == 3 * n
    assert abs(metrics["train_loss_sum"] - 1.25 * n) <= n / enc.loss_scale


def test_the_masked_sum_of_quantised_floats_equals_the_plain_sum_of_the_quantised_ints():
    n, m = 4, 500
    scale = scale_for(n, 1.0, BITS)
    rng = np.random.default_rng(2)
    sites, keys, params, shares = _round(n)
    relayed = _deliver(sites, shares, set(sites))
    q = {s: quantize(rng.uniform(-1, 1, m), scale, BITS, rng) for s in sites}
    masked = [sites[s].mask(q[s]) for s in sorted(sites)]
    revealed: dict = {}
    for s in sorted(sites):
        for owner, kind, share in sites[s].reveal(sorted(sites), []):
            revealed.setdefault(owner, {}).setdefault(kind, {})[s] = share
    total = unmask_sum(params, mod_sum(masked, BITS), sorted(sites), [],
                       {s: keys[s][1] for s in sites}, relayed, revealed)
    plain = np.sum([dequantize(q[s], scale, BITS) for s in sites], axis=0)
    np.testing.assert_allclose(dequantize(total, scale, BITS), plain, atol=1e-9)


def test_a_masked_input_reveals_nothing_without_the_masks():
    _, _, masked, x = _run(4, length=20000)
    for s, y in masked.items():
        assert not np.array_equal(y, x[s])
        # masked values are uniform on Z_(2^32): the mean is near 2^31, unlike a small update
        assert abs(float(np.mean(y.astype(np.float64))) / 2 ** 31 - 1) < 0.02


def test_a_site_never_reveals_both_shares_of_a_neighbour():
    sites, _, _, shares = _round(5)
    _deliver(sites, shares, set(sites))
    me = sites["s0"]
    first = me.reveal(["s0", "s1", "s2", "s3"], ["s4"])
    kinds = {owner: kind for owner, kind, _ in first}
    assert kinds["s4"] == MASK_KEY and kinds["s1"] == SELF_MASK
    with pytest.raises(SecAggError, match="already revealed"):
        me.reveal(["s0", "s1", "s2", "s3", "s4"], [])


@pytest.mark.parametrize("survivors, dropouts, message", [
    (["s0", "s1", "s2"], ["s2"], "as survivor and as dropout"),
    (["s1", "s2", "s3"], ["s0"], "not listed as a survivor"),
    (["s0", "s1"], ["s2", "s3", "s4"], "fewer than the threshold"),
    (["s0", "s1", "s2", "zz"], [], "not in this round's key list"),
    (["s0", "s1", "s2"], [], "neither survivors nor dropouts"),
])
def test_lists_that_would_let_the_coordinator_unmask_are_refused(survivors, dropouts, message):
    sites, _, _, shares = _round(5)
    _deliver(sites, shares, set(sites))
    sites["s0"].mask(np.zeros(4, dtype=np.uint64))
    with pytest.raises(SecAggError, match=message):
        sites["s0"].reveal(survivors, dropouts)
    assert not sites["s0"].revealed


def test_a_tampered_key_share_is_refused():
    sites, _, _, shares = _round(4)
    bad = bytearray(shares["s1"]["s0"])
    bad[-1] ^= 1
    with pytest.raises(SecAggError, match="does not decrypt"):
        sites["s0"].receive_shares({"s1": bytes(bad)})


def test_a_share_replayed_from_another_round_does_not_decrypt():
    _, _, _, old_shares = _round(3, round_id=1)
    sites, _, _, _ = _round(3, round_id=2)
    with pytest.raises(SecAggError, match="does not decrypt"):
        sites["s0"].receive_shares({"s1": old_shares["s1"]["s0"]})


def test_a_threshold_of_half_or_less_is_refused():
    with pytest.raises(SecAggError, match="more than half"):
        _round(6, threshold=3)


def test_wrong_shares_are_detected_by_the_advertised_mask_key():
    sites, keys, params, shares = _round(5)
    relayed = _deliver(sites, shares, set(sites))
    survivors = ["s0", "s1", "s2", "s3"]
    masked = [sites[s].mask(np.zeros(8, dtype=np.uint64)) for s in survivors]
    revealed: dict = {}
    for s in survivors:
        for owner, kind, share in sites[s].reveal(survivors, ["s4"]):
            revealed.setdefault(owner, {}).setdefault(kind, {})[s] = share
    revealed["s4"][MASK_KEY] = {h: bytes(32) for h in revealed["s4"][MASK_KEY]}
    with pytest.raises(SecAggError, match="does not match its advertised public key"):
        unmask_sum(params, mod_sum(masked, BITS), survivors, ["s4"],
                   {s: keys[s][1] for s in sites}, relayed, revealed)


@pytest.mark.parametrize("bits", [32, 20, 48])
def test_mask_words_masks_the_accumulator_word_in_place(bits):
    sites = {f"s{i}": SiteRound(f"s{i}") for i in range(4)}
    keys = {s: (r.encryption.public, r.masking.public) for s, r in sites.items()}
    digests = [hashlib.sha256(s.encode() + keys[s][0] + keys[s][1]).digest() for s in keys]
    params = RoundParameters.derive("run", 1, bits, sites, 0, 0, b"\x07" * 32, digests)
    shares = {s: r.share_keys(params, keys) for s, r in sites.items()}
    _deliver(sites, shares, set(sites))
    x = np.random.default_rng(9).integers(0, 2 ** bits, size=300, dtype=np.uint64)
    before = x.copy()
    expected = sites["s1"].mask(x)  # the uint64 form never writes its input
    np.testing.assert_array_equal(x, before)
    words = x.astype(np.uint32 if bits <= 32 else np.uint64)
    masked = sites["s1"].mask_words(words)
    assert masked is words  # in place: the site sends this very buffer
    assert int(words.max()) < 2 ** bits
    np.testing.assert_array_equal(words.astype(np.uint64), expected)


@pytest.mark.parametrize("which", [0, 1])  # the encryption key, the mask key
def test_a_neighbour_advertising_a_small_order_key_is_refused_before_anything_is_shared(which):
    sites = {f"s{i}": SiteRound(f"s{i}") for i in range(4)}
    keys = {s: (r.encryption.public, r.masking.public) for s, r in sites.items()}
    bad = list(keys["s2"])
    bad[which] = bytes(32)  # a point of small order: the X25519 output would be all zero
    keys["s2"] = (bad[0], bad[1])
    digests = [hashlib.sha256(s.encode() + keys[s][0] + keys[s][1]).digest() for s in keys]
    params = RoundParameters.derive("run", 1, BITS, sites, 0, 0, b"\x07" * 32, digests)
    assert "s2" in params.graph["s1"]
    with pytest.raises(SecAggError, match="advertised key.*small order"):
        sites["s1"].share_keys(params, keys)
    assert sites["s1"].params is None  # nothing of the round was taken on


def test_pair_keys_are_agreed_once_when_the_key_list_arrives():
    sites, _, params, _ = _round(5)
    s1 = sites["s1"]
    assert set(s1.pair_mask_keys) == set(s1.share_keys_by_peer) == set(params.graph["s1"])
    for peer in params.graph["s1"]:  # both ends agree on both keys
        assert sites[peer].pair_mask_keys["s1"] == s1.pair_mask_keys[peer]
        assert sites[peer].share_keys_by_peer["s1"] == s1.share_keys_by_peer[peer]
        assert s1.pair_mask_keys[peer] != s1.share_keys_by_peer[peer]  # domain-separated


def test_only_distinct_valid_survivor_signatures_count_towards_the_consistency_check():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedtune.client.secure_phases import confirmed_by
    from fedtune.privacy.signatures import sign, survivors_statement
    from fedtune.proto import fedtune_pb2 as pb

    ids = [f"s{i}" for i in range(6)]
    identity = {s: Ed25519PrivateKey.generate() for s in ids}
    site_keys = {s: k.public_key().public_bytes_raw() for s, k in identity.items()}
    survivors = ["s0", "s1", "s2", "s3", "s4"]  # s5 dropped
    listed = survivors_statement("run", 1, survivors, ["s5"])
    other = survivors_statement("run", 1, survivors[:4], ["s4", "s5"])

    def confirmation(site, statement_, by=None):
        return pb.SurvivorConfirmation(site_id=site, signature=sign(identity[by or site],
                                                                    statement_))

    padded = [
        confirmation("s0", listed),
        confirmation("s0", listed),  # the same site twice
        confirmation("s1", other),  # signed another list
        confirmation("s2", listed, by="s0"),  # forged: s0's key signing as s2
        confirmation("s5", listed),  # not a survivor
        confirmation("s3", listed),
    ]
    assert confirmed_by(listed, padded, set(survivors), site_keys, 3) == {"s0", "s3"}
    honest = [confirmation(s, listed) for s in survivors]
    assert confirmed_by(listed, honest, set(survivors), site_keys, 3) == {"s0", "s1", "s2"}
    assert len(confirmed_by(listed, honest, set(survivors), site_keys, 5)) == 5
