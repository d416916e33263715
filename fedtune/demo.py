"""``fedtune demo``: a coordinator and site agents as separate processes on one machine.

The demo uses only public entry points: it writes a federation with
:mod:`fedtune.local_federation`, starts ``fedtune server`` and ``fedtune site`` processes over
loopback gRPC, follows the run with ``GetStatus`` (as ``fedtune status`` does) and shows one
progress bar over the rounds with the aggregated metrics.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
from tqdm import tqdm

from fedtune import local_federation as lf
from fedtune.server.checkpoint import read_history
from fedtune.status import fetch_status
from fedtune.subsample import subsample_split

DEMO_TIMEOUT_S = 600.0


#: ``--task text``: examples each site keeps of its Rotten Tomatoes movies (two cores, minutes)
TEXT_EXAMPLES_PER_SITE = 800
TEXT_ROUNDS = 3


def text_job(rounds: int, n_sites: int) -> dict:
    """MiniLM + LoRA on review sentiment: the job ``fedtune demo --task text`` runs."""
    from fedtune.pretrained import base_sha256

    # the job names the base's weights, so every site checks it has the same base
    model = {"id": "minilm-lora", "num_classes": 2, "input_dim": 48,
             "base_sha256": base_sha256("minilm-lora")}
    job = lf.default_job(model, rounds=rounds, min_sites=n_sites)
    job["job_id"] = "demo-text"
    job["training"] = {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.002,
                       "optimizer": "adam", "eval_fraction": 0.2, "seed": 0}
    job["deadlines"] = {"gather": 5.0, "offer": 120.0, "keys": 60.0, "input": 600.0,
                        "unmask": 60.0}
    return job


def run_demo(parent: Path, *, rounds: int = 5, n_sites: int = 3, dataset: str = "digits",
             task: str = "classic", examples_per_site: int = TEXT_EXAMPLES_PER_SITE) -> int:
    root = parent / time.strftime("run-%Y%m%d-%H%M%S")
    if task == "text":
        dataset = "rotten-tomatoes"
        print(f"fedtune demo: fine-tuning MiniLM + LoRA on Rotten Tomatoes reviews, {n_sites} "
              f"sites (split by movie, {examples_per_site} reviews each), {rounds} rounds; "
              f"files in {root}")
        fed = lf.prepare(root, dataset=dataset, n_sites=n_sites, rounds=rounds,
                         partition="institution", job=text_job(rounds, n_sites),
                         policy={"policy": {"allowed_models": ["minilm-lora"], "max_rounds": 100}})
        subsample_split(root / "data", examples_per_site)
    else:
        print(f"fedtune demo: {n_sites} sites on {dataset}, {rounds} rounds; files in {root}")
        fed = lf.prepare(root, dataset=dataset, n_sites=n_sites, rounds=rounds)
    procs: list[subprocess.Popen] = [lf.start_server(fed)]
    try:
        lf.wait_for_port(fed.port)
        procs += [lf.start_site(fed, site) for site in fed.sites]
        _follow(fed, procs, rounds)
        for p in procs:
            p.wait(timeout=60)
    finally:
        lf.stop_processes(procs)
    history, final_metrics = read_history(fed.run_dir)
    if final_metrics is None:
        print(f"fedtune demo: the run did not finish; see {root}/*.out and "
              f"{fed.run_dir}/coordinator.log", file=sys.stderr)
        return 1
    training = [h for h in history if not h.aborted and not h.evaluate_only]
    # round 1 evaluates the initial model: sites evaluate what they receive, then train
    initial_acc = training[0].metrics.eval_accuracy if training else float("nan")
    final_acc = final_metrics.eval_accuracy
    held_out = int(final_metrics.eval_count)
    print(f"\naccuracy on the sites' held-out data ({held_out} examples): "
          f"initial model {initial_acc:.3f} -> federated model {final_acc:.3f}")
    if task == "text":
        print("frozen-encoder baseline (MiniLM sentence embeddings + logistic regression on the "
              "pooled training data, computed here)…", flush=True)
        baseline = _text_baseline(fed)
        print(f"frozen-encoder baseline: {baseline.accuracy:.3f} on the same held-out data "
              f"({baseline.eval_examples} examples); federated LoRA: {final_acc:.3f} "
              f"({final_acc - baseline.accuracy:+.3f})")
    print(f"run directory: {fed.run_dir} (checkpoint.npz, coordinator.log); "
          f"site logs: {root}/site-*.out")
    return 0 if final_acc > initial_acc else 1


def _text_baseline(fed: lf.LocalFederation):
    import numpy as np

    from fedtune.client.data import SiteData, load_site_data, train_eval_split
    from fedtune.federation import load_federation
    from fedtune.frozen_baseline import frozen_encoder_accuracy

    job = load_federation(fed.federation).job
    parts = [train_eval_split(load_site_data(s.data, job.model), job.training.eval_fraction,
                              job.training.seed) for s in fed.sites]

    def pool(data: list[SiteData]) -> SiteData:
        return SiteData(np.concatenate([d.features for d in data]),
                        np.concatenate([d.labels for d in data]))

    return frozen_encoder_accuracy(job.model.id, pool([p[0] for p in parts]),
                                   pool([p[1] for p in parts]))


def _follow(fed: lf.LocalFederation, procs: list[subprocess.Popen], rounds: int):
    """Show progress until the run finishes, a process dies, or the demo times out."""
    status = None
    seen_rounds = 0
    deadline = time.time() + DEMO_TIMEOUT_S
    with tqdm(total=rounds, desc="rounds", unit="round", file=sys.stdout,
              bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} {postfix}") as bar:
        while time.time() < deadline:
            try:
                status = fetch_status(fed.address, timeout=5.0, insecure=True)
            except grpc.RpcError:
                if procs[0].poll() is not None:  # the coordinator ended (the run is over)
                    if procs[0].returncode == 0:
                        bar.update(rounds - seen_rounds)
                    break
                time.sleep(0.5)
                continue
            if status.rounds_completed > seen_rounds:
                bar.update(status.rounds_completed - seen_rounds)
                seen_rounds = status.rounds_completed
            done = [h for h in status.history if not h.aborted]
            if done:
                m = done[-1].metrics
                bar.set_postfix_str(f"sites={done[-1].contributors} acc={m.eval_accuracy:.3f} "
                                    f"eval_loss={m.eval_loss:.3f} train_loss={m.train_loss:.3f}")
            else:
                connected = sum(s.connected for s in status.sites)
                bar.set_postfix_str(f"{connected}/{len(status.sites)} sites connected")
            if status.finished:
                bar.update(rounds - seen_rounds)
                break
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    return status
