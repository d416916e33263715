"""Secure-aggregation overhead: fedtune plain vs fedtune secure vs Flower's SecAgg+, side by side.

What it runs, for every (sites n, parameters m), in one invocation
    1. **fedtune plain**: the real coordinator (``fedtune.server.app.start``, this process,
       insecure loopback, port 0) and ``n`` real site agents over real loopback gRPC, training
       switched off (``ZeroWorkSite`` of ``bench/round_overhead.py``: ``compute_input``
       returns a fixed float32 vector); ``secure_aggregation.enabled = false``. Each site is
       its own process, as deployed (``--sites-as processes``, the default; they share this
       machine's cores with the coordinator), or all are threads of the coordinator's process
       (``--sites-as threads``: one GIL for every site and the coordinator).
    2. **fedtune secure**: the same, with ``secure_aggregation.enabled = true``: the federation
       written by ``fedtune.local_federation.prepare`` (coordinator identity key, the sites'
       ``peers.toml``), defaults t = ⌊n/2⌋+1, k = the default neighbour degree, b = 32.
    3. **Flower SecAgg+** (``flwr``, the ``bench`` extra), in a child process:
       ``SecAggPlusWorkflow`` driven round by round, in-process, through :class:`DirectGrid`,
       a ``Grid`` that hands each message to a ``ClientApp`` wrapped in ``secaggplus_mod``
       (no network, no SuperLink, no simulation engine). Each client returns a fixed float32
       update of ``m`` parameters. The *plain Flower* baseline is ``default_fit_workflow``
       (FedAvg) through the same grid, with the same clients and no mod.

What it reports (medians over the measured rounds, after ``--warmup`` warm-up rounds)
    * seconds per round for the three; fedtune's overhead ``secure − plain`` and the ratio
      ``secure ÷ plain``; Flower's overhead ``SecAgg+ − plain Flower`` (same harness); and
      ``Flower overhead ÷ fedtune overhead`` (“× less overhead than Flower”);
    * bytes one fedtune site uploads per parameter in secure mode (its ``InputChunk``
      stream), and with every other secure-phase request added;
    * masking vs the keystream bound: CPU time a site's thread spends in
      ``SiteRound.mask_words`` ÷ (cipher bytes it expanded ÷ the raw rate of the AES-256-CTR
      keystream generator masks use, ``fedtune.privacy.masks.keystream_bytes_per_second``,
      measured in the same run; the rate of cryptography's plain ``modes.CTR`` is reported
      beside it).

Run ``python bench/secagg.py --help``; ``bench/README.md`` explains the columns and the bench
virtual environment (``flwr`` must not go into the project's main environment).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

# The Flower child process (multiprocessing "spawn" re-imports this file as __mp_main__)
# loads no fedtune code: it measures Flower alone, and keeps working while the fedtune
# checkout it was started from changes underneath it.
if __name__ != "__mp_main__":
    from fedtune.client.agent import SiteAgentConfig
    from fedtune.federation import load_federation
    from fedtune.identity import load_identity
    from fedtune.local_federation import default_job, prepare
    from fedtune.peers import load_peers
    from fedtune.policy import PolicyConfig
    from fedtune.privacy import masks
    from fedtune.privacy.neighbours import default_degree
    from fedtune.privacy.secagg import SiteRound
    from fedtune.server import app
    from fedtune.server.secure_phases import SecureSum

    # a sibling benchmark, not a package: bench/ is on sys.path when run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from round_overhead import (
        HOST,
        NUM_CLASSES,
        EventLog,
        Recorder,
        ZeroWorkSite,
        memory_floor_s,
        mlp_for,
        parse_count,
    )

#: warm-up rounds before the measured ones, for every system: the first two or three rounds
#: of a fresh federation run slower than its later ones (measured at 20 × 1 M: 0.90 s for
#: rounds 2-3, 0.68-0.82 s after), so one warm-up round left that drift in the medians
DEFAULT_WARMUP = 3
#: /proc/PID/stat counts CPU time in clock ticks (10 ms on Linux)
CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
TARGET_LESS_OVERHEAD = 9.0  # × less overhead than Flower's SecAgg+ …
TARGET_LESS_OVERHEAD_AT = (20, 1_000_000)  # … at (sites, parameters)
TARGET_MASK_X_BOUND = 3.0  # per-site masking within 3× of the keystream bound
TARGET_UPLOAD_BYTES_PER_PARAM = 4.1  # at b = 32
BITS = 32

RESULTS = Path(__file__).resolve().parent / "results" / "secagg.json"
STARTUP_S = 600.0  # at most, for all site processes to import and build their agents
SKIPPED = "skipped (budget)"
#: Flower's SecAggPlusWorkflow defaults we keep (its num_shares and reconstruction_threshold
#: have no default; they are set per n to fedtune's k + 1 and t, see flower_parameters)
FLOWER_DEFAULTS = {"clipping_range": 8.0, "quantization_range": 2**22,
                   "modulus_range": 2**32, "max_weight": 1000.0}


# ---------------------------------------------------------------------------- helpers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU seconds the processes ``pids`` have used so far: every thread,
    exited ones included (``utime`` and ``stime`` of ``/proc/PID/stat``, in clock ticks of
    1/``SC_CLK_TCK`` s, 10 ms on Linux). ``None`` where there is no ``/proc``."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        # fields after "(comm)": state is field 3 of proc(5), utime 14, stime 15
        fields = stat[stat.rindex(b")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot, all cores, time stolen by the
    hypervisor included (``/proc/stat``: user, nice, system, irq, softirq, steal); None where
    there is no ``/proc``. Minus a system's own CPU seconds over a round, it is what every
    other process on the machine (or another guest on its host) took meanwhile."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class RoundCPU(logging.Handler):
    """Reads the CPU time of a system's processes (the coordinator and its sites) when the
    coordinator logs ``round_started`` and ``round_completed``: CPU seconds per round, summed
    over every process, a cost that does not depend on how many cores share the work."""

    def __init__(self, pids: Sequence[int]) -> None:
        super().__init__(logging.DEBUG)
        self.pids = list(pids)
        #: (round, event) -> (this system's CPU seconds, its first process's (the
        #: coordinator's), the machine's busy seconds)
        self.marks: dict[tuple[int, str], tuple[float, float, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event in ("round_started", "round_completed"):
            cpu, machine = cpu_seconds(self.pids), machine_busy_seconds()
            first = cpu_seconds(self.pids[:1])
            if cpu is not None and machine is not None and first is not None:
                fields = getattr(record, "fields", None) or {}
                self.marks[(int(fields.get("round") or 0), event)] = (cpu, first, machine)

    def round_cpu_s(self, round_id: int) -> tuple[float, float, float] | None:
        """(this system's CPU seconds, everything else's, the coordinator's share of the
        first) over round ``round_id``."""
        start = self.marks.get((round_id, "round_started"))
        end = self.marks.get((round_id, "round_completed"))
        if start is None or end is None:
            return None
        ours = end[0] - start[0]
        return ours, max(0.0, (end[2] - start[2]) - ours), end[1] - start[1]


def secagg_shape(n: int) -> tuple[int, int]:
    """fedtune's defaults for ``n`` sites: (threshold t, neighbour degree k).

    As :meth:`fedtune.privacy.secagg.RoundParameters.derive`: t = ⌊n/2⌋+1 (more than half,
    Bonawitz et al. 2017 §4), k = max(default_degree, t) capped at n − 1.
    """
    t = n // 2 + 1
    return t, min(max(default_degree(n, t), t), n - 1)


def flower_parameters(n: int) -> dict[str, int]:
    """Flower's ``num_shares`` and ``reconstruction_threshold`` matched to fedtune's graph.

    Flower's neighbour set of a node includes the node itself (it keeps one share), so a
    node with fedtune's k neighbours is ``num_shares = k + 1``; the threshold is fedtune's t.
    Both are odd/even the way Flower wants (k is even, so num_shares is odd).
    """
    t, k = secagg_shape(n)
    return {"num_shares": k + 1, "reconstruction_threshold": t}


def update_vector(size: int, seed: int) -> np.ndarray:
    """A site's fixed float32 update, as ``ZeroWorkSite`` draws it (|Δ| ≪ clipping ranges)."""
    return (np.random.default_rng(seed).standard_normal(size) * 1e-3).astype(np.float32)


