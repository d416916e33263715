"""One replay, end to end: the federation runs, the attacks run, the expectations are checked.

:func:`replay` is what ``fedtune replay SCENARIO.toml`` calls. The processes and fault
injection are in :mod:`fedtune.scenarios.runner`, reading back the files in
:mod:`fedtune.scenarios.outcome`, the attacks in :mod:`fedtune.scenarios.attacks` and
:mod:`fedtune.scenarios.adversaries`, the report in :mod:`fedtune.scenarios.report`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedtune import local_federation as lf
from fedtune.scenarios import attacks as mia
from fedtune.scenarios.outcome import Outcome, collect
from fedtune.scenarios.report import Expectation, check_expectation
from fedtune.scenarios.runner import RunRecord, prepare, run_processes
from fedtune.scenarios.spec import AttackSpec, Scenario

log = logging.getLogger("fedtune.scenarios")


@dataclass
class AttackOutcome:
    name: str
    kind: str
    site: str
    auc: float | None = None
    advantage: float | None = None
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: membership inference: the attack's full result (ROC, p-value)
    result: mia.AttackResult | None = None
    error: str = ""


@dataclass
class ReplayResult:
    scenario: Scenario
    root: Path
    fed: lf.LocalFederation
    record: RunRecord
    outcome: Outcome
    metrics: dict[str, float | None]
    attacks: list[AttackOutcome]
    expectations: list[Expectation]
    audit: dict[str, Any]
    started: dt.datetime
    finished: dt.datetime
    phases: dict[str, float]

    @property
    def error(self) -> str:
        if self.record.timed_out:
            return f"the run did not end within timeout_s = {self.scenario.timeout_s:g} s"
        if not self.record.ended:
            return (f"the coordinator exited with code {self.record.coordinator_exit}"
                    + (f": {self.outcome.failure}" if self.outcome.failure else ""))
        return ""

    @property
    def passed(self) -> bool:
        return not self.error and all(e.met for e in self.expectations)


def replay(scenario: Scenario, root: Path, *, progress: bool = True) -> ReplayResult:
    """Run ``scenario`` in ``root`` (created; must be empty) and check its expectations."""
    started = dt.datetime.now(dt.UTC)
    phases: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        phases[name] = round(now - clock, 3)
        clock = now

    root.mkdir(parents=True, exist_ok=True)
    fed = prepare(scenario, root)
    lap("prepare")
    record = run_processes(scenario, fed, progress=progress)
    lap("federation")
    outcome = collect(scenario, fed, record.site_exits)
    attack_results = [_run_attack(scenario, fed, outcome, a) for a in scenario.attacks]
    lap("attacks")
    audit = _audit(scenario, fed)
    lap("audit")
    metrics = _metrics(scenario, record, outcome, attack_results, audit)
    checked = [check_expectation(e.metric, e.op, e.value, metrics.get(e.metric))
               for e in scenario.expectations]
    return ReplayResult(scenario, root, fed, record, outcome, metrics, attack_results, checked,
                        audit, started, dt.datetime.now(dt.UTC), phases)


# -- attacks ------------------------------------------------------------------------------------


def _run_attack(scenario: Scenario, fed: lf.LocalFederation, outcome: Outcome,
                attack: AttackSpec) -> AttackOutcome:
    result = AttackOutcome(attack.name, attack.kind, attack.site)
    try:
        if attack.kind == "reconstruction":
            _reconstruction(outcome, attack, result)
        else:
            _membership_inference(scenario, fed, attack, result)
    except (ValueError, OSError) as exc:  # reported, and the expectation on it fails
        result.error = str(exc)
    return result


def _reconstruction(outcome: Outcome, attack: AttackSpec, result: AttackOutcome) -> None:
    """What the coordinator could rebuild of the victim's input, round by round."""
    rounds: dict[str, Any] = {}
    for held in outcome.holdings:
        for round_id, by_site in held.get("rounds", {}).items():
            if attack.site in by_site:
                rounds[round_id] = by_site[attack.site]
    if not outcome.holdings:
        raise ValueError("the coordinator's holdings were not recorded (it did not end cleanly)")
    secure = all(h.get("secure", True) for h in outcome.holdings)
    missing = unexamined_rounds(outcome) if secure else []
    if missing:
        raise ValueError(f"released round(s) {', '.join(map(str, missing))} are in no "
                         "coordinator-holds file: what the coordinator held then is unknown")
    recovered = [r for r, v in rounds.items() if v.get("input_recoverable")]
    result.details = {"secure": secure, "rounds": rounds, "recovered_rounds": recovered,
                      "input_recoverable": bool(recovered) or not secure}


def _membership_inference(scenario: Scenario, fed: lf.LocalFederation, attack: AttackSpec,
                          result: AttackOutcome) -> None:
    from fedtune.client.data import load_site_data, train_eval_split
    from fedtune.server import checkpoint as ckpt

    state = ckpt.load(fed.run_dir)
    if state is None:
        raise ValueError("no final model: the run wrote no checkpoint")
    job = scenario.job
    model = mia.target_model(job.model, state.params)
    by_id = {s.site_id: s for s in fed.sites}
    victim = load_site_data(by_id[attack.site].data, job.model)
    members, non_members = train_eval_split(victim, job.training.eval_fraction, job.training.seed)
    members, non_members = mia.balanced_sets(members, non_members, seed=scenario.federation.seed)
    if attack.method == "loss_threshold":
        found = mia.loss_threshold_attack(model, members, non_members)
    else:
        others = [load_site_data(s.data, job.model) for s in fed.sites if s.site_id != attack.site]
        pool = _concat(others)
        from fedtune.models import build_model

        found = mia.shadow_model_attack(
            model, members, non_members, attacker_pool=pool,
            make_model=lambda seed: build_model(job.model, seed=seed),
            train_shadow=mia.local_training(job.training), seed=scenario.federation.seed)
    result.result = found
    result.auc = found.auc
    result.advantage = found.advantage
    result.roc_fpr = list(found.roc_fpr)
    result.roc_tpr = list(found.roc_tpr)
    result.details = {"method": attack.method, "members": found.n_members,
                      "non_members": found.n_non_members, "p_value": found.p_value,
                      "chance_advantage": mia.chance_advantage(found.n_members)}


