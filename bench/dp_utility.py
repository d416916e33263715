"""Federated accuracy under differential privacy: record level vs site level, ε ∈ {∞, 8, 3, 1}.

What it runs
    For every (mode, ε) one real federated job: the coordinator (``fedtune.server.app.start``,
    in this process, insecure loopback, port 0) and ``--sites`` real site agents
    (:class:`fedtune.client.agent.SiteAgent`) as threads of this process over loopback gRPC,
    secure aggregation on, on scikit-learn's 8×8 digits split IID over the sites with the same
    seed every time (``fedtune.local_federation.prepare`` → ``fedtune.datasets.write_split``),
    the registry model ``--model`` (``image-linear`` by default), the same initialisation seed
    and the same rounds. Every site must take part in every round (``min_sites`` = number of sites).

    * **record level**: DP-SGD at every site (Opacus, Poisson rate ``q``, per-sample clipping
      to ``max_grad_norm``). The noise multiplier is calibrated for the whole job —
      ``rounds × local_epochs × ⌈1/q⌉`` steps at rate ``q`` — with
      :func:`fedtune.privacy.calibration.noise_multiplier_for` (RDP, the accountant the
      coordinator and the sites' ledgers use). The job also carries ``target_epsilon = ε``,
      and every site's policy allows a record-level budget of exactly ε: both the
      coordinator and the ledgers enforce it.
    * **site level, central**: DP-FedAvg (McMahan et al. 2018): local non-private SGD, each
      site's update clipped to ``site_clip``, the coordinator adds N(0, (σC)²) to the unmasked
      sum; σ is calibrated by the coordinator from ``target_epsilon`` (``finalize_job``).
    * **site level, distributed**: the same, the noise added by the sites as Skellam noise in
      the secure-aggregation ring (Agarwal et al. 2021), calibrated by the coordinator.
    * **ε = ∞**: the same federation without any DP (plain FedAvg with the site-level local
      training recipe). One run, the non-private reference of every row.

    Baselines, in the same invocation: **pooled DP-SGD**, i.e. ``train_dp_sgd`` run centrally
    on the union of the sites' training splits, with the record-level recipe (same q, clip,
    learning rate, momentum; ``rounds × local_epochs`` epochs), σ calibrated for the same ε,
    evaluated on the union of the sites' evaluation splits; and the same with the noise
    multiplier of the record-level federation × √sites, which is the federation's noise-to-
    signal ratio (see bench/README.md).

What it reports
    Per cell: the accuracy of the coordinator's final evaluation round
    (``coordinator.final_metrics.eval_accuracy``: every site evaluates the final global model
    on its held-out split, aggregated securely) and the ε the coordinator reports in the run
    directory's ``privacy.json`` (record level: ``epsilon_per_site_at_most``; site level:
    ``epsilon``). The JSON also holds σ, every round's accuracy and the run's wall time.

The noise of DP-SGD and of the site-level mechanisms comes from the OS (as it must in a real
deployment), so accuracies vary from run to run; ``--repeats`` runs each cell more than once.

Run ``python bench/dp_utility.py --help``; ``bench/README.md`` explains the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtune import local_federation as lf
from fedtune.client import trainer
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.client.data import SiteData, load_site_data, train_eval_split
from fedtune.datasets import load_bundled
from fedtune.federation import load_federation
from fedtune.identity import load_identity
from fedtune.job import ModelConfig, TrainingConfig
from fedtune.models import build_model, num_trainable
from fedtune.peers import load_peers
from fedtune.policy import load_policy
from fedtune.privacy.accountants import Release, epsilon
from fedtune.privacy.calibration import noise_multiplier_for
from fedtune.server import app

RESULTS = Path(__file__).resolve().parent / "results" / "dp_utility.json"
QUICK_RESULTS = RESULTS.with_name("dp_utility.quick.json")
INF = math.inf
MODES = ("record", "central", "distributed")
MODE_LABELS = {"record": "record level (DP-SGD at sites)",
               "central": "site level, central",
               "distributed": "site level, distributed"}
TARGET = ("record", 3.0, 0.90)  # (mode, ε, accuracy): the target
RUN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Settings:
    dataset: str
    model: str  # a registry id for the data set's images: image-linear or image-cnn
    sites: int
    rounds: int
    split_seed: int
    seed: int
    delta: float
    eval_fraction: float
    # record level: DP-SGD at the sites
    local_epochs: int
    sample_rate: float
    max_grad_norm: float
    dp_lr: float
    dp_momentum: float
    # site level and ε = ∞: ordinary local SGD, update clipped to site_clip (site level)
    site_clip: float
    lr: float
    momentum: float
    batch_size: int

    @property
    def record_steps_per_round(self) -> int:
        return self.local_epochs * math.ceil(1.0 / self.sample_rate)


# ---------------------------------------------------------------------------- jobs


def job_table(s: Settings, model: dict[str, Any], mode: str, eps: float) -> dict[str, Any]:
    """The federation file's ``[job]`` for one cell; ``mode = "none"`` is ε = ∞."""
    job = lf.default_job(model, rounds=s.rounds, min_sites=s.sites, secure=True)
    job["job_id"] = f"dp-utility-{mode}-{eps:g}"
    private_sgd = mode == "record"
    job["training"] = {
        "local_epochs": s.local_epochs,
        "batch_size": s.batch_size,
        "learning_rate": s.dp_lr if private_sgd else s.lr,
        "optimizer": "sgd",
        "momentum": s.dp_momentum if private_sgd else s.momentum,
        "eval_fraction": s.eval_fraction,
        "seed": s.seed,
        # site-level DP bounds every site's contribution; the same weights everywhere
        "weighting": "uniform",
    }
    # generous: five sites train as threads on two cores
    job["deadlines"] = {"gather": 1.0, "offer": 60.0, "keys": 60.0, "input": 300.0,
                        "unmask": 60.0}
    if mode == "record":
        sigma = record_noise_multiplier(s, eps)
        job["privacy"] = {"record_level": {
            "enabled": True, "noise_multiplier": sigma, "max_grad_norm": s.max_grad_norm,
            "sample_rate": s.sample_rate, "delta": s.delta, "target_epsilon": eps}}
    elif mode in ("central", "distributed"):
        job["privacy"] = {"site_level": {
            "mode": mode, "clip_norm": s.site_clip, "target_epsilon": eps, "delta": s.delta}}
    return job


