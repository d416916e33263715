"""The coordinator's transcript: ``RUN_DIR/transcript.jsonl``, signed and hash-chained.

One record per event of the run, appended and ``fsync``'d *before* the state change it
describes is acknowledged — before an offer becomes visible, before sites are told the
survivor lists or a round's result, before the checkpoint that makes a release durable — so a
crash can never leave an acknowledged event, least of all a release, off the record. The record
format (``seq``, ``prev``, ``hash``, ``signature``, canonical encoding, torn-tail handling) is
specified in :mod:`fedtune.audit`, which also verifies transcripts (``fedtune audit verify``).

The transcript is signed with the coordinator's identity key (``coordinator.identity`` of the
federation file; the key the sites' peers files hold). A plain-mode federation may have no
identity key: the coordinator then creates a run key, ``RUN_DIR/transcript.key`` (private,
0600) and ``transcript.pub``, on first start and reuses it on every restart; an auditor should
obtain that public key from the operator out of band and pass it with ``--coordinator-key``.

Events (besides ``seq``, ``prev``, ``ts``, ``event``, ``hash``, ``signature``); hashes and
digests are lowercase hex SHA-256, keys base64:

``job_accepted`` (first record)
    ``run``, ``job_id``, ``job_digest``, ``job_proto`` (hex of the job message's deterministic
    serialisation: the digest's preimage), ``job`` (the same, readable), ``dimension``
    (number of federated parameters), ``params_sha256`` (initial model), ``sites`` (enrolled
    site id → public key), ``public_key`` (the coordinator's: declares the signing key),
    ``key_source`` (``identity`` or ``run-key``), ``accountant`` (``rdp``),
    ``secure_aggregation`` (the job's parameters), ``mechanisms`` (per level — ``site_level``,
    ``record_level``, null when off — the mode, δ, target ε and the one-round ``release``:
    mechanism, noise multiplier, sampling rate, steps and, for Skellam, μ and sensitivities;
    distributed DP adds its calibrated parameters), ``completed_rounds`` (rounds a checkpoint
    already held when the transcript began: 0 for a new run).
``restart``
    ``run``, ``job_digest``, ``public_key``, ``completed_rounds``, ``next_round_id``,
    ``params_sha256`` (the checkpointed model), ``accountant`` (charged rounds and ε per level
    after the restart), ``recovered_charges`` (rounds whose release record was on the
    transcript but not in the checkpoint: they stay charged), ``torn_tail`` (null, or the
    offset, length, sha256 and file name of the discarded torn line).
``round_started``
    ``round`` (attempt id, never reused), ``training_round``, ``evaluate_only``, ``secure``,
    ``participants``, ``params_sha256`` (the model offered), ``round_seed``.
``offer_responses``
    ``round``, ``accepted``, ``refused`` (site → reason), ``silent``, ``messages``.
``keys_advertised``
    ``round``, ``sites``, ``threshold``, ``bits``, ``graph`` (site → neighbours),
    ``messages``.
``keys_shared``, ``survivors_confirmed``, ``unmask_responses``
    ``round``, ``sites``, ``messages``.
``inputs_received``
    ``round``, ``delivered``, ``dropouts``, ``messages``.
``survivors_announced``
    ``round``, ``survivors``, ``dropouts``, ``threshold``, ``signed_lists`` (each distinct
    list sent: ``survivors``, ``dropouts``, the coordinator's ``signature``, ``sent_to``).
``round_released``
    ``round``, ``training_round``, ``evaluate_only``, ``contributors``, ``dropouts``,
    ``aggregate_sha256`` (the released sum Σw·Δ, noise included, as little-endian float64,
    followed by the metric sums' deterministic serialisation), ``metrics``, ``params_sha256``
    (the model after the round), ``completed_rounds``, ``charged``, ``site_level`` and
    ``record_level`` (``release`` and ``delta`` used, or null), ``accountant`` (per level:
    ``releases`` charged so far and ``epsilon``).
``round_aborted``
    ``round``, ``phase``, ``reason``, ``messages`` (any not yet recorded).
``round_interrupted``
    ``round``, ``messages``: the coordinator was stopped during the round.
``budget_exhausted``
    ``reason``, ``accountant``: the coordinator refused further training rounds.
``run_finished``
    ``completed_rounds``, ``failed``, ``reason``.

``messages`` lists the site messages the coordinator accepted and relies on, each as ``site``,
``type`` (the RPC: RespondOffer, AdvertiseKeys, ShareKeys, SubmitInput, ConfirmSurvivors,
Unmask), ``sha256`` and ``size``: of the message's deterministic protobuf serialisation, and
for SubmitInput of the raw little-endian input vector (the ``TensorSpec.sha256`` of its
header), plus ``metrics_sha256`` in plain mode. Each site logs the same digests in its egress
log, so the two can be cross-checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtune.audit import (
    TRANSCRIPT_DOMAIN,
    TRANSCRIPT_FILE,
    ChainError,
    SignedLog,
    TornTail,
    public_key_b64,
)
from fedtune.identity import load_identity, write_identity
from fedtune.logs import log_event

log = logging.getLogger("fedtune.server")

RUN_KEY = "transcript"


class TranscriptError(ChainError):
    """The run directory's transcript cannot be continued (the message says why)."""


