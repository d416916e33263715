"""Local training and evaluation with torch on the site's own data.

The federated vector is the model's trainable parameters (``fedtune.models.get_flat``); the
site trains from the global vector, and its update is the difference. Record-level DP
(Opacus DP-SGD) plugs in here with the DP issue.
"""

from __future__ import annotations

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