def model_spec(s: Settings) -> ModelConfig:
    """The data set's model shape under the registry id ``s.model``."""
    return dataclasses.replace(load_bundled(s.dataset).model, id=s.model)


def record_noise_multiplier(s: Settings, eps: float) -> float:
    """σ of DP-SGD for the whole job: rounds × local_epochs × ⌈1/q⌉ steps at rate q."""
    return noise_multiplier_for(eps, s.delta, s.rounds, sample_rate=s.sample_rate,
                                steps_per_round=s.record_steps_per_round)


def policy_table(s: Settings, mode: str, eps: float) -> dict[str, Any]:
    policy: dict[str, Any] = {"allowed_models": [s.model], "max_rounds": 1000,
                              "require_secure_aggregation": True}
    if mode == "record":  # the site's own ledger enforces the same budget
        policy["record_level_dp"] = {"max_epsilon": eps, "delta": s.delta}
    return {"policy": policy}


# ---------------------------------------------------------------------------- one federation


class SiteFailures(logging.Handler):
    """Collects the errors of the library's loggers (and keeps them off the terminal).

    A site whose task fails logs ``task submit_input failed`` and sends nothing, so the round
    would only end at its deadline: the benchmark stops the run at the first such error. When
    the error is about non-finite values (the noise has thrown the global model so far off
    that local training overflows) the cell is reported as diverged, otherwise as failed.
    """

    NON_FINITE = ("NaN", "infinite", "non-finite")

    @property
    def diverged(self) -> bool:
        return any(word in e for e in self.errors for word in self.NON_FINITE)

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        detail = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            detail += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.errors.append(detail)