def run_key(run_dir: Path) -> Ed25519PrivateKey:
    """The run's own transcript key, for a federation without a coordinator identity key."""
    path = run_dir / f"{RUN_KEY}.key"
    if not path.exists():
        write_identity(run_dir, RUN_KEY)
    return load_identity(path)


@dataclass
class PastRelease:
    """A charged release the transcript already holds (for reconciling with a checkpoint)."""

    round_id: int
    site_level: bool
    record_level: bool
    accountant: dict[str, Any]


@dataclass
class TranscriptState:
    """What an existing transcript says, as far as a restart needs it."""

    existed: bool
    run_id: str = ""
    job_digest: str = ""
    releases: list[PastRelease] = field(default_factory=list)
    torn: TornTail | None = None


class Transcript:
    """Appends the coordinator's records (see the module docstring for every event)."""

    def __init__(self, run_dir: Path, key: Ed25519PrivateKey,
                 clock: Callable[[], float]) -> None:
        try:
            self._log = SignedLog(run_dir / TRANSCRIPT_FILE, key, TRANSCRIPT_DOMAIN, clock)
        except ChainError as exc:
            raise TranscriptError(str(exc)) from None
        self.path = self._log.path
        self.public_key = public_key_b64(key)
        self.state = self._summarise()
        declared = self._log.declared_keys
        if declared and declared[-1] != self.public_key:
            self._log.close()
            raise TranscriptError(
                f"{self.path}: the transcript is signed by the key {declared[-1]}, the "
                f"coordinator now holds {self.public_key}: a run keeps one key (restore "
                "coordinator.identity, or use a new run directory)")

    def _summarise(self) -> TranscriptState:
        records = self._log.records
        state = TranscriptState(existed=bool(records), torn=self._log.torn)
        for rec in records:
            if rec["event"] == "job_accepted":
                state.run_id, state.job_digest = rec["run"], rec["job_digest"]
            elif rec["event"] == "round_released" and rec.get("charged"):
                state.releases.append(PastRelease(
                    int(rec["round"]), rec.get("site_level") is not None,
                    rec.get("record_level") is not None, dict(rec.get("accountant", {}))))
        return state

    @property
    def last_hash(self) -> str:
        return self._log.last_hash

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event and fsync it; only then may the caller act on it."""
        record = self._log.append(event, fields)
        log_event(log, "transcript_record", logging.DEBUG, seq=record["seq"], record=event)
        return record

    def close(self) -> None:
        self._log.close()


def message_entry(site: str, kind: str, sha256: bytes, size: int,
                  **extra: Any) -> dict[str, Any]:
    """One site message the transcript relies on."""
    return {"site": site, "type": kind, "sha256": sha256.hex(), "size": int(size), **extra}
