"""Local training and evaluation with torch on the site's own data.

The federated vector is the model's trainable parameters (``fedtune.models.get_flat``); the
site trains from the global vector, and its update is the difference. Record-level DP
(Opacus DP-SGD) is :func:`train_dp_sgd`.

What a model is trained on and scored by
----------------------------------------
Every model is trained on the batch mean of a per-example loss ``ℓ_i``, and evaluated as three
sums (docs/decisions.md §3: the coordinator only ever sees sums): ``loss_sum = Σ ℓ_i``,
``correct`` (examples predicted right) and ``count`` (examples). The mean loss and the
accuracy the coordinator reports are therefore per example, for every kind of model.

Classifiers (``tabular-mlp``, ``image-cnn``, ``image-linear``, ``minilm-lora``), labels ``(N,)``
    ``ℓ_i`` is the cross-entropy of the logits against the class; an example is correct when
    its arg-max logit is the class.

Causal language models (``smollm2-lora``), labels ``(N, L)`` of next-token targets
    ``ℓ_i`` is the mean, over the response tokens of example ``i`` (the positions whose target
    is not :data:`~fedtune.client.data.IGNORE_INDEX`), of the token cross-entropy. Each
    example weighs the same whatever the length of its response, which is also DP-SGD's unit:
    one record, one clipped gradient. An example is correct when *every* response token is the
    model's top-1 prediction given the reference prefix (teacher forcing); by induction over
    the positions this is exactly "greedy decoding of the prompt reproduces the response, its
    end-of-turn token included", so the accuracy is the exact-match accuracy of greedy
    answers. Columns after the last position that has a target are dropped from each batch
    before the forward pass: with right padding and causal attention they cannot change
    the logits of an earlier position, and only cost time.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedtune.client.data import IGNORE_INDEX, SiteData
from fedtune.job import TrainingConfig

#: ``record_level.clipping`` → Opacus' ``grad_sample_mode``: per-sample gradients from hooks
#: ("flat" clipping of the whole per-sample gradient), or ghost clipping (Li et al. 2022,
#: "Large Language Models Can Be Strong Differentially Private Learners", arXiv:2110.05679),
#: which gets the per-sample norms without materialising the per-sample gradients, at the
#: price of a second backward pass. Both clip the same gradient to the same norm.
CLIPPING_MODES: dict[str, str] = {"flat": "hooks", "ghost": "ghost"}

#: evaluation batch for a language model: its logits are ``batch × L × vocabulary`` floats
#: (16 × 64 × 49,152 × 4 B = 200 MB for SmolLM2)
_LM_EVAL_BATCH = 16
_CLASSIFIER_EVAL_BATCH = 512


@dataclass(frozen=True)
class EvalResult:
    loss_sum: float
    correct: int
    count: int


@dataclass(frozen=True)
class TrainResult:
    loss_sum: float
    count: int


def example_losses(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The per-example loss ``ℓ_i`` (module docstring), shape ``(N,)``.

    ``output`` is ``(N, C)`` logits with ``target`` ``(N,)`` classes, or ``(N, L, V)``
    next-token logits with ``target`` ``(N, L)`` token ids (``IGNORE_INDEX`` not scored).
    """
    if target.ndim == 1:
        return nn.functional.cross_entropy(output, target, reduction="none")
    tokens = nn.functional.cross_entropy(output.flatten(0, 1), target.flatten(),
                                         ignore_index=IGNORE_INDEX, reduction="none")
    scored = (target != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return tokens.view(target.shape).sum(dim=1) / scored


def example_correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whether each example is predicted right (module docstring), bool ``(N,)``."""
    if target.ndim == 1:
        return output.argmax(dim=1) == target
    hit = (output.argmax(dim=-1) == target) | (target == IGNORE_INDEX)
    return hit.all(dim=1)


class ExampleLoss(nn.Module):
    """:func:`example_losses` reduced over the batch: Opacus' criterion interface.

    Ghost clipping sets ``reduction = "none"`` to get the per-example losses it weighs.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = example_losses(output, target)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


def _tensors(data: SiteData) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(data.features)), torch.from_numpy(data.labels)


