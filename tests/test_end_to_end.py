"""End to end: a real coordinator process and real site-agent processes over loopback gRPC."""

from __future__ import annotations

import hashlib
import json
import signal

import numpy as np
import pytest
from helpers_processes import read_events, wait_for_event

from fedtune import local_federation as lf
from fedtune.server import checkpoint as ckpt

pytestmark = pytest.mark.slow


def _job(fed_model: dict, rounds: int, **overrides) -> dict:
    job = lf.default_job(fed_model, rounds=rounds, min_sites=2)
    job["deadlines"] = {"gather": 2.0, "offer": 20.0, "input": 60.0}
    for key, value in overrides.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return job


DIGITS_MODEL = {"id": "image-cnn", "num_classes": 10, "image_shape": [1, 8, 8], "hidden": 64}


def test_three_sites_train_and_the_global_model_improves(fed_factory, processes):
    fed = fed_factory(n_sites=3, job=_job(DIGITS_MODEL, rounds=3))
    server = processes.add(lf.start_server(fed))
    lf.wait_for_port(fed.port)
    sites = [processes.add(lf.start_site(fed, s)) for s in fed.sites]

    assert server.wait(timeout=180) == 0
    assert [s.wait(timeout=30) for s in sites] == [0, 0, 0]
    history, final = ckpt.read_history(fed.run_dir)
    training = [h for h in history if not h.evaluate_only]
    assert [h.contributors for h in training] == [3, 3, 3]
    initial_accuracy = training[0].metrics.eval_accuracy  # round 1 evaluates the initial model
    assert final is not None and final.eval_accuracy > initial_accuracy + 0.3
    assert (fed.run_dir / "checkpoint.npz").exists()
    assert "finished 3 rounds" in (fed.root / "coordinator.out").read_text()


def _slow_down(site: lf.SiteFiles, factor: int) -> None:
    """Make one site's local training take ``factor`` times longer (more copies of its data)."""
    with np.load(site.data) as data:
        x, y = data["x"], data["y"]
    np.savez(site.data, x=np.concatenate([x] * factor), y=np.concatenate([y] * factor))


def test_site_killed_mid_round_the_round_completes_and_the_site_rejoins(fed_factory, processes):
    # gather 30: after the kill, the next round waits up to 30 s for the restarted victim
    job = _job(DIGITS_MODEL, rounds=6, deadlines={"gather": 30.0, "offer": 20.0, "input": 30.0},
               training={"local_epochs": 3})
    fed = fed_factory(n_sites=3, job=job)
    victim = fed.sites[2]
    original = victim.data.read_bytes()
    _slow_down(victim, 30)
    log = fed.run_dir / "coordinator.log"
    server = processes.add(lf.start_server(fed))
    lf.wait_for_port(fed.port)
    for s in fed.sites[:2]:
        processes.add(lf.start_site(fed, s))
    first = processes.add(lf.start_site(fed, victim, log_name="victim-1.out"))

    # the victim accepted round 2 and is training on its (slow) data: kill it now
    started = wait_for_event(log, lambda e: e["event"] == "phase_started"
                             and e["phase"] == "masked_input" and e["round"] == 2
                             and victim.site_id in e.get("sites", e.get("accepted", [])),
                             90, [server])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_round = started["round"]
    completed = wait_for_event(log, lambda e: e["event"] == "round_completed"
                               and e["round"] == killed_round, 60, [server])
    assert completed["contributors"] == 2
    assert completed["dropouts"] == [victim.site_id]

    victim.data.write_bytes(original)  # back to normal speed: it must make the deadlines now
    processes.add(lf.start_site(fed, victim, log_name="victim-2.out"))
    rejoined = wait_for_event(log, lambda e: e["event"] == "input_received"
                              and e["site"] == victim.site_id and e["round"] > killed_round,
                              120, [server])
    assert rejoined["round"] > killed_round
    assert server.wait(timeout=180) == 0


def test_coordinator_killed_after_round_k_resumes_at_k_plus_1_with_the_checkpointed_model(
        fed_factory, processes):
    # with site-level DP, so that the restart must also neither forget nor repeat a charge
    job = _job(DIGITS_MODEL, rounds=5, training={"local_epochs": 3, "weighting": "uniform"},
               server_optimizer={"name": "fedadam", "learning_rate": 0.01})
    job["privacy"] = {"site_level": {"mode": "central", "clip_norm": 5.0,
                                     "noise_multiplier": 0.01, "delta": 1e-5}}
    fed = fed_factory(n_sites=3, job=job)
    for s in fed.sites:
        _slow_down(s, 4)  # rounds of about a second, so the kill lands between rounds
    log = fed.run_dir / "coordinator.log"
    first = processes.add(lf.start_server(fed))
    lf.wait_for_port(fed.port)
    sites = [processes.add(lf.start_site(fed, s)) for s in fed.sites]

    wait_for_event(log, lambda e: e["event"] == "round_completed"
                   and e.get("completed_rounds") == 2, 120, [first])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    state = ckpt.load(fed.run_dir)
    assert state is not None
    k = state.meta["completed_rounds"]
    assert k >= 2
    checkpointed = hashlib.sha256(state.params.tobytes()).hexdigest()
    events_before = len(read_events(log))

    second = processes.add(lf.start_server(fed, log_name="coordinator-2.out"))
    resumed = wait_for_event(log, lambda e: e["event"] == "resumed", 60, [second])
    assert resumed["completed_rounds"] == k
    first_round = wait_for_event(log, lambda e: e["event"] == "round_started", 90, [second],
                                 skip=events_before)
    assert first_round["training_round"] == k + 1
    assert first_round["params_sha256"] == checkpointed
    assert first_round["round"] > max(e["round"] for e in read_events(log)[:events_before]
                                      if "round" in e)  # round ids are never reused

    assert second.wait(timeout=180) == 0
    assert [s.wait(timeout=60) for s in sites] == [0, 0, 0]
    history, final = ckpt.read_history(fed.run_dir)
    assert sum(1 for h in history if not h.evaluate_only and not h.aborted) == 5
    assert final is not None
    privacy = json.loads((fed.run_dir / "privacy.json").read_text())
    assert privacy["site_level"]["released_rounds"] == 5  # one charge per released round
    assert [e["round"] for e in privacy["history"]] == sorted({e["round"]
                                                                for e in privacy["history"]})

