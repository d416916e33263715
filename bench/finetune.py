"""Fine-tuning pretrained models with LoRA: step cost, memory, bytes, and federated accuracy.

Issue 5's benchmark (DESIGN.md §4, §6). One invocation, two parts.

Part 1, per registry model (``minilm-lora``; ``smollm2-lora`` when it is in the registry)
    * **Seconds per training step** at a fixed batch of real samples (MiniLM: Rotten Tomatoes
      reviews, 16 × 48 tokens; SmolLM2: the bundled instruction pairs, 4 × 64 tokens), in
      three modes, each on its own copy of the model built by
      :func:`fedtune.models.build_model` (same registry spec, same seed):

      - **plain**: ``zero_grad → forward → mean per-example loss → backward → step``, the
        step of :func:`fedtune.client.trainer.train`;
      - **hooks**: Opacus ``make_private(grad_sample_mode="hooks")``, per-sample gradients of
        the LoRA (and head) parameters from module hooks, clipped, summed and noised by the
        ``DPOptimizer`` — ``train_dp_sgd``'s default (``clipping="flat"``);
      - **ghost**: ghost clipping (Li et al. 2022, arXiv:2110.05679 §4), per-sample gradient
        norms without materialising per-sample gradients, then a second backward pass of the
        reweighted loss — ``train_dp_sgd(clipping="ghost")``.

      The DP modes are configured exactly as :func:`fedtune.client.trainer.train_dp_sgd`
      configures Opacus (its ``ExampleLoss`` criterion, ``poisson_sampling=False``, the
      trainer's ``CLIPPING_MODES``), noise multiplier 1 and clip 1 (neither changes a step's
      cost). The optimiser is Adam, as in the federated job below. The modes take turns in
      blocks of ``--block`` steps in one process (all three see the same machine load), the
      first ``--warmup`` steps of each are dropped, and each figure is a median. Ratios are
      against the plain step measured in the same blocks.
    * **Peak memory**: every mode once more in a fresh process of its own (multiprocessing
      ``spawn``): build the model, take ``--mem-warmup`` steps, reset the kernel's RSS
      high-water mark (``/proc/self/clear_refs``), take ``--mem-steps`` steps and read
      ``VmHWM``. Reported: the resident set when the model is ready and the peak while
      stepping (what a site process needs to train).
    * **Trainable parameters**: the length of the federated vector.
    * **Bytes per round per site**: what one site uploads in one round under secure
      aggregation: the masked input vector, ``(m + 6)`` ring elements of 4 bytes (``m``
      parameters and six securely aggregated metric fields,
      :mod:`fedtune.privacy.input_encoding`), i.e. about 4.0003 B per parameter for MiniLM;
      for ``minilm-lora`` also the figure measured in Part 2's federation (the
      ``SubmitInput`` size in every site's egress log, and everything the site sent in a
      round). The download is the float32 parameter vector
      (4 B per parameter).

Part 2, ``minilm-lora`` on Rotten Tomatoes (``--sites`` sites split by movie)
    The bundled split (``fedtune.datasets.write_split``, partition ``institution``: whole
    movies per site, balanced), each site's whole share unless ``--examples-per-site`` caps it
    (:func:`fedtune.subsample.subsample_split`, seeded). Every site keeps ``eval_fraction`` of
    its reviews as held-out data (:func:`fedtune.client.data.train_eval_split`, the job's
    seed); **every variant is scored on the union of those held-out splits**, and trained on
    the union of the training splits (or on its share of it, at its site):

    * **federated LoRA** and **federated LoRA + DP-SGD (ε)**: a real federation, each run in
      its own directory: ``fedtune server`` and one ``fedtune site`` process per site, over
      loopback gRPC, started through :mod:`fedtune.local_federation` exactly as ``fedtune
      demo`` starts them (one torch thread per process), with secure aggregation on (the
      default). The accuracy is the coordinator's final evaluation round (every site scores
      the final global model on its held-out split; the sums are aggregated securely). The DP
      run is record-level DP-SGD at every site, its noise multiplier calibrated for the whole
      job — ``rounds × dp_local_epochs × ⌈1/q⌉`` steps at Poisson rate ``q`` — with
      :func:`fedtune.privacy.calibration.noise_multiplier_for` (RDP); the job carries
      ``target_epsilon = ε`` and every site's policy allows exactly ε, so the coordinator and
      the sites' ledgers both enforce it. The ε reported is the coordinator's
      (``privacy.json``) and the sites' own (their ledgers, as their egress logs record).
    * **centralised LoRA**: :func:`fedtune.client.trainer.train` on the pooled training
      splits with the federation's recipe (same optimiser, learning rate, batch and seed) for
      ``rounds × local_epochs`` epochs: as many passes over the data as the federation made.
    * **frozen encoder + logistic regression**:
      :func:`fedtune.frozen_baseline.frozen_encoder_accuracy` on the pooled training splits
      (mean-pooled MiniLM sentence embeddings, no fine-tuning).

    Targets (issue 5): federated non-private LoRA ≥ 78 %, DP (ε = 8) ≥ 74 %.

The noise of DP-SGD comes from the OS (as it must at a real site), so the DP accuracy varies
from run to run; everything else is seeded.

Run ``python bench/finetune.py --help``; ``bench/README.md`` explains the tables.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "finetune.json"
QUICK_RESULTS = RESULTS.with_name("finetune.quick.json")
MODES = ("plain", "hooks", "ghost")
VARIANTS = ("federated", "federated_dp", "centralised", "frozen")
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
STEP_LR = 1e-3
#: the issue's targets: variant → the accuracy it must reach
TARGETS = {"federated": 0.78, "federated_dp": 0.74}
#: metric fields masked together with the update (fedtune.privacy.input_encoding)
METRIC_FIELDS = 6
RING_BYTES = 4  # secure aggregation's default ring Z_(2^32), sent as little-endian uint32


@dataclass(frozen=True)
class StepShape:
    """The fixed batch of one model's step timing."""

    model_id: str
    dataset: str
    batch: int
    tokens: int


