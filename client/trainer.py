"""Local training and evaluation with torch on the site's own data.

The federated vector is the model's trainable parameters (``fedtune.models.get_flat``); the
site trains from the global vector, and its update is the difference. Record-level DP
(Opacus DP-SGD) plugs in here with the DP issue.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedtune.client.data import SiteData
from fedtune.job import TrainingConfig


@dataclass(frozen=True)
class EvalResult:
    loss_sum: float
    correct: int
    count: int


@dataclass(frozen=True)
class TrainResult:
    loss_sum: float
    count: int


def _tensors(data: SiteData) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(data.features)), torch.from_numpy(data.labels)


def evaluate(model: nn.Module, data: SiteData, batch_size: int = 512) -> EvalResult:
    if len(data) == 0:
        return EvalResult(0.0, 0, 0)
    x, y = _tensors(data)
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size])
            target = y[start:start + batch_size]
            loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    return EvalResult(loss_sum, correct, len(y))


def train(model: nn.Module, data: SiteData, config: TrainingConfig, round_seed: int) -> TrainResult:
    """``local_epochs`` of minibatch training; returns the summed training loss."""
    if len(data) == 0:
        return TrainResult(0.0, 0)
    x, y = _tensors(data)
    generator = torch.Generator().manual_seed(round_seed)
    if config.optimizer == "adam":
        optimiser: torch.optim.Optimizer = torch.optim.Adam(
            (p for p in model.parameters() if p.requires_grad), lr=config.learning_rate)
    else:
        optimiser = torch.optim.SGD((p for p in model.parameters() if p.requires_grad),
                                    lr=config.learning_rate, momentum=config.momentum)
    model.train()
    loss_sum, seen = 0.0, 0
    for _ in range(config.local_epochs):
        order = torch.randperm(len(y), generator=generator)
        loss_sum, seen = 0.0, 0  # report the last epoch's loss
        for start in range(0, len(y), config.batch_size):
            idx = order[start:start + config.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
    return TrainResult(loss_sum, seen)


def train_dp_sgd(model: nn.Module, data: SiteData, config: TrainingConfig,
                 noise_multiplier: float, max_grad_norm: float,
                 sample_rate: float) -> TrainResult:
    """DP-SGD with Opacus (Abadi et al. 2016): Poisson sampling at rate ``sample_rate`` (so a
    round costs the same ε at every site, whatever its size), ``local_epochs · ⌈1/q⌉`` steps,
    per-sample clipping to ``max_grad_norm``, Gaussian noise of std
    ``noise_multiplier · max_grad_norm``.

    The privacy cost is *not* tracked here: the site charges
    :func:`fedtune.privacy.accountants.dp_sgd_release` for these very parameters to its ledger
    before the update leaves. Opacus needs ``model.train()`` before ``make_private``.
    """
    from opacus import PrivacyEngine  # import on demand: only DP jobs pay for it
    from opacus.data_loader import DPDataLoader

    if len(data) == 0:
        return TrainResult(0.0, 0)
    x, y = _tensors(data)
    # Sampling and noise must be unpredictable to everyone else (privacy amplification by
    # sampling assumes a secret sample): seeded from the OS, never from the job's public
    # seed. Opacus' secure_mode would need torchcsprng, which is not installed here.
    secret = torch.Generator().manual_seed(secrets.randbits(63))
    loader = DPDataLoader(torch.utils.data.TensorDataset(x, y), sample_rate=sample_rate,
                          generator=secret)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        optimiser: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    else:
        optimiser = torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum)
    model.train()
    with warnings.catch_warnings():
        # "Secure RNG turned off": known and documented above (docs/decisions.md)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        private_model, private_optimiser, private_loader = engine.make_private(
            module=model, optimizer=optimiser, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            poisson_sampling=False, noise_generator=secret)
    loss_sum, seen = 0.0, 0
    for _ in range(config.local_epochs):
        loss_sum, seen = 0.0, 0  # report the last epoch's loss
        for xb, yb in private_loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            private_optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(private_model(xb), yb)
            with warnings.catch_warnings():
                # the first layer's input needs no gradient: Opacus' hooks still fire correctly
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            private_optimiser.step()
            loss_sum += float(loss.detach()) * len(yb)
            seen += len(yb)
    if hasattr(private_model, "remove_hooks"):
        private_model.remove_hooks()
    return TrainResult(loss_sum, seen)
