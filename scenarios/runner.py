"""``fedtune replay``: run a scenario with real processes, inject, attack, check, report.

The replay is what an auditor would do by hand, written down (DESIGN.md §5):

1. lay out the federation the scenario declares (:mod:`fedtune.local_federation`: data
   splits, identity keys, policies, a federation file, the peers file);
2. start the coordinator — ``fedtune server``, or, when the scenario declares an adversary,
   a reconstruction attack or an ``updates_visible`` expectation, the real coordinator with a
   recorder or an attack behaviour (:mod:`fedtune.scenarios.coordinator_variant`) — and one
   ``fedtune site`` process per site, over loopback gRPC;
3. inject the faults: ``--drop-at PHASE:ROUND`` for a site drop; SIGKILL and restart on the
   same run directory for a coordinator crash, once the declared number of training rounds
   has completed;
4. when the run has ended, read what the parties wrote — the coordinator's log, checkpoint and
   ``privacy.json``, each site's log and ledger — run the declared attacks on the final model
   and on what the coordinator held, verify the transcript with ``fedtune audit verify``, and
   check the expectations;
5. write ``report.json`` and ``report.html`` into the replay directory.

The exit code is 0 when every expectation holds and the run ended, 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedtune import local_federation as lf
from fedtune.scenarios.spec import Scenario
from fedtune.subsample import subsample_split

log = logging.getLogger("fedtune.scenarios")

SITE_GIVE_UP_S = 120.0  # a site waits this long for a restarted coordinator


@dataclass
class Processes:
    coordinator: subprocess.Popen
    sites: dict[str, subprocess.Popen] = field(default_factory=dict)
    coordinator_starts: int = 1

    def all(self) -> list[subprocess.Popen]:
        return [self.coordinator, *self.sites.values()]


@dataclass
class RunRecord:
    """What the processes left behind, read back after the run."""

    ended: bool
    timed_out: bool
    restarts: int
    coordinator_exit: int | None
    site_exits: dict[str, int | None]
    wall_s: float


def uses_recorder(scenario: Scenario) -> bool:
    return (scenario.adversary is not None
            or any(a.kind == "reconstruction" for a in scenario.attacks)
            or any(e.metric == "updates_visible" for e in scenario.expectations))


def prepare(scenario: Scenario, root: Path) -> lf.LocalFederation:
    """Write the federation of ``scenario`` under ``root`` (data, keys, policies, files)."""
    spec = scenario.federation
    fed = lf.prepare(root, dataset=spec.dataset, n_sites=spec.sites, rounds=scenario.job.rounds,
                     partition=spec.partition, alpha=spec.alpha, seed=spec.seed,
                     job=scenario.job_table, policy={"policy": scenario.policy_table})
    if spec.examples_per_site:
        subsample_split(root / "data", spec.examples_per_site, seed=spec.seed)
    return fed


def _start_coordinator(scenario: Scenario, fed: lf.LocalFederation, attempt: int
                       ) -> subprocess.Popen:
    log_name = f"coordinator-{attempt}.out"
    if not uses_recorder(scenario):
        return lf.start_server(fed, log_name=log_name)
    a = scenario.adversary
    args = [sys.executable, "-m", "fedtune.scenarios.coordinator_variant",
            "--federation", str(fed.federation),
            "--record", str(fed.root / f"coordinator-holds-{attempt}.json"),
            "--adversary", a.kind if a else "honest"]
    if a is not None:
        args += ["--victim", a.victim, "--rounds", ",".join(map(str, a.rounds)),
                 "--fooled", ",".join(a.fooled)]
    with open(fed.root / log_name, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=lf._env())


def _start_site(scenario: Scenario, fed: lf.LocalFederation, site: lf.SiteFiles
                ) -> subprocess.Popen:
    extra = ["--give-up-after", str(SITE_GIVE_UP_S),
             "--log-file", str(fed.root / "logs" / f"{site.site_id}.log")]
    for drop in scenario.drops:
        if drop.site == site.site_id:
            extra += ["--drop-at", f"{drop.phase}:{drop.round}"]
    return lf.start_site(fed, site, extra=extra)


def read_events(path: Path) -> list[dict[str, Any]]:
    """JSON-lines log events; a line being written (or not JSON) is skipped."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _training_rounds_done(events: list[dict[str, Any]]) -> int:
    done = [e for e in events if e.get("event") == "round_completed"]
    return max((int(e.get("completed_rounds", 0)) for e in done), default=0)


def run_processes(scenario: Scenario, fed: lf.LocalFederation, *, progress: bool = True
                  ) -> RunRecord:
    """Start everything, inject the faults, wait for the end (or the timeout), clean up."""
    (fed.root / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    procs = Processes(_start_coordinator(scenario, fed, 1))
    coordinator_log = fed.run_dir / "coordinator.log"
    restarts_due = sorted(r.after_round for r in scenario.restarts)
    restarts = 0
    timed_out = False
    try:
        lf.wait_for_port(fed.port, timeout=60)
        for site in fed.sites:
            procs.sites[site.site_id] = _start_site(scenario, fed, site)
        rounds = scenario.job.rounds
        with tqdm(total=rounds, desc=scenario.name, unit="round", file=sys.stdout,
                  disable=not progress,
                  bar_format="{desc}: {n_fmt}/{total_fmt} rounds |{bar}| {elapsed}") as bar:
            while True:
                done = _training_rounds_done(read_events(coordinator_log))
                if min(done, rounds) > bar.n:
                    bar.update(min(done, rounds) - bar.n)
                if restarts_due and done >= restarts_due[0]:
                    restarts_due.pop(0)
                    restarts += 1
                    _crash_and_restart(scenario, fed, procs, restarts + 1)
                    continue
                if procs.coordinator.poll() is not None:
                    break
                if time.monotonic() - started > scenario.timeout_s:
                    timed_out = True
                    break
                time.sleep(0.3)
        # sites learn the run ended during the coordinator's linger; give them a moment
        deadline = time.monotonic() + 20
        for p in procs.sites.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        lf.stop_processes(procs.all())
    return RunRecord(
        ended=procs.coordinator.returncode == 0 and not timed_out, timed_out=timed_out,
        restarts=restarts, coordinator_exit=procs.coordinator.returncode,
        site_exits={s: p.returncode for s, p in procs.sites.items()},
        wall_s=time.monotonic() - started)


def _crash_and_restart(scenario: Scenario, fed: lf.LocalFederation, procs: Processes,
                       attempt: int) -> None:
    log.info("scenario %s: killing the coordinator (SIGKILL)", scenario.name)
    procs.coordinator.send_signal(signal.SIGKILL)
    procs.coordinator.wait()
    procs.coordinator = _start_coordinator(scenario, fed, attempt)
    procs.coordinator_starts += 1
    lf.wait_for_port(fed.port, timeout=60)


__all__ = ["RunRecord", "prepare", "read_events", "run_processes", "uses_recorder"]
