"""Where a coordinator could deviate from the protocol, as overridable hooks.

The honest coordinator uses :class:`HonestBehaviour`, which changes nothing. Scenario
replays and tests substitute a variant (``fedtune.scenarios.adversaries``) that lies about
survivors, substitutes keys or replays messages, to show that honest sites refuse and that
nothing leaks. A production coordinator never loads a variant: there is no flag for it.
"""

from __future__ import annotations

from typing import Any

from fedtune.proto import fedtune_pb2 as pb


class HonestBehaviour:
    """The protocol as specified; every hook returns its input unchanged."""

    def advertisements_for(self, site: str, round_id: int,
                           advertisements: list[pb.SignedKeyAdvertisement]
                           ) -> list[pb.SignedKeyAdvertisement]:
        """The signed key list relayed to ``site`` in the share-keys task."""
        return advertisements

    def lists_for(self, site: str, round_id: int, survivors: list[str],
                  dropouts: list[str]) -> tuple[list[str], list[str]]:
        """The survivor and dropout lists the coordinator signs and sends to ``site``."""
        return survivors, dropouts

    def shares_for(self, site: str, round_id: int,
                   shares: list[pb.EncryptedShare]) -> list[pb.EncryptedShare]:
        """The encrypted key shares relayed to ``site`` with its input task."""
        return shares

    def observe(self, site: str, kind: str, payload: Any) -> None:
        """Called with every payload the coordinator receives (for instrumentation)."""
