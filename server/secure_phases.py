"""The coordinator's secure-aggregation phases (DESIGN.md §3 steps 2–6).

A mixin of :class:`~fedtune.server.coordinator.Coordinator`: request handlers for the
secure-aggregation RPCs and the part of the run loop between the offer and the aggregate.
The coordinator relays keys and shares, collects masked inputs, signs the survivor list,
runs the consistency check and removes the masks; it never holds a site's unmasked input.

Sets of sites, as in Bonawitz et al. 2017: ``accepted`` → ``U2`` (advertised keys) →
``U3`` (shared keys) → ``U4`` (delivered a masked input: the survivors; ``U3 − U4`` are the
dropouts) → ``U5`` (confirmed the lists) → the sites that revealed shares. Each step needs
at least ``t`` sites, or the round aborts and releases nothing.

At the end of each phase the coordinator's transcript records who took part and the SHA-256
of every message it accepted (:mod:`fedtune.server.transcript`), before the next phase's
tasks become visible; the survivor lists go on the record before any site is shown them.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from fedtune.logs import log_event
from fedtune.privacy.distributed_dp import DistributedDPParams, server_decode
from fedtune.privacy.input_encoding import METRIC_FIELDS, InputEncoding, decode_sum
from fedtune.privacy.masks import word_dtype, word_sum
from fedtune.privacy.secagg import RoundParameters, SecAggError, unmask_sum
from fedtune.privacy.signatures import (
    SignatureError,
    advertisement_statement,
    sign,
    survivors_statement,
    verify,
)
from fedtune.privacy_plan import distributed_params, input_encoding, rotation_seed
from fedtune.proto import fedtune_pb2 as pb
from fedtune.server.errors import invalid, precondition, unauthenticated
from fedtune.server.round_state import RoundState

if TYPE_CHECKING:
    from fedtune.server.coordinator import Coordinator

log = logging.getLogger("fedtune.server")


def ring_dtype(bits: int) -> str:
    """Wire dtype of a masked vector: 4 bytes per coordinate up to 32 bits, else 8."""
    return "<u4" if bits <= 32 else "<u8"


class SecurePhasesMixin:
    """Secure-aggregation request handlers and round phases for the Coordinator."""

    # -- helpers -------------------------------------------------------------------------

    def _distributed(self: Coordinator, r: RoundState) -> bool:
        return self.job.site_dp.mode == "distributed" and not r.evaluate_only

    def _update_length(self: Coordinator, r: RoundState) -> int:
        """Coordinates of the update part of a masked vector."""
        if r.evaluate_only:
            return 0
        if self._distributed(r):
            return distributed_params(self.job, self.params.size).padded_dimension
        return self.params.size

    def _encoding(self: Coordinator, r: RoundState) -> InputEncoding:
        """How the update (unless distributed DP encodes it) and the metrics are quantised."""
        assert r.params is not None
        return input_encoding(self.job, len(r.params.sites), self.params.size, r.evaluate_only)

    def _secure_expected_input(self: Coordinator, r: RoundState) -> pb.TensorSpec:
        n = self._update_length(r) + len(METRIC_FIELDS)
        dtype = ring_dtype(self.job.secure_aggregation.bits)
        return pb.TensorSpec(dtype=dtype, shape=[n], nbytes=n * int(dtype[-1]))

    def _secure_round(self: Coordinator) -> RoundState:
        """The current round, which must use secure aggregation (call with the lock held)."""
        r = self._current_round()
        if not r.secure:
            raise precondition("this run does not use secure aggregation")
        return r

    def _secure_task_for(self: Coordinator, site: str, r: RoundState) -> pb.Task | None:
        if r.awaiting_shares(site):
            ads = [r.advertisements[s] for s in sorted(r.params.sites)]
            ads = self.behaviour.advertisements_for(site, r.round_id, ads)
            return pb.Task(share_keys=pb.ShareKeysTask(ref=r.ref, advertisements=ads,
                                                       deadline=r.deadline))
        if r.awaiting_input(site):
            relayed = [pb.EncryptedShare(from_site=sender, to_site=site, ciphertext=ct)
                       for sender in r.relayed.get(site, ())
                       for ct in [r.shares[sender][site]]]
            relayed = self.behaviour.shares_for(site, r.round_id, relayed)
            return pb.Task(submit_input=pb.SubmitInputTask(
                ref=r.ref, shares=relayed, expected=self._expected_input(r),
                deadline=r.deadline))
        if r.awaiting_confirmation(site):
            return pb.Task(consistency=pb.ConsistencyTask(ref=r.ref, lists=r.lists[site],
                                                          deadline=r.deadline))
        if r.awaiting_unmask(site):
            return pb.Task(unmask=pb.UnmaskTask(
                ref=r.ref, lists=r.lists[site], deadline=r.deadline,
                confirmations=[r.confirmations[s] for s in sorted(r.confirmations)]))
        return None

    # -- requests --------------------------------------------------------------------------

    def advertise_keys(self: Coordinator, site: str, signed: pb.SignedKeyAdvertisement) -> None:
        ad = signed.advertisement
        with self._cond:
            self._secure_round()
        if ad.site_id != site:
            raise invalid(f"advertisement names site {ad.site_id!r}, the session is {site!r}")
        if len(ad.encryption_public_key) != 32 or len(ad.mask_public_key) != 32:
            raise invalid("X25519 public keys are 32 bytes")
        try:
            verify(self._keys[site], signed.signature,
                   advertisement_statement(ad.SerializeToString(deterministic=True)))
        except SignatureError as exc:
            raise unauthenticated(f"key advertisement of {site!r}: {exc}") from None
        self.behaviour.observe(site, "advertisement", signed)
        with self._cond:
            r = self._current_round()
            r.check_ref(ad.ref)
            r.advertise(site, signed)
            self._note_message(site, "AdvertiseKeys", signed)
            log_event(log, "keys_advertised", run=self.run_id, round=r.round_id, site=site,
                      phase="advertise_keys")
            self._cond.notify_all()

    def share_keys(self: Coordinator, site: str, message: pb.EncryptedShares) -> None:
        shares: dict[str, bytes] = {}
        for share in message.shares:
            if share.from_site != site:
                raise invalid(f"a share from {share.from_site!r} in {site!r}'s message")
            if share.to_site in shares:
                raise invalid(f"two shares for {share.to_site!r}")
            if not share.ciphertext or len(share.ciphertext) > 1024:
                raise invalid(f"share for {share.to_site!r} has an implausible size")
            shares[share.to_site] = share.ciphertext
        self.behaviour.observe(site, "shares", message)
        with self._cond:
            r = self._secure_round()
            r.check_ref(message.ref)
            r.share(site, shares)
            self._note_message(site, "ShareKeys", message)
            log_event(log, "keys_shared", run=self.run_id, round=r.round_id, site=site,
                      phase="share_keys", shares=len(shares))
            self._cond.notify_all()

    def submit_masked(self: Coordinator, site: str, ref: pb.RoundRef, vector: np.ndarray,
                      digest: bytes) -> None:
        """Take a site's masked input; ``digest`` (what the site's header and egress log
        carry) was checked against the bytes by the servicer's TensorAssembler."""
        bits = self.job.secure_aggregation.bits
        # the ring's word (uint32 up to 32 bits): the wire's <u4 is read without a copy
        as_ring = vector.astype(word_dtype(bits), copy=False)
        # a <u4 vector at 32 bits is in the ring by construction; check the others
        if bits < 8 * as_ring.itemsize and np.any(as_ring >> as_ring.dtype.type(bits)):
            raise invalid(f"masked input has values outside Z_(2^{bits})")
        self.behaviour.observe(site, "masked_input", as_ring)
        with self._cond:
            r = self._current_round()
            r.check_ref(ref)
            r.submit_masked(site, as_ring)
            self._note_input(site, digest, vector.nbytes)
            log_event(log, "input_received", run=self.run_id, round=r.round_id, site=site,
                      phase="masked_input", bytes=int(vector.nbytes), masked=True)
            self._cond.notify_all()

    def confirm_survivors(self: Coordinator, site: str, message: pb.SurvivorConfirmation) -> None:
        if message.site_id != site:
            raise invalid(f"confirmation names site {message.site_id!r}, the session is {site!r}")
        with self._cond:
            r = self._secure_round()
            r.check_ref(message.ref)
            lists = r.lists.get(site)
            if lists is None:
                raise precondition(f"site {site!r} is not a survivor of round {r.round_id}")
            try:
                verify(self._keys[site], message.signature, survivors_statement(
                    self.run_id, r.round_id, list(lists.survivors), list(lists.dropouts)))
            except SignatureError as exc:
                raise unauthenticated(f"confirmation of {site!r}: {exc}") from None
            r.confirm(site, message)
            self._note_message(site, "ConfirmSurvivors", message)
            log_event(log, "survivors_confirmed", run=self.run_id, round=r.round_id, site=site,
                      phase="consistency_check")
            self._cond.notify_all()

    def unmask(self: Coordinator, site: str, message: pb.UnmaskShares) -> None:
        self.behaviour.observe(site, "unmask_shares", message)
        with self._cond:
            r = self._secure_round()
            r.check_ref(message.ref)
            lists = r.lists.get(site)
            if lists is None:
                raise precondition(f"site {site!r} is not a survivor of round {r.round_id}")
            r.unmask(site, list(message.shares), set(lists.survivors), set(lists.dropouts))
            self._note_message(site, "Unmask", message)
            log_event(log, "shares_revealed", run=self.run_id, round=r.round_id, site=site,
                      phase="unmask", shares=len(message.shares))
            self._cond.notify_all()

    # -- run loop ----------------------------------------------------------------------------

    def _run_secure_phases(self: Coordinator, r: RoundState) -> SecureSum | str:
        """From accepted to unmasked: the sum to unmask, or the reason to abort.

        Called with ``self._cond`` held (the waits release it).
        """
        d, sa = self.job.deadlines, self.job.secure_aggregation
        r.start_advertise(self.clock() + d.keys)
        self._cond.notify_all()
        self._wait_until(r.advertising_complete, r.deadline)
        if self._stop.is_set():
            return "the coordinator is stopping"
        advertised = sorted(r.advertisements)
        if len(advertised) < self.job.min_sites:
            return f"{len(advertised)} sites advertised keys (minimum {self.job.min_sites})"
        digests = [hashlib.sha256(r.advertisements[s].SerializeToString(deterministic=True))
                   .digest() for s in advertised]
        try:
            params = RoundParameters.derive(self.run_id, r.round_id, sa.bits, advertised,
                                            sa.threshold, sa.neighbours, self._round_seed,
                                            digests)
        except SecAggError as exc:
            return f"secure aggregation parameters: {exc}"
        self.behaviour.observe("", "round_parameters", params)
        self.transcript.record(
            "keys_advertised", round=r.round_id, sites=list(params.sites),
            threshold=params.threshold, bits=params.bits,
            graph={s: list(n) for s, n in sorted(params.graph.items())},
            messages=self._take_messages("AdvertiseKeys"))
        r.start_share(params, self.clock() + d.keys)
        log_event(log, "phase_started", run=self.run_id, round=r.round_id, phase="share_keys",
                  sites=advertised, threshold=params.threshold)
        self._cond.notify_all()
        self._wait_until(r.sharing_complete, r.deadline)
        if self._stop.is_set():
            return "the coordinator is stopping"
        sharers = sorted(r.shares)
        self.transcript.record("keys_shared", round=r.round_id, sites=sharers,
                               messages=self._take_messages("ShareKeys"))
        if len(sharers) < params.threshold:
            return f"{len(sharers)} sites shared keys (threshold {params.threshold})"
        for site in sharers:
            r.relayed[site] = tuple(s for s in sharers if s != site and site in r.shares[s])
        r.start_input(self.clock() + d.input)
        log_event(log, "phase_started", run=self.run_id, round=r.round_id, phase="masked_input",
                  sites=sharers)
        self._cond.notify_all()
        self._wait_until(r.inputs_complete, r.deadline)
        if self._stop.is_set():
            return "the coordinator is stopping"
        survivors = sorted(r.masked)
        dropouts = sorted(set(sharers) - set(survivors))
        for site in dropouts:
            log_event(log, "site_dropped", logging.WARNING, run=self.run_id, round=r.round_id,
                      site=site, phase="masked_input")
        self.transcript.record("inputs_received", round=r.round_id, delivered=survivors,
                               dropouts=dropouts, messages=self._take_messages("SubmitInput"))
        if len(survivors) < max(params.threshold, self.job.min_sites):
            return (f"{len(survivors)} sites delivered masked input (threshold "
                    f"{params.threshold}, minimum {self.job.min_sites})")
        lists = {}
        for site in survivors:
            s, dr = self.behaviour.lists_for(site, r.round_id, survivors, dropouts)
            signature = sign(self._identity, survivors_statement(self.run_id, r.round_id,
                                                                 list(s), list(dr)))
            lists[site] = pb.SignedSurvivors(ref=r.ref, survivors=sorted(s), dropouts=sorted(dr),
                                             signature=signature)
        # on the record before any site is shown a list (one entry per distinct list sent)
        distinct: dict[tuple[tuple[str, ...], tuple[str, ...], bytes], list[str]] = {}
        for site, sent in sorted(lists.items()):
            key = (tuple(sent.survivors), tuple(sent.dropouts), sent.signature)
            distinct.setdefault(key, []).append(site)
        self.transcript.record(
            "survivors_announced", round=r.round_id, survivors=survivors, dropouts=dropouts,
            threshold=params.threshold,
            signed_lists=[{"survivors": list(s), "dropouts": list(dr), "signature": sig.hex(),
                           "sent_to": to} for (s, dr, sig), to in distinct.items()])
        r.start_consistency(lists, self.clock() + d.unmask)
        log_event(log, "phase_started", run=self.run_id, round=r.round_id,
                  phase="consistency_check", survivors=survivors, dropouts=dropouts)
        self._cond.notify_all()
        self._wait_until(r.consistency_complete, r.deadline)
        if self._stop.is_set():
            return "the coordinator is stopping"
        self.transcript.record("survivors_confirmed", round=r.round_id,
                               sites=sorted(r.confirmations),
                               messages=self._take_messages("ConfirmSurvivors"))
        if len(r.confirmations) < params.threshold:
            return (f"{len(r.confirmations)} sites confirmed the survivor list "
                    f"(threshold {params.threshold})")
        r.start_unmask(self.clock() + d.unmask)
        self._cond.notify_all()
        self._wait_until(r.unmask_complete, r.deadline)
        if self._stop.is_set():
            return "the coordinator is stopping"
        # nothing a site sends can change the round from here on
        r.phase = pb.PHASE_AGGREGATE
        self.transcript.record("unmask_responses", round=r.round_id, sites=sorted(r.unmasked),
                               messages=self._take_messages("Unmask"))
        dp = (distributed_params(self.job, self.params.size), rotation_seed(self._round_seed),
              self.params.size) if self._distributed(r) else None
        return SecureSum(params, [r.masked[s] for s in survivors], survivors, dropouts,
                         {s: r.advertisements[s].advertisement.mask_public_key
                          for s in advertised},
                         dict(r.relayed), r.revealed, self._encoding(r), dp)


