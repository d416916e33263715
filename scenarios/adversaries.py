"""Coordinator variants that attack secure aggregation (DESIGN.md §1 threat model, §5).

Each variant is a :class:`~fedtune.server.behaviour.HonestBehaviour` that deviates at one
point of the protocol, and records everything the coordinator receives, so a test or a
scenario replay can show two things: the honest sites refuse, and what the coordinator
holds does not let it reconstruct any single site's input (:func:`reconstruction_attempt`).

* :class:`BothLists` — lists a victim as survivor *and* dropout, to get both of its secrets;
* :class:`SubstituteKey` — relays a victim's advertisement with the coordinator's own mask key;
* :class:`InconsistentLists` — tells some sites the victim dropped while telling the others
  it survived (Bonawitz et al. 2017 §4: defeated by the consistency check when t > n/2);
* :class:`ReplayAdvertisements` — relays the previous round's signed key list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtune.privacy import shamir
from fedtune.privacy.key_agreement import public_from_private
from fedtune.privacy.secagg import MASK_KEY, SELF_MASK
from fedtune.proto import fedtune_pb2 as pb
from fedtune.server.behaviour import HonestBehaviour


@dataclass
class Received:
    site: str
    kind: str
    payload: Any


class RecordingBehaviour(HonestBehaviour):
    """Honest, but keeps every payload the coordinator receives (instrumentation)."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    def observe(self, site: str, kind: str, payload: Any) -> None:
        copy = payload.copy() if isinstance(payload, np.ndarray) else payload
        self.received.append(Received(site, kind, copy))

    def masked_inputs(self) -> list[Received]:
        return [r for r in self.received if r.kind == "masked_input"]

    def revealed_shares(self, owner: str, kind: str) -> dict[str, bytes]:
        """Every share of ``owner``'s secret of ``kind`` that any site revealed, by holder."""
        out = {}
        for r in self.received:
            if r.kind == "unmask_shares":
                for share in r.payload.shares:
                    if share.of_site == owner and share.kind == kind:
                        out[r.site] = share.share
        return out


class _Targeted(RecordingBehaviour):
    def __init__(self, victim: str, rounds: tuple[int, ...] = (1,)) -> None:
        super().__init__()
        self.victim = victim
        self.rounds = rounds


class BothLists(_Targeted):
    def lists_for(self, site: str, round_id: int, survivors: list[str],
                  dropouts: list[str]) -> tuple[list[str], list[str]]:
        if round_id in self.rounds:
            return survivors, sorted({*dropouts, self.victim})
        return survivors, dropouts


class SubstituteKey(_Targeted):
    def __init__(self, victim: str, rounds: tuple[int, ...] = (1,)) -> None:
        super().__init__(victim, rounds)
        self.own_key = X25519PrivateKey.generate()

    def advertisements_for(self, site: str, round_id: int,
                           advertisements: list[pb.SignedKeyAdvertisement]
                           ) -> list[pb.SignedKeyAdvertisement]:
        if round_id not in self.rounds:
            return advertisements
        out = []
        for signed in advertisements:
            if signed.advertisement.site_id == self.victim:
                forged = pb.SignedKeyAdvertisement()
                forged.CopyFrom(signed)
                forged.advertisement.mask_public_key = public_from_private(self.own_key)
                signed = forged
            out.append(signed)
        return out


class InconsistentLists(_Targeted):
    """Sites in ``fooled`` are told the victim dropped; the others that it survived."""

    def __init__(self, victim: str, fooled: tuple[str, ...], rounds: tuple[int, ...] = (1,)) -> None:
        super().__init__(victim, rounds)
        self.fooled = fooled

    def lists_for(self, site: str, round_id: int, survivors: list[str],
                  dropouts: list[str]) -> tuple[list[str], list[str]]:
        if round_id in self.rounds and site in self.fooled:
            return ([s for s in survivors if s != self.victim],
                    sorted({*dropouts, self.victim}))
        return survivors, dropouts


class ReplayAdvertisements(RecordingBehaviour):
    """In the given rounds, relay the signed key list of the round before."""

    def __init__(self, rounds: tuple[int, ...] = (2,)) -> None:
        super().__init__()
        self.rounds = rounds
        self._by_round: dict[int, list[pb.SignedKeyAdvertisement]] = {}

    def advertisements_for(self, site: str, round_id: int,
                           advertisements: list[pb.SignedKeyAdvertisement]
                           ) -> list[pb.SignedKeyAdvertisement]:
        self._by_round.setdefault(round_id, list(advertisements))
        if round_id in self.rounds and round_id - 1 in self._by_round:
            return self._by_round[round_id - 1]
        return advertisements


@dataclass
class ReconstructionAttempt:
    """What a coordinator could do with everything it received about one site."""

    self_mask_shares: int
    mask_key_shares: int
    threshold: int
    mask_key_recovered: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def input_recoverable(self) -> bool:
        # the input is hidden by PRG(b) and by the pairwise masks: both secrets are needed
        return self.self_mask_shares >= self.threshold and self.mask_key_recovered


def reconstruction_attempt(recorder: RecordingBehaviour, victim: str,
                           round_id: int) -> ReconstructionAttempt:
    """Try, with every share the coordinator received in ``round_id``, to recover ``victim``'s
    secrets, the way the coordinator itself would (it knows the graph and the x-coordinates).

    The mask key counts as recovered only if the combined shares give the private key of the
    mask public key the victim advertised; with fewer than ``t`` shares Shamir gives garbage.
    """
    params = next(r.payload for r in recorder.received
                  if r.kind == "round_parameters" and r.payload.round_id == round_id)
    in_round = [r for r in recorder.received if _round_of(r) == round_id]
    mine = RecordingBehaviour()
    mine.received = in_round
    b = mine.revealed_shares(victim, SELF_MASK)
    s = mine.revealed_shares(victim, MASK_KEY)
    attempt = ReconstructionAttempt(len(b), len(s), params.threshold)
    advertised = [r.payload.advertisement.mask_public_key for r in in_round
                  if r.kind == "advertisement" and r.site == victim]
    if s and advertised:
        points = {params.share_index(victim, holder): share for holder, share in s.items()}
        try:
            key = X25519PrivateKey.from_private_bytes(shamir.combine_shares(points))
            attempt.mask_key_recovered = public_from_private(key) in advertised
        except ValueError:
            attempt.notes.append("the shares do not combine into a key")
    return attempt


def _round_of(r: Received) -> int | None:
    payload = r.payload
    if r.kind == "advertisement":
        return int(payload.advertisement.ref.round)
    if r.kind in ("shares", "unmask_shares"):
        return int(payload.ref.round)
    if r.kind == "round_parameters":
        return int(payload.round_id)
    return None
