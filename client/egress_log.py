"""The site's egress log: ``STATE_DIR/egress.jsonl``, everything the site sent, signed.

A site administrator can see what left the site without reading code: one JSON line per
message the agent sent to the coordinator and per change to the privacy ledger, each record
hash-chained to the previous one and signed with the site's identity key (record format:
:mod:`fedtune.audit`). The log lives next to the ledger and spans every run and job of the
site; ``fedtune audit verify RUN_DIR STATE_DIR/egress.jsonl`` cross-checks it against a run's
transcript.

A message is logged — and, when it carries round data, ``fsync``'d — *before* it is sent, so
nothing leaves the site unrecorded. Polls, ``Hello``, ``Authenticate`` and parameter requests
carry no site data and are written without an ``fsync`` of their own (the next synced record
makes them durable too).

Events (besides ``seq``, ``prev``, ``ts``, ``event``, ``hash``, ``signature``):

``log_opened``
    every agent start: ``site``, ``public_key`` (the site's, declaring the signing key),
    ``coordinator_key`` (from the site's own peers file, or null), ``torn_tail`` (a torn last
    line discarded at this start, or null) and, when the log is created, ``ledger_baseline``
    (dataset → the charges the ledger already held: ``run``, ``round``, ``status``,
    ``release``), so every ε the log states can be recomputed from the log alone.
``sent``
    ``type`` (the RPC), ``run``, ``round`` (0 outside a round), ``sha256`` and ``size`` of the
    message's deterministic protobuf serialisation — for ``SubmitInput`` of the raw input
    vector (its header's ``TensorSpec.sha256``) — and per type: ``job_digest`` and ``accept``
    (``RespondOffer``), ``params_sha256`` of the model trained on and, in plain mode,
    ``metrics_sha256`` (``SubmitInput``).
``send_failed``
    ``of_seq`` (the ``sent`` record), ``type``, ``run``, ``round``, ``code``: the coordinator
    did not acknowledge the message (refused it, or the connection failed).
``ledger``
    ``action`` (``reserve``: a pending charge written before the update leaves; ``commit``;
    ``cancel``: withdrawn because the round released nothing), ``reason`` (``plain``,
    ``released``, ``aborted``, or ``send`` for a reservation), ``dataset`` (sha256 of the
    data file), ``run``, ``round``, ``job_id``, ``release`` (mechanism parameters),
    ``delta`` (the site policy's) and ``dataset_epsilon`` (the dataset's ε after the change,
    pending charges included).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtune.audit import EGRESS_DOMAIN, EGRESS_FILE, SignedLog, release_dict
from fedtune.client.ledger import Charge, Ledger

log = logging.getLogger("fedtune.site")

#: Messages that carry no site data: logged, not fsync'd on their own.
CONTROL = ("Hello", "Authenticate", "PollTask", "GetParameters")


class EgressLog:
    """Appends this site's egress records (module docstring).

    Raises :class:`fedtune.audit.ChainError` when the existing log does not verify.
    """

    def __init__(self, state_dir: Path, site_id: str, identity: Ed25519PrivateKey,
                 coordinator_key: bytes | None) -> None:
        self.path = state_dir / EGRESS_FILE
        created = not self.path.exists()
        self._log = SignedLog(self.path, identity, EGRESS_DOMAIN)
        fields: dict[str, Any] = {
            "site": site_id, "public_key": self._log.public_key,
            "coordinator_key": base64.b64encode(coordinator_key).decode() if coordinator_key
            else None,
            "torn_tail": self._log.torn.as_record() if self._log.torn else None}
        if created or not self._log.records:
            fields["ledger_baseline"] = _ledger_baseline(state_dir / "ledger.sqlite")
        self._log.append("log_opened", fields)

    def sent(self, kind: str, run: str, round_id: int, message: Any = None, *,
             sha256: bytes | None = None, size: int | None = None,
             **extra: Any) -> int:
        """Record a message about to be sent; returns its seq. Give the protobuf ``message``,
        or ``sha256`` and ``size`` for a streamed input vector."""
        if message is not None:
            data = message.SerializeToString(deterministic=True)
            sha256, size = hashlib.sha256(data).digest(), len(data)
        assert sha256 is not None and size is not None
        record = self._log.append("sent", {"type": kind, "run": run, "round": int(round_id),
                                           "sha256": sha256.hex(), "size": int(size), **extra},
                                  sync=kind not in CONTROL)
        return int(record["seq"])

    def failed(self, of_seq: int, kind: str, run: str, round_id: int, code: str) -> None:
        """The message of record ``of_seq`` was not acknowledged."""
        self._log.append("send_failed", {"of_seq": of_seq, "type": kind, "run": run,
                                         "round": int(round_id), "code": code},
                         sync=kind not in CONTROL)

    def ledger(self, action: str, reason: str, charge: Charge, delta: float,
               dataset_epsilon: float) -> None:
        """Record a change to the privacy ledger (after the ledger has it)."""
        self._log.append("ledger", {
            "action": action, "reason": reason, "dataset": charge.dataset, "run": charge.run_id,
            "round": charge.round, "job_id": charge.job_id,
            "release": release_dict(charge.release), "delta": float(delta),
            "dataset_epsilon": float(dataset_epsilon)})

    def close(self) -> None:
        self._log.close()


def _ledger_baseline(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The charges a ledger holds before the egress log begins."""
    if not path.exists():
        return {}
    ledger = Ledger(path)
    try:
        baseline: dict[str, list[dict[str, Any]]] = {}
        for c in ledger.charges():
            baseline.setdefault(c.dataset, []).append({
                "run": c.run_id, "round": c.round, "status": c.status,
                "release": release_dict(c.release)})
        return baseline
    finally:
        ledger.close()
