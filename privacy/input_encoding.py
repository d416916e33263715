"""The vector a site masks: its clipped, weighted update and its metrics, in Z_(2^bits).

Layout: ``[w·Δ (m coordinates) | weight, train_count, eval_correct, eval_count |
train_loss_sum, eval_loss_sum]``. Counts are integers quantised with an integer scale, so
their sums come out exact. Every part is bounded before quantisation, so the sum over at
most ``n`` sites cannot wrap around the ring (:func:`fedtune.privacy.quantization.scale_for`):

* each coordinate of Δ is clipped to ``[-value_range, value_range]`` and multiplied by the
  site's weight ``w ≤ max_weight``, so ``|w·Δ_i| ≤ max_weight · value_range``;
* counts are clipped to ``max_examples`` and loss sums to ``max_examples · loss_bound``.

No metric of a single site travels in plaintext: they are summed under the same masks as the
update (DESIGN.md §1.1), and only the sums are decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .masks import word_dtype
from .quantization import RoundingCoins, dequantize, quantize, scale_for

COUNT_FIELDS = ("weight", "train_count", "eval_correct", "eval_count")
LOSS_FIELDS = ("train_loss_sum", "eval_loss_sum")
METRIC_FIELDS = COUNT_FIELDS + LOSS_FIELDS


@dataclass(frozen=True)
class InputEncoding:
    bits: int
    n_summands: int
    length: int  # m, the number of update coordinates
    value_range: float
    max_weight: float
    max_examples: float
    loss_bound: float

    @property
    def update_bound(self) -> float:
        return self.max_weight * self.value_range

    @property
    def loss_sum_bound(self) -> float:
        return self.max_examples * self.loss_bound

    @property
    def count_bound(self) -> float:
        return max(self.max_examples, self.max_weight)

    @property
    def update_scale(self) -> float:
        return scale_for(self.n_summands, self.update_bound, self.bits)

    @property
    def count_scale(self) -> float:
        """An integer scale: integer counts quantise without rounding, their sums are exact."""
        return float(math.floor(scale_for(self.n_summands, self.count_bound, self.bits)))

    @property
    def loss_scale(self) -> float:
        return scale_for(self.n_summands, self.loss_sum_bound, self.bits)

    @property
    def total_length(self) -> int:
        return self.length + len(METRIC_FIELDS)

    def metric_caps(self) -> dict[str, float]:
        cap = self.max_examples
        return {"weight": self.max_weight, "train_loss_sum": cap * self.loss_bound,
                "train_count": cap, "eval_loss_sum": cap * self.loss_bound,
                "eval_correct": cap, "eval_count": cap}


def clip_update(delta: np.ndarray, value_range: float) -> tuple[np.ndarray, int]:
    """Clip every coordinate to ``[-value_range, value_range]``; returns (clipped, how many).

    A ``delta`` already within the range (the usual case) comes back as it is, not copied:
    two read-only passes (min, max, compared exactly as float64) decide it. Otherwise the
    result is float64, so that a bound float32 cannot hold exactly is not rounded outward.
    NaN fails the check and goes through ``np.clip``, which keeps it (the quantiser then
    refuses it).
    """
    if delta.size == 0 or (-value_range <= float(delta.min())
                           and float(delta.max()) <= value_range):
        return delta, 0
    clipped = np.clip(delta.astype(np.float64), -value_range, value_range)
    return clipped, int(np.count_nonzero(clipped != delta))


def encode(weighted_update: np.ndarray, metrics: dict[str, float], enc: InputEncoding,
           rng: np.random.Generator | RoundingCoins, word: bool = False) -> np.ndarray:
    """Quantise ``[w·Δ | metrics]`` into Z_(2^bits) (uint64), clipping the update to
    ``±update_bound`` and the metrics to their caps. ``weighted_update`` (float32 or float64)
    is never written. With ``word=True`` the residues come in the ring's accumulator word
    (:func:`fedtune.privacy.masks.word_dtype`: uint32 up to 32 bits), which a site masks in
    place and sends as it is. ``rng`` is the rounding randomness
    (:mod:`fedtune.privacy.quantization`): a secure site passes fresh :class:`RoundingCoins`,
    except under distributed DP, where the metrics share the noise's OS-seeded generator."""
    if weighted_update.shape != (enc.length,):
        raise ValueError(f"update has shape {weighted_update.shape}, expected ({enc.length},)")
    update, _ = clip_update(weighted_update, enc.update_bound)
    caps = enc.metric_caps()

    def bounded(names: tuple[str, ...]) -> np.ndarray:
        return np.array([min(max(float(metrics.get(k, 0.0)), 0.0), caps[k]) for k in names])

    counts = np.round(bounded(COUNT_FIELDS))  # counts are integers by definition
    m, c = enc.length, len(COUNT_FIELDS)
    dtype = word_dtype(enc.bits) if word else np.uint64
    out = np.empty(enc.total_length, dtype=dtype)  # each part is quantised in place
    quantize(update, enc.update_scale, enc.bits, rng, out=out[:m])
    quantize(counts, enc.count_scale, enc.bits, rng, out=out[m:m + c])
    quantize(bounded(LOSS_FIELDS), enc.loss_scale, enc.bits, rng, out=out[m + c:])
    return out


def decode_sum(total: np.ndarray, enc: InputEncoding) -> tuple[np.ndarray, dict[str, float]]:
    """Σ w·Δ (float64) and the metric sums from the unmasked sum of encoded inputs."""
    if total.shape != (enc.total_length,):
        raise ValueError(f"sum has shape {total.shape}, expected ({enc.total_length},)")
    m, c = enc.length, len(COUNT_FIELDS)
    update = dequantize(total[:m], enc.update_scale, enc.bits)
    counts = np.round(dequantize(total[m:m + c], enc.count_scale, enc.bits))
    losses = dequantize(total[m + c:], enc.loss_scale, enc.bits)
    sums = {k: max(float(v), 0.0) for k, v in zip(COUNT_FIELDS, counts, strict=True)}
    sums.update({k: max(float(v), 0.0) for k, v in zip(LOSS_FIELDS, losses, strict=True)})
    return update, sums
