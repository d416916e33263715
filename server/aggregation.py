"""Aggregation of site inputs: the weighted sum of updates and of metrics.

Sites send ``w_k · Δ_k`` (their delta already multiplied by their FedAvg weight ``w_k``) and
the coordinator only ever needs sums: Σ w_k Δ_k, Σ w_k and the metric sums. This is exactly
what secure aggregation can deliver, so plain and secure modes share this code: in secure
mode the sums come out of unmasking instead of from adding plaintext inputs.
"""

from __future__ import annotations

import numpy as np

from fedtune.proto import fedtune_pb2 as pb

METRIC_SUM_FIELDS = ("train_loss_sum", "eval_loss_sum", "eval_correct", "eval_count",
                     "train_count", "weight")


class WeightedSum:
    """Running Σ w_k Δ_k in float64, and the metric sums (as a ``PlainMetrics`` of sums)."""

    def __init__(self, size: int) -> None:
        self.total = np.zeros(size, dtype=np.float64)
        self.metrics = pb.PlainMetrics()

    def add(self, weighted_delta: np.ndarray, metrics: pb.PlainMetrics) -> None:
        self.total += weighted_delta
        for name in METRIC_SUM_FIELDS:
            setattr(self.metrics, name, getattr(self.metrics, name) + getattr(metrics, name))
