"""From a finished replay to its report: ``report.json``, ``report.html`` and a summary.

:mod:`fedtune.scenarios.report` defines and renders the report; this module fills it in from
a :class:`~fedtune.scenarios.replay.ReplayResult` (what the runner measured) and prints the
short summary ``fedtune replay`` shows.
"""

from __future__ import annotations

from pathlib import Path

from fedtune.scenarios import report as rp
from fedtune.scenarios.attacks import dp_advantage_bound
from fedtune.scenarios.replay import ReplayResult


def build_report(result: ReplayResult) -> rp.ScenarioReport:
    scenario = result.scenario
    job = scenario.job
    record_dp = job.record_dp.enabled
    site_dp = job.site_dp.mode != "none"
    privacy = rp.PrivacySettings(
        secure_aggregation=job.secure_aggregation.enabled, record_level_dp=record_dp,
        record_delta=job.record_dp.delta if record_dp else None,
        site_level_mode=job.site_dp.mode, site_delta=job.site_dp.delta if site_dp else None)
    rounds = []
    for row in result.outcome.rounds:
        participants = row.participants
        survivors = () if row.aborted else tuple(s for s in participants if s not in row.dropouts)
        epsilon_record = ({s: float(row.record_epsilon) for s in survivors}
                          if record_dp and row.record_epsilon is not None else {})
        rounds.append(rp.RoundRow(
            round=row.round, participants=participants, survivors=survivors,
            aborted=row.aborted, abort_reason=row.reason, evaluate_only=row.evaluate_only,
            accuracy=row.accuracy, loss=row.eval_loss, epsilon_record=epsilon_record,
            epsilon_site=row.site_epsilon if site_dp else None))
    bound = None
    epsilon_record = result.metrics.get("epsilon.record_level")
    if record_dp and epsilon_record is not None:
        bound = dp_advantage_bound(epsilon_record, job.record_dp.delta)
    membership = [rp.MembershipAttack(site=a.site, result=a.result, advantage_bound=bound,
                                      label=a.name)
                  for a in result.attacks if a.result is not None]
    reconstruction = []
    for a in result.attacks:
        if a.kind != "reconstruction":
            continue
        for round_id, held in sorted(a.details.get("rounds", {}).items(), key=lambda x: int(x[0])):
            reconstruction.append(rp.ReconstructionRow(
                victim=a.site, round=int(round_id), self_mask_shares=held["self_mask_shares"],
                mask_key_shares=held["mask_key_shares"], threshold=held["threshold"],
                mask_key_recovered=held["mask_key_recovered"],
                input_recoverable=held["input_recoverable"]))
    return rp.ScenarioReport(
        name=scenario.name, file=str(scenario.path), description=scenario.description,
        verdict=rp.verdict_of(result.expectations, result.error), privacy=privacy,
        rounds=rounds, expectations=result.expectations,
        timing=rp.Timing(result.started, result.finished, result.phases),
        membership_attacks=membership, reconstruction_attempts=reconstruction,
        injections=_injections(result), transcript=_transcript(result.audit),
        error=result.error)


def _injections(result: ReplayResult) -> list[rp.Injection]:
    out = []
    sites = {s.site: s for s in result.outcome.sites}
    for drop in result.scenario.drops:
        site = sites[drop.site]
        happened = site.dropped_as_instructed
        out.append(rp.Injection(
            kind="fault", name="site_drop", target=drop.site, round=drop.round, phase=drop.phase,
            outcome=(f"vanished at {drop.phase} of round {drop.round} (exit code "
                     f"{site.exit_code})" if happened else
                     "the site never reached that phase and round"),
            as_expected=happened))
    restarts = result.record.restarts
    for i, restart in enumerate(result.scenario.restarts):
        done = i < restarts
        out.append(rp.Injection(
            kind="fault", name="coordinator_restart", target="coordinator",
            round=restart.after_round,
            outcome=("killed with SIGKILL after training round "
                     f"{restart.after_round} and restarted on its run directory" if done else
                     "the run ended before that round"),
            as_expected=done))
    adversary = result.scenario.adversary
    if adversary is not None:
        refused = {s.site: s.refusals for s in result.outcome.sites if s.refusals}
        detail = "; ".join(f"{site}: {reasons[0]}" for site, reasons in sorted(refused.items()))
        out.append(rp.Injection(
            kind="adversary", name=adversary.kind, target=adversary.victim or "all sites",
            round=adversary.rounds[0] if len(adversary.rounds) == 1 else None,
            outcome=(f"{len(refused)} site(s) refused: {detail}" if refused else
                     "no site refused"),
            as_expected=bool(refused)))
    return out


def _transcript(audit: dict) -> rp.TranscriptVerdict | None:
    if not audit.get("ran"):
        return rp.TranscriptVerdict(checked=False, ok=False,
                                    summary=str(audit.get("note", "not verified")))
    return rp.TranscriptVerdict(
        checked=True, ok=bool(audit.get("ok")), summary=str(audit.get("summary", "")),
        records=int(audit.get("records", 0)), final_hash=str(audit.get("final_hash", "")),
        discrepancies=tuple(str(d) for d in audit.get("discrepancies", ())))


def write_reports(result: ReplayResult) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into the replay folder; return their paths."""
    paths = rp.write_report(build_report(result), result.root)
    return paths.json, paths.html


def summary_lines(result: ReplayResult) -> list[str]:
    """What ``fedtune replay`` prints: the verdict, then one line per expectation."""
    verdict = "PASS" if result.passed else "FAIL"
    lines = [(f"{result.scenario.name}: {verdict} — {result.outcome.completed} training rounds, "
             f"{result.outcome.aborted} aborted, {result.record.wall_s:.0f} s")]
    if result.error:
        lines.append(f"  error: {result.error}")
    for e in result.expectations:
        found = "not measured" if e.found is None else f"{e.found:g}"
        mark = "met   " if e.met else "FAILED"
        by = "" if e.margin is None else (f" (by {e.margin:g})" if e.met else
                                          f" (failed by {-e.margin:g})")
        lines.append(f"  {mark} {e.name} {e.op} {e.target:g}: found {found}{by}"
                     + (f" — {e.detail}" if e.detail else ""))
    for a in result.attacks:
        if a.error:
            lines.append(f"  attack {a.name} could not run: {a.error}")
    return lines


__all__ = ["build_report", "summary_lines", "write_reports"]