def run_federation(root: Path, s: Settings, mode: str, eps: float,
                   failures: SiteFailures) -> dict[str, Any]:
    """One job with the real coordinator and SiteAgent threads; the cell's figures."""
    failures.errors.clear()
    spec = model_spec(s)
    model = {"id": spec.id, "num_classes": spec.num_classes,
             "image_shape": list(spec.image_shape)}
    fed = lf.prepare(root, dataset=s.dataset, n_sites=s.sites, seed=s.split_seed,
                     job=job_table(s, model, mode, eps), policy=policy_table(s, mode, eps))
    started = time.monotonic()
    running = app.start(load_federation(fed.federation), port=0, insecure=True)
    peers = load_peers(fed.peers) if fed.peers else None
    agents = [SiteAgent(SiteAgentConfig(
        coordinator=f"127.0.0.1:{running.port}", site_id=site.site_id,
        identity=load_identity(site.key), data_path=site.data, policy=load_policy(site.policy),
        peers=peers, give_up_after_s=30, poll_wait_ms=1000,
        state_dir=root / "state" / site.site_id)) for site in fed.sites]
    threads = [threading.Thread(target=a.run, name=f"site-{i}", daemon=True)
               for i, a in enumerate(agents, start=1)]
    for t in threads:
        t.start()
    c = running.coordinator
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (not c.finished and time.monotonic() < deadline and running.thread.is_alive()
               and not failures.errors):
            time.sleep(0.1)
        timed_out = not c.finished and not failures.errors
    finally:
        for a in agents:
            a.stop()
        running.stop(grace=0.2)
        for t in threads:
            t.join(timeout=10)
    wall = time.monotonic() - started
    report = json.loads((c.run_dir / "privacy.json").read_text())
    if mode == "record":
        reported = report["record_level"]["epsilon_per_site_at_most"]
        sigma = report["record_level"]["noise_multiplier"]
    elif mode in ("central", "distributed"):
        reported = report["site_level"]["epsilon"]
        sigma = report["site_level"]["noise_multiplier"]
    else:
        reported, sigma = INF, 0.0
    training = [h for h in c.history if not h.evaluate_only]
    refusals = sorted({r for a in agents for r in a.outcome.refusals})
    failure = c.failure or ("timed out" if timed_out else "")
    if failures.errors and not c.finished:
        failure = f"{'diverged' if failures.diverged else 'site error'}: {failures.errors[0]}"
    return {
        "accuracy": (float(c.final_metrics.eval_accuracy)
                     if c.final_metrics is not None else None),
        "eval_count": int(c.final_metrics.eval_count) if c.final_metrics is not None else 0,
        "epsilon_reported": reported,
        "noise_multiplier": sigma,
        "completed_rounds": c.completed_rounds,
        "aborted_rounds": sum(1 for h in c.history if h.aborted),
        # accuracy of the global model each released training round started from
        "accuracy_by_round": [round(float(h.metrics.eval_accuracy), 4) for h in training
                              if not h.aborted],
        "budget_stop": c.budget_stop,
        "failure": failure,
        "site_errors": sorted(set(failures.errors)),
        "refusals": refusals,
        "wall_s": wall,
        "privacy_json": report,
    }


# ---------------------------------------------------------------------------- pooled baseline


def pooled_splits(s: Settings, root: Path) -> tuple[SiteData, SiteData]:
    """The union of the sites' training splits and of their evaluation splits, exactly as the
    sites split their files (same manifest, same eval_fraction and seed)."""
    fed = lf.prepare(root, dataset=s.dataset, n_sites=s.sites, seed=s.split_seed)
    spec = model_spec(s)
    parts = [train_eval_split(load_site_data(site.data, spec), s.eval_fraction, s.seed)
             for site in fed.sites]
    train = SiteData(np.concatenate([p[0].features for p in parts]),
                     np.concatenate([p[0].labels for p in parts]))
    held_out = SiteData(np.concatenate([p[1].features for p in parts]),
                        np.concatenate([p[1].labels for p in parts]))
    return train, held_out


def pooled_dp_sgd(s: Settings, spec: ModelConfig, train: SiteData, held_out: SiteData,
                  sigma: float | None) -> dict[str, Any]:
    """Centralised training on the pooled data; ``sigma=None``: ordinary SGD (ε = ∞)."""
    epochs = s.rounds * s.local_epochs
    model = build_model(spec, seed=s.seed)
    started = time.monotonic()
    if sigma is None:
        config = TrainingConfig(local_epochs=epochs, batch_size=s.batch_size,
                                learning_rate=s.lr, momentum=s.momentum, seed=s.seed)
        trainer.train(model, train, config, round_seed=s.seed)
        eps = INF
    else:
        config = TrainingConfig(local_epochs=epochs, learning_rate=s.dp_lr,
                                momentum=s.dp_momentum, seed=s.seed)
        trainer.train_dp_sgd(model, train, config, sigma, s.max_grad_norm, s.sample_rate)
        eps = epsilon([Release("gaussian", sigma, s.sample_rate,
                               epochs * math.ceil(1.0 / s.sample_rate))], s.delta)
    result = trainer.evaluate(model, held_out)
    return {"accuracy": result.correct / result.count, "eval_count": result.count,
            "epsilon": eps, "noise_multiplier": sigma or 0.0, "epochs": epochs,
            "wall_s": time.monotonic() - started}