class SecureSum:
    """Everything needed to unmask a round's sum, computed outside the coordinator's lock."""

    def __init__(self, params: RoundParameters, masked: list[np.ndarray], survivors: list[str],
                 dropouts: list[str], mask_keys: dict[str, bytes],
                 relayed: dict[str, tuple[str, ...]],
                 revealed: dict[str, dict[str, dict[str, bytes]]], encoding: InputEncoding,
                 distributed: tuple[DistributedDPParams, bytes, int] | None = None) -> None:
        self.params, self.masked = params, masked
        self.survivors, self.dropouts = survivors, dropouts
        self.mask_keys, self.relayed, self.revealed = mask_keys, relayed, revealed
        self.encoding = encoding
        self.distributed = distributed

    def unmask(self) -> tuple[np.ndarray, pb.PlainMetrics]:
        """(Σ w·Δ, metric sums); raises :class:`SecAggError` when the masks cannot be removed."""
        bits = self.params.bits
        total = unmask_sum(self.params, word_sum(self.masked, bits), self.survivors,
                           self.dropouts, self.mask_keys, self.relayed, self.revealed)
        if self.distributed is None:
            update_sum, metric_sums = decode_sum(total, self.encoding)
        else:
            # distributed DP: the update part is the noisy, rotated, scaled integer sum
            dp, seed, length = self.distributed
            update_sum = server_decode(total[:dp.padded_dimension], dp, seed, length)
            _, metric_sums = decode_sum(total[dp.padded_dimension:], self.encoding)
        return update_sum, pb.PlainMetrics(**metric_sums)
