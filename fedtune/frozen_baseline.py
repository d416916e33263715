"""The frozen-encoder baseline for text: sentence embeddings of the base + logistic regression.

What fine-tuning has to beat (issue 5, DESIGN.md §4): the pretrained encoder left as it is,
its mean-pooled token embeddings (how all-MiniLM-L6-v2 makes sentence embeddings, Reimers &
Gurevych 2019) fed to a logistic regression trained on the same training examples. Used by
``fedtune demo --task text`` and ``bench/finetune.py``; it runs where the data is pooled, so it
is a *centralised* reference, not something a federation could compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedtune.client.data import SiteData


@dataclass(frozen=True)
class BaselineResult:
    accuracy: float
    train_examples: int
    eval_examples: int


def sentence_embeddings(model_id: str, token_ids: np.ndarray, pad_id: int,
                        batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of the frozen base, ``(N, hidden)``."""
    from transformers import AutoModel

    from fedtune.pretrained import _quiet_transformers, model_dir

    with _quiet_transformers():
        encoder = AutoModel.from_pretrained(model_dir(model_id), local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(token_ids), batch_size):
            ids = torch.from_numpy(token_ids[start:start + batch_size])
            mask = (ids != pad_id).to(torch.long)
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def frozen_encoder_accuracy(model_id: str, train: SiteData, evaluation: SiteData,
                            pad_id: int = 0, seed: int = 0) -> BaselineResult:
    """Accuracy on ``evaluation`` of a logistic regression on frozen embeddings of ``train``."""
    from sklearn.linear_model import LogisticRegression

    x_train = sentence_embeddings(model_id, train.features, pad_id)
    x_eval = sentence_embeddings(model_id, evaluation.features, pad_id)
    classifier = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    classifier.fit(x_train, train.labels)
    accuracy = float((classifier.predict(x_eval) == evaluation.labels).mean())
    return BaselineResult(accuracy, len(train), len(evaluation))


__all__ = ["BaselineResult", "frozen_encoder_accuracy", "sentence_embeddings"]
