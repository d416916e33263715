"""Secure aggregation, the recipe layer: what a site and the coordinator do in each phase.

SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") on a k-regular neighbour graph, with the protections of Bonawitz et al. 2017
("Practical Secure Aggregation for Privacy-Preserving Machine Learning", §4, malicious
setting) that the transport layer adds: signed keys, a signed survivor list and the
consistency check. The primitives live in the sibling modules; this module only composes
them, so the site agent and the coordinator reach secure aggregation through two classes:

* :class:`SiteRound` — one site's state for one round: fresh X25519 key pairs, a fresh
  self-mask seed ``b``, the shares it receives, and the rules for what it may reveal.
* :func:`unmask_sum` — the coordinator's side: remove the self masks of survivors and the
  pairwise masks of dropouts from the sum of masked inputs.

A site's masked input is ``y_u = x_u + PRG(b_u) + Σ_{v ∈ P(u)} ±PRG(s_uv)  (mod 2^bits)``
where ``P(u)`` are the neighbours ``u`` received key shares from, ``s_uv`` is the pairwise
key agreed between ``u``'s and ``v``'s mask keys, and the sign is ``+`` when ``u < v``. For
every pair of survivors the pairwise masks cancel in the sum; for a dropout ``d`` the
coordinator reconstructs ``d``'s mask secret key from ``t`` shares and removes ``d``'s
pairwise masks; for a survivor ``u`` it reconstructs ``b_u`` and removes ``PRG(b_u)``. A site
reveals, for each neighbour, either the share of ``b`` (neighbour survived) or the share of
the mask key (neighbour dropped), never both: that is what keeps a survivor's ``x_u`` hidden
even from a coordinator that lies about who dropped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import aead, shamir
from .key_agreement import (
    KeyAgreementError,
    KeyPair,
    derive_key,
    derive_pair_key,
    generate_key_pair,
    private_from_raw,
    private_to_raw,
    public_from_private,
)
from .masks import accumulate_masks, reduce_mod, reduce_word, word_dtype
from .neighbours import default_degree, neighbour_graph
from .signatures import statement

SELF_MASK = "self_mask"
MASK_KEY = "mask_key"
_SHARE_DOMAIN = b"fedtune/v1/key-share"
_SHARE_BYTES = 32


class SecAggError(ValueError):
    """A secure-aggregation message or request that an honest party must refuse."""


@dataclass(frozen=True)
class RoundParameters:
    """What every party of one round derives identically from the verified key list."""

    run_id: str
    round_id: int
    bits: int
    sites: tuple[str, ...]  # sorted ids of the sites whose keys were relayed (U2)
    threshold: int
    graph: Mapping[str, tuple[str, ...]]

    @staticmethod
    def derive(run_id: str, round_id: int, bits: int, sites: Iterable[str],
               requested_threshold: int, requested_degree: int, round_seed: bytes,
               advertisement_digests: Sequence[bytes]) -> RoundParameters:
        """Threshold, degree and graph for the sites ``sites``.

        The graph seed mixes the coordinator's round seed with the digests of every relayed
        key advertisement (fresh random keys of every site), so the coordinator cannot choose
        the graph alone. A requested threshold must exceed half the sites (Bonawitz et al.
        2017 §4 need t > n/2 against a server that lies about dropouts).
        """
        ids = tuple(sorted(sites))
        n = len(ids)
        if n < 2:
            raise SecAggError(f"secure aggregation needs at least 2 sites, got {n}")
        majority = n // 2 + 1
        threshold = requested_threshold or majority
        if threshold < majority or threshold > n:
            raise SecAggError(f"threshold {threshold} must be more than half of the {n} sites "
                              f"and at most {n}")
        degree = requested_degree or default_degree(n, threshold)
        degree = max(degree, threshold)
        seed = hashlib.sha256(round_seed + b"".join(sorted(advertisement_digests))).digest()
        graph = neighbour_graph(ids, min(degree, n - 1), seed)
        for site, neighbours in graph.items():
            if len(neighbours) + 1 < threshold:
                raise SecAggError(f"site {site!r} has {len(neighbours)} neighbours, too few for "
                                  f"the threshold {threshold}")
        return RoundParameters(run_id, round_id, bits, ids, threshold, graph)

    def holders(self, owner: str) -> tuple[str, ...]:
        """Who holds shares of ``owner``'s secrets: its neighbours and itself (as in Flower's
        SecAgg+), so a survivor's own share counts towards the threshold."""
        return tuple(sorted((*self.graph[owner], owner)))

    def share_index(self, owner: str, holder: str) -> int:
        """Shamir x-coordinate of the share of ``owner``'s secrets held by ``holder``."""
        holders = self.holders(owner)
        if holder not in holders:
            raise SecAggError(f"{holder!r} holds no share of {owner!r}")
        return holders.index(holder) + 1


