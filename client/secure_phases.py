"""The site agent's secure-aggregation phases, with every check an honest site makes.

A mixin of :class:`~fedtune.client.agent.SiteAgent`. The coordinator may be malicious
(DESIGN.md §1.3, Bonawitz et al. 2017 §4): it may substitute keys, replay messages from
another round, list a site as both survivor and dropout, or show different survivor lists to
different sites. A site therefore

* verifies every relayed key advertisement against the identity keys in its own ``--peers``
  file (never against keys the coordinator sends), and that each belongs to this run and round;
* checks the survivor and dropout lists (signed by the coordinator) before it confirms them,
  and reveals shares only after seeing at least ``t`` survivors' signatures on the very same
  lists (the consistency check);
* reveals, per neighbour, the self-mask share or the mask-key share, never both, and only once
  per round.

Any failed check makes the site leave the round (it is then a dropout) and is logged with
its reason; nothing secret is sent after a failed check.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedtune.logs import log_event
from fedtune.privacy.distributed_dp import site_encode
from fedtune.privacy.input_encoding import InputEncoding, clip_update, encode
from fedtune.privacy.masks import word_dtype
from fedtune.privacy.quantization import RoundingCoins
from fedtune.privacy.secagg import RoundParameters, SecAggError, SiteRound
from fedtune.privacy.signatures import (
    SignatureError,
    advertisement_statement,
    public_key_from_raw,
    sign,
    survivors_statement,
    verify,
)
from fedtune.privacy_plan import distributed_params, input_encoding, rotation_seed
from fedtune.proto import fedtune_pb2 as pb

if TYPE_CHECKING:
    from fedtune.client.agent import SiteAgent, _Accepted

log = logging.getLogger("fedtune.site")


@dataclass
class SecureState:
    """This site's secure-aggregation state in one round."""

    secrets: SiteRound
    accepted: _Accepted
    encoding: InputEncoding | None = None
    confirmed: bytes | None = None  # the survivors statement this site signed


