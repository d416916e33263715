"""Privacy budgets are enforced: by each site's ledger, and by the coordinator for the job.

Real coordinator and site agents over loopback gRPC (in this process, so the ledgers and the
coordinator's accountant can be inspected), on scikit-learn's digits.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedtune import local_federation as lf
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.client.ledger import Ledger, dataset_id
from fedtune.federation import load_federation
from fedtune.identity import load_identity
from fedtune.job import JobConfig, ModelConfig, RecordLevelDPConfig, TrainingConfig
from fedtune.peers import load_peers
from fedtune.policy import load_policy
from fedtune.privacy.accountants import Release, epsilon
from fedtune.privacy_plan import record_level_release
from fedtune.server import app
from fedtune.server.coordinator import Coordinator

DIGITS = {"id": "image-cnn", "num_classes": 10, "image_shape": [1, 8, 8]}
RECORD = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.25,
          "delta": 1e-5}


def _job(rounds: int, *, secure: bool = True, record: dict | None = None,
         site: dict | None = None, min_sites: int = 2) -> dict:
    job = lf.default_job(DIGITS, rounds=rounds, min_sites=min_sites, secure=secure)
    job["training"].update({"local_epochs": 1, "weighting": "uniform", "learning_rate": 0.1})
    job["deadlines"] = {"gather": 0.5, "offer": 10.0, "keys": 5.0, "input": 60.0, "unmask": 3.0}
    job["privacy"] = {}
    if record:
        job["privacy"]["record_level"] = record
    if site:
        job["privacy"]["site_level"] = site
    return job


def _record_release() -> Release:
    job = JobConfig("j", ModelConfig("image-cnn"), rounds=1, min_sites=1,
                    training=TrainingConfig(local_epochs=1),
                    record_dp=RecordLevelDPConfig(**RECORD))
    return record_level_release(job)


class Federation:
    def __init__(self, root: Path, job: dict, n_sites: int = 3, drop_at: dict | None = None,
                 policy: dict | None = None) -> None:
        self.fed = lf.prepare(root, n_sites=n_sites, job=job, policy=policy)
        self.running = app.start(load_federation(self.fed.federation), port=0, insecure=True)
        self.agents = [SiteAgent(SiteAgentConfig(
            coordinator=f"127.0.0.1:{self.running.port}", site_id=s.site_id,
            identity=load_identity(s.key), data_path=s.data, policy=load_policy(s.policy),
            peers=load_peers(self.fed.peers), give_up_after_s=5, poll_wait_ms=500,
            state_dir=root / "state" / s.site_id,
            drop_at=(drop_at or {}).get(s.site_id))) for s in self.fed.sites]
        self.threads = [threading.Thread(target=a.run, daemon=True) for a in self.agents]
        for t in self.threads:
            t.start()

    @property
    def coordinator(self) -> Coordinator:
        return self.running.coordinator

    def wait(self, done, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done(), "timed out"

    def ledger(self, i: int) -> tuple[Ledger, str]:
        site = self.fed.sites[i]
        return Ledger(self.fed.root / "state" / site.site_id / "ledger.sqlite"), dataset_id(site.data)

    def stop(self) -> None:
        for a in self.agents:
            a.stop()
        self.running.stop(grace=0.2)


# ---------------------------------------------------------------------------- the ledger

def test_a_charge_is_recorded_once_per_round_even_if_repeated(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    release = _record_release()
    assert ledger.reserve("d", "run", 1, "job", release)
    assert not ledger.reserve("d", "run", 1, "job", release)
    ledger.commit("run", 1)
    assert len(ledger.charges("d")) == 1
    assert ledger.spent("d", 1e-5) == pytest.approx(epsilon([release], 1e-5))


def test_a_pending_charge_counts_as_spent_and_survives_a_restart(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.reserve("d", "run", 4, "job", _record_release())
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.sqlite")
    assert [c.status for c in reopened.charges("d")] == ["pending"]
    assert reopened.spent("d", 1e-5) > 0


def test_cancelling_withdraws_a_pending_charge_but_never_a_committed_one(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.reserve("d", "run", 1, "job", _record_release())
    ledger.commit("run", 1)
    ledger.reserve("d", "run", 2, "job", _record_release())
    ledger.cancel("run", 2)
    ledger.cancel("run", 1)
    assert [(c.round, c.status) for c in ledger.charges("d")] == [(1, "committed")]


def test_the_budget_composes_across_jobs_for_the_same_dataset(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    release = _record_release()
    ledger.reserve("d", "run-a", 1, "job-a", release)
    ledger.reserve("d", "run-b", 1, "job-b", release)
    ledger.reserve("other", "run-b", 1, "job-b", release)
    assert ledger.spent("d", 1e-5) == pytest.approx(epsilon([release, release], 1e-5))


# ---------------------------------------------------------------------------- enforcement

def test_a_site_refuses_the_round_that_would_exceed_its_budget_and_charges_nothing(tmp_path):
    one, two = (epsilon([_record_release()] * k, 1e-5) for k in (1, 2))
    policy = {"policy": {"allowed_models": ["image-cnn"],
                         "record_level_dp": {"max_epsilon": (one + two) / 2, "delta": 1e-5}}}
    f = Federation(tmp_path, _job(3, secure=False, record=RECORD), policy=policy)
    try:
        f.wait(lambda: f.coordinator.finished)
    finally:
        f.stop()
    assert f.coordinator.completed_rounds == 1
    for i, agent in enumerate(f.agents):
        assert any("over the site policy" in r for r in agent.outcome.refusals)
        ledger, dataset = f.ledger(i)
        charges = ledger.charges(dataset)
        assert [(c.status, c.round) for c in charges] == [("committed", 1)]
        assert ledger.spent(dataset, 1e-5) <= (one + two) / 2


def test_the_coordinator_stops_training_at_the_jobs_site_level_budget(tmp_path):
    sigma = 2.0
    per_round = [epsilon([Release("gaussian", sigma, 1.0, 1)] * k, 1e-5) for k in (1, 2, 3)]
    target = (per_round[1] + per_round[2]) / 2  # room for two rounds, not three
    site = {"mode": "central", "clip_norm": 1.0, "noise_multiplier": sigma,
            "target_epsilon": target, "delta": 1e-5}
    f = Federation(tmp_path, _job(5, secure=False, site=site))
    try:
        f.wait(lambda: f.coordinator.finished)
    finally:
        f.stop()
    c = f.coordinator
    assert c.completed_rounds == 2
    assert "site-level ε would reach" in c.budget_stop
    report = json.loads((c.run_dir / "privacy.json").read_text())
    assert report["site_level"]["released_rounds"] == 2
    assert report["site_level"]["epsilon"] == pytest.approx(per_round[1], rel=1e-6)
    assert report["site_level"]["epsilon"] <= target


def test_an_aborted_round_charges_nothing_at_the_site_or_the_coordinator(tmp_path):
    site = {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}
    job = _job(2, record=RECORD, site=site)
    # two of three sites vanish before revealing their shares: nothing can be unmasked
    f = Federation(tmp_path, job, drop_at={"site-2": ("unmask", 1), "site-3": ("unmask", 1)})
    try:
        f.wait(lambda: any(h.aborted for h in f.coordinator.history))
        f.wait(lambda: not f.agents[0]._accepted)  # site-1 has heard the result
    finally:
        f.stop()
    assert "unmasking failed" in f.coordinator.history[0].abort_reason
    assert f.coordinator.budget.site_releases == 0
    assert f.coordinator.budget.record_releases == 0
    ledger, dataset = f.ledger(0)
    assert ledger.charges(dataset) == []
    # the sites that vanished after sending keep their pending charge: never forgotten
    for i in (1, 2):
        ledger, dataset = f.ledger(i)
        assert [c.status for c in ledger.charges(dataset)] == ["pending"]


def test_a_restarted_coordinator_neither_forgets_nor_repeats_a_charge(tmp_path):
    site = {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}
    f = Federation(tmp_path, _job(2, secure=False, site=site))
    try:
        f.wait(lambda: f.coordinator.finished)
    finally:
        f.stop()
    charged = f.coordinator.budget.site_releases
    assert charged == 2
    again = Coordinator(load_federation(f.fed.federation))
    assert again.budget.site_releases == charged
    assert again.budget.site_epsilon() == pytest.approx(f.coordinator.budget.site_epsilon())


# ---------------------------------------------------------------------------- end to end

def test_a_distributed_dp_secure_run_trains_and_reports_epsilon_within_target(tmp_path):
    site = {"mode": "distributed", "clip_norm": 0.5, "target_epsilon": 8.0, "delta": 1e-5}
    f = Federation(tmp_path, _job(3, site=site))
    try:
        f.wait(lambda: f.coordinator.finished, timeout=300)
    finally:
        f.stop()
    c = f.coordinator
    assert c.completed_rounds == 3 and not c.failure
    report = json.loads((c.run_dir / "privacy.json").read_text())
    assert report["site_level"]["mechanism"] == "skellam"
    assert 0 < report["site_level"]["epsilon"] <= 8.0
    assert c.status().epsilon_spent == pytest.approx(report["site_level"]["epsilon"])
    history = [h for h in c.history if not h.aborted]
    assert all(h.contributors == 3 for h in history)
    assert np.isfinite(c.params).all()


def test_privacy_json_reports_no_epsilon_for_a_level_without_dp():
    # no DP means an unbounded privacy loss: 0.0 would read as perfect privacy
    from fedtune.server.privacy_budget import PrivacyBudget

    plain = PrivacyBudget(JobConfig(job_id="j", model=ModelConfig(id="tabular-mlp", input_dim=3),
                                    rounds=2, min_sites=1), dimension=10)
    report = plain.report()
    assert report["site_level"]["epsilon"] is None
    assert report["record_level"]["epsilon_per_site_at_most"] is None
    json.dumps(report)  # null in the file


def test_privacy_json_reports_zero_for_a_dp_level_that_released_nothing_yet():
    from fedtune.server.privacy_budget import PrivacyBudget

    job = JobConfig(job_id="j", model=ModelConfig(id="tabular-mlp", input_dim=3), rounds=2,
                    min_sites=1, record_dp=RecordLevelDPConfig(
                        enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1))
    assert PrivacyBudget(job, dimension=10).report()["record_level"][
        "epsilon_per_site_at_most"] == 0.0