# ---------------------------------------------------------------------------- instrumentation


@dataclass(frozen=True)
class MaskCall:
    """One ``SiteRound.mask_words`` call: a site masking its quantised input in one round."""

    site: str
    thread: str
    start: float  # time.time(), the clock of the coordinator's log records
    end: float
    cpu_s: float  # time.thread_time() of the calling thread
    cipher_bytes: int  # keystream expanded: (1 self mask + one per neighbour) × m' × 4 B
    masks: int
    length: int


class SecureProbe:
    """Wraps ``SiteRound.mask_words`` and ``SecureSum.unmask`` while a configuration runs."""

    def __init__(self) -> None:
        self.calls: list[MaskCall] = []
        self.unmask_spans: list[tuple[float, float]] = []
        #: one (SiteRound, masked input) kept to replay the masking on an idle machine
        self.sample: tuple[SiteRound, np.ndarray] | None = None
        self._original_mask = SiteRound.__dict__["mask_words"]
        self._original_unmask = SecureSum.__dict__["unmask"]

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original_mask, original_unmask = self._original_mask, self._original_unmask
        probe = self

        @functools.wraps(original_mask)
        def mask(site_round: SiteRound, quantised: np.ndarray) -> np.ndarray:
            start, cpu0 = time.time(), time.thread_time()
            out = original_mask(site_round, quantised)
            cpu, end = time.thread_time() - cpu0, time.time()
            assert site_round.params is not None
            width = 4 if site_round.params.bits <= 32 else 8  # masks.expand_mask's layout
            n_masks = 1 + len(site_round.mask_peers)
            probe.calls.append(MaskCall(site_round.site_id, threading.current_thread().name,
                                        start, end, cpu, n_masks * width * quantised.shape[0],
                                        n_masks, int(quantised.shape[0])))
            # keep the largest input (a training round's, not the evaluation round's metrics);
            # a copy, as masking works in place (a larger shape first comes in the warm-up)
            if probe.sample is None or quantised.shape[0] > probe.sample[1].shape[0]:
                probe.sample = (site_round, out.copy())
            return out

        @functools.wraps(original_unmask)
        def unmask(secure_sum: SecureSum) -> Any:
            start = time.time()
            try:
                return original_unmask(secure_sum)
            finally:
                probe.unmask_spans.append((start, time.time()))

        SiteRound.mask_words = mask  # type: ignore[method-assign]
        SecureSum.unmask = unmask  # type: ignore[method-assign]
        try:
            yield
        finally:
            SiteRound.mask_words = original_mask  # type: ignore[method-assign]
            SecureSum.unmask = original_unmask  # type: ignore[method-assign]

    def replay_mask_s(self, repeats: int = 5) -> float | None:
        """CPU time of one site's ``mask_words`` replayed alone (same keys, same input), median.

        Thread CPU time, as in the run: on a shared machine wall time also counts whatever
        else runs. The replay only recomputes the masked vector; nothing is sent.
        """
        if self.sample is None:
            return None
        site_round, words = self.sample
        times = []
        for _ in range(repeats):
            scratch = words.copy()  # masking works in place (any residues do for timing)
            start = time.thread_time()
            self._original_mask(site_round, scratch)
            times.append(time.thread_time() - start)
        return median(times)


@contextlib.contextmanager
def captured_events(name: str, level: int) -> Iterator[EventLog]:
    """Collect the structured events of logger ``name`` and keep them off stderr (an imported
    library may have put a handler on the root logger)."""
    logger = logging.getLogger(name)
    handler = EventLog()
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(level)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


# ---------------------------------------------------------------------------- fedtune


def fedtune_job(n: int, input_dim: int, hidden: int, training_rounds: int, secure: bool,
                size: int) -> dict[str, Any]:
    job = default_job({"id": "tabular-mlp", "input_dim": input_dim, "hidden": hidden,
                       "num_classes": NUM_CLASSES}, training_rounds, min_sites=n, secure=secure)
    job["job_id"] = "secagg-bench"
    job["training"]["weighting"] = "uniform"
    job["secure_aggregation"]["bits"] = BITS
    # Every site answers at once, so no phase waits on a deadline; the deadlines are short
    # ceilings that turn a stuck site into a dropout (and an aborted round) within seconds.
    # The input phase scales with the masking work, n·k·m keystream words on two cores.
    _, k = secagg_shape(n)
    job["deadlines"] = {"gather": 0.5, "offer": 10.0, "keys": 10.0, "unmask": 10.0,
                        "input": 20.0 + 4e-8 * n * (k + 1) * size}
    return job


@dataclass(frozen=True)
class SiteSpec:
    """What a site process needs to build its ``ZeroWorkSite`` (all picklable)."""

    coordinator: str
    site_id: str
    key: Path
    peers: Path | None
    size: int
    input_dim: int
    seed: int
    report: Path  # the JSON the process writes when it stops
    replay: bool  # this one also replays its masking alone, once the others have exited


def zero_work_site(spec: SiteSpec, peers: Any) -> ZeroWorkSite:
    """The site agent of ``spec`` (``peers`` loaded from ``spec.peers``, or None)."""
    return ZeroWorkSite(SiteAgentConfig(
        coordinator=spec.coordinator, site_id=spec.site_id, identity=load_identity(spec.key),
        data_path=spec.report.with_suffix(".unused.csv"),
        policy=PolicyConfig(("tabular-mlp",)), give_up_after_s=30.0, peers=peers),
        spec.size, spec.input_dim, seed=spec.seed, recorder=Recorder())