# ---------------------------------------------------------------------------- report


def _eps_label(eps: float) -> str:
    return "∞" if math.isinf(eps) else f"{eps:g}"


def _cell(runs: list[dict[str, Any]], key: str = "epsilon_reported") -> str:
    accs = [r["accuracy"] for r in runs if r.get("accuracy") is not None]
    if not accs:
        stopped = [r for r in runs if str(r.get("failure", "")).startswith("diverged")]
        if stopped:
            r = stopped[0]
            return f"diverged @r{r['completed_rounds'] + 1} (ε={r[key]:.2f})"
        return "failed"
    acc = statistics.mean(accs)
    eps = runs[0][key]
    spread = f"±{(max(accs) - min(accs)) / 2:.1%}" if len(accs) > 1 else ""
    eps_text = "ε=∞" if math.isinf(eps) else f"ε={eps:.2f}"
    flag = "" if all(not r.get("failure") and not r.get("budget_stop") for r in runs) else " !"
    return f"{acc:.1%}{spread} ({eps_text}){flag}"


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def print_table(s: Settings, modes: list[str], epsilons: list[float],
                cells: dict[str, dict[str, list[dict[str, Any]]]],
                pooled: dict[str, list[dict[str, Any]]],
                pooled_equal: dict[str, list[dict[str, Any]]], params: int) -> None:
    print(f"\nFederated accuracy on the sites' held-out data (final evaluation round), "
          f"{s.dataset}, {s.sites} sites IID, {s.model} ({params:,} parameters), "
          f"{s.rounds} rounds, δ = {s.delta:g}, secure aggregation on; "
          f"cell: accuracy (ε reported in privacy.json)")
    header = ["mode", *[f"ε = {_eps_label(e)}" for e in epsilons]]
    rows = []
    for mode in modes:
        rows.append([MODE_LABELS[mode],
                     *[_cell(cells[mode][_eps_label(e)]) for e in epsilons]])
    rows.append(["pooled DP-SGD (baseline)",
                 *[_cell(pooled[_eps_label(e)], "epsilon") for e in epsilons]])
    if "record" in modes:
        rows.append([f"pooled, σ·√{s.sites} (record level's noise/signal)",
                     *[_cell(pooled_equal[_eps_label(e)], "epsilon") if _eps_label(e)
                       in pooled_equal else "—" for e in epsilons]])
    _print_rows(header, rows)
    print(f"ε = ∞: no DP at all (one run, the reference of every row). record level: DP-SGD, "
          f"q = {s.sample_rate:g}, max_grad_norm = {s.max_grad_norm:g}, SGD lr = {s.dp_lr:g}, "
          f"momentum = {s.dp_momentum:g}, {s.local_epochs} local epoch(s) = "
          f"{s.record_steps_per_round} steps/round. site level and ε = ∞: SGD lr = {s.lr:g}, "
          f"momentum = {s.momentum:g}, batch {s.batch_size}, update clip C = {s.site_clip:g}. "
          f"'!' marks a cell whose run failed or stopped early; 'diverged': the noise threw "
          f"the model so far off that the sites' local training produced non-finite values, "
          f"and the run was stopped (see the JSON).")
    if "record" in modes:
        sig = {e: cells["record"][e][0]["noise_multiplier"] for e in cells["record"] if e != "∞"}
        print("record-level σ: " + ", ".join(f"ε={e}: {v:.3f}" for e, v in sig.items()))
    for mode in ("central", "distributed"):
        if mode in modes:
            sig = {e: cells[mode][e][0]["noise_multiplier"] for e in cells[mode] if e != "∞"}
            print(f"{mode} σ (on the sum of {s.sites} clipped updates): "
                  + ", ".join(f"ε={e}: {v:.3f}" for e, v in sig.items()))