STEP_SHAPES: dict[str, StepShape] = {
    "minilm-lora": StepShape("minilm-lora", "rotten-tomatoes", 16, 48),
    "smollm2-lora": StepShape("smollm2-lora", "instructions", 4, 64),
}


def _quiet() -> None:
    # timing only, nothing here is released; Opacus warns per engine
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    # the embeddings' input needs no gradient; Opacus' hooks still fire correctly
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Using a non-full backward hook")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")


# ============================================================================ part 1: steps


def _spec(shape: StepShape):  # -> fedtune.job.ModelConfig
    from fedtune.job import ModelConfig

    if shape.model_id == "minilm-lora":
        return ModelConfig(id=shape.model_id, input_dim=shape.tokens, num_classes=2)
    return ModelConfig(id=shape.model_id, input_dim=shape.tokens)


def step_batches(shape: StepShape, count: int,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` fixed batches of ``shape.batch`` real samples, tokenised as a site does.

    MiniLM: Rotten Tomatoes reviews, padded or cut to ``tokens`` ids, label = fresh/rotten.
    SmolLM2: bundled instruction pairs in the chat template, ``tokens`` positions, next-token
    targets. The batches are used as they are: the full ``batch × tokens`` is computed, so
    every step of a mode does the same work.
    """
    from fedtune.client import text_data
    from fedtune.datasets import load_bundled

    spec = _spec(shape)
    data = load_bundled(shape.dataset)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data), size=count * shape.batch, replace=False)
    if shape.model_id == "minilm-lora":
        x = text_data.tokenize([data.texts[i] for i in pick], spec)
        y = np.asarray(data.labels)[pick]
    else:
        pairs = [(f"pair {i}", data.prompts[i], data.responses[i]) for i in pick]
        site = text_data.tokenize_pairs(pairs, spec)
        x, y = site.features, site.labels
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    return [(xt[k * shape.batch:(k + 1) * shape.batch], yt[k * shape.batch:(k + 1) * shape.batch])
            for k in range(count)]


def clipping_source() -> dict[str, str]:
    """How the DP modes reach Opacus: through the trainer's option when it exists."""
    from fedtune.client import trainer

    modes = getattr(trainer, "CLIPPING_MODES", None)
    if isinstance(modes, dict) and "ghost" in modes:
        hooks, ghost = modes.get("flat", "hooks"), modes["ghost"]
        return {"hooks": hooks, "ghost": ghost,
                "source": "fedtune.client.trainer.CLIPPING_MODES (train_dp_sgd's clipping "
                          f"option): flat → {hooks}, ghost → {ghost}"}
    return {"hooks": "hooks", "ghost": "ghost",
            "source": "Opacus directly (the trainer has no ghost-clipping option yet)"}


@dataclass
class Stepper:
    mode: str
    step: Callable[[torch.Tensor, torch.Tensor], None]
    grads: Callable[[], torch.Tensor]
    times: list[float]


def make_stepper(mode: str, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                 noise_multiplier: float = NOISE_MULTIPLIER) -> Stepper:
    """One optimiser step of ``mode`` on ``model`` (which it takes over)."""
    from fedtune.client import trainer

    model.train()  # Opacus needs train mode before make_private
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=STEP_LR)

    def flat_grad() -> torch.Tensor:
        grads = [p.grad for p in params]
        assert all(g is not None for g in grads), "no gradient: take a step first"
        return torch.cat([g.reshape(-1) for g in grads if g is not None]).detach().clone()

    if mode == "plain":
        def plain(xb: torch.Tensor, yb: torch.Tensor) -> None:
            optimiser.zero_grad(set_to_none=True)
            trainer.example_losses(model(xb), yb).mean().backward()
            optimiser.step()
        return Stepper(mode, plain, flat_grad, [])

    from opacus import PrivacyEngine

    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    # only its length matters to Opacus (expected batch = len(dataset) / len(loader))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=len(batches[0][1]))
    source = clipping_source()
    criterion_in = (trainer.ExampleLoss() if hasattr(trainer, "ExampleLoss")
                    else nn.CrossEntropyLoss())
    made = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimiser, data_loader=loader,
        noise_multiplier=noise_multiplier, max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False, noise_generator=torch.Generator().manual_seed(0),
        criterion=criterion_in, grad_sample_mode=source[mode])
    if mode == "ghost":
        private_model, private_opt, criterion, _ = made
    else:
        (private_model, private_opt, _), criterion = made, criterion_in

    def private(xb: torch.Tensor, yb: torch.Tensor) -> None:
        private_opt.zero_grad(set_to_none=True)
        criterion(private_model(xb), yb).backward()  # ghost: both backward passes
        private_opt.step()
    return Stepper(mode, private, flat_grad, [])


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def time_steps(shape: StepShape, steps: int, warmup: int, block: int, threads: int,
               seed: int) -> dict[str, Any]:
    """Child process: the three modes interleaved in blocks; medians and the check."""
    _quiet()
    torch.set_num_threads(threads)
    from fedtune import models

    spec = _spec(shape)
    started = time.perf_counter()
    base = models.build_model(spec, seed=seed)
    load_s = time.perf_counter() - started
    per_mode = warmup + steps
    batches = step_batches(shape, count=min(per_mode, 16), seed=seed)
    steppers = [make_stepper(m, models.build_model(spec, seed=seed) if m != "plain" else base,
                             batches) for m in MODES]
    done = 0
    while done < per_mode:
        n = min(block, per_mode - done)
        for stepper in steppers:
            for k in range(done, done + n):
                xb, yb = batches[k % len(batches)]
                t0 = time.perf_counter()
                stepper.step(xb, yb)
                stepper.times.append(time.perf_counter() - t0)
        done += n
    medians = {s.mode: statistics.median(s.times[warmup:]) for s in steppers}
    times = {s.mode: s.times[warmup:] for s in steppers}
    del steppers
    # hooks and ghost clip the same per-sample gradients: without noise, and with the same
    # dropout masks (the same RNG state before the step), their clipped sums must agree
    grads = []
    for mode in ("hooks", "ghost"):
        stepper = make_stepper(mode, models.build_model(spec, seed=seed), batches,
                               noise_multiplier=0.0)
        torch.manual_seed(seed)
        stepper.step(*batches[0])
        grads.append(stepper.grads())
    check = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
    return {
        "model": shape.model_id, "dataset": shape.dataset, "batch": shape.batch,
        "tokens": shape.tokens, "trainable_params": models.num_trainable(base),
        "load_s": load_s, "median_step_s": medians,
        "ratio": {m: medians[m] / medians["plain"] for m in ("hooks", "ghost")},
        "ghost_vs_hooks_max_rel_diff": check, "clipping": clipping_source()["source"],
        "torch_threads": torch.get_num_threads(), "step_s": times,
    }


def probe_memory(shape: StepShape, mode: str, mem_warmup: int, mem_steps: int, threads: int,
                 seed: int) -> dict[str, Any]:
    """Child process: the resident set of one mode, ready and at its peak while stepping."""
    _quiet()
    torch.set_num_threads(threads)
    from fedtune import models

    model = models.build_model(_spec(shape), seed=seed)
    batches = step_batches(shape, count=max(1, mem_warmup + mem_steps), seed=seed)
    stepper = make_stepper(mode, model, batches)
    for k in range(mem_warmup):
        stepper.step(*batches[k % len(batches)])
    ready = _rss_kib("VmRSS")
    reset = _reset_peak()
    for k in range(mem_steps):
        stepper.step(*batches[(mem_warmup + k) % len(batches)])
    peak = _rss_kib("VmHWM") if reset else None
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"mode": mode, "rss_ready_mib": None if ready is None else ready / 1024,
            "peak_rss_stepping_mib": None if peak is None else peak / 1024,
            "peak_rss_process_mib": process_peak / 1024, "high_water_reset": reset}


def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh interpreter (spawn): its memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def upload_bytes(params: int) -> int:
    """Bytes of one site's masked input vector in one round (secure aggregation, 32-bit ring)."""
    return RING_BYTES * (params + METRIC_FIELDS)


def run_steps(shape: StepShape, args: argparse.Namespace) -> dict[str, Any]:
    """Part 1 for one model: timing in one child, then one memory child per mode."""
    started = time.time()
    steps = args.lm_steps if shape.model_id == "smollm2-lora" else args.steps
    result = in_child(time_steps, shape, steps, args.warmup, args.block, args.threads,
                      args.seed)
    result["steps"] = steps
    result["memory"] = {}
    if not args.no_memory:
        for mode in MODES:
            result["memory"][mode] = in_child(probe_memory, shape, mode, args.mem_warmup,
                                              args.mem_steps, args.threads, args.seed)
    result["upload_bytes_per_round"] = upload_bytes(result["trainable_params"])
    result["download_bytes_per_round"] = 4 * result["trainable_params"]
    result["wall_s"] = time.time() - started
    return result


# ============================================================================ part 2: accuracy


@dataclass(frozen=True)
class Settings:
    """The federated-accuracy experiment; the same for every variant."""

    sites: int
    examples_per_site: int | None  # None: each site keeps its whole share
    tokens: int
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    eval_fraction: float
    split_seed: int
    seed: int
    # record-level DP-SGD
    epsilon: float
    delta: float
    sample_rate: float
    max_grad_norm: float
    dp_learning_rate: float
    dp_local_epochs: int

    @property
    def model(self) -> dict[str, Any]:
        return {"id": "minilm-lora", "num_classes": 2, "input_dim": self.tokens}

    @property
    def dp_steps_per_round(self) -> int:
        return self.dp_local_epochs * math.ceil(1.0 / self.sample_rate)


def dp_noise_multiplier(s: Settings) -> float:
    """σ of DP-SGD for the whole job: rounds × dp_local_epochs × ⌈1/q⌉ steps at rate q."""
    from fedtune.privacy.calibration import noise_multiplier_for

    return noise_multiplier_for(s.epsilon, s.delta, s.rounds, sample_rate=s.sample_rate,
                                steps_per_round=s.dp_steps_per_round)


def job_table(s: Settings, private: bool) -> dict[str, Any]:
    from fedtune import local_federation as lf
    from fedtune.pretrained import base_sha256

    model = dict(s.model, base_sha256=base_sha256("minilm-lora"))
    job = lf.default_job(model, rounds=s.rounds, min_sites=s.sites, secure=True)
    job["job_id"] = "bench-finetune-dp" if private else "bench-finetune"
    job["training"] = {
        "local_epochs": s.dp_local_epochs if private else s.local_epochs,
        "batch_size": s.batch_size,  # DP-SGD: the physical batch of a sampled (logical) batch
        "learning_rate": s.dp_learning_rate if private else s.learning_rate,
        "optimizer": "adam", "eval_fraction": s.eval_fraction, "seed": s.seed,
    }
    # generous: the sites train a transformer on two shared cores
    job["deadlines"] = {"gather": 5.0, "offer": 300.0, "keys": 120.0, "input": 3600.0,
                        "unmask": 120.0}
    if private:
        job["privacy"] = {"record_level": {
            "enabled": True, "noise_multiplier": dp_noise_multiplier(s),
            "max_grad_norm": s.max_grad_norm, "sample_rate": s.sample_rate,
            "delta": s.delta, "target_epsilon": s.epsilon}}
    return job


def policy_table(s: Settings, private: bool) -> dict[str, Any]:
    policy: dict[str, Any] = {"allowed_models": ["minilm-lora"], "max_rounds": 1000,
                              "require_secure_aggregation": True}
    if private:  # the site's own ledger enforces the same budget
        policy["record_level_dp"] = {"max_epsilon": s.epsilon, "delta": s.delta}
    return {"policy": policy}


def prepare(root: Path, s: Settings, private: bool):  # -> LocalFederation
    """Keys, policies, the federation file and the capped split by movie under ``root``."""
    from fedtune import local_federation as lf
    from fedtune.subsample import subsample_split

    fed = lf.prepare(root, dataset="rotten-tomatoes", n_sites=s.sites, partition="institution",
                     seed=s.split_seed, job=job_table(s, private),
                     policy=policy_table(s, private))
    if s.examples_per_site is not None:
        subsample_split(root / "data", s.examples_per_site, seed=s.split_seed)
    return fed


def pooled_splits(s: Settings, fed) -> tuple[Any, Any, list[int]]:
    """The union of the sites' training splits and of their held-out splits, split exactly as
    each site splits its own file (same model, eval_fraction and seed)."""
    from fedtune.client.data import SiteData, load_site_data, train_eval_split
    from fedtune.job import ModelConfig

    spec = ModelConfig(**s.model)
    parts = [train_eval_split(load_site_data(site.data, spec), s.eval_fraction, s.seed)
             for site in fed.sites]

    def pool(data: list[SiteData]) -> SiteData:
        return SiteData(np.concatenate([d.features for d in data]),
                        np.concatenate([d.labels for d in data]))

    return pool([p[0] for p in parts]), pool([p[1] for p in parts]), [len(p[0]) for p in parts]


def _coordinator_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "coordinator.log"
    events = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def _egress(fed) -> dict[str, Any]:
    """What every site sent, per round, from its signed egress log."""
    per_site = {}
    eps = []
    for site in fed.sites:
        path = fed.state_dir(site) / "egress.jsonl"
        rounds: dict[int, dict[str, int]] = {}
        site_eps = None
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "sent" and int(record.get("round", 0)) > 0:
                    r = rounds.setdefault(int(record["round"]), {"total": 0, "submit_input": 0,
                                                                 "messages": 0})
                    r["total"] += int(record["size"])
                    r["messages"] += 1
                    if record["type"] == "SubmitInput":
                        r["submit_input"] += int(record["size"])
                elif record.get("event") == "ledger" and record.get("action") == "commit":
                    site_eps = float(record["dataset_epsilon"])
        per_site[site.site_id] = rounds
        if site_eps is not None:
            eps.append(site_eps)
    return {"per_site_round": per_site, "ledger_epsilon_max": max(eps) if eps else None}


def run_federation(root: Path, s: Settings, private: bool, timeout_s: float) -> dict[str, Any]:
    """One real federation: ``fedtune server`` and ``fedtune site`` processes, loopback gRPC."""
    from fedtune import local_federation as lf
    from fedtune.server.checkpoint import read_history

    fed = prepare(root, s, private)
    started = time.monotonic()
    procs: list[subprocess.Popen] = [lf.start_server(fed)]
    failure = ""
    try:
        lf.wait_for_port(fed.port, timeout=120.0)
        procs += [lf.start_site(fed, site) for site in fed.sites]
        deadline = started + timeout_s
        while procs[0].poll() is None and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs[1:]):
                failure = "a site process failed"
                break
            time.sleep(1.0)
        if procs[0].poll() is None and not failure:
            failure = f"timed out after {timeout_s:.0f} s"
        for p in procs[1:]:
            if not failure:
                p.wait(timeout=60)
    except Exception as exc:  # noqa: BLE001  (reported in the cell, the others still run)
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        lf.stop_processes(procs)
    wall = time.monotonic() - started
    history, final = read_history(fed.run_dir)
    training = [h for h in history if not h.evaluate_only and not h.aborted]
    events = _coordinator_events(fed.run_dir)
    begun = {e["round"]: e["ts"] for e in events if e.get("event") == "round_started"}
    ended = {e["round"]: e["ts"] for e in events if e.get("event") == "round_completed"}
    round_s = [ended[r] - begun[r] for r in sorted(ended) if r in begun]
    privacy_path = fed.run_dir / "privacy.json"
    report = json.loads(privacy_path.read_text()) if privacy_path.exists() else {}
    egress = _egress(fed)
    if final is None and not failure:
        failure = "the run did not reach its final evaluation"
    if failure:
        failure += f" (logs: {root}/*.out, {fed.run_dir}/coordinator.log)"
    record = report.get("record_level", {})
    return {
        "accuracy": float(final.eval_accuracy) if final is not None else None,
        "eval_count": int(final.eval_count) if final is not None else 0,
        # the accuracy of the global model each training round started from (round 1: the
        # pretrained encoder with a fresh head)
        "accuracy_by_round": [round(float(h.metrics.eval_accuracy), 4) for h in training],
        # the held-out loss of that model, and the training loss of the round's local training
        "eval_loss_by_round": [round(float(h.metrics.eval_loss), 4) for h in training],
        "train_loss_by_round": [round(float(h.metrics.train_loss), 4) for h in training],
        "completed_rounds": len(training),
        "aborted_rounds": sum(1 for h in history if h.aborted),
        "round_s": round_s,
        "epsilon_reported": record.get("epsilon_per_site_at_most") if private else math.inf,
        "epsilon_ledger_max": egress["ledger_epsilon_max"],
        "noise_multiplier": record.get("noise_multiplier", 0.0) if private else 0.0,
        "egress": egress["per_site_round"],
        "failure": failure,
        "wall_s": wall,
        "transport": "fedtune server + one fedtune site process per site (local_federation), "
                     "insecure loopback gRPC, secure aggregation on",
    }


def centralised_lora(s: Settings, train: Any, held_out: Any) -> dict[str, Any]:
    """The federation's recipe on the pooled training data, as many passes as it made."""
    from fedtune import models
    from fedtune.client import trainer
    from fedtune.job import ModelConfig, TrainingConfig

    started = time.monotonic()
    model = models.build_model(ModelConfig(**s.model), seed=s.seed)
    epochs = s.rounds * s.local_epochs
    config = TrainingConfig(local_epochs=epochs, batch_size=s.batch_size,
                            learning_rate=s.learning_rate, optimizer="adam", seed=s.seed)
    trainer.train(model, train, config, round_seed=s.seed)
    result = trainer.evaluate(model, held_out)
    return {"accuracy": result.correct / result.count, "eval_count": result.count,
            "epochs": epochs, "wall_s": time.monotonic() - started}


def frozen_baseline(s: Settings, train: Any, held_out: Any) -> dict[str, Any]:
    from fedtune.frozen_baseline import frozen_encoder_accuracy
    from fedtune.pretrained import load_tokenizer

    started = time.monotonic()
    pad = load_tokenizer("minilm-lora").pad_token_id
    result = frozen_encoder_accuracy("minilm-lora", train, held_out,
                                     pad_id=int(pad) if pad is not None else 0, seed=s.seed)
    return {"accuracy": result.accuracy, "eval_count": result.eval_examples,
            "train_count": result.train_examples, "wall_s": time.monotonic() - started}


def run_accuracy(s: Settings, variants: list[str], timeout_s: float,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Part 2: the variants on the same split, scored on the same held-out data."""
    out: dict[str, Any] = {"settings": asdict(s)}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        root = Path(tmp)
        for name, private in (("federated", False), ("federated_dp", True)):
            if name not in variants:
                continue
            log(f"{name} ({s.sites} site processes, {s.rounds} rounds) ...")
            out[name] = run_federation(root / name, s, private, timeout_s)
            r = out[name]
            acc = "—" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
            log(f"  accuracy {acc} on {r['eval_count']} held-out reviews, "
                f"by round {r['accuracy_by_round']}, {r['wall_s']:.0f} s"
                + (f"; FAILED: {r['failure']}" if r["failure"] else ""))
        # the pooled data: the same split (same cap and seed) as the federations'
        fed = prepare(root / "pooled", s, private=False)
        train, held_out, site_train = pooled_splits(s, fed)
        out["data"] = {"train": len(train), "held_out": len(held_out),
                       "train_per_site": site_train,
                       "held_out_fresh_share": float(np.mean(held_out.labels))}
        if "centralised" in variants:
            log(f"centralised LoRA ({len(train)} pooled reviews, "
                f"{s.rounds * s.local_epochs} epochs) ...")
            out["centralised"] = centralised_lora(s, train, held_out)
            log(f"  accuracy {out['centralised']['accuracy']:.3f}, "
                f"{out['centralised']['wall_s']:.0f} s")
        if "frozen" in variants:
            log("frozen encoder + logistic regression ...")
            out["frozen"] = frozen_baseline(s, train, held_out)
            log(f"  accuracy {out['frozen']['accuracy']:.3f}, {out['frozen']['wall_s']:.0f} s")
    return out


# ============================================================================ report


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def measured_upload(accuracy: dict[str, Any] | None) -> dict[str, Any] | None:
    """Median over sites and training rounds of the non-private federation's egress figures."""
    if not accuracy or "federated" not in accuracy:
        return None
    submit, total, messages = [], [], []
    for rounds in accuracy["federated"]["egress"].values():
        for r in rounds.values():
            # a training round: the final evaluation round masks only the metric fields
            if r["submit_input"] > RING_BYTES * METRIC_FIELDS:
                submit.append(r["submit_input"])
                total.append(r["total"])
                messages.append(r["messages"])
    if not submit:
        return None
    return {"submit_input_bytes": statistics.median(submit),
            "sent_bytes": statistics.median(total), "messages": statistics.median(messages)}


def print_steps(results: list[dict[str, Any]], skipped: list[dict[str, str]],
                upload: dict[str, Any] | None, args: argparse.Namespace) -> None:
    counts = ", ".join(f"{r['model']} {r['steps']}" for r in results)
    print(f"\nPart 1 — seconds per training step: median of the timed steps per mode "
          f"({counts}) after {args.warmup} warm-up steps, modes interleaved in blocks of "
          f"{args.block}; Adam; torch threads = {args.threads}")
    header = ["model", "params", "batch", "plain s", "hooks s", "ghost s", "hooks÷plain",
              "ghost÷plain", "check", "RSS ready MiB", "peak MiB plain/hooks/ghost",
              "up B/round", "B/param"]
    rows = []
    for r in results:
        m, mem = r["median_step_s"], r.get("memory", {})
        peaks = "/".join(_mib(mem.get(k, {}).get("peak_rss_stepping_mib")) for k in MODES)
        ready = _mib(mem.get("plain", {}).get("rss_ready_mib"))
        up = r["upload_bytes_per_round"]
        note = ""
        if r["model"] == "minilm-lora" and upload is not None:
            up, note = upload["submit_input_bytes"], " (measured)"
        rows.append([r["model"], f"{r['trainable_params']:,}", f"{r['batch']}×{r['tokens']}",
                     f"{m['plain']:.3f}", f"{m['hooks']:.3f}", f"{m['ghost']:.3f}",
                     f"{r['ratio']['hooks']:.2f}×", f"{r['ratio']['ghost']:.2f}×",
                     f"{r['ghost_vs_hooks_max_rel_diff']:.1e}", ready, peaks,
                     f"{up:,.0f}{note}", f"{up / r['trainable_params']:.4f}"])
    for s in skipped:
        rows.append([s["model"]] + ["—"] * 11 + [s["reason"]])
    _print_rows(header, rows)
    if results:
        print(f"DP modes: {results[0]['clipping']}. check: max |hooks − ghost| ÷ max |hooks| of "
              "the clipped, summed gradient of one batch without noise (same dropout masks).")
        print("peak MiB: the process's resident-set high-water mark while stepping (model, "
              "optimiser, Opacus state), one fresh process per mode. up B/round: one site's "
              "masked input vector per round, 4 B × (parameters + 6 metric fields); "
              "download: 4 B/parameter.")
    if upload is not None:
        print(f"minilm-lora, measured in Part 2's federation (egress logs, median over sites "
              f"and training rounds): SubmitInput {upload['submit_input_bytes']:,.0f} B, "
              f"everything a site sent in a round {upload['sent_bytes']:,.0f} B in "
              f"{upload['messages']:.0f} messages.")


def target_checks(accuracy: dict[str, Any]) -> dict[str, Any]:
    checks = {}
    for name, goal in TARGETS.items():
        r = accuracy.get(name)
        acc = None if r is None else r.get("accuracy")
        checks[name] = {"goal": goal, "accuracy": acc,
                        "met": None if acc is None else bool(acc >= goal)}
    return checks


def print_accuracy(acc: dict[str, Any]) -> dict[str, Any]:
    s = acc["settings"]
    data = acc["data"]
    cap = s["examples_per_site"]
    share = f"at most {cap} reviews each" if cap is not None else "each its whole share"
    print(f"\nPart 2 — accuracy on Rotten Tomatoes: {s['sites']} sites split by movie, {share} "
          f"({data['train']} training, "
          f"{data['held_out']} held-out = the union of the sites' eval splits, "
          f"{data['held_out_fresh_share']:.1%} fresh); minilm-lora, {s['tokens']} tokens, "
          f"Adam, batch {s['batch_size']}")
    checks = target_checks(acc)
    header = ["variant", "accuracy", "held-out", "ε", "rounds × local epochs", "wall s",
              "target"]
    rows = []

    def add(label: str, key: str, eps: str, plan: str) -> None:
        r = acc.get(key)
        if r is None:
            return
        value = "failed" if r.get("accuracy") is None else f"{r['accuracy']:.3f}"
        target = ""
        if key in checks:
            c = checks[key]
            verdict = "—" if c["met"] is None else "met" if c["met"] else "NOT met"
            target = f"≥ {c['goal']:.2f}: {verdict}"
        rows.append([label, value, str(r.get("eval_count", "")), eps, plan,
                     f"{r.get('wall_s', 0):.0f}", target])

    add("frozen encoder + logistic regression", "frozen", "—", "— (pooled)")
    add(f"centralised LoRA (pooled, lr {s['learning_rate']:g})", "centralised", "—",
        f"{s['rounds'] * s['local_epochs']} epochs (pooled)")
    add(f"federated LoRA (lr {s['learning_rate']:g})", "federated", "∞",
        f"{s['rounds']} × {s['local_epochs']}")
    if "federated_dp" in acc:
        r = acc["federated_dp"]
        eps = r.get("epsilon_reported")
        eps_text = "—" if eps is None else f"{eps:.2f}"
        add(f"federated LoRA + DP-SGD (q {s['sample_rate']:g}, σ {r['noise_multiplier']:.3f}, "
            f"C {s['max_grad_norm']:g}, lr {s['dp_learning_rate']:g})", "federated_dp",
            eps_text, f"{s['rounds']} × {s['dp_local_epochs']}")
    _print_rows(header, rows)
    for key in ("federated", "federated_dp"):
        r = acc.get(key)
        if r is None:
            continue
        rounds = ", ".join(f"{a:.3f}" for a in r["accuracy_by_round"])
        secs = ", ".join(f"{t:.0f}" for t in r["round_s"])
        print(f"{key}: accuracy of the model each round started from: {rounds}; "
              f"seconds per round (incl. final evaluation): {secs}")
        if key == "federated_dp":
            print(f"  ε = {s['epsilon']:g} target, δ = {s['delta']:g}: coordinator reports "
                  f"{r['epsilon_reported']}, the sites' ledgers at most "
                  f"{r['epsilon_ledger_max']}")
        if r["failure"]:
            print(f"  FAILED: {r['failure']}")
    print("Federations run for real: " + (acc.get("federated") or acc.get("federated_dp")
                                          or {}).get("transport", "—"))
    for key, c in checks.items():
        if c["accuracy"] is not None:
            print(f"Target {key}: {c['accuracy']:.3f} (goal ≥ {c['goal']:.2f}): "
                  f"{'met' if c['met'] else 'NOT met'}")
    return checks


# ============================================================================ main


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _strict(value: Any) -> Any:
    """Plain JSON: ε = ∞ is written as the string "inf", NaN as null."""
    if isinstance(value, float):
        return "inf" if value == math.inf else None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="steps,accuracy",
                        help="comma-separated: steps, accuracy (default both)")
    parser.add_argument("--models", default="minilm-lora,smollm2-lora",
                        help="Part 1's models (default minilm-lora,smollm2-lora; one that is "
                             "not in the registry is skipped with a note)")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps per mode for minilm-lora (default 20)")
    parser.add_argument("--lm-steps", type=int, default=8,
                        help="timed steps per mode for smollm2-lora (default 8)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per mode first (default 3)")
    parser.add_argument("--block", type=int, default=5,
                        help="steps of one mode before switching to the next (default 5)")
    parser.add_argument("--mem-warmup", type=int, default=1,
                        help="memory probe: steps before the high-water mark is reset")
    parser.add_argument("--mem-steps", type=int, default=2,
                        help="memory probe: steps measured (default 2)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--examples-per-site", type=int, default=None,
                        help="cap on each site's reviews (default: none, each site keeps its "
                             "whole share of the 12,808, about 4,300)")
    parser.add_argument("--tokens", type=int, default=48,
                        help="Part 2: token positions per review (default 48: 96%% fit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.002,
                        help="Adam learning rate (default 0.002)")
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--epsilon", type=float, default=8.0,
                        help="record-level ε of the DP run, over the whole job (default 8)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--sample-rate", type=float, default=0.5,
                        help="DP-SGD Poisson rate q (default 0.5)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--dp-lr", type=float, default=0.005,
                        help="DP run's Adam learning rate (default 0.005)")
    parser.add_argument("--dp-local-epochs", type=int, default=4,
                        help="DP run's local epochs per round (default 4: 8 noisy steps of "
                             "q·N examples each at q = 0.5)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"Part 2's variants (default {','.join(VARIANTS)})")
    parser.add_argument("--federation-timeout", type=float, default=7200.0,
                        help="seconds a federation may run (default 7200: the DP run takes "
                             "about 2,500 s on 2 idle cores)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the per-site cap (the split by movie is deterministic)")
    parser.add_argument("--seed", type=int, default=0,
                        help="job seed: initialisation, train/eval split, batch order")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in the bench's own processes (default 1; the site "
                             "processes always run with one)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 timed steps, 150 reviews per site, 2 rounds, "
                             "32 tokens")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {RESULTS.name}; {QUICK_RESULTS.name} with "
                             "--quick, so a smoke run never overwrites the full results)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_RESULTS if args.quick else RESULTS
    if args.quick:
        args.steps, args.lm_steps, args.warmup, args.block, args.mem_steps = 3, 2, 1, 3, 1
        args.examples_per_site, args.rounds, args.tokens = 150, 2, 32
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {','.join(VARIANTS)}")
    if not parts or parts - {"steps", "accuracy"}:
        parser.error("--parts: choose from steps, accuracy")
    _quiet()
    torch.set_num_threads(args.threads)

    from fedtune import models

    started = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {text}", flush=True)

    load_before = os.getloadavg()[0]
    failed: list[dict[str, str]] = []
    step_results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if "steps" in parts:
        for model_id in [m.strip() for m in args.models.split(",") if m.strip()]:
            if model_id not in STEP_SHAPES:
                parser.error(f"--models: choose from {', '.join(STEP_SHAPES)}")
            if model_id not in models.MODEL_IDS:
                skipped.append({"model": model_id, "reason": "not in the registry yet: skipped"})
                log(f"{model_id}: not in the registry yet, skipped")
                continue
            shape = STEP_SHAPES[model_id]
            log(f"{model_id}: step timing ({shape.batch}×{shape.tokens}) and memory probes ...")
            try:
                step_results.append(run_steps(shape, args))
                r = step_results[-1]
                log(f"  plain {r['median_step_s']['plain']:.3f} s, hooks "
                    f"{r['median_step_s']['hooks']:.3f} s, ghost "
                    f"{r['median_step_s']['ghost']:.3f} s; {r['wall_s']:.0f} s")
            except Exception as exc:  # noqa: BLE001  (report it, run the rest)
                log(f"  failed: {type(exc).__name__}: {exc}")
                failed.append({"part": "steps", "model": model_id, "error": repr(exc)})
    accuracy = None
    checks: dict[str, Any] = {}
    if "accuracy" in parts:
        s = Settings(sites=args.sites, examples_per_site=args.examples_per_site,
                     tokens=args.tokens, rounds=args.rounds, local_epochs=args.local_epochs,
                     batch_size=args.batch_size, learning_rate=args.lr,
                     eval_fraction=args.eval_fraction, split_seed=args.split_seed,
                     seed=args.seed, epsilon=args.epsilon, delta=args.delta,
                     sample_rate=args.sample_rate, max_grad_norm=args.max_grad_norm,
                     dp_learning_rate=args.dp_lr, dp_local_epochs=args.dp_local_epochs)
        try:
            accuracy = run_accuracy(s, variants, args.federation_timeout, log)
            for key in ("federated", "federated_dp"):
                if key in accuracy and accuracy[key]["failure"]:
                    failed.append({"part": "accuracy", "variant": key,
                                   "error": accuracy[key]["failure"]})
        except Exception as exc:  # noqa: BLE001
            log(f"accuracy part failed: {type(exc).__name__}: {exc}")
            failed.append({"part": "accuracy", "error": repr(exc)})
    upload = measured_upload(accuracy)
    if step_results or skipped:
        print_steps(step_results, skipped, upload, args)
    if accuracy is not None and "data" in accuracy:
        checks = print_accuracy(accuracy)
    wall = time.time() - started
    load_after = os.getloadavg()[0]
    if max(load_before, load_after) > (os.cpu_count() or 1):
        print(f"machine busy: 1-minute load {load_before:.1f} before, {load_after:.1f} after, "
              f"on {os.cpu_count()} CPUs (seconds are inflated; ratios less so, accuracies not)")
    report = {
        "benchmark": "finetune",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__,
                    **{name: _version(name) for name in ("opacus", "transformers", "peft")},
                    "cpus": os.cpu_count(),
                    "load_1min": {"before": load_before, "after": load_after}},
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "steps": {"settings": {"noise_multiplier": NOISE_MULTIPLIER,
                               "max_grad_norm": MAX_GRAD_NORM,
                               "optimizer": f"Adam(lr={STEP_LR})", "modes": list(MODES)},
                  "results": step_results, "skipped": skipped,
                  "minilm_upload_measured": upload},
        "accuracy": accuracy,
        "targets": checks,
        "failed": failed,
        "wall_s": wall,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_strict(report), indent=2, allow_nan=False) + "\n")
    print(f"\nwrote {args.out} ({wall:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