def site_process(spec: SiteSpec, ready: Any, stop: Any, replay_go: Any) -> None:
    """A site agent in its own process (multiprocessing "spawn"), as deployed: it runs
    until ``stop`` is set, then writes what the parent cannot see from outside (its traffic,
    its ``mask_words`` calls, its warnings) to ``spec.report``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import secagg  # this file under its own name, so that the fedtune imports above run

    secagg.run_site(spec, ready, stop, replay_go)


def run_site(spec: SiteSpec, ready: Any, stop: Any, replay_go: Any) -> None:
    probe = SecureProbe()
    with captured_events("fedtune.site", logging.WARNING) as site_events, probe.installed():
        agent = zero_work_site(spec, load_peers(spec.peers) if spec.peers is not None else None)
        thread = threading.Thread(target=agent.run, name=spec.site_id, daemon=True)
        ready.release()
        thread.start()
        stop.wait()
        agent.stop()
        thread.join(timeout=10)
    report: dict[str, Any] = {
        "input_bytes": agent.traffic.input_bytes, "other_sent": agent.traffic.other_sent,
        "mask_calls": [asdict(c) for c in probe.calls],
        "site_warnings": [{"event": e, **{k: str(v) for k, v in f.items()}}
                          for _, e, f, _ in site_events.events]}
    if spec.replay and replay_go.wait(timeout=60):
        report["mask_replay_s"] = probe.replay_mask_s()
    spec.report.write_text(json.dumps(report))


def run_fedtune(n: int, target: int, measured_rounds: int, secure: bool, budget_s: float,
                sites_as: str = "processes", warmup: int = DEFAULT_WARMUP) -> dict[str, Any]:
    """One fedtune run (plain or secure) of ``warmup + measured_rounds`` training rounds, its
    sites as processes (as deployed) or as threads of this process (``sites_as``)."""
    input_dim, hidden, size = mlp_for(target)
    training_rounds = warmup + measured_rounds
    probe = SecureProbe()
    result: dict[str, Any] = {"mode": "secure" if secure else "plain", "warmup_rounds": warmup,
                              "sites_as": sites_as}
    with tempfile.TemporaryDirectory(prefix="fedtune-secagg-bench-") as tmp, \
            captured_events("fedtune.server", logging.INFO) as events, \
            captured_events("fedtune.site", logging.WARNING) as site_events, \
            probe.installed():
        root = Path(tmp)
        fed_files = prepare(root, dataset="digits", n_sites=n, rounds=training_rounds,
                            job=fedtune_job(n, input_dim, hidden, training_rounds, secure, size))
        config = load_federation(fed_files.federation)
        assert fed_files.peers is not None
        peers = load_peers(fed_files.peers)
        running = app.start(config, host=HOST, port=0, insecure=True, run_dir=fed_files.run_dir)
        initial = running.coordinator.params.copy()
        if int(initial.size) != size:
            raise AssertionError(f"parameter count {initial.size} != {size}")
        address = f"{HOST}:{running.port}"
        specs = [SiteSpec(address, s.site_id, s.key, fed_files.peers if secure else None, size,
                          input_dim, i, root / f"{s.site_id}.report.json", replay=i == 0)
                 for i, s in enumerate(fed_files.sites)]
        sites = (ProcessSites(specs) if sites_as == "processes"
                 else ThreadSites(specs, peers, probe))
        server_logger = logging.getLogger("fedtune.server")
        round_cpu = RoundCPU([os.getpid()])  # the site processes join once they have started
        try:
            sites.start()
            round_cpu.pids += sites.pids()
            server_logger.addHandler(round_cpu)
            started = time.perf_counter()  # the budget counts from here (processes: ready)
            finished = running.wait(timeout=budget_s)
            result["run_wall_s"] = time.perf_counter() - started
            result["finished"] = finished
            if finished and running.coordinator.failure:
                raise RuntimeError(f"coordinator failed: {running.coordinator.failure}")
            final = running.coordinator.params.copy()
            completed = running.coordinator.completed_rounds
        finally:
            server_logger.removeHandler(round_cpu)
            reports = sites.stop(running)
        event_list = list(events.events)
        # connection_lost / request_refused as the coordinator stops are expected at the end
        result["site_warnings"] = [{"event": e, **{k: str(v) for k, v in f.items()}}
                                   for _, e, f, _ in site_events.events]
        result["site_warnings"] += [w for r in reports for w in r["site_warnings"]]
    probe.calls += [MaskCall(**c) for r in reports for c in r["mask_calls"]]
    stats = _fedtune_round_stats(event_list, warmup, probe, secure, round_cpu)
    result.update(stats)
    if not result["finished"]:
        result["budget_exceeded"] = True
        if not stats["rounds"]:
            result["skipped"] = SKIPPED
            return result
    # FedAvg with server learning rate 1 and uniform weights: every completed training round
    # moves the model by the mean site update (within quantisation in secure mode).
    # (ZeroWorkSite's fixed vector is update_vector(size, seed): recomputed here)
    expected = initial + completed * np.mean(
        [update_vector(size, spec.seed).astype(np.float64) for spec in specs], axis=0)
    result["aggregate_max_abs_error"] = float(np.max(np.abs(final - expected)))
    result["training_rounds_completed"] = completed
    inputs = [{int(r): b for r, b in report["input_bytes"].items()} for report in reports]
    per_site_input = [sent[r] for sent in inputs for r in stats["round_ids"] if r in sent]
    rounds_seen = max(len(sent) for sent in inputs) or 1
    other = median([report["other_sent"] / rounds_seen for report in reports])
    input_bytes = median([float(b) for b in per_site_input])
    result["bytes"] = {
        "input_chunk_bytes_per_site_round": input_bytes,
        "other_request_bytes_per_site_round": other,
        "upload_bytes_per_param": input_bytes / size,
        "upload_bytes_per_param_with_requests": (input_bytes + other) / size,
    }
    if secure:
        result["mask_replay_s"] = next((r["mask_replay_s"] for r in reports
                                        if "mask_replay_s" in r), None)
    return result


class ThreadSites:
    """The sites as threads of this process (one GIL for all of them and the coordinator);
    ``probe``, installed in this process, sees their masking."""

    def __init__(self, specs: list[SiteSpec], peers: Any, probe: SecureProbe) -> None:
        self.probe = probe
        self.agents = [zero_work_site(s, peers if s.peers is not None else None)
                       for s in specs]
        self.threads = [threading.Thread(target=a.run, name=a.config.site_id, daemon=True)
                        for a in self.agents]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def pids(self) -> list[int]:
        return []  # they are threads of this process

    def stop(self, running: Any) -> list[dict[str, Any]]:
        for a in self.agents:
            a.stop()
        running.stop(grace=0.5)
        for t in self.threads:
            t.join(timeout=10)
        reports: list[dict[str, Any]] = [
            {"input_bytes": a.traffic.input_bytes, "other_sent": a.traffic.other_sent,
             "mask_calls": [], "site_warnings": []} for a in self.agents]
        reports[0]["mask_replay_s"] = self.probe.replay_mask_s()
        return reports


class ProcessSites:
    """The sites as processes ("spawn"), one each, as deployed: each has its own
    interpreter, and they share this machine's cores with the coordinator."""

    def __init__(self, specs: list[SiteSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.specs = specs
        self.stop_event, self.replay_go = ctx.Event(), ctx.Event()
        self.ready = ctx.Semaphore(0)
        self.processes = [ctx.Process(target=site_process, args=(s, self.ready, self.stop_event,
                                                                 self.replay_go),
                                      name=s.site_id, daemon=True) for s in specs]

    def start(self) -> None:
        """Start every site and wait until all have imported and built their agent (seconds
        of CPU each, mostly imports): the run's budget counts from here."""
        for p in self.processes:
            p.start()
        for p in self.processes:
            if not self.ready.acquire(timeout=STARTUP_S):
                raise RuntimeError(f"a site process was not ready within {STARTUP_S:g} s")

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def stop(self, running: Any) -> list[dict[str, Any]]:
        self.stop_event.set()
        running.stop(grace=0.5)
        started = [(s, p) for s, p in zip(self.specs, self.processes, strict=True)
                   if p.pid is not None]
        for spec, p in started:
            if not spec.replay:
                p.join(timeout=30)
        self.replay_go.set()  # the replay runs with no other site left
        for _, p in started:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        missing = [s.site_id for s in self.specs if not s.report.exists()]
        if missing:
            raise RuntimeError(f"site process(es) {', '.join(missing)} wrote no report")
        return [json.loads(s.report.read_text()) for s in self.specs]


def _fedtune_round_stats(event_list: list[tuple[float, str, dict[str, Any], int]], warmup: int,
                         probe: SecureProbe, secure: bool, round_cpu: RoundCPU
                         ) -> dict[str, Any]:
    starts: dict[int, tuple[float, dict[str, Any]]] = {}
    phases: dict[int, dict[str, float]] = {}
    completed: dict[int, float] = {}
    warnings = []
    for created, event, fields, level in event_list:
        r = int(fields.get("round") or 0)
        if event == "round_started":
            starts[r] = (created, fields)
        elif event == "phase_started":
            phases.setdefault(r, {})[str(fields.get("phase"))] = created
        elif event == "round_completed":
            completed[r] = created
        if level >= logging.WARNING:
            warnings.append({"event": event, **{k: str(v) for k, v in fields.items()}})
    training = sorted(r for r, (_, f) in starts.items() if not f.get("evaluate_only"))
    measured = [r for r in training[warmup:] if r in completed]
    rounds = []
    for r in measured:
        t0, t1 = starts[r][0], completed[r]
        marks = phases.get(r, {})
        cpu = round_cpu.round_cpu_s(r)
        entry: dict[str, Any] = {"round": r, "round_s": t1 - t0,
                                 "cpu_s": None if cpu is None else cpu[0],
                                 "others_cpu_s": None if cpu is None else cpu[1],
                                 "coordinator_cpu_s": None if cpu is None else cpu[2]}
        if secure:
            share = marks.get("share_keys", t0)
            masked = marks.get("masked_input", share)
            check = marks.get("consistency_check", masked)
            entry["phases_s"] = {"offer_advertise": share - t0, "share_keys": masked - share,
                                 "masked_input": check - masked, "consistency_unmask_aggregate":
                                 t1 - check}
            entry["coordinator_unmask_s"] = sum(e - s for s, e in probe.unmask_spans
                                                if t0 <= s and e <= t1)
            calls = [c for c in probe.calls if t0 <= c.start and c.end <= t1]
            entry["mask_calls"] = [asdict(c) for c in calls]
        else:
            entry["phases_s"] = {"offer": marks.get("masked_input", t0) - t0,
                                 "input_aggregate": t1 - marks.get("masked_input", t0)}
        rounds.append(entry)
    out: dict[str, Any] = {"round_ids": measured, "rounds": rounds,
                           "round_s": median([x["round_s"] for x in rounds]),
                           "phases_s": {k: median([x["phases_s"][k] for x in rounds])
                                        for k in (rounds[0]["phases_s"] if rounds else {})},
                           "warnings": warnings}
    for key in ("cpu_s", "others_cpu_s", "coordinator_cpu_s"):
        values = [x[key] for x in rounds if x[key] is not None]
        if values:
            out[key] = median(values)
    if secure and rounds:
        calls = [c for x in rounds for c in x["mask_calls"]]
        out["coordinator_unmask_s"] = median([x["coordinator_unmask_s"] for x in rounds])
        out["mask"] = {
            "calls": len(calls),
            "masks_per_site": median([float(c["masks"]) for c in calls]),
            "cipher_bytes_per_site": median([float(c["cipher_bytes"]) for c in calls]),
            "cpu_s_per_site": median([c["cpu_s"] for c in calls]),
            "wall_s_per_site": median([c["end"] - c["start"] for c in calls]),
            "cpu_s_per_site_max": max(c["cpu_s"] for c in calls),
        }
    return out


# ---------------------------------------------------------------------------- Flower


def flower_worker(n: int, size: int, measured_rounds: int, shares: dict[str, int],
                  out: Any, nodes_as: str = "threads", warmup: int = DEFAULT_WARMUP) -> None:
    """Child process: plain Flower rounds, then SecAgg+ rounds; one queue item per round.

    Runs in its own process so that the parent can stop it at the configuration's time
    budget (a thread running numpy cannot be interrupted) and so that Flower's imports and
    memory stay out of the fedtune measurements.
    """
    try:
        _flower_rounds(n, size, measured_rounds, shares, out, nodes_as, warmup)
    except BaseException:  # noqa: BLE001  (report it to the parent, which prints it)
        out.put(("error", traceback.format_exc()))
    out.put(("done", None))


def _flower_identity() -> None:
    """What flwr.server.compat.app sets before a ServerApp runs (Message() reads it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def _flower_client_app(size: int, updates: dict[int, np.ndarray], secure: bool) -> Any:
    """The ``ClientApp`` every node runs: a ``NumPyClient`` returning the received
    parameters plus its fixed update, wrapped in ``secaggplus_mod`` in secure mode."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    initial = np.zeros(size, dtype=np.float32)
    # num_examples = max_weight: equal weights, and Flower's weight factor (num_examples ÷
    # max_weight, quantised to 2^22 levels and multiplied into the update before quantising)
    # is 1, so the small fixed updates keep their precision under the default ranges.
    examples = int(FLOWER_DEFAULTS["max_weight"])

    class ConstantClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, node_id: int) -> None:
            self.node_id = node_id

        def get_parameters(self, config: Any) -> list[np.ndarray]:
            return [initial]

        def fit(self, parameters: list[np.ndarray], config: Any
                ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            # a new model = the received one + a fixed update, as after local training
            return [parameters[0] + updates[self.node_id]], examples, {}

    def client_fn(context: Any) -> Any:
        return ConstantClient(context.node_id).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


def flower_node(node_id: int, index: int, size: int, secure: bool, conn: Any) -> None:
    """One Flower node in its own process (``--sites-as processes``): its ClientApp and its
    Context, answering each wire-encoded message from ``conn`` with the wire-encoded reply,
    until it receives an empty message."""
    import uuid

    from flwr.app import Context, RecordDict
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611

    logging.getLogger("flwr").setLevel(logging.ERROR)
    _flower_identity()
    client_app = _flower_client_app(size, {node_id: update_vector(size, index)}, secure)
    context = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(),
                      run_config={})
    conn.send_bytes(b"ready")
    while wire := conn.recv_bytes():
        reply = client_app(message_from_proto(ProtoMessage.FromString(wire)), context)
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as a SuperLink does
        conn.send_bytes(message_to_proto(reply).SerializeToString())


def _flower_rounds(n: int, size: int, measured_rounds: int, shares: dict[str, int],
                   out: Any, nodes_as: str, warmup: int) -> None:
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.compat.common import recorddict_compat as compat
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.serverapp.grid import Grid

    logging.getLogger("flwr").setLevel(logging.ERROR)
    run_id, server_node = 1, 1  # SUPERLINK_NODE_ID
    _flower_identity()

    class DirectGrid(Grid):
        """A Grid that hands each message straight to its node's ClientApp.

        Each message is copied through Flower's own protobuf encoding (``message_to_proto``
        → bytes → ``message_from_proto``) in both directions, as a wire would copy it: the
        workflow reuses one RecordDict for all nodes and ``secaggplus_mod`` edits what it
        receives, so handing over the same object would be wrong. The messages of one
        ``send_and_receive`` run in a thread pool, one thread per node, as fedtune's sites.
        With ``--sites-as processes`` each node is a process of its own (``flower_node``),
        and the bytes travel through a pipe to it and back.
        """

        def __init__(self, nodes: dict[int, Any], in_processes: bool) -> None:
            self.nodes = nodes  # node id -> (ClientApp, Context), or a pipe to its process
            self.in_processes = in_processes
            self.pool = ThreadPoolExecutor(max_workers=len(nodes))
            self.sent = self.received = 0
            self.received_train: dict[int, int] = {}
            self._lock = threading.Lock()

        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return self._run

        def create_message(self, content: Any, message_type: str, dst_node_id: int,
                           group_id: str, ttl: float | None = None) -> Any:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> list[int]:
            return list(self.nodes)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError("DirectGrid delivers in send_and_receive")

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError("DirectGrid delivers in send_and_receive")

        def _deliver(self, message: Any) -> Any:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as a SuperLink does
            wire = message_to_proto(message).SerializeToString()
            node = message.metadata.dst_node_id
            if self.in_processes:
                self.nodes[node].send_bytes(wire)
                back = self.nodes[node].recv_bytes()
            else:
                client_app, context = self.nodes[node]
                reply = client_app(message_from_proto(ProtoMessage.FromString(wire)), context)
                reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                back = message_to_proto(reply).SerializeToString()
            with self._lock:
                self.sent += len(wire)
                self.received += len(back)
                self.received_train[node] = max(self.received_train.get(node, 0), len(back))
            return message_from_proto(ProtoMessage.FromString(back))

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
            return list(self.pool.map(self._deliver, list(messages)))

    node_ids = [1000 + i for i in range(n)]  # not SUPERLINK_NODE_ID
    updates = {nid: update_vector(size, i) for i, nid in enumerate(node_ids)}
    expected_mean = np.mean([u.astype(np.float64) for u in updates.values()], axis=0)
    initial = np.zeros(size, dtype=np.float32)

    in_processes = nodes_as == "processes"
    for mode in ("plain", "secure"):
        if in_processes:  # fresh node processes per mode, as fresh contexts in-process
            ctx = multiprocessing.get_context("spawn")
            pipes = {nid: ctx.Pipe() for nid in node_ids}
            children = [ctx.Process(target=flower_node, name=f"flower-node-{nid}", daemon=True,
                                    args=(nid, i, size, mode == "secure", pipes[nid][1]))
                        for i, nid in enumerate(node_ids)]
            for child in children:
                child.start()
            nodes: dict[int, Any] = {nid: pipes[nid][0] for nid in node_ids}
            for conn in nodes.values():
                conn.recv_bytes()  # "ready": imported and built
            out.put(("ready", mode))  # the parent's budget counts from here
        else:
            client_app = _flower_client_app(size, updates, mode == "secure")
            nodes = {nid: (client_app, Context(run_id=run_id, node_id=nid, node_config={},
                                                state=RecordDict(), run_config={}))
                     for nid in node_ids}
        grid = DirectGrid(nodes, in_processes)
        # this process (the workflow, the grid) and its node processes, if any
        pids = [os.getpid()] + ([c.pid for c in children] if in_processes else [])
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                          min_available_clients=n,
                          initial_parameters=ndarrays_to_parameters([initial]))
        manager = SimpleClientManager()
        for nid in node_ids:
            manager.register(GridClientProxy(nid, grid, run_id))
        context = LegacyContext(Context(run_id=run_id, node_id=server_node, node_config={},
                                        state=RecordDict(), run_config={}),
                                config=ServerConfig(num_rounds=warmup + measured_rounds),
                                strategy=strategy, client_manager=manager)
        # what DefaultWorkflow does before its round loop (default_init_params_workflow)
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            strategy.initialize_parameters(manager), keep_input=True)
        cfg = ConfigRecord()
        cfg[WorkflowKey.START_TIME] = time.time()
        context.state.config_records[MAIN_CONFIGS_RECORD] = cfg
        workflow = (SecAggPlusWorkflow(**shares, **FLOWER_DEFAULTS)
                    if mode == "secure" else default_fit_workflow)
        previous = initial.astype(np.float64)
        for current_round in range(1, 1 + warmup + measured_rounds):
            cfg[WorkflowKey.CURRENT_ROUND] = current_round  # DefaultWorkflow's round loop
            grid.sent = grid.received = 0
            grid.received_train = {}
            cpu_start, machine_start = cpu_seconds(pids), machine_busy_seconds()
            start = time.perf_counter()
            workflow(grid, context)  # the fit round, as DefaultWorkflow calls it
            seconds = time.perf_counter() - start
            cpu_end, machine_end = cpu_seconds(pids), machine_busy_seconds()
            cpu = (None if None in (cpu_start, cpu_end, machine_start, machine_end)
                   else (cpu_end - cpu_start, machine_end - machine_start))
            params = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
                context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))[0]
            error = float(np.max(np.abs((params - previous) - expected_mean)))
            previous = params.astype(np.float64)
            out.put(("round", {"mode": mode, "round": current_round, "round_s": seconds,
                               "cpu_s": None if cpu is None else cpu[0],
                               "others_cpu_s": None if cpu is None else max(0.0,
                                                                           cpu[1] - cpu[0]),
                               "aggregate_max_abs_error": error,
                               "upload_bytes_per_param": median(
                                   [float(b) for b in grid.received_train.values()]) / size,
                               "bytes_to_clients": grid.sent,
                               "bytes_from_clients": grid.received}))
        grid.pool.shutdown()
        if in_processes:
            for conn in nodes.values():
                conn.send_bytes(b"")
            for child in children:
                child.join(timeout=10)


