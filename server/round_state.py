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

from fedtune.proto import fedtune_pb2 as pb
from fedtune.server.errors import ProtocolError, duplicate, precondition

PHASE_NAMES = {
    pb.PHASE_OFFER: "offer",
    pb.PHASE_ADVERTISE_KEYS: "advertise_keys",
    pb.PHASE_SHARE_KEYS: "share_keys",
    pb.PHASE_MASKED_INPUT: "masked_input",
    pb.PHASE_UNMASK: "unmask",
    pb.PHASE_AGGREGATE: "aggregate",
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

    # -- input -------------------------------------------------------------------------------

    def start_input(self, deadline: float) -> None:
        self._require_phase(pb.PHASE_OFFER, "starting the input phase")
        self.phase = pb.PHASE_MASKED_INPUT
        self.deadline = deadline

    def may_download(self, site: str, action: str = "downloading parameters") -> None:
        self._require_participant(site)
        if site not in self.accepted:
            raise precondition(f"site {site!r} did not accept round {self.round_id}")
        self._require_phase(pb.PHASE_MASKED_INPUT, action)

    def check_input_allowed(self, site: str) -> None:
        self.may_download(site, "submitting input")
        if site in self.inputs:
            raise duplicate(f"site {site!r} already submitted its input for round {self.round_id}")

    def submit(self, site: str, site_input: SiteInput) -> None:
        self.check_input_allowed(site)
        self.inputs[site] = site_input

    def awaiting_input(self, site: str) -> bool:
        return (self.phase == pb.PHASE_MASKED_INPUT and site in self.accepted
                and site not in self.inputs)

    def inputs_complete(self) -> bool:
        return len(self.inputs) == len(self.accepted)

    def dropouts(self) -> list[str]:
        """Sites that accepted but did not deliver their input in time."""
        return sorted(self.accepted - set(self.inputs))