class SecureSiteMixin:
    """Secure-aggregation task handlers for the SiteAgent."""

    def _leave_round(self: SiteAgent, ref: pb.RoundRef, reason: str) -> None:
        self._secure.pop((ref.run_id, ref.round), None)
        self._accepted.pop((ref.run_id, ref.round), None)
        self._abandoned.add((ref.run_id, ref.round))
        self.outcome.refusals.append(reason)
        log_event(log, "secure_round_refused", logging.WARNING, run=ref.run_id, round=ref.round,
                  site=self.config.site_id, reason=reason)

    def _secure_state(self: SiteAgent, ref: pb.RoundRef, task: str) -> SecureState | None:
        state = self._secure.get((ref.run_id, ref.round))
        if state is None:
            log_event(log, "unexpected_task", logging.WARNING, run=ref.run_id, round=ref.round,
                      site=self.config.site_id, task=task)
            self._abandoned.add((ref.run_id, ref.round))  # not this site's round: stop asking
        return state

    # -- phase 2: advertise ----------------------------------------------------------------

    def _advertise(self: SiteAgent, accepted: _Accepted) -> None:
        ref = accepted.offer.ref
        self._maybe_drop("advertise", ref)
        secrets = SiteRound(self.config.site_id)  # fresh keys and seed, every round
        self._secure[(ref.run_id, ref.round)] = SecureState(secrets, accepted)
        ad = pb.KeyAdvertisement(ref=ref, site_id=self.config.site_id,
                                 encryption_public_key=secrets.encryption.public,
                                 mask_public_key=secrets.masking.public)
        signature = sign(self.config.identity,
                         advertisement_statement(ad.SerializeToString(deterministic=True)))
        self._call("AdvertiseKeys", pb.SignedKeyAdvertisement(advertisement=ad,
                                                              signature=signature))

    # -- phase 3: share keys ---------------------------------------------------------------

    def _on_share_keys(self: SiteAgent, task: pb.ShareKeysTask) -> None:
        ref = task.ref
        state = self._secure_state(ref, "share_keys")
        if state is None:
            return
        try:
            params, keys = self._verify_advertisements(state, task)
            ciphertexts = state.secrets.share_keys(params, keys)
        except (SecAggError, SignatureError) as exc:
            self._leave_round(ref, f"share-keys: {exc}")
            return
        offer = state.accepted.offer
        state.encoding = input_encoding(state.accepted.job, len(params.sites),
                                        int(np.prod(offer.parameters.shape)),
                                        offer.evaluate_only)
        self._maybe_drop("share", ref)
        self._call("ShareKeys", pb.EncryptedShares(ref=ref, shares=[
            pb.EncryptedShare(from_site=self.config.site_id, to_site=peer, ciphertext=ct)
            for peer, ct in sorted(ciphertexts.items())]))
        log_event(log, "keys_shared", run=ref.run_id, round=ref.round, site=self.config.site_id,
                  phase="share_keys", neighbours=sorted(ciphertexts), threshold=params.threshold)

    def _verify_advertisements(self: SiteAgent, state: SecureState, task: pb.ShareKeysTask
                               ) -> tuple[RoundParameters, dict[str, tuple[bytes, bytes]]]:
        peers = self.config.peers
        assert peers is not None
        offer, job = state.accepted.offer, state.accepted.job
        keys: dict[str, tuple[bytes, bytes]] = {}
        digests = []
        for signed in task.advertisements:
            ad = signed.advertisement
            if ad.ref.run_id != offer.ref.run_id or ad.ref.round != offer.ref.round:
                raise SecAggError(f"the advertisement of {ad.site_id!r} belongs to run "
                                  f"{ad.ref.run_id!r} round {ad.ref.round}, not this round")
            if ad.site_id not in peers.site_keys:
                raise SecAggError(f"an advertisement of {ad.site_id!r}, which is not a known peer")
            if ad.site_id in keys:
                raise SecAggError(f"two advertisements of {ad.site_id!r}")
            try:
                verify(public_key_from_raw(peers.site_keys[ad.site_id]), signed.signature,
                       advertisement_statement(ad.SerializeToString(deterministic=True)))
            except SignatureError as exc:
                raise SecAggError(f"the key advertisement of {ad.site_id!r}: {exc}") from None
            keys[ad.site_id] = (ad.encryption_public_key, ad.mask_public_key)
            digests.append(_digest(signed))
        minimum = max(job.min_sites, self.config.policy.min_sites, 2)
        if len(keys) < minimum:
            raise SecAggError(f"only {len(keys)} sites in the key list; this site requires "
                              f"at least {minimum}")
        sa = job.secure_aggregation
        params = RoundParameters.derive(offer.ref.run_id, offer.ref.round, sa.bits, keys,
                                        sa.threshold, sa.neighbours, offer.round_seed, digests)
        return params, keys

    # -- phase 4: masked input -------------------------------------------------------------

    def _on_secure_input(self: SiteAgent, task: pb.SubmitInputTask) -> None:
        ref = task.ref
        state = self._secure_state(ref, "submit_input")
        if state is None or state.encoding is None:
            return
        try:
            if any(s.to_site != self.config.site_id for s in task.shares):
                raise SecAggError("relayed shares addressed to another site")
            senders = [s.from_site for s in task.shares]
            if len(set(senders)) != len(senders):
                raise SecAggError("two shares from the same neighbour")
            state.secrets.receive_shares({s.from_site: s.ciphertext for s in task.shares})
        except SecAggError as exc:
            self._leave_round(ref, f"submit-input: {exc}")
            return
        accepted = state.accepted
        global_params = self._download(accepted.offer)
        if global_params is None:
            return
        vector, metrics = self.compute_input(accepted.job, global_params,
                                             accepted.offer.evaluate_only, ref.round)
        enc = state.encoding
        job = accepted.job
        metric_values = {
            "weight": metrics.weight, "train_loss_sum": metrics.train_loss_sum,
            "train_count": metrics.train_count, "eval_loss_sum": metrics.eval_loss_sum,
            "eval_correct": metrics.eval_correct, "eval_count": metrics.eval_count,
        }
        n_clipped = 0
        if job.site_dp.mode == "distributed" and not accepted.offer.evaluate_only:
            # clip → rotate → scale → round → Skellam noise, in the ring (Agarwal et al. 2021);
            # rounding and noise must be secret: a fresh generator seeded from the OS
            rng = np.random.default_rng(secrets.randbits(128))
            dp = distributed_params(job, vector.shape[0])
            update_part = site_encode(vector.astype(np.float64), dp,
                                      rotation_seed(accepted.offer.round_seed), rng)
            quantised = np.concatenate([update_part, encode(np.zeros(0), metric_values, enc,
                                                            rng)]).astype(word_dtype(enc.bits))
        else:
            # w·clip(Δ, ±R) = clip(w·Δ, ±w·R): the bound the quantiser was scaled for
            bound = max(metrics.weight, 1.0) * enc.value_range
            clipped, n_clipped = clip_update(vector, bound)
            # secret rounding: AES-256-CTR words under a fresh key from the OS
            coins = RoundingCoins(secrets.token_bytes(32))
            quantised = encode(clipped, metric_values, enc, coins, word=True)
        try:
            masked = state.secrets.mask_words(quantised)  # in place: quantised is now masked
        except SecAggError as exc:
            self._leave_round(ref, f"submit-input: {exc}")
            return
        dtype = task.expected.dtype
        if dtype not in ("<u4", "<u8") or list(task.expected.shape) != [masked.shape[0]]:
            self._leave_round(ref, f"submit-input: unexpected layout {dtype} "
                                   f"{list(task.expected.shape)}")
            return
        wire = masked.astype(dtype, copy=False)  # uint32 is <u4 here: no copy
        self._maybe_drop("input", ref)
        self._charge(accepted, secure=True)
        self._submit(ref, wire, None, accepted.offer.parameters.sha256)
        self.outcome.rounds_contributed += 0 if accepted.offer.evaluate_only else 1
        log_event(log, "input_sent", run=ref.run_id, round=ref.round, site=self.config.site_id,
                  phase="masked_input", bytes=int(wire.nbytes), masked=True,
                  clipped_coordinates=n_clipped)

    # -- phase 5: consistency check and unmask ---------------------------------------------

    def _check_signed_lists(self: SiteAgent, ref: pb.RoundRef, lists: pb.SignedSurvivors) -> bytes:
        peers = self.config.peers
        assert peers is not None
        if lists.ref.run_id != ref.run_id or lists.ref.round != ref.round:
            raise SecAggError("the survivor list belongs to another round")
        statement_ = survivors_statement(ref.run_id, ref.round, list(lists.survivors),
                                         list(lists.dropouts))
        try:
            verify(public_key_from_raw(peers.coordinator_key), lists.signature, statement_)
        except SignatureError as exc:
            raise SecAggError(f"the coordinator's signature on the survivor list: {exc}") from None
        return statement_

    def _on_consistency(self: SiteAgent, task: pb.ConsistencyTask) -> None:
        ref = task.ref
        state = self._secure_state(ref, "consistency")
        if state is None:
            return
        try:
            statement_ = self._check_signed_lists(ref, task.lists)
            state.secrets.check_lists(list(task.lists.survivors), list(task.lists.dropouts))
            if state.confirmed is not None and state.confirmed != statement_:
                raise SecAggError("a second, different survivor list for the same round")
        except SecAggError as exc:
            self._leave_round(ref, f"consistency check: {exc}")
            return
        state.confirmed = statement_
        self._maybe_drop("consistency", ref)
        self._call("ConfirmSurvivors", pb.SurvivorConfirmation(
            ref=ref, site_id=self.config.site_id,
            signature=sign(self.config.identity, statement_)))

    def _on_unmask(self: SiteAgent, task: pb.UnmaskTask) -> None:
        ref = task.ref
        state = self._secure_state(ref, "unmask")
        if state is None:
            return
        peers = self.config.peers
        assert peers is not None and state.secrets.params is not None
        try:
            statement_ = self._check_signed_lists(ref, task.lists)
            if statement_ != state.confirmed:
                raise SecAggError("the survivor list to unmask differs from the one this site "
                                  "confirmed")
            t = state.secrets.params.threshold
            signers = confirmed_by(statement_, task.confirmations, set(task.lists.survivors),
                                   peers.site_keys, t)
            if len(signers) < t:
                raise SecAggError(f"only {len(signers)} survivors confirmed the same list, "
                                  f"the threshold is {t}")
            shares = state.secrets.reveal(list(task.lists.survivors), list(task.lists.dropouts))
        except SecAggError as exc:
            self._leave_round(ref, f"unmask: {exc}")
            return
        self._maybe_drop("unmask", ref)
        self._call("Unmask", pb.UnmaskShares(ref=ref, shares=[
            pb.RevealedShare(of_site=owner, kind=kind, share=share)
            for owner, kind, share in shares]))
        log_event(log, "shares_revealed", run=ref.run_id, round=ref.round,
                  site=self.config.site_id, phase="unmask",
                  self_mask_shares=sum(1 for _, k, _ in shares if k == "self_mask"),
                  mask_key_shares=sum(1 for _, k, _ in shares if k == "mask_key"))


def confirmed_by(statement_: bytes, confirmations: Iterable[pb.SurvivorConfirmation],
                 survivors: set[str], site_keys: Mapping[str, bytes], needed: int) -> set[str]:
    """The distinct survivors whose valid signature on ``statement_`` (checked against the
    identity keys of this site's own peers file) is among ``confirmations``, at most
    ``needed`` of them: ``needed`` valid signatures on the very list are the consistency
    check, and verifying more adds nothing. Forged or repeated confirmations, and those of
    sites that are not survivors, do not count."""
    signers: set[str] = set()
    for c in confirmations:
        if len(signers) >= needed:
            break
        if c.site_id not in survivors or c.site_id not in site_keys or c.site_id in signers:
            continue
        try:
            verify(public_key_from_raw(site_keys[c.site_id]), c.signature, statement_)
        except SignatureError:
            continue
        signers.add(c.site_id)
    return signers


def _digest(signed: pb.SignedKeyAdvertisement) -> bytes:
    return hashlib.sha256(signed.SerializeToString(deterministic=True)).digest()