def run_flower(n: int, size: int, measured_rounds: int, budget_s: float,
               nodes_as: str = "threads", warmup: int = DEFAULT_WARMUP) -> dict[str, Any]:
    """Plain Flower and SecAgg+ rounds in a child process, stopped at ``budget_s``; its
    nodes are threads of that process or processes of their own (``nodes_as``), and with
    processes the budget counts from when they are all ready."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    shares = flower_parameters(n)
    # not a daemon: it may start node processes. It is stopped below (terminate, then kill)
    # at the budget; its nodes then see their pipe close and exit.
    child = ctx.Process(target=flower_worker,
                        args=(n, size, measured_rounds, shares, out, nodes_as, warmup),
                        name="flower-bench", daemon=False)
    start = time.perf_counter()
    child.start()
    rounds: list[dict[str, Any]] = []
    error = None
    done = False
    while not done:
        left = budget_s - (time.perf_counter() - start)
        if left <= 0:
            break
        try:
            kind, payload = out.get(timeout=min(left, 1.0))
        except queue.Empty:
            if not child.is_alive() and out.empty():
                error = error or f"the Flower process exited with code {child.exitcode}"
                break
            continue
        if kind == "ready":  # node processes started and built: not part of the budget
            start = time.perf_counter() - sum(r["round_s"] for r in rounds)
        elif kind == "round":
            rounds.append(payload)
        elif kind == "error":
            error = payload
        else:
            done = True
    wall = time.perf_counter() - start
    if child.is_alive():
        child.terminate()
    child.join(timeout=10)
    if child.is_alive():
        child.kill()
        child.join(timeout=5)
    result: dict[str, Any] = {"wall_s": wall, "finished": done and error is None,
                              "nodes_as": nodes_as,
                              "parameters": {**shares, **FLOWER_DEFAULTS}}
    if error:
        result["error"] = error
    for mode in ("plain", "secure"):
        mine = [r for r in rounds if r["mode"] == mode]
        measured = [r for r in mine if r["round"] > warmup]  # the first are the warm-up
        entry: dict[str, Any] = {"rounds": mine}
        if measured:
            entry["round_s"] = median([r["round_s"] for r in measured])
            for key in ("cpu_s", "others_cpu_s"):
                values = [r[key] for r in measured if r.get(key) is not None]
                if values:
                    entry[key] = median(values)
            entry["aggregate_max_abs_error"] = max(r["aggregate_max_abs_error"] for r in measured)
            entry["upload_bytes_per_param"] = median([r["upload_bytes_per_param"]
                                                      for r in measured])
            if len(measured) < measured_rounds:
                entry["partial"] = f"{len(measured)} of {measured_rounds} rounds in the budget"
        else:
            entry["skipped"] = SKIPPED if not error else "failed"
        result[mode] = entry
    return result


def flower_available() -> str | None:
    """``None`` when flwr imports, else why not."""
    try:
        import flwr  # noqa: F401
        from flwr.server.workflow import SecAggPlusWorkflow  # noqa: F401
    except ImportError as exc:
        return f"flwr is not installed ({exc}); pip install -e '.[bench]' in a bench venv"
    return None


# ---------------------------------------------------------------------------- one configuration


def run_configuration(n: int, target: int, rounds: int, budget_s: float, with_flower: bool,
                      skip: set[str], sites_as: str = "processes",
                      warmup: int = DEFAULT_WARMUP) -> dict[str, Any]:
    input_dim, hidden, size = mlp_for(target)
    t, k = secagg_shape(n)
    r: dict[str, Any] = {"sites": n, "params_target": target, "params": size,
                         "model": {"id": "tabular-mlp", "input_dim": input_dim, "hidden": hidden,
                                   "num_classes": NUM_CLASSES},
                         "secagg": {"threshold": t, "neighbours": k, "bits": BITS}}
    for system, secure in (("fedtune_plain", False), ("fedtune_secure", True)):
        if system in skip:
            r[system] = {"skipped": SKIPPED, "why": "a smaller site count already exceeded "
                                                  "the budget"}
            continue
        t0, load0 = time.perf_counter(), _load()
        try:
            r[system] = run_fedtune(n, target, rounds, secure, budget_s, sites_as, warmup)
        except Exception as exc:  # noqa: BLE001  (report it, run the other configurations)
            r[system] = {"error": f"{type(exc).__name__}: {exc}"}
        r[system]["config_wall_s"] = time.perf_counter() - t0
        r[system]["load_1min"] = [load0, _load()]
        _progress(n, system, r[system])
    # physical references, measured right after the fedtune runs on the same machine
    # the cipher's raw rate is its best case: the best of 5 short windows, so that a burst of
    # load from other processes does not lower the bound (it is measured on the wall clock)
    r["keystream_bytes_per_s"] = max(masks.keystream_bytes_per_second(0.1) for _ in range(5))
    r["ctr_mode_bytes_per_s"] = max(masks.keystream_bytes_per_second(0.1, generator="ctr")
                                    for _ in range(5))
    r["np_add_s"] = memory_floor_s(n, size)
    if not with_flower:
        r["flower"] = {"skipped": "not run"}
    elif "flower" in skip:
        r["flower"] = {"skipped": SKIPPED, "why": "a smaller site count already exceeded the "
                                                  "budget", "plain": {"skipped": SKIPPED},
                       "secure": {"skipped": SKIPPED}}
    else:
        load0 = _load()
        r["flower"] = run_flower(n, size, rounds, budget_s, sites_as, warmup)
        r["flower"]["load_1min"] = [load0, _load()]
        for mode in ("plain", "secure"):
            _progress(n, f"flower_{mode}", r["flower"][mode])
        if "error" in r["flower"]:
            print("    Flower failed:\n" + _indent(r["flower"]["error"]), flush=True)
    _derive(r)
    return r


def _load() -> float | None:
    """The 1-minute load average: other processes on the machine inflate wall times."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