def _concat(parts: list[Any]) -> Any:
    from fedtune.client.data import SiteData

    return SiteData(np.concatenate([p.features for p in parts]),
                    np.concatenate([p.labels for p in parts]))


# -- audit --------------------------------------------------------------------------------------


def _audit(scenario: Scenario, fed: lf.LocalFederation) -> dict[str, Any]:
    """``fedtune audit verify`` on the transcript and every site's egress log.

    The coordinator's public key is pinned from the key file the replay generated, as an
    auditor pins it from an out-of-band source.
    """
    from fedtune import audit

    site_logs = [fed.root / "state" / s.site_id for s in fed.sites
                 if (fed.root / "state" / s.site_id / audit.EGRESS_FILE).exists()]
    try:
        key = audit.decode_key_argument(str(fed.root / "keys" / "coordinator.pub"))
        found = audit.verify(fed.run_dir, site_logs, coordinator_key=key)
    except (OSError, ValueError) as exc:
        return {"ran": False, "failures": None, "note": f"audit could not run: {exc}"}
    return {"ran": True, "ok": found.ok, "failures": len(found.discrepancies),
            "summary": audit.format_report(found).splitlines()[0],
            "records": found.records, "final_hash": found.last_hash,
            "discrepancies": [d.describe() for d in found.discrepancies],
            "epsilon": {level: e.epsilon for level, e in found.epsilon.items()}}


# -- metrics and expectations ----------------------------------------------------------------------


def _metrics(scenario: Scenario, record: RunRecord, outcome: Outcome,
             attacks: list[AttackOutcome], audit: dict[str, Any]) -> dict[str, float | None]:
    site_level = outcome.privacy.get("site_level", {})
    record_level = outcome.privacy.get("record_level", {})
    completed = outcome.completed
    m: dict[str, float | None] = {
        "accuracy.final": outcome.final_accuracy,
        "accuracy.initial": outcome.initial_accuracy,
        "rounds.completed": float(completed),
        "rounds.aborted": float(outcome.aborted),
        "epsilon.site_level": _opt(site_level.get("epsilon")),
        "epsilon.record_level": _opt(record_level.get("epsilon_per_site_at_most")),
        "epsilon.ledger_max": max((s.ledger_epsilon for s in outcome.sites), default=0.0),
        "charges.extra": float(max([s.committed_charges - completed for s in outcome.sites]
                                   + [0])) if scenario.job.record_dp.enabled else None,
        "charges.coordinator_extra": float(max(
            int(site_level.get("released_rounds", 0) or 0) - completed,
            int(record_level.get("released_rounds", 0) or 0) - completed, 0)
            if outcome.privacy else 0),
        "refusals.sites": float(sum(1 for s in outcome.sites if s.refusals)),
        "updates_visible": _updates_visible(scenario, outcome),
        "audit.failures": _opt(audit.get("failures")),
        "coordinator.restarts": float(record.restarts),
    }
    for level, eps in (audit.get("epsilon") or {}).items():
        m[f"audit.epsilon.{level}"] = float(eps)
    for a in attacks:
        if a.kind == "reconstruction":
            recovered = a.details.get("input_recoverable")
            m[f"attack.{a.name}.recovered"] = None if recovered is None else float(recovered)
        else:
            m[f"attack.{a.name}.auc"] = a.auc
            m[f"attack.{a.name}.advantage"] = a.advantage
    return m


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


def _updates_visible(scenario: Scenario, outcome: Outcome) -> float | None:
    if not scenario.job.secure_aggregation.enabled:
        # plain mode: the coordinator saw every input of every released round in the clear
        return float(sum(r.contributors for r in outcome.rounds if not r.aborted))
    if not outcome.holdings or unexamined_rounds(outcome):
        return None  # "not measured": a round nobody examined must not count as hidden
    return float(sum(1 for held in outcome.holdings for by_site in held.get("rounds", {}).values()
                     for v in by_site.values() if v.get("input_recoverable")))


def unexamined_rounds(outcome: Outcome) -> list[int]:
    """Released rounds that no ``coordinator-holds-N.json`` covers (a coordinator life that
    left no record): what the coordinator held in them was never examined. Released means
    completed in the log or recorded in the checkpoint's history (a coordinator killed after
    its checkpoint, before its ``round_completed`` line, released a round the log lacks)."""
    examined = {int(r) for held in outcome.holdings for r in held.get("rounds", {})}
    released = {r.round for r in outcome.rounds if not r.aborted} | set(outcome.checkpointed)
    return sorted(released - examined)


def timestamped_dir(parent: Path, name: str) -> Path:
    return parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = ["AttackOutcome", "ReplayResult", "replay", "timestamped_dir", "unexamined_rounds"]