def _share_aad(p: RoundParameters, sender: str, receiver: str) -> bytes:
    return statement(_SHARE_DOMAIN, p.run_id.encode(), str(p.round_id).encode(),
                     sender.encode(), receiver.encode())


def _self_mask_key(p: RoundParameters, site: str, seed: bytes) -> bytes:
    return derive_key(seed, run_id=p.run_id, round_id=p.round_id, purpose="self-mask", site=site)


def _pair_mask_key_of(p: RoundParameters, private: X25519PrivateKey, me: str, peer: str,
                      peer_public: bytes) -> bytes:
    return derive_pair_key(private, peer_public, run_id=p.run_id, round_id=p.round_id,
                           purpose="pair-mask", site_a=me, site_b=peer)


@dataclass
class SiteRound:
    """One site's secure-aggregation state for one round (fresh keys every round)."""

    site_id: str
    encryption: KeyPair = field(default_factory=generate_key_pair)
    masking: KeyPair = field(default_factory=generate_key_pair)
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    params: RoundParameters | None = None
    #: shares of neighbours' secrets this site holds: neighbour -> (b share, mask-key share)
    held: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    #: neighbours whose pairwise masks went into this site's masked input
    mask_peers: tuple[str, ...] = ()
    revealed: bool = False
    own_share: tuple[bytes, bytes] | None = None
    #: per neighbour, agreed once the key list is verified: the key that encrypts key shares
    #: both ways, and the pairwise mask key
    share_keys_by_peer: dict[str, bytes] = field(default_factory=dict, repr=False)
    pair_mask_keys: dict[str, bytes] = field(default_factory=dict, repr=False)

    # -- phase 3: share keys ---------------------------------------------------------------

    def share_keys(self, params: RoundParameters,
                   peer_keys: Mapping[str, tuple[bytes, bytes]]) -> dict[str, bytes]:
        """Shamir-share ``b`` and the mask secret key among the neighbours, encrypted to each.

        ``peer_keys`` maps every site of the round to its verified (encryption, mask) public
        keys. Returns ``{neighbour: ciphertext}``.
        """
        if self.params is not None:
            raise SecAggError("keys were already shared in this round")
        if peer_keys.get(self.site_id) != (self.encryption.public, self.masking.public):
            raise SecAggError("the relayed key list does not hold this site's own keys")
        neighbours = params.graph[self.site_id]
        try:
            # both agreed now, once, while the site waits for its neighbours' shares: the
            # key-share key also opens what each neighbour sends back, and masking then only
            # expands keystreams (a neighbour whose shares never come leaves its keys unused)
            share_keys = {peer: derive_pair_key(self.encryption.private, peer_keys[peer][0],
                                                run_id=params.run_id, round_id=params.round_id,
                                                purpose="key-share", site_a=self.site_id,
                                                site_b=peer) for peer in neighbours}
            mask_keys = {peer: _pair_mask_key_of(params, self.masking.private, self.site_id,
                                                 peer, peer_keys[peer][1]) for peer in neighbours}
        except KeyAgreementError as exc:
            raise SecAggError(f"a neighbour's advertised key: {exc}") from None
        holders = params.holders(self.site_id)
        b_shares = shamir.split_secret(self.self_seed, params.threshold, len(holders))
        s_shares = shamir.split_secret(private_to_raw(self.masking.private), params.threshold,
                                       len(holders))
        out = {}
        for i, peer in enumerate(holders):
            if peer == self.site_id:
                self.own_share = (b_shares[i], s_shares[i])
                continue
            out[peer] = aead.seal(share_keys[peer], b_shares[i] + s_shares[i],
                                  _share_aad(params, self.site_id, peer))
        self.params = params
        self.share_keys_by_peer, self.pair_mask_keys = share_keys, mask_keys
        return out

    def receive_shares(self, ciphertexts: Mapping[str, bytes]) -> None:
        """Decrypt the shares neighbours sent; any that fails is refused as a whole."""
        p = self._require_params()
        neighbours = set(p.graph[self.site_id])
        for sender, sealed in ciphertexts.items():
            if sender not in neighbours:
                raise SecAggError(f"a key share from {sender!r}, which is not a neighbour")
            try:
                plain = aead.open_sealed(self.share_keys_by_peer[sender], sealed,
                                         _share_aad(p, sender, self.site_id))
            except aead.DecryptionError:
                raise SecAggError(f"the key share from {sender!r} does not decrypt") from None
            if len(plain) != 2 * _SHARE_BYTES:
                raise SecAggError(f"the key share from {sender!r} has the wrong length")
            self.held[sender] = (plain[:_SHARE_BYTES], plain[_SHARE_BYTES:])

    # -- phase 4: masked input -------------------------------------------------------------

    def mask(self, quantised: np.ndarray) -> np.ndarray:
        """``x + PRG(b) + Σ ±PRG(s_uv)`` over the neighbours whose shares arrived (uint64).
        ``quantised`` (residues mod 2^bits) is not written."""
        words = quantised.astype(word_dtype(self._require_params().bits))
        return reduce_mod(self.mask_words(words), self._require_params().bits)

    def mask_words(self, words: np.ndarray) -> np.ndarray:
        """As :meth:`mask`, **in place** on residues held in the ring's accumulator word
        (:func:`word_dtype`: uint32 up to 32 bits, the wire format, so the site sends the
        result without another copy); returns ``words``, now the masked input."""
        p = self._require_params()
        if len(self.held) < p.threshold - 1:
            raise SecAggError(f"only {len(self.held)} neighbours shared keys; the round cannot "
                              f"reach the threshold {p.threshold}")
        self.mask_peers = tuple(sorted(self.held))
        keys = [(_self_mask_key(p, self.site_id, self.self_seed), False)]
        keys += [(self.pair_mask_keys[peer], self.site_id > peer) for peer in self.mask_peers]
        accumulate_masks(words, keys, p.bits)
        if p.bits < 8 * words.itemsize:  # at 32 bits uint32's own wrap-around is the reduction
            words &= words.dtype.type((1 << p.bits) - 1)
        return words

    # -- phase 5: consistency check and unmask ---------------------------------------------

    def check_lists(self, survivors: Sequence[str], dropouts: Sequence[str]) -> None:
        """Refuse survivor/dropout lists that would let the coordinator unmask anyone."""
        p = self._require_params()
        s, d = set(survivors), set(dropouts)
        if len(s) != len(survivors) or len(d) != len(dropouts):
            raise SecAggError("the survivor or dropout list repeats a site")
        both = sorted(s & d)
        if both:
            raise SecAggError(f"site(s) {', '.join(both)} are listed as survivor and as dropout")
        if self.site_id not in s:
            raise SecAggError("this site delivered its input but is not listed as a survivor")
        unknown = sorted((s | d) - set(p.sites))
        if unknown:
            raise SecAggError(f"site(s) {', '.join(unknown)} were not in this round's key list")
        if len(s) < p.threshold:
            raise SecAggError(f"{len(s)} survivors, fewer than the threshold {p.threshold}")
        unaccounted = sorted(set(self.mask_peers) - s - d)
        if unaccounted:
            raise SecAggError(f"neighbour(s) {', '.join(unaccounted)} this site masked with are "
                              "neither survivors nor dropouts")

    def reveal(self, survivors: Sequence[str], dropouts: Sequence[str]) -> list[tuple[str, str, bytes]]:
        """Shares to reveal: ``b`` of surviving neighbours, the mask key of dropped ones.

        Only once per round: a second request (with the same or other lists) is refused, so
        no neighbour's ``b`` share and mask-key share are ever both released.
        """
        self.check_lists(survivors, dropouts)
        if self.revealed:
            raise SecAggError("shares were already revealed in this round")
        self.revealed = True
        s, d = set(survivors), set(dropouts)
        out = []
        held = dict(self.held)
        if self.own_share is not None:
            held[self.site_id] = self.own_share  # this site survived: its own b share
        for peer, (b_share, s_share) in sorted(held.items()):
            if peer in s:
                out.append((peer, SELF_MASK, b_share))
            elif peer in d:
                out.append((peer, MASK_KEY, s_share))
        return out

    def _require_params(self) -> RoundParameters:
        if self.params is None:
            raise SecAggError("keys have not been shared yet in this round")
        return self.params