BUSY_SHARE = 0.15  # other processes took more than this share of the machine: "busy"
#: shorter rounds are not judged: /proc counts in 10 ms ticks per CPU, too coarse for them
BUSY_MIN_ROUND_S = 0.5


def _coordinator_overhead(r: dict[str, Any]) -> str:
    """The coordinator process's CPU seconds per secure round minus per plain round."""
    plain = r["fedtune_plain"].get("coordinator_cpu_s")
    secure = r["fedtune_secure"].get("coordinator_cpu_s")
    return "—" if plain is None or secure is None else _fmt(secure - plain)


def _others_share(r: dict[str, Any]) -> tuple[float, str] | None:
    """The largest share of the machine's CPUs that other processes took during one system's
    measured rounds (median per round), and that system's name; None if not measured or if
    every round was shorter than ``BUSY_MIN_ROUND_S``.
    Read from ``/proc`` over the rounds themselves, not from the lagging load average."""
    cpus = os.cpu_count() or 1
    fl = r["flower"]
    systems = (("fedtune plain", r["fedtune_plain"]), ("fedtune secure", r["fedtune_secure"]),
               ("Flower plain", fl.get("plain", {})), ("Flower SecAgg+", fl.get("secure", {})))
    shares = [(entry["others_cpu_s"] / (seconds * cpus), name) for name, entry in systems
              if entry.get("others_cpu_s") is not None
              and (seconds := _seconds(entry)) and seconds >= BUSY_MIN_ROUND_S]
    return max(shares, default=None)