def _trimmed(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token batches without the trailing columns that have no target anywhere."""
    if y.ndim == 1:
        return x, y
    scored = (y != IGNORE_INDEX).any(dim=0).nonzero()
    width = int(scored[-1]) + 1 if len(scored) else 1
    return x[:, :width], y[:, :width]


def evaluate(model: nn.Module, data: SiteData, batch_size: int | None = None) -> EvalResult:
    """Loss sum, correct count and example count of ``model`` on ``data`` (module docstring)."""
    if len(data) == 0:
        return EvalResult(0.0, 0, 0)
    if batch_size is None:
        batch_size = _LM_EVAL_BATCH if data.next_token_targets else _CLASSIFIER_EVAL_BATCH
    x, y = _tensors(data)
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            xb, yb = _trimmed(x[start:start + batch_size], y[start:start + batch_size])
            output = model(xb)
            loss_sum += float(example_losses(output, yb).sum())
            correct += int(example_correct(output, yb).sum())
    return EvalResult(loss_sum, correct, len(y))


def _optimiser(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate)
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum)


def train(model: nn.Module, data: SiteData, config: TrainingConfig, round_seed: int) -> TrainResult:
    """``local_epochs`` of minibatch training; returns the last epoch's summed training loss."""
    if len(data) == 0:
        return TrainResult(0.0, 0)
    x, y = _tensors(data)
    generator = torch.Generator().manual_seed(round_seed)
    optimiser = _optimiser(model, config)
    model.train()
    loss_sum, seen = 0.0, 0
    for _ in range(config.local_epochs):
        order = torch.randperm(len(y), generator=generator)
        loss_sum, seen = 0.0, 0  # report the last epoch's loss
        for start in range(0, len(y), config.batch_size):
            idx = order[start:start + config.batch_size]
            xb, yb = _trimmed(x[idx], y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss = example_losses(model(xb), yb).mean()
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
    return TrainResult(loss_sum, seen)


def _physical_batches(x: torch.Tensor, y: torch.Tensor,
                      size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """A logical batch in chunks of at most ``size``; the flag marks the last chunk."""
    starts = range(0, len(y), size)
    for start in starts:
        xb, yb = _trimmed(x[start:start + size], y[start:start + size])
        yield xb, yb, start == starts[-1]


def _noise_only_step(optimiser) -> None:  # optimiser: opacus.optimizers.DPOptimizer
    """The DP-SGD step of an empty sampled batch: the noise of a step, on a zero gradient sum.

    The subsampled Gaussian mechanism the accountants price releases ``Σ clipped + N(0, σ²C²)``
    whatever the sample, also an empty one. Skipping the step would release an exact "no
    change" instead, which the accounting does not cover: its probability differs by a factor
    ``1 - q`` between neighbouring data sets whatever σ is. The models cannot run a batch of
    zero examples (BERT's attention reshape fails), so the step is taken here, as Opacus'
    ``add_noise`` and ``scale_grad`` would on a zero sum, with the optimiser's secret
    generator.
    """
    std = optimiser.noise_multiplier * optimiser.max_grad_norm
    scale = optimiser.expected_batch_size if optimiser.loss_reduction == "mean" else 1
    for p in optimiser.params:
        p.grad = torch.normal(0.0, std, size=p.shape, generator=optimiser.generator) / scale
    optimiser.original_optimizer.step()
    optimiser.original_optimizer.zero_grad(set_to_none=True)


def train_dp_sgd(model: nn.Module, data: SiteData, config: TrainingConfig,
                 noise_multiplier: float, max_grad_norm: float,
                 sample_rate: float, clipping: str = "flat") -> TrainResult:
    """DP-SGD with Opacus (Abadi et al. 2016): Poisson sampling at rate ``sample_rate`` (so a
    round costs the same ε at every site, whatever its size), ``local_epochs · ⌈1/q⌉`` steps,
    per-sample clipping to ``max_grad_norm``, Gaussian noise of std
    ``noise_multiplier · max_grad_norm``.

    ``clipping`` is the job's ``record_level.clipping``: ``"flat"`` computes per-sample
    gradients with Opacus' hooks, ``"ghost"`` uses ghost clipping (:data:`CLIPPING_MODES`);
    both release the same mechanism, so the privacy cost does not depend on it. A sampled
    (logical) batch is processed in physical batches of at most ``config.batch_size``
    examples, whose clipped gradients are summed before the one noisy step of the logical
    batch (the memory of a language model's logits grows with the batch; the step does not
    change). An empty sampled batch still takes its step, of noise alone
    (:func:`_noise_only_step`).

    The privacy cost is *not* tracked here: the site charges
    :func:`fedtune.privacy.accountants.dp_sgd_release` for these very parameters to its ledger
    before the update leaves. Opacus needs ``model.train()`` before ``make_private``.

    Raises
    ------
    ValueError
        If ``clipping`` is not one of :data:`CLIPPING_MODES`.
    """
    from opacus import PrivacyEngine  # import on demand: only DP jobs pay for it
    from opacus.data_loader import DPDataLoader

    if clipping not in CLIPPING_MODES:
        raise ValueError(f"clipping must be one of {tuple(CLIPPING_MODES)}, got {clipping!r}")
    if len(data) == 0:
        return TrainResult(0.0, 0)
    x, y = _tensors(data)
    # Sampling and noise must be unpredictable to everyone else (privacy amplification by
    # sampling assumes a secret sample): seeded from the OS, never from the job's public
    # seed. Opacus' secure_mode would need torchcsprng, which is not installed here.
    secret = torch.Generator().manual_seed(secrets.randbits(63))
    loader = DPDataLoader(torch.utils.data.TensorDataset(x, y), sample_rate=sample_rate,
                          generator=secret)
    optimiser = _optimiser(model, config)
    model.train()
    ghost = clipping == "ghost"
    with warnings.catch_warnings():
        # "Secure RNG turned off": known and documented above (docs/decisions.md)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        made = engine.make_private(
            module=model, optimizer=optimiser, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            poisson_sampling=False, noise_generator=secret,
            criterion=ExampleLoss(), grad_sample_mode=CLIPPING_MODES[clipping])
    if ghost:
        private_model, private_optimiser, criterion, private_loader = made
    else:
        (private_model, private_optimiser, private_loader), criterion = made, ExampleLoss()
    # The mean's denominator is the expected batch q·N. Opacus rounds it down to an integer,
    # which is 0 at a small site (N < 1/q: every step divides by zero) and too small anywhere
    # else; the noise and the gradient sum share it, so it changes no privacy guarantee.
    private_optimiser.expected_batch_size = len(data) * sample_rate
    loss_sum, seen = 0.0, 0
    for _ in range(config.local_epochs):
        loss_sum, seen = 0.0, 0  # report the last epoch's loss
        for x_logical, y_logical in private_loader:
            if len(y_logical) == 0:  # Poisson sampling can draw an empty batch
                _noise_only_step(private_optimiser)
                continue
            for xb, yb, last in _physical_batches(x_logical, y_logical, config.batch_size):
                # not the last chunk: clip and sum only; the last one adds noise and steps
                private_optimiser.signal_skip_step(do_skip=not last)
                private_optimiser.zero_grad(set_to_none=True)
                loss = criterion(private_model(xb), yb)
                with warnings.catch_warnings():
                    # the first layer's input needs no gradient: Opacus' hooks still fire
                    # correctly
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                private_optimiser.step()
                loss_sum += float(loss.item()) * len(yb)
                seen += len(yb)
    if hasattr(private_model, "remove_hooks"):
        private_model.remove_hooks()
    return TrainResult(loss_sum, seen)
