"""``fedtune status``: a running federation's state, fetched with ``GetStatus``."""

from __future__ import annotations

import time

from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.transport import open_channel


def phase_name(phase: int) -> str:
    return pb.Phase.Name(phase).removeprefix("PHASE_").lower()


def fetch_status(address: str, timeout: float = 10.0, **tls) -> pb.FederationStatus:
    with open_channel(address, **tls) as channel:
        return pb_grpc.CoordinatorStub(channel).GetStatus(pb.StatusRequest(), timeout=timeout)


def render_status(s: pb.FederationStatus) -> str:
    if s.finished:
        state = "finished"
    elif s.round:
        state = f"round {s.round}, phase {phase_name(s.phase)}"
    else:
        state = "between rounds (waiting for sites)"
    lines = [
        f"run {s.run_id} · job {s.job_id} · {s.rounds_completed}/{s.rounds_total} rounds · {state}",
        f"site-level ε spent: {s.epsilon_spent:.3g}" if s.epsilon_spent else
        "site-level ε spent: none (no site-level DP in this job)",
        "",
        f"{'site':<20} {'connected':<10} {'last seen':<12} last refusal",
    ]
    now = time.time()
    for site in s.sites:
        seen = f"{now - site.last_seen:.0f} s ago" if site.last_seen else "never"
        lines.append(f"{site.site_id:<20} {'yes' if site.connected else 'no':<10} {seen:<12} "
                     f"{site.last_refusal or '-'}")
    if s.history:
        lines += ["", f"{'round':<7} {'sites':<6} {'accuracy':<9} {'eval loss':<10} {'train loss':<10} note"]
        for h in s.history:
            note = f"aborted: {h.abort_reason}" if h.aborted else ("evaluation" if h.evaluate_only else "")
            m = h.metrics
            lines.append(f"{h.round:<7} {h.contributors:<6} {m.eval_accuracy:<9.3f} "
                         f"{m.eval_loss:<10.4f} {m.train_loss:<10.4f} {note}")
    return "\n".join(lines)
