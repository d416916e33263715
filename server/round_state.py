"""The state of one round: who was offered it, who accepted, who delivered, and the phase.

A plain class with no network and no clock of its own (times come in as arguments), so the
round's rules can be tested directly. The coordinator's run loop moves it through the phases
of DESIGN.md §3; a request that does not fit the current phase raises :class:`ProtocolError`.

Phases (``fedtune.v1.Phase``)::

    OFFER ──► [ADVERTISE_KEYS ──► SHARE_KEYS] ──► MASKED_INPUT ──► [UNMASK] ──► AGGREGATE
                 (secure aggregation only)                          (secure only)

A site that misses a phase deadline is a dropout for the rest of the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import numpy as np

from fedtune.privacy.secagg import MASK_KEY, SELF_MASK, RoundParameters
from fedtune.proto import fedtune_pb2 as pb
from fedtune.server.errors import ProtocolError, duplicate, invalid, precondition

PHASE_NAMES = {
    pb.PHASE_OFFER: "offer",
    pb.PHASE_ADVERTISE_KEYS: "advertise_keys",
    pb.PHASE_SHARE_KEYS: "share_keys",
    pb.PHASE_MASKED_INPUT: "masked_input",
    pb.PHASE_UNMASK: "unmask",
    pb.PHASE_AGGREGATE: "aggregate",
    pb.PHASE_CONSISTENCY_CHECK: "consistency_check",
}


@dataclass
class SiteInput:
    vector: np.ndarray
    metrics: pb.PlainMetrics


@dataclass
class RoundState:
    run_id: str
    round_id: int
    evaluate_only: bool
    participants: frozenset[str]
    deadline: float
    phase: int = pb.PHASE_OFFER
    accepted: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, SiteInput] = field(default_factory=dict)
    result: pb.RoundResult | None = None
    # -- secure aggregation only ----------------------------------------------------------
    secure: bool = False
    advertisements: dict[str, pb.SignedKeyAdvertisement] = field(default_factory=dict)
    params: RoundParameters | None = None
    shares: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sender -> to -> ct
    #: site -> the share senders relayed to it (the neighbours it masks with)
    relayed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    #: site -> the signed lists it was given (the same for all, unless the coordinator lies)
    lists: dict[str, pb.SignedSurvivors] = field(default_factory=dict)
    confirmations: dict[str, pb.SurvivorConfirmation] = field(default_factory=dict)
    #: owner -> kind -> holder -> share
    revealed: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    unmasked: set[str] = field(default_factory=set)

    @property
    def ref(self) -> pb.RoundRef:
        return pb.RoundRef(run_id=self.run_id, round=self.round_id)

    @property
    def phase_name(self) -> str:
        return PHASE_NAMES.get(self.phase, "unknown")

    def check_ref(self, ref: pb.RoundRef) -> None:
        """Refuse a message that belongs to another run or round (replay, stale site)."""
        if ref.run_id != self.run_id:
            raise precondition(f"message for run {ref.run_id!r}, this is run {self.run_id!r}")
        if ref.round != self.round_id:
            raise precondition(f"message for round {ref.round}, the current round is {self.round_id}")

    def _require_phase(self, phase: int, action: str) -> None:
        if self.phase != phase:
            raise precondition(
                f"{action} is not accepted in phase {self.phase_name} of round {self.round_id}"
            )

    def _require_participant(self, site: str) -> None:
        if site not in self.participants:
            raise ProtocolError(grpc.StatusCode.PERMISSION_DENIED,
                                f"site {site!r} is not a participant of round {self.round_id}")

    # -- offer -------------------------------------------------------------------------------

    def respond_offer(self, site: str, accept: bool, reason: str) -> None:
        self._require_participant(site)
        self._require_phase(pb.PHASE_OFFER, "an offer response")
        if site in self.accepted or site in self.refused:
            raise duplicate(f"site {site!r} already answered the offer of round {self.round_id}")
        if accept:
            self.accepted.add(site)
        else:
            self.refused[site] = reason or "no reason given"

    def offer_complete(self) -> bool:
        return len(self.accepted) + len(self.refused) == len(self.participants)

    def awaiting_offer_response(self, site: str) -> bool:
        return (self.phase == pb.PHASE_OFFER and site in self.participants
                and site not in self.accepted and site not in self.refused)

    # -- secure aggregation: keys ----------------------------------------------------------

    def advertise(self, site: str, advertisement: pb.SignedKeyAdvertisement) -> None:
        """Accepted sites advertise right after accepting (also while the offer is open)."""
        self._require_participant(site)
        if not self.secure:
            raise precondition(f"round {self.round_id} does not use secure aggregation")
        if site not in self.accepted:
            raise precondition(f"site {site!r} did not accept round {self.round_id}")
        if self.phase not in (pb.PHASE_OFFER, pb.PHASE_ADVERTISE_KEYS):
            raise precondition(f"advertising keys is not accepted in phase {self.phase_name} "
                               f"of round {self.round_id}")
        if site in self.advertisements:
            raise duplicate(f"site {site!r} already advertised keys for round {self.round_id}")
        self.advertisements[site] = advertisement

    def start_advertise(self, deadline: float) -> None:
        self._require_phase(pb.PHASE_OFFER, "starting the key advertisement")
        self.phase = pb.PHASE_ADVERTISE_KEYS
        self.deadline = deadline

    def start_share(self, params: RoundParameters, deadline: float) -> None:
        self._require_phase(pb.PHASE_ADVERTISE_KEYS, "starting the key sharing")
        self.params = params
        self.phase = pb.PHASE_SHARE_KEYS
        self.deadline = deadline

    def advertising_complete(self) -> bool:
        return set(self.advertisements) >= self.accepted

    def share(self, site: str, shares: dict[str, bytes]) -> None:
        self._require_phase(pb.PHASE_SHARE_KEYS, "sharing keys")
        assert self.params is not None
        if site not in self.params.sites:
            raise precondition(f"site {site!r} did not advertise keys in round {self.round_id}")
        if site in self.shares:
            raise duplicate(f"site {site!r} already shared its keys in round {self.round_id}")
        expected = set(self.params.graph[site])
        if set(shares) != expected:
            raise invalid(f"shares must go to exactly the neighbours {sorted(expected)}, "
                          f"got {sorted(shares)}")
        self.shares[site] = shares

    def awaiting_shares(self, site: str) -> bool:
        return (self.phase == pb.PHASE_SHARE_KEYS and self.params is not None
                and site in self.params.sites and site not in self.shares)

    def sharing_complete(self) -> bool:
        return self.params is not None and set(self.shares) >= set(self.params.sites)

    # -- input -------------------------------------------------------------------------------

    def start_input(self, deadline: float) -> None:
        if self.phase not in (pb.PHASE_OFFER, pb.PHASE_SHARE_KEYS):
            raise precondition(f"cannot start the input phase from phase {self.phase_name}")
        self.phase = pb.PHASE_MASKED_INPUT
        self.deadline = deadline

    def input_eligible(self) -> set[str]:
        """Plain mode: the sites that accepted; secure mode: the sites that shared keys."""
        return set(self.shares) if self.secure else set(self.accepted)

    def may_download(self, site: str, action: str = "downloading parameters") -> None:
        self._require_participant(site)
        if site not in self.accepted:
            raise precondition(f"site {site!r} did not accept round {self.round_id}")
        if site not in self.input_eligible():
            raise precondition(f"site {site!r} did not share keys in round {self.round_id}")
        self._require_phase(pb.PHASE_MASKED_INPUT, action)

    def check_input_allowed(self, site: str) -> None:
        self.may_download(site, "submitting input")
        if site in self.inputs or site in self.masked:
            raise duplicate(f"site {site!r} already submitted its input for round {self.round_id}")

    def submit(self, site: str, site_input: SiteInput) -> None:
        self.check_input_allowed(site)
        if self.secure:
            raise precondition("a secure round takes masked inputs only")
        self.inputs[site] = site_input

    def submit_masked(self, site: str, vector: np.ndarray) -> None:
        self.check_input_allowed(site)
        self.masked[site] = vector

    def delivered(self) -> set[str]:
        return set(self.masked) if self.secure else set(self.inputs)

    def awaiting_input(self, site: str) -> bool:
        return (self.phase == pb.PHASE_MASKED_INPUT and site in self.input_eligible()
                and site not in self.delivered())

    def inputs_complete(self) -> bool:
        return self.delivered() >= self.input_eligible()

    def dropouts(self) -> list[str]:
        """Sites that were due to deliver their input but did not, in time."""
        return sorted(self.input_eligible() - self.delivered())

    # -- secure aggregation: consistency check and unmask ------------------------------------

    def start_consistency(self, lists: dict[str, pb.SignedSurvivors], deadline: float) -> None:
        self._require_phase(pb.PHASE_MASKED_INPUT, "starting the consistency check")
        self.lists = lists
        self.phase = pb.PHASE_CONSISTENCY_CHECK
        self.deadline = deadline

    def confirm(self, site: str, confirmation: pb.SurvivorConfirmation) -> None:
        self._require_phase(pb.PHASE_CONSISTENCY_CHECK, "confirming survivors")
        if site not in self.lists:
            raise precondition(f"site {site!r} is not a survivor of round {self.round_id}")
        if site in self.confirmations:
            raise duplicate(f"site {site!r} already confirmed the survivors of round {self.round_id}")
        self.confirmations[site] = confirmation

    def awaiting_confirmation(self, site: str) -> bool:
        return (self.phase == pb.PHASE_CONSISTENCY_CHECK and site in self.lists
                and site not in self.confirmations)

    def consistency_complete(self) -> bool:
        return set(self.confirmations) >= set(self.lists)

    def start_unmask(self, deadline: float) -> None:
        self._require_phase(pb.PHASE_CONSISTENCY_CHECK, "starting the unmask phase")
        self.phase = pb.PHASE_UNMASK
        self.deadline = deadline

    def unmask(self, site: str, shares: list[pb.RevealedShare], survivors: set[str],
               dropouts: set[str]) -> None:
        """Store a site's revealed shares after checking each is one it may reveal."""
        self._require_phase(pb.PHASE_UNMASK, "revealing shares")
        assert self.params is not None
        if site not in self.confirmations:
            raise precondition(f"site {site!r} did not confirm the survivors of round {self.round_id}")
        if site in self.unmasked:
            raise duplicate(f"site {site!r} already revealed its shares in round {self.round_id}")
        seen: set[str] = set()
        for share in shares:
            owner, kind = share.of_site, share.kind
            if owner in seen:
                raise invalid(f"two shares of {owner!r} from one site")
            seen.add(owner)
            if owner not in self.params.graph or site not in self.params.holders(owner):
                raise invalid(f"site {site!r} holds no share of {owner!r}")
            if kind == SELF_MASK and owner not in survivors:
                raise invalid(f"a self-mask share of {owner!r}, which is not a survivor")
            if kind == MASK_KEY and owner not in dropouts:
                raise invalid(f"a mask-key share of {owner!r}, which did not drop out")
            if kind not in (SELF_MASK, MASK_KEY):
                raise invalid(f"unknown share kind {kind!r}")
        for share in shares:
            self.revealed.setdefault(share.of_site, {}).setdefault(share.kind, {})[site] = share.share
        self.unmasked.add(site)

    def awaiting_unmask(self, site: str) -> bool:
        return (self.phase == pb.PHASE_UNMASK and site in self.confirmations
                and site not in self.unmasked)

    def unmask_complete(self) -> bool:
        return self.unmasked >= set(self.confirmations)