def target_line(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    mode, eps, goal = TARGET
    runs = cells.get(mode, {}).get(_eps_label(eps))
    if not runs:
        print(f"\nTarget: record level at ε = {eps:g} ≥ {goal:.0%}: not run")
        return {"met": None}
    acc = statistics.mean(r["accuracy"] or 0.0 for r in runs)
    met = acc >= goal
    print(f"\nTarget: record level at ε = {eps:g}: {acc:.1%} (goal ≥ {goal:.0%}): "
          f"{'met' if met else 'NOT met'}")
    return {"mode": mode, "epsilon": eps, "goal": goal, "accuracy": acc, "met": met}


# ---------------------------------------------------------------------------- main


def parse_epsilons(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("inf", "∞"):
            values.append(INF)
        elif part:
            value = float(part)
            if not value > 0:
                raise argparse.ArgumentTypeError(f"ε must be > 0 or inf, got {part}")
            values.append(value)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=parse_epsilons, default=[INF, 8.0, 3.0, 1.0],
                        help="comma-separated ε values, 'inf' for no DP (default inf,8,3,1)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--model", choices=("image-linear", "image-cnn"), default="image-linear",
                        help="registry model (default image-linear: softmax regression on the "
                             "pixels; image-cnn has 21× the parameters, so 4.6× the DP noise "
                             "norm)")
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--sample-rate", type=float, default=0.2,
                        help="record level: Poisson rate q of DP-SGD (default 0.2)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0,
                        help="record level: per-sample clipping norm (default 1)")
    parser.add_argument("--dp-lr", type=float, default=0.5,
                        help="record level: SGD learning rate (default 0.5)")
    parser.add_argument("--dp-momentum", type=float, default=0.5,
                        help="record level: SGD momentum (default 0.5)")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="site level and ε = ∞: SGD learning rate (default 0.05)")
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="site level and ε = ∞: SGD momentum (default 0.9)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="site level and ε = ∞: minibatch size (default 32)")
    parser.add_argument("--site-clip", type=float, default=0.5,
                        help="site level: L2 clip of each site's update (default 0.5)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the IID split")
    parser.add_argument("--seed", type=int, default=0,
                        help="job seed: model initialisation and train/eval split")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per cell (DP noise differs each run; default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the sites are threads "
                             "sharing the machine's cores)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: record level only, ε ∈ {∞, 3}, 8 rounds")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {RESULTS.name}; {QUICK_RESULTS.name} with "
                             "--quick, so a smoke run never overwrites the full results)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_RESULTS if args.quick else RESULTS
    if args.quick:
        args.epsilons, args.modes, args.rounds = [INF, 3.0], "record", 8
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {','.join(MODES)}")
    s = Settings(dataset="digits", model=args.model, sites=args.sites, rounds=args.rounds,
                 split_seed=args.split_seed, seed=args.seed, delta=args.delta,
                 eval_fraction=args.eval_fraction, local_epochs=args.local_epochs,
                 sample_rate=args.sample_rate, max_grad_norm=args.max_grad_norm,
                 dp_lr=args.dp_lr, dp_momentum=args.dp_momentum, site_clip=args.site_clip,
                 lr=args.lr, momentum=args.momentum, batch_size=args.batch_size)
    torch.set_num_threads(args.threads)
    # known and documented (docs/decisions.md): no torchcsprng here; Opacus warns per engine
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    # the first layer's input needs no gradient; Opacus' hooks still fire correctly (the
    # trainer filters this too, but catch_warnings is not thread-safe and the sites are threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    library_log = logging.getLogger("fedtune")  # the table is the output
    library_log.setLevel(logging.ERROR)
    library_log.propagate = False
    failures = SiteFailures()
    library_log.addHandler(failures)

    import opacus

    started = time.time()
    load_before = os.getloadavg()[0]
    spec = model_spec(s)
    params = num_trainable(build_model(spec, seed=s.seed))
    finite = [e for e in args.epsilons if not math.isinf(e)]
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in modes}
    pooled: dict[str, list[dict[str, Any]]] = {}
    pooled_equal: dict[str, list[dict[str, Any]]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="dp-utility-") as tmp:
        root = Path(tmp)
        train, held_out = pooled_splits(s, root / "pooled")
        plan: list[tuple[str, float]] = []
        if INF in args.epsilons:
            plan.append(("none", INF))
        plan += [(m, e) for m in modes for e in finite]
        for k, (mode, eps) in enumerate(plan):
            runs = []
            for rep in range(args.repeats):
                label = f"{mode} ε={_eps_label(eps)}" + (f" #{rep + 1}" if args.repeats > 1 else "")
                print(f"[{time.time() - started:5.0f} s] {label} ...", flush=True)
                try:
                    result = run_federation(root / f"run-{k}-{rep}", s, mode, eps, failures)
                except Exception as exc:  # noqa: BLE001  (report the cell as failed, go on)
                    print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    result = {"accuracy": None, "epsilon_reported": eps,
                              "noise_multiplier": float("nan"),
                              "failure": f"{type(exc).__name__}: {exc}"}
                diverged = str(result.get("failure", "")).startswith("diverged")
                if (result.get("failure") or result.get("accuracy") is None) and not diverged:
                    failed = True  # a run that diverged measured something; one that broke did not
                acc = result.get("accuracy")
                if result.get("failure"):
                    print(f"  {result['failure'][:200]}", flush=True)
                print(f"  accuracy {acc if acc is None else f'{acc:.1%}'}, "
                      f"ε reported {result['epsilon_reported']}, "
                      f"σ {result['noise_multiplier']:.4g}, {result.get('wall_s', 0):.0f} s",
                      flush=True)
                runs.append(result)
            if mode == "none":
                for m in modes:
                    cells[m]["∞"] = runs
            else:
                cells[mode][_eps_label(eps)] = runs
        for eps in args.epsilons:
            print(f"[{time.time() - started:5.0f} s] pooled ε={_eps_label(eps)} ...", flush=True)
            sigma = None if math.isinf(eps) else record_noise_multiplier(s, eps)
            pooled[_eps_label(eps)] = [pooled_dp_sgd(s, spec, train, held_out, sigma)
                                       for _ in range(args.repeats)]
            if sigma is not None and "record" in modes:
                pooled_equal[_eps_label(eps)] = [
                    pooled_dp_sgd(s, spec, train, held_out, sigma * math.sqrt(s.sites))
                    for _ in range(args.repeats)]
    print_table(s, modes, args.epsilons, cells, pooled, pooled_equal, params)
    target = target_line(cells)
    wall = time.time() - started
    load_after = os.getloadavg()[0]
    if max(load_before, load_after) > (os.cpu_count() or 1):
        print(f"machine busy: 1-minute load {load_before:.1f} before, {load_after:.1f} after, "
              f"on {os.cpu_count()} CPUs (wall times are inflated; accuracies are not affected)")
    report = {
        "benchmark": "dp_utility",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "opacus": opacus.__version__,
                    "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_1min": {"before": load_before, "after": load_after}},
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                      if k != "epsilons"},
        "epsilons": [_eps_label(e) for e in args.epsilons],
        "settings": asdict(s),
        "model": {"id": spec.id, "image_shape": list(spec.image_shape),
                  "trainable_params": params},
        "definitions": {
            "accuracy": "coordinator.final_metrics.eval_accuracy: the final evaluation round, "
                        "every site's held-out split, securely aggregated",
            "epsilon_reported": "privacy.json: record_level.epsilon_per_site_at_most or "
                                "site_level.epsilon (RDP accountant)",
            "pooled": "train_dp_sgd on the union of the sites' training splits, evaluated on "
                      "the union of their held-out splits; same recipe as record level, "
                      "rounds × local_epochs epochs",
            "pooled_equal_noise": "pooled DP-SGD with the record-level σ × √sites: the "
                                  "federation's noise-to-signal ratio; its ε is what that "
                                  "noise buys on pooled data",
        },
        "cells": cells,
        "pooled": pooled,
        "pooled_equal_noise": pooled_equal,
        "target": target,
        "wall_s": wall,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_strict(report), indent=2, allow_nan=False) + "\n")
    print(f"\nwrote {args.out} ({wall:.0f} s)")
    return 1 if failed else 0


def _strict(value: Any) -> Any:
    """Plain JSON: ε = ∞ is written as the string "inf", NaN as null."""
    if isinstance(value, float):
        return "inf" if value == INF else None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