def _progress(n: int, system: str, entry: dict[str, Any]) -> None:
    if "round_s" in entry and not math.isnan(entry["round_s"]):
        note = f" ({entry['partial']})" if "partial" in entry else ""
        print(f"  {n:>2} sites {system:<15} {entry['round_s']:8.3f} s/round{note}", flush=True)
    else:
        print(f"  {n:>2} sites {system:<15} "
              f"{entry.get('skipped') or entry.get('error') or 'no measured round'}", flush=True)


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines()[-12:])


def _seconds(entry: dict[str, Any]) -> float | None:
    value = entry.get("round_s")
    return None if value is None or math.isnan(value) else float(value)


def _derive(r: dict[str, Any]) -> None:
    """The ratios of the report, from the medians (``None`` where an input is missing)."""
    plain, secure = _seconds(r["fedtune_plain"]), _seconds(r["fedtune_secure"])
    fl = r["flower"]
    fl_plain = _seconds(fl.get("plain", {})) if isinstance(fl, dict) else None
    fl_secure = _seconds(fl.get("secure", {})) if isinstance(fl, dict) else None
    d: dict[str, Any] = {}
    if plain is not None and secure is not None:
        d["fedtune_overhead_s"] = secure - plain
        d["fedtune_secure_over_plain"] = secure / plain
    if fl_secure is not None:
        # Flower's overhead: SecAgg+ round − plain round in the same harness (both measured
        # here); only if the plain round is missing, the whole SecAgg+ round.
        if fl_plain is not None:
            d["flower_overhead_s"] = fl_secure - fl_plain
            d["flower_overhead_definition"] = "SecAgg+ round − plain Flower round (same harness)"
        else:
            d["flower_overhead_s"] = fl_secure
            d["flower_overhead_definition"] = "whole SecAgg+ round (no plain Flower round)"
        d["flower_secure_over_plain"] = fl_secure / fl_plain if fl_plain else None
    if "fedtune_overhead_s" in d and "flower_overhead_s" in d:
        ours = d["fedtune_overhead_s"]
        d["less_overhead_than_flower"] = (d["flower_overhead_s"] / ours if ours > 0
                                          else math.inf)
    if secure is not None and fl_secure is not None:
        d["flower_secure_over_fedtune_secure"] = fl_secure / secure
    # the same comparison in CPU seconds per round, summed over every process of a system
    ft_cpu = [r[k].get("cpu_s") for k in ("fedtune_plain", "fedtune_secure")]
    fl_cpu = ([fl.get(k, {}).get("cpu_s") for k in ("plain", "secure")]
              if isinstance(fl, dict) else [None, None])
    if None not in ft_cpu:
        d["fedtune_cpu_overhead_s"] = ft_cpu[1] - ft_cpu[0]
    if None not in fl_cpu:
        d["flower_cpu_overhead_s"] = fl_cpu[1] - fl_cpu[0]
    if "fedtune_cpu_overhead_s" in d and "flower_cpu_overhead_s" in d:
        ours = d["fedtune_cpu_overhead_s"]
        # CPU times come in 10 ms ticks per process: an overhead under half a tick (a
        # difference of equal sums leaves float residue like 2e-15) is no overhead at all,
        # and a ratio over it would be noise (a 5e13× once)
        d["less_cpu_overhead_than_flower"] = (
            d["flower_cpu_overhead_s"] / ours
            if ours >= CPU_TICK_S / 2 and d["flower_cpu_overhead_s"] >= CPU_TICK_S / 2
            else None)
    m = r["fedtune_secure"].get("mask")
    rate = r["keystream_bytes_per_s"]
    if m:
        bound = m["cipher_bytes_per_site"] / rate
        d["keystream_bound_s_per_site"] = bound
        d["mask_cpu_over_bound"] = m["cpu_s_per_site"] / bound
        d["mask_wall_over_bound"] = m["wall_s_per_site"] / bound
        replay = r["fedtune_secure"].get("mask_replay_s")
        d["mask_replay_over_bound"] = replay / bound if replay else None
    r["derived"] = d


# ---------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float) and math.isnan(value):
        return "—"
    return f"{value:.{digits}f}{suffix}"


