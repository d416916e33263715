"""Reading back what a replayed run left behind, as the metrics expectations are checked on.

Everything here is read from files the parties wrote — the coordinator's JSON-lines log,
checkpoint and ``privacy.json``, the sites' logs and SQLite ledgers, the recording
coordinator's ``coordinator-holds-N.json`` — never from the processes' memory, so a replay
measures what an operator or an auditor could see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fedtune import local_federation as lf
from fedtune.client.ledger import Ledger, dataset_id
from fedtune.scenarios.runner import read_events
from fedtune.scenarios.spec import Scenario
from fedtune.server.checkpoint import read_history


@dataclass
class RoundRow:
    round: int  # the attempt id (never reused)
    training_round: int
    evaluate_only: bool
    aborted: bool
    reason: str = ""
    contributors: int = 0
    participants: tuple[str, ...] = ()
    dropouts: tuple[str, ...] = ()
    accuracy: float | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    site_epsilon: float | None = None
    record_epsilon: float | None = None


@dataclass
class SiteOutcome:
    site: str
    exit_code: int | None
    refusals: list[str] = field(default_factory=list)
    committed_charges: int = 0
    pending_charges: int = 0
    ledger_epsilon: float = 0.0
    dropped_as_instructed: bool = False


@dataclass
class Outcome:
    run_id: str
    rounds: list[RoundRow]
    sites: list[SiteOutcome]
    privacy: dict[str, Any]
    final_accuracy: float | None
    initial_accuracy: float | None
    holdings: list[dict[str, Any]]
    failure: str = ""
    #: rounds the checkpoint's history records as released: a coordinator killed between its
    #: checkpoint and its ``round_completed`` line released a round the log does not show
    checkpointed: tuple[int, ...] = ()

    @property
    def completed(self) -> int:
        return sum(1 for r in self.rounds if not r.aborted and not r.evaluate_only)

    @property
    def aborted(self) -> int:
        return sum(1 for r in self.rounds if r.aborted)


def collect(scenario: Scenario, fed: lf.LocalFederation,
            site_exits: dict[str, int | None]) -> Outcome:
    events = read_events(fed.run_dir / "coordinator.log")
    run_id = ""
    run_file = fed.run_dir / "run.json"
    if run_file.exists():
        run_id = str(json.loads(run_file.read_text()).get("run_id", ""))
    rounds = _rounds(events)
    history, final = read_history(fed.run_dir)
    training = [h for h in history if not h.aborted and not h.evaluate_only]
    initial = training[0].metrics.eval_accuracy if training else None
    privacy_file = fed.run_dir / "privacy.json"
    privacy = json.loads(privacy_file.read_text()) if privacy_file.exists() else {}
    failure = next((str(e.get("reason", "")) for e in events if e.get("event") == "run_failed"),
                   "")
    sites = [_site_outcome(scenario, fed, s, run_id, site_exits.get(s.site_id))
             for s in fed.sites]
    holdings = [json.loads(p.read_text()) for p in sorted(fed.root.glob("coordinator-holds-*.json"))]
    return Outcome(run_id=run_id, rounds=rounds, sites=sites, privacy=privacy,
                   final_accuracy=float(final.eval_accuracy) if final is not None else None,
                   initial_accuracy=float(initial) if initial is not None else None,
                   holdings=holdings, failure=failure,
                   checkpointed=tuple(sorted(int(h.round) for h in history if not h.aborted)))


def _rounds(events: list[dict[str, Any]]) -> list[RoundRow]:
    started: dict[int, dict[str, Any]] = {}
    rows: dict[int, RoundRow] = {}
    for e in events:
        kind = e.get("event")
        if kind == "round_started":
            started[int(e["round"])] = e
        elif kind == "round_completed":
            rid = int(e["round"])
            s = started.get(rid, {})
            rows[rid] = RoundRow(
                round=rid, training_round=int(s.get("training_round", e.get("completed_rounds", 0))),
                evaluate_only=bool(e.get("evaluate_only", False)), aborted=False,
                contributors=int(e.get("contributors", 0)),
                participants=tuple(s.get("participants") or ()),
                dropouts=tuple(e.get("dropouts") or ()),
                accuracy=_float(e.get("eval_accuracy")), eval_loss=_float(e.get("eval_loss")),
                train_loss=_float(e.get("train_loss")),
                site_epsilon=_float(e.get("site_epsilon")),
                record_epsilon=_float(e.get("record_epsilon")))
        elif kind == "round_aborted":
            rid = int(e["round"])
            s = started.get(rid, {})
            rows[rid] = RoundRow(round=rid, training_round=int(s.get("training_round", 0)),
                                 evaluate_only=bool(s.get("evaluate_only", False)), aborted=True,
                                 reason=str(e.get("reason", "")),
                                 participants=tuple(s.get("participants") or ()))
    return [rows[k] for k in sorted(rows)]


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _site_outcome(scenario: Scenario, fed: lf.LocalFederation, site: lf.SiteFiles, run_id: str,
                  exit_code: int | None) -> SiteOutcome:
    out = SiteOutcome(site=site.site_id, exit_code=exit_code)
    for e in read_events(fed.root / "logs" / f"{site.site_id}.log"):
        kind = e.get("event")
        if kind == "offer_answered" and not e.get("accepted", True):
            out.refusals.append(f"round {e.get('round')}: offer refused: {e.get('reason', '')}")
        elif kind == "secure_round_refused":
            out.refusals.append(f"round {e.get('round')}: {e.get('reason', '')}")
        elif kind == "fault_injected":
            out.dropped_as_instructed = True
    ledger_path = fed.root / "state" / site.site_id / "ledger.sqlite"
    if ledger_path.exists() and scenario.job.record_dp.enabled:
        ledger = Ledger(ledger_path)
        try:
            dataset = dataset_id(site.data)
            charges = [c for c in ledger.charges(dataset) if c.run_id == run_id]
            out.committed_charges = sum(c.status == "committed" for c in charges)
            out.pending_charges = sum(c.status == "pending" for c in charges)
            out.ledger_epsilon = ledger.spent(dataset, scenario.job.record_dp.delta)
        finally:
            ledger.close()
    return out


__all__ = ["Outcome", "RoundRow", "SiteOutcome", "collect"]
