"""Aggregation of site inputs: the weighted sum of updates and of metrics.

Sites send ``w_k · Δ_k`` (their delta already multiplied by their FedAvg weight ``w_k``) and
the coordinator only ever needs sums: Σ w_k Δ_k, Σ w_k and the metric sums. This is exactly
what secure aggregation can deliver, so plain and secure modes share this code: in secure
mode the sums come out of unmasking instead of from adding plaintext inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtune.proto import fedtune_pb2 as pb


@dataclass
class MetricSums:
    train_loss_sum: float = 0.0
    eval_loss_sum: float = 0.0
    eval_correct: float = 0.0
    eval_count: float = 0.0
    train_count: float = 0.0
    weight: float = 0.0

    def add(self, m: pb.PlainMetrics) -> None:
        self.train_loss_sum += m.train_loss_sum
        self.eval_loss_sum += m.eval_loss_sum
        self.eval_correct += m.eval_correct
        self.eval_count += m.eval_count
        self.train_count += m.train_count
        self.weight += m.weight

    def aggregate(self) -> pb.AggregateMetrics:
        return pb.AggregateMetrics(
            train_loss=self.train_loss_sum / self.train_count if self.train_count else 0.0,
            eval_loss=self.eval_loss_sum / self.eval_count if self.eval_count else 0.0,
            eval_accuracy=self.eval_correct / self.eval_count if self.eval_count else 0.0,
            eval_count=self.eval_count,
            train_count=self.train_count,
        )


class WeightedSum:
    """Running Σ w_k Δ_k in float64, and the metric sums."""

    def __init__(self, size: int) -> None:
        self.total = np.zeros(size, dtype=np.float64)
        self.metrics = MetricSums()
        self.count = 0

    def add(self, weighted_delta: np.ndarray, metrics: pb.PlainMetrics) -> None:
        self.total += weighted_delta
        self.metrics.add(metrics)
        self.count += 1

    def mean_delta(self) -> np.ndarray:
        if self.metrics.weight <= 0:
            raise ValueError("no weight to average over")
        return self.total / self.metrics.weight