def _sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def _cell(entry: dict[str, Any]) -> str:
    if "round_s" in entry and not math.isnan(entry["round_s"]):
        return _fmt(entry["round_s"]) + ("*" if "partial" in entry else "")
    if "error" in entry:
        return "failed"
    return entry.get("skipped", "—")


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def summarize_repeats(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration run more than once (``--repeat``): the spread of its headline ratios
    over the runs, and how many runs met the target. Each run is a whole configuration
    (fresh coordinator, sites and Flower nodes), so the spread is the run-to-run noise of
    this machine, which one run alone cannot show."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["sites"], r["params_target"]), []).append(r)
    summary = []
    for (n, target), runs in groups.items():
        if len(runs) < 2:
            continue
        entry: dict[str, Any] = {"sites": n, "params_target": target, "params": runs[0]["params"],
                                 "runs": len(runs)}
        for key in ("less_overhead_than_flower", "less_cpu_overhead_than_flower",
                    "fedtune_overhead_s", "flower_overhead_s", "mask_cpu_over_bound"):
            values = [r["derived"][key] for r in runs if r["derived"].get(key) is not None]
            if values:
                entry[key] = {"median": median(values), "min": min(values), "max": max(values),
                              "values": values}
        less = entry.get("less_overhead_than_flower")
        if less is not None:
            entry["runs_meeting_target"] = sum(v >= TARGET_LESS_OVERHEAD for v in less["values"])
        summary.append(entry)
    return summary


def _spread(entry: dict[str, Any], key: str, digits: int, unit: str = "") -> str:
    v = entry.get(key)
    return "—" if v is None else (f"{v['median']:.{digits}f}{unit} "
                                  f"[{v['min']:.{digits}f} – {v['max']:.{digits}f}]")


def _first_columns(r: dict[str, Any], repeated: bool) -> tuple[str, ...]:
    key = (str(r["sites"]), f"{r['params']:,}")
    return key + (str(r.get("run", 1)),) if repeated else key


def print_report(results: list[dict[str, Any]], rounds: int, sites_as: str,
                 warmup: int = DEFAULT_WARMUP,
                 summary: list[dict[str, Any]] | None = None) -> None:
    """The tables; ``summary`` is :func:`summarize_repeats` of ``results`` (computed here
    when not given)."""
    print()
    where = ("one process each" if sites_as == "processes"
             else "threads of the coordinator's process")
    repeated = any(r.get("runs", 1) > 1 for r in results)
    first = ("sites", "params", "run") if repeated else ("sites", "params")
    print(f"Seconds per round (median of {rounds} rounds after {warmup} warm-up; * = fewer "
          f"rounds fit the budget). fedtune: real coordinator + site agents ({where}) over "
          "loopback gRPC, training off. Flower: SecAggPlusWorkflow / default_fit_workflow "
          "through an in-process grid.")
    header = (*first, "t/k", "ft plain", "ft secure", "secure÷plain", "ft overhead",
              "flwr plain", "flwr SecAgg+", "flwr overhead", "× less overhead",
              "up B/param", "mask ÷ bound")
    rows = []
    for r in results:
        d = r["derived"]
        fl = r["flower"]
        rows.append((
            *_first_columns(r, repeated),
            f"{r['secagg']['threshold']}/{r['secagg']['neighbours']}",
            _cell(r["fedtune_plain"]), _cell(r["fedtune_secure"]),
            _fmt(d.get("fedtune_secure_over_plain"), 2, "×"),
            _fmt(d.get("fedtune_overhead_s")),
            _cell(fl.get("plain", fl)), _cell(fl.get("secure", fl)),
            _fmt(d.get("flower_overhead_s")),
            _fmt(d.get("less_overhead_than_flower"), 1, "×"),
            _fmt(r["fedtune_secure"].get("bytes", {}).get("upload_bytes_per_param"), 4),
            _fmt(d.get("mask_cpu_over_bound"), 2, "×"),
        ))
    _print_rows(header, rows)
    print("  overhead = secure round − plain round of the same system (Flower: SecAgg+ round − "
          "plain Flower round, same grid); × less overhead = Flower overhead ÷ fedtune overhead")
    print("  up B/param = a fedtune site's masked-input upload (serialized InputChunk bytes) ÷ m; "
          "mask ÷ bound = thread CPU time in SiteRound.mask_words ÷ "
          "(keystream bytes ÷ the mask generator's AES-256-CTR rate)")

    print()
    print("fedtune secure round: where the time goes (medians, seconds)")
    header2 = (*first, "offer+adv", "share", "input", "check+unmask+agg",
               "coord unmask", "mask cpu/site", "mask wall/site", "bound/site",
               "replay ÷ bound", "mask GB/s", "CTR mode GB/s", "np.add s", "up+req B/param", "flwr up B/param",
               "flwr err", "ft err")
    rows2 = []
    for r in results:
        s, d = r["fedtune_secure"], r["derived"]
        ph, mk = s.get("phases_s", {}), s.get("mask", {})
        fl_secure = r["flower"].get("secure", {})
        rows2.append((
            *_first_columns(r, repeated),
            _fmt(ph.get("offer_advertise")), _fmt(ph.get("share_keys")),
            _fmt(ph.get("masked_input")), _fmt(ph.get("consistency_unmask_aggregate")),
            _fmt(s.get("coordinator_unmask_s")), _fmt(mk.get("cpu_s_per_site"), 4),
            _fmt(mk.get("wall_s_per_site"), 4), _fmt(d.get("keystream_bound_s_per_site"), 4),
            _fmt(d.get("mask_replay_over_bound"), 2, "×"),
            _fmt(r["keystream_bytes_per_s"] / 1e9, 2),
            _fmt(r["ctr_mode_bytes_per_s"] / 1e9, 2), _fmt(r["np_add_s"], 4),
            _fmt(s.get("bytes", {}).get("upload_bytes_per_param_with_requests"), 4),
            _fmt(fl_secure.get("upload_bytes_per_param"), 3),
            _sci(fl_secure.get("aggregate_max_abs_error")),
            _sci(s.get("aggregate_max_abs_error")),
        ))
    _print_rows(header2, rows2)
    print("  phases from the coordinator's events; coord unmask = SecureSum.unmask (reconstruct "
          "seeds, remove masks, decode); replay = one site's mask re-run alone after the run; "
          "err = max |Δ aggregate − mean update| over the measured rounds; mask GB/s = the "
          "AES-256-CTR generator masks use (OpenSSL's GCM code), CTR mode GB/s = the same "
          "keystream through cryptography's modes.CTR")

    print()
    print("CPU seconds per round (medians), summed over every process of the system: the "
          "coordinator and its sites; Flower: the workflow's process and its nodes")
    header3 = (*first, "ft plain", "ft secure", "ft overhead", "of it coord",
               "flwr plain", "flwr SecAgg+", "flwr overhead", "× less CPU overhead",
               "others, at most")
    rows3 = []
    for r in results:
        d, fl = r["derived"], r["flower"]
        rows3.append((
            *_first_columns(r, repeated),
            _fmt(r["fedtune_plain"].get("cpu_s")), _fmt(r["fedtune_secure"].get("cpu_s")),
            _fmt(d.get("fedtune_cpu_overhead_s")), _coordinator_overhead(r),
            _fmt(fl.get("plain", {}).get("cpu_s")), _fmt(fl.get("secure", {}).get("cpu_s")),
            _fmt(d.get("flower_cpu_overhead_s")),
            _fmt(d.get("less_cpu_overhead_than_flower"), 1, "×"),
            "—" if (others := _others_share(r)) is None else f"{others[0]:.0%}",
        ))
    _print_rows(header3, rows3)
    print(f"  /proc/PID/stat user + system time at round start and end (10 ms ticks per "
          f"process); of it coord = the coordinator process's part of the fedtune overhead "
          f"(with --sites-as threads, the sites run in it too); on {os.cpu_count()} CPUs, wall-clock overhead is at least CPU overhead "
          f"÷ {os.cpu_count()} when the work is parallel; others, at most = the largest share "
          "of the machine that other processes (or other guests: steal time) took during one "
          f"system's rounds, from /proc/stat (rounds of {BUSY_MIN_ROUND_S:g} s or more)")

    if summary is None:
        summary = summarize_repeats(results)
    if summary:
        print()
        print("Repeated configurations: each run a fresh federation and fresh Flower nodes "
              "(median [min – max] over the runs)")
        header4 = ("sites", "params", "runs", "× less overhead", "× less CPU overhead",
                   "ft overhead s", "flwr overhead s", f"runs ≥ {TARGET_LESS_OVERHEAD:g}×")
        rows4 = []
        for e in summary:
            rows4.append((str(e["sites"]), f"{e['params']:,}", str(e["runs"]),
                          _spread(e, "less_overhead_than_flower", 1, "×"),
                          _spread(e, "less_cpu_overhead_than_flower", 1, "×"),
                          _spread(e, "fedtune_overhead_s", 3),
                          _spread(e, "flower_overhead_s", 3),
                          f"{e.get('runs_meeting_target', 0)} of {e['runs']}"))
        _print_rows(header4, rows4)

    print()
    print("Targets")
    for e in summary:
        if (e["sites"], e["params_target"]) == TARGET_LESS_OVERHEAD_AT and \
                "less_overhead_than_flower" in e:
            less = e["less_overhead_than_flower"]["median"]
            print(f"  {e['sites']:>2} sites × {e['params']:>9,}: median over {e['runs']} runs "
                  f"{less:.1f}× less overhead than Flower's SecAgg+ "
                  f"{'ok' if less >= TARGET_LESS_OVERHEAD else 'MISSED'} "
                  f"(≥ {TARGET_LESS_OVERHEAD:g}×; {e['runs_meeting_target']} of {e['runs']} "
                  "runs at or above it)")
    for r in results:
        d = r["derived"]
        parts = []
        up = r["fedtune_secure"].get("bytes", {}).get("upload_bytes_per_param")
        if up is not None:
            parts.append(f"upload {up:.4f} B/param "
                         f"{'ok' if up <= TARGET_UPLOAD_BYTES_PER_PARAM else 'MISSED'} "
                         f"(≤ {TARGET_UPLOAD_BYTES_PER_PARAM} at b={BITS})")
        x = d.get("mask_cpu_over_bound")
        if x is not None:
            parts.append(f"masking {x:.2f}× the keystream bound "
                         f"{'ok' if x <= TARGET_MASK_X_BOUND else 'MISSED'} "
                         f"(≤ {TARGET_MASK_X_BOUND:g}×)")
        if (r["sites"], r["params_target"]) == TARGET_LESS_OVERHEAD_AT:
            less = d.get("less_overhead_than_flower")
            if less is None:
                parts.append("overhead vs Flower: not measured")
            else:
                parts.append(f"{less:.1f}× less overhead than Flower's SecAgg+ "
                             f"{'ok' if less >= TARGET_LESS_OVERHEAD else 'MISSED'} "
                             f"(≥ {TARGET_LESS_OVERHEAD:g}×)")
        others = _others_share(r)
        if others is not None and others[0] > BUSY_SHARE:
            parts.append(f"machine busy: other processes took {others[0]:.0%} of the "
                         f"{os.cpu_count()} CPUs during the {others[1]} rounds; wall times are "
                         "inflated (CPU seconds much less)")
        warnings = r["fedtune_secure"].get("warnings") or []
        if warnings:
            parts.append(f"{len(warnings)} coordinator warning(s), first: {warnings[0]}")
        run = f" run {r['run']}" if repeated else ""
        print(f"  {r['sites']:>2} sites × {r['params']:>9,}{run}: " + ("; ".join(parts) or "—"))


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="3,10,20,50",
                        help="comma-separated site counts (default 3,10,20,50)")
    parser.add_argument("--params", default="100k,1M",
                        help="comma-separated parameter counts, k/M suffixes (default 100k,1M)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured rounds per configuration, after the warm-up (default 3)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help="warm-up rounds before the measured ones, for fedtune and Flower "
                             f"alike (default {DEFAULT_WARMUP})")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each configuration this many times, each with a fresh "
                             "federation and fresh Flower nodes, and report the median and "
                             "spread of the ratios over the runs (default 1)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds each system may spend on one configuration before it is "
                             "stopped and reported as 'skipped (budget)' (default 240)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 sites × 100k, 1 warm-up and 2 measured rounds, "
                             "20 s budget")
    parser.add_argument("--no-flower", action="store_true", help="leave Flower out")
    parser.add_argument("--sites-as", choices=("processes", "threads"), default="processes",
                        help="run each fedtune site agent in its own process, as deployed "
                             "(default), or all of them as threads of the coordinator's "
                             "process (one GIL for every site and the coordinator)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="JSON output (default bench/results/secagg.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sites, args.params, args.rounds, args.budget = "3", "100k", 2, 20.0
        args.warmup = 1
    sites = [int(s) for s in args.sites.split(",") if s.strip()]
    params = [parse_count(p) for p in args.params.split(",") if p.strip()]
    if args.rounds < 1 or not sites or min(sites) < 3:
        parser.error("--rounds must be at least 1 and every --sites value at least 3 "
                     "(Flower's SecAgg+ needs num_shares > 2)")
    if args.warmup < 0 or args.repeat < 1:
        parser.error("--warmup must be at least 0 and --repeat at least 1")

    flower_missing = None if args.no_flower else flower_available()
    if flower_missing:
        print(f"Flower left out: {flower_missing}", flush=True)
    with_flower = not args.no_flower and flower_missing is None
    started = time.perf_counter()
    results = []
    for target in params:
        input_dim, hidden, exact = mlp_for(target)
        print(f"params {target:,}: tabular-mlp input_dim={input_dim} hidden={hidden} → "
              f"{exact:,} float32 parameters", flush=True)
        over_budget: set[str] = set()  # systems that ran out at a smaller n, this m
        for n in sorted(sites):
            for run in range(1, args.repeat + 1):
                if args.repeat > 1:
                    print(f"  {n} sites × {exact:,}: run {run} of {args.repeat}", flush=True)
                r = run_configuration(n, target, args.rounds, args.budget, with_flower,
                                      set(over_budget), args.sites_as, args.warmup)
                r["run"], r["runs"] = run, args.repeat
                results.append(r)
            for system in ("fedtune_plain", "fedtune_secure"):
                if r[system].get("skipped") == SKIPPED:
                    over_budget.add(system)
            if with_flower and r["flower"].get("secure", {}).get("skipped") == SKIPPED:
                over_budget.add("flower")

    repeats = summarize_repeats(results)
    print_report(results, args.rounds, args.sites_as, args.warmup, repeats)
    document = {
        "benchmark": "secagg",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "grpc": grpc.__version__, "numpy": np.__version__,
                    "flwr": _version("flwr"), "cryptography": _version("cryptography")},
        "definitions": {
            "round_s": "fedtune: round_started → round_completed events of the coordinator; "
                       "Flower: wall time of one fit-workflow call (SecAggPlusWorkflow or "
                       "default_fit_workflow), as DefaultWorkflow makes it once per round",
            "fedtune_overhead_s": "fedtune secure round_s − fedtune plain round_s",
            "flower_overhead_s": "Flower SecAgg+ round_s − plain Flower round_s, same grid",
            "less_overhead_than_flower": "flower_overhead_s ÷ fedtune_overhead_s",
            "cpu_s": "user + system CPU seconds of every process of the system (fedtune: the "
                     "coordinator and its sites; Flower: the workflow's process and its "
                     "nodes) between the start and the end of a round, /proc/PID/stat",
            "coordinator_cpu_s": "fedtune: the part of cpu_s used by the coordinator's "
                                 "process (with --sites-as threads, the sites' too)",
            "less_cpu_overhead_than_flower": "(Flower SecAgg+ cpu_s − plain Flower cpu_s) ÷ "
                                             "(fedtune secure cpu_s − fedtune plain cpu_s)",
            "upload_bytes_per_param": "serialized InputChunk bytes one site sends per round ÷ m",
            "mask_cpu_over_bound": "median over sites and rounds of thread CPU time in "
                                   "SiteRound.mask_words ÷ (keystream bytes it expanded ÷ "
                                   "keystream_bytes_per_second())",
            "flower_parameters": "num_shares = fedtune's k + 1 (Flower counts the node "
                                 "itself), reconstruction_threshold = fedtune's t; "
                                 "clipping_range, quantization_range, modulus_range, "
                                 "max_weight: Flower's defaults",
        },
        "targets": {"less_overhead_than_flower_at_least": TARGET_LESS_OVERHEAD,
                    "at": {"sites": TARGET_LESS_OVERHEAD_AT[0],
                           "params": TARGET_LESS_OVERHEAD_AT[1]},
                    "mask_over_keystream_bound_at_most": TARGET_MASK_X_BOUND,
                    "upload_bytes_per_param_at_most": TARGET_UPLOAD_BYTES_PER_PARAM,
                    "bits": BITS},
        "args": {"sites": sites, "params": params, "rounds": args.rounds,
                 "warmup": args.warmup, "repeat": args.repeat,
                 "sites_as": args.sites_as,
                 "budget_s": args.budget, "quick": args.quick, "flower": with_flower},
        "total_wall_s": time.perf_counter() - started,
        "results": results,
        "repeats": repeats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nJSON: {args.out}  ({document['total_wall_s']:.0f} s in all)")
    failed = any("error" in r[s] for r in results for s in ("fedtune_plain", "fedtune_secure"))
    failed = failed or any("error" in r["flower"] for r in results)
    return 1 if failed else 0


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
