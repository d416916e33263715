"""DP-SGD (Opacus) on the LoRA models: hooks and ghost clipping, and the site's ledger."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_finetune_grpc import MINILM, SMOLLM2, run_federation

from fedtune.client import trainer
from fedtune.client.data import SiteData
from fedtune.client.ledger import Ledger, dataset_id
from fedtune.client.text_data import tokenize
from fedtune.federation import load_federation
from fedtune.job import (
    JobConfig,
    ModelConfig,
    RecordLevelDPConfig,
    TrainingConfig,
    job_digest,
    job_from_proto,
    job_to_proto,
    offered_job_problem,
    parse_job,
)
from fedtune.models import build_model, get_flat
from fedtune.privacy.accountants import epsilon
from fedtune.privacy_plan import record_level_release
from fedtune.toml_fields import ConfigError, Fields

REVIEWS = [("A gem of a film, funny and warm.", 1), ("Dull and far too long.", 0),
           ("Superb acting throughout.", 1), ("A tedious, muddled plot.", 0),
           ("I loved every minute.", 1), ("Painfully boring.", 0), ("Sharp and moving.", 1),
           ("Forgettable.", 0)]
DP_RECORD_LEVEL = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                   "sample_rate": 0.5, "delta": 1e-5}


@pytest.fixture(scope="module")
def reviews() -> tuple[ModelConfig, SiteData]:
    spec = ModelConfig(id="minilm-lora", num_classes=2, input_dim=16)
    data = SiteData(features=tokenize([t for t, _ in REVIEWS], spec),
                    labels=np.array([y for _, y in REVIEWS], dtype=np.int64))
    return spec, data


def _dp_step(spec: ModelConfig, data: SiteData, clipping: str, max_grad_norm: float,
             batch_size: int, no_dropout: bool = False) -> np.ndarray:
    """The update of one noiseless DP-SGD step over every example (sampling rate 1)."""
    model = build_model(spec, seed=0)
    if no_dropout:
        _without_dropout(model)
    start = get_flat(model)
    config = TrainingConfig(local_epochs=1, batch_size=batch_size, learning_rate=0.5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same dropout masks for every mode
        result = trainer.train_dp_sgd(model, data, config, noise_multiplier=0.0,
                                      max_grad_norm=max_grad_norm, sample_rate=1.0,
                                      clipping=clipping)
    assert result.count == len(data)
    return get_flat(model) - start


def _without_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def test_ghost_clipping_takes_the_same_clipped_step_as_hooks(reviews):
    spec, data = reviews
    # a clip norm far below the gradients' norms: every example is clipped; a logical batch of
    # 8 in physical batches of 3, so the sums across physical batches are checked too
    hooks = _dp_step(spec, data, "flat", max_grad_norm=1e-3, batch_size=3)
    ghost = _dp_step(spec, data, "ghost", max_grad_norm=1e-3, batch_size=3)
    assert np.linalg.norm(hooks) > 0
    np.testing.assert_allclose(ghost, hooks, rtol=1e-4, atol=1e-9)
    # SGD moves by lr · (Σ clipped gradients) / batch, at most lr · C
    assert np.linalg.norm(hooks) <= 0.5 * 1e-3 + 1e-9


def test_dp_sgd_without_clipping_or_noise_is_one_full_batch_sgd_step(reviews):
    spec, data = reviews
    dp = _dp_step(spec, data, "flat", max_grad_norm=1e6, batch_size=3, no_dropout=True)
    model = build_model(spec, seed=0)
    _without_dropout(model)
    start = get_flat(model)
    trainer.train(model, data, TrainingConfig(local_epochs=1, batch_size=len(data),
                                              learning_rate=0.5), round_seed=0)
    expected = get_flat(model) - start
    # float32: per-sample gradients summed vs one batch gradient differ in summation order;
    # allow 1e-5 of the largest entry for values that nearly cancel
    atol = 1e-5 * float(np.abs(expected).max())
    np.testing.assert_allclose(dp, expected, rtol=1e-4, atol=atol)


def test_an_empty_sampled_batch_still_takes_a_step_of_noise(reviews):
    # one example sampled at rate 0.01: about 99 of the 100 steps draw nobody. Every step adds
    # noise of std lr·σC/(qN) = 0.01 to each value, so 100 steps move a value by std 0.1; were
    # the empty steps skipped, only the few drawn ones would (P(more than 25) < 1e-25)
    spec, data = reviews
    one = SiteData(features=data.features[:1], labels=data.labels[:1])
    model = build_model(spec, seed=0)
    start = get_flat(model)
    config = TrainingConfig(local_epochs=1, batch_size=1, learning_rate=1e-6)
    trainer.train_dp_sgd(model, one, config, noise_multiplier=100.0, max_grad_norm=1.0,
                         sample_rate=0.01)
    moved = get_flat(model) - start
    assert np.std(moved) == pytest.approx(0.1, rel=0.1)


def test_an_unknown_clipping_mode_is_refused_by_the_trainer(reviews):
    spec, data = reviews
    with pytest.raises(ValueError, match=r"clipping must be one of \('flat', 'ghost'\)"):
        trainer.train_dp_sgd(build_model(spec), data, TrainingConfig(), 1.0, 1.0, 0.5,
                             clipping="per-layer")


# -- the job field ------------------------------------------------------------------------------


def _job(record_level: dict) -> JobConfig:
    table = {"job_id": "j", "rounds": 1, "model": dict(MINILM),
             "privacy": {"record_level": {**DP_RECORD_LEVEL, **record_level}}}
    return parse_job(Fields("federation.toml", "job", table))


def test_ghost_clipping_is_a_job_field_that_travels_to_the_sites():
    job = _job({"clipping": "ghost"})
    assert job.record_dp.clipping == "ghost"
    assert job_from_proto(job_to_proto(job)).record_dp.clipping == "ghost"
    assert _job({}).record_dp.clipping == "flat"
    assert job_from_proto(job_to_proto(_job({}))).record_dp.clipping == "flat"


def test_the_clipping_mode_is_part_of_the_job_digest_and_flat_keeps_older_digests():
    flat, ghost = job_to_proto(_job({})), job_to_proto(_job({"clipping": "ghost"}))
    assert job_digest(flat) != job_digest(ghost)
    assert flat.privacy.record_level.clipping == ""  # as a job from before the field


def test_an_unknown_clipping_mode_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as caught:
        _job({"clipping": "per-layer"})
    assert caught.value.field == "job.privacy.record_level.clipping"
    assert "expected one of flat, ghost; found 'per-layer'" in str(caught.value)


def test_a_site_refuses_an_offered_job_with_an_unknown_clipping_mode():
    job = _job({})
    offered = dataclasses.replace(job, record_dp=dataclasses.replace(job.record_dp,
                                                                     clipping="per-layer"))
    assert "privacy.record_level.clipping" in offered_job_problem(offered)
    assert offered_job_problem(job) is None
    assert RecordLevelDPConfig().clipping == "flat"


# -- over gRPC, with the ledger ------------------------------------------------------------------


def _check_ledgers(run) -> None:
    """Every site charged each released round to its ledger, at what its accountant says."""
    job = load_federation(run.fed.federation).job
    release = record_level_release(job)
    rounds = len(run.history)
    for site in run.fed.sites:
        ledger = Ledger(run.fed.state_dir(site) / "ledger.sqlite")
        try:
            charges = ledger.charges(dataset_id(site.data))
            assert [c.status for c in charges] == ["committed"] * rounds
            assert all(c.release == release for c in charges)
            spent = ledger.spent(dataset_id(site.data), job.record_dp.delta)
        finally:
            ledger.close()
        assert spent == pytest.approx(epsilon([release] * rounds, job.record_dp.delta))
        assert spent > 0
    assert [a.outcome.refusals for a in run.agents] == [[], []]


def test_dp_sgd_fine_tunes_minilm_lora_over_grpc_and_the_ledger_records_the_spend(tmp_path):
    run = run_federation(tmp_path, dataset="rotten-tomatoes", model=MINILM, per_site=12,
                         rounds=2, privacy={"record_level": DP_RECORD_LEVEL},
                         training={"local_epochs": 2, "batch_size": 4, "optimizer": "adam",
                                   "learning_rate": 1e-2})
    assert [h.contributors for h in run.history] == [2, 2]
    assert run.params.size == 74_498
    _check_ledgers(run)


def test_dp_sgd_fine_tunes_smollm2_lora_over_grpc_and_the_ledger_records_the_spend(tmp_path):
    run = run_federation(tmp_path, dataset="instructions", model=SMOLLM2, per_site=8,
                         rounds=1, privacy={"record_level": DP_RECORD_LEVEL},
                         training={"local_epochs": 1, "batch_size": 4, "optimizer": "adam",
                                   "learning_rate": 3e-3})
    assert [h.contributors for h in run.history] == [2]
    assert run.params.size == 460_800
    _check_ledgers(run)