def unmask_sum(params: RoundParameters, masked_sum: np.ndarray, survivors: Sequence[str],
               dropouts: Sequence[str], mask_public_keys: Mapping[str, bytes],
               mask_peers: Mapping[str, Sequence[str]],
               revealed: Mapping[str, Mapping[str, Mapping[str, bytes]]]) -> np.ndarray:
    """Remove every mask from ``Σ_{u ∈ survivors} y_u`` and return ``Σ x_u (mod 2^bits)``.

    ``masked_sum`` holds residues mod 2^bits, as uint64 or in the ring's accumulator word
    (:func:`~fedtune.privacy.masks.word_dtype`, what :func:`~fedtune.privacy.masks.word_sum`
    returns); it is not written. The result comes in the accumulator word.

    ``mask_peers[u]`` are the neighbours ``u`` masked with (the share senders relayed to it);
    ``revealed[owner][kind][holder]`` is the share of ``owner``'s secret revealed by
    ``holder`` (its neighbours, or ``owner`` itself for its own self-mask share). Raises :class:`SecAggError` when fewer than ``t`` shares of a needed secret
    arrived, or a reconstructed mask key does not match its advertised public key.
    """
    p = params
    dropped = sorted(set(dropouts))
    # every secret of the round in one batch: most share an x-set, whose coefficients the
    # batch computes once (Shamir.combine per secret was the coordinator's hot spot)
    secrets = shamir.combine_many(
        [_share_points(p, u, SELF_MASK, revealed) for u in survivors]
        + [_share_points(p, d, MASK_KEY, revealed) for d in dropped])
    seeds, mask_secrets = secrets[:len(survivors)], secrets[len(survivors):]
    mask_keys = []
    for d, secret in zip(dropped, mask_secrets, strict=True):  # before any mask is expanded
        try:
            private = private_from_raw(secret)  # loaded once, used for every pair of d
        except KeyAgreementError as exc:
            raise SecAggError(f"reconstructed mask key of {d!r} is invalid: {exc}") from None
        if public_from_private(private) != mask_public_keys[d]:
            raise SecAggError(f"the reconstructed mask key of {d!r} does not match its "
                              "advertised public key (bad shares)")
        mask_keys.append(private)
    total = masked_sum.astype(word_dtype(p.bits))  # the masked sum is already < 2^bits
    keys = [(_self_mask_key(p, u, seed), True) for u, seed in zip(survivors, seeds, strict=True)]
    for d, private in zip(dropped, mask_keys, strict=True):
        # u added +pair when u < d, -pair otherwise: undo it
        keys += [(_pair_mask_key_of(p, private, d, u, mask_public_keys[u]), u < d)
                 for u in survivors if d in mask_peers.get(u, ())]
    accumulate_masks(total, keys, p.bits)
    return reduce_word(total, p.bits)


def _share_points(p: RoundParameters, owner: str, kind: str,
                  revealed: Mapping[str, Mapping[str, Mapping[str, bytes]]]) -> dict[int, bytes]:
    """The ``t`` revealed shares of ``owner``'s secret with the lowest x-coordinates.

    ``t`` points determine the degree ``t - 1`` polynomial (Bonawitz et al. 2017, SS.recon
    takes any ``t``); more would only add work. Taking the lowest x gives every secret whose
    first ``t`` holders all revealed the same x-set {1..t}, so the batch shares one basis.
    """
    shares = revealed.get(owner, {}).get(kind, {})
    if len(shares) < p.threshold:
        raise SecAggError(f"{len(shares)} shares of {owner!r}'s {kind.replace('_', ' ')} arrived, "
                          f"the threshold is {p.threshold}")
    index = {holder: x for x, holder in enumerate(p.holders(owner), 1)}
    points = []
    for holder, share in shares.items():
        if holder not in index:
            raise SecAggError(f"{holder!r} holds no share of {owner!r}")
        points.append((index[holder], share))
    points.sort(key=lambda point: point[0])
    return dict(points[:p.threshold])
