"""Membership inference on a final model (DESIGN.md §5: the attacks a scenario runs).

An auditor asks: given the federated model, can an adversary tell whether a given record was
in a site's training data? Two attacks answer it, both scored on a *balanced* set of
members (records the site trained on) and non-members (held-out records of the same
distribution, e.g. the site's evaluation split):

* :func:`loss_threshold_attack` — Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in
  Machine Learning: Analyzing the Connection to Overfitting", CSF 2018, §3.2 (the
  "threshold" adversary): a record is called a member when its loss is below a threshold,
  so the score is ``-loss``.
* :func:`shadow_model_attack` — Shokri, Stronati, Song and Shmatikov, "Membership Inference
  Attacks Against Machine Learning Models", IEEE S&P 2017, §IV, simplified: ``k`` shadow
  models of the target's architecture are trained, with the target's training procedure, on
  disjoint parts of the attacker's own pool of records from the same distribution; one attack
  classifier (logistic regression rather than one network per class) learns, from the
  shadows' outputs on their own "in" and "out" records, to tell members from non-members,
  and is then applied to the target's outputs.

Each returns an :class:`AttackResult` with the ROC curve of the attack's score, its area
(AUC; 0.5 is chance) and the *membership advantage* of Yeom et al. 2018, Definition 4:
``TPR - FPR``, here maximised over all thresholds (the best a threshold adversary could do on
these very records — an optimistic, auditor-side figure). Without any membership signal this
maximum is the one-sided two-sample Kolmogorov–Smirnov statistic of ``n`` vs ``n`` scores,
whose mean is about ``sqrt(pi / 4n)`` (:func:`chance_advantage`), not 0;
:attr:`AttackResult.p_value` (one-sided Mann–Whitney U, equivalent to testing AUC > 0.5) says
whether a figure is more than chance. A model trained with (ε, δ)-DP bounds the advantage
of *any* membership adversary on a record by ``(e^ε - 1 + 2δ) / (e^ε + 1)``
(:func:`dp_advantage_bound`), which an audit can hold the measured figure against.

The functions are pure: they read the target (in evaluation mode, without gradients, and
restore its training flag), never change its parameters, and are deterministic given their
inputs and ``seed`` (the shadow attack as far as the shadow trainer it is given is; the
sites' non-private trainer, :func:`local_training`, is).

Only classifiers are attacked: outputs ``(N, C)`` logits, labels ``(N,)`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedtune.client.data import SiteData
from fedtune.job import ModelConfig, TrainingConfig
from fedtune.models import build_model, set_flat

LOSS_THRESHOLD = "loss-threshold"
SHADOW_MODEL = "shadow-model"
ATTACKS: tuple[str, ...] = (LOSS_THRESHOLD, SHADOW_MODEL)

#: a shadow trainer: trains ``model`` in place on ``data``, deterministically from ``seed``
ShadowTrainer = Callable[[nn.Module, SiteData, int], None]
#: builds a fresh, untrained model of the target's architecture from a seed
ModelFactory = Callable[[int], nn.Module]

# Log-probabilities below this are clipped in the shadow attack's features: an overfitted
# model gives the wrong classes log-probabilities of -10^4 and less, outliers that would
# dominate the standardised features while saying no more than "vanishingly unlikely".
_LOG_FLOOR = -700.0


class AttackInputError(ValueError):
    """Records, a pool or parameters that an attack cannot (soundly) be run on."""


@dataclass(frozen=True)
class AttackResult:
    """The outcome of one membership-inference attack on one member / non-member set.

    Attributes
    ----------
    name:
        Which attack: :data:`LOSS_THRESHOLD` or :data:`SHADOW_MODEL`.
    auc:
        Area under the ROC curve of the attack score (members positive); 0.5 is chance,
        1.0 separates every member from every non-member.
    advantage:
        Membership advantage, ``max over thresholds of TPR - FPR`` (Yeom et al. 2018,
        Definition 4, at the best threshold); in ``[0, 1]``.
    threshold:
        The score threshold at which :attr:`advantage` is reached (a record scoring at or
        above it is called a member). For the loss-threshold attack the score is ``-loss``,
        so records with loss ``<= -threshold`` are called members.
    roc_fpr, roc_tpr:
        The ROC curve: false- and true-positive rates at every distinct threshold, from
        (0, 0) to (1, 1), non-decreasing (collinear points dropped).
    n_members, n_non_members:
        Sizes of the two (equal) sets the attack was scored on.
    p_value:
        One-sided Mann–Whitney U test of "members score higher than non-members" (the
        probability of an AUC at least this large by chance, members indistinguishable).
    """

    name: str
    auc: float
    advantage: float
    threshold: float
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    n_members: int
    n_non_members: int
    p_value: float


# -- inputs ------------------------------------------------------------------------------------


def target_model(spec: ModelConfig, parameters: np.ndarray) -> nn.Module:
    """The final model of a run: the registry model ``spec`` with the federated vector set.

    Raises
    ------
    fedtune.models.ModelError
        If ``spec`` is invalid or ``parameters`` does not fit it.
    """
    model = build_model(spec)
    set_flat(model, parameters)
    return model.eval()


def balanced_sets(members: SiteData, non_members: SiteData,
                  seed: int) -> tuple[SiteData, SiteData]:
    """Subsample the larger of the two sets, without replacement, to the size of the smaller.

    A site's training split is usually several times its held-out split; scoring an attack on
    unequal sets makes the advantage and the AUC's chance level depend on the ratio, so both
    attacks refuse them. The records kept are chosen by ``numpy.random.default_rng(seed)``
    and stay in their original order.

    Raises
    ------
    AttackInputError
        If either set is empty.
    """
    _check_not_empty(members, non_members)
    n = min(len(members), len(non_members))
    rng = np.random.default_rng(seed)
    return _take(members, n, rng), _take(non_members, n, rng)


def _take(data: SiteData, n: int, rng: np.random.Generator) -> SiteData:
    if len(data) == n:
        return data
    idx = np.sort(rng.choice(len(data), size=n, replace=False))
    return SiteData(features=data.features[idx], labels=data.labels[idx])


def _check_not_empty(members: SiteData, non_members: SiteData) -> None:
    for what, data in (("members", members), ("non_members", non_members)):
        if len(data) == 0:
            raise AttackInputError(f"{what} is empty: an attack needs records of both kinds")


def _check_balanced(members: SiteData, non_members: SiteData) -> None:
    _check_not_empty(members, non_members)
    if len(members) != len(non_members):
        raise AttackInputError(
            f"members ({len(members)} records) and non_members ({len(non_members)} records) "
            f"must be the same size; balance them with balanced_sets(...)"
        )
    if members.features.shape[1:] != non_members.features.shape[1:]:
        raise AttackInputError(
            f"members have records of shape {members.features.shape[1:]}, non_members of "
            f"shape {non_members.features.shape[1:]}"
        )


# -- model outputs -----------------------------------------------------------------------------


def log_probabilities(model: nn.Module, data: SiteData, batch_size: int = 512) -> np.ndarray:
    """Log-softmax of ``model``'s outputs on ``data``, in float64, shape ``(N, classes)``.

    float64 because an overfitted model gives its members losses far below float32's
    resolution near 0, and ties there would blunt the attack. The model is evaluated in
    ``eval()`` mode without gradients, and its training flag restored afterwards.

    Raises
    ------
    AttackInputError
        If a label is outside the model's classes, or the model gives a non-finite output.
    """
    if len(data) == 0:
        return np.zeros((0, 0), dtype=np.float64)
    x = torch.from_numpy(np.ascontiguousarray(data.features))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            chunks = [model(x[i:i + batch_size]).to(torch.float64)
                      for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    logits = torch.cat(chunks)
    if logits.ndim != 2 or np.asarray(data.labels).ndim != 1:
        raise AttackInputError(
            f"membership attacks need a classifier: outputs (N, C) and labels (N,), got "
            f"outputs {tuple(logits.shape)} and labels {np.asarray(data.labels).shape}"
        )
    classes = logits.shape[1]
    labels = np.asarray(data.labels)
    out_of_range = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(out_of_range):
        i = int(out_of_range[0])
        raise AttackInputError(
            f"record {i} has label {int(labels[i])}, outside the model's {classes} classes"
        )
    bad = np.flatnonzero(~torch.isfinite(logits).all(dim=1).numpy())
    if len(bad):
        raise AttackInputError(
            f"the model gives non-finite outputs for {len(bad)} of {len(data)} records "
            f"(first: record {int(bad[0])})"
        )
    return torch.log_softmax(logits, dim=1).numpy()


def per_example_loss(model: nn.Module, data: SiteData, batch_size: int = 512) -> np.ndarray:
    """Cross-entropy loss of each record, float64 ``(N,)`` (see :func:`log_probabilities`)."""
    logp = log_probabilities(model, data, batch_size)
    if len(data) == 0:
        return np.zeros(0, dtype=np.float64)
    return -logp[np.arange(len(data)), np.asarray(data.labels)]


# -- scoring -----------------------------------------------------------------------------------


def score_attack(name: str, member_scores: np.ndarray,
                 non_member_scores: np.ndarray) -> AttackResult:
    """ROC, AUC, advantage and p-value of a membership score (higher means "member").

    Parameters
    ----------
    name:
        The attack's name, copied into the result.
    member_scores, non_member_scores:
        1-D, equal length, finite.

    Raises
    ------
    AttackInputError
        If the score arrays are empty, unequal in length or not finite.
    """
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score, roc_curve

    m = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    n = np.asarray(non_member_scores, dtype=np.float64).reshape(-1)
    if len(m) == 0 or len(n) == 0:
        raise AttackInputError("an attack needs at least one member and one non-member score")
    if len(m) != len(n):
        raise AttackInputError(
            f"{len(m)} member scores and {len(n)} non-member scores: must be balanced"
        )
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise AttackInputError("attack scores must be finite")
    truth = np.concatenate([np.ones(len(m), dtype=np.int8), np.zeros(len(n), dtype=np.int8)])
    scores = np.concatenate([m, n])
    fpr, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=True)
    gaps = tpr - fpr
    best = int(np.argmax(gaps))
    # roc_curve's first threshold is +inf (nobody called a member): report a finite one
    threshold = float(thresholds[best]) if np.isfinite(thresholds[best]) else float(scores.max())
    p_value = float(mannwhitneyu(m, n, alternative="greater", method="asymptotic").pvalue)
    return AttackResult(
        name=name,
        auc=float(roc_auc_score(truth, scores)),
        advantage=max(0.0, float(gaps[best])),
        threshold=threshold,
        roc_fpr=tuple(float(v) for v in fpr),
        roc_tpr=tuple(float(v) for v in tpr),
        n_members=len(m),
        n_non_members=len(n),
        p_value=p_value,
    )


# -- the attacks -------------------------------------------------------------------------------


def loss_threshold_attack(model: nn.Module, members: SiteData,
                          non_members: SiteData) -> AttackResult:
    """The loss-threshold membership attack (Yeom et al. 2018, §3.2) on ``model``.

    The attack score of a record is its negated cross-entropy loss under ``model``: training
    drives members' losses down, so a low loss suggests membership. No training and no
    randomness: the result is a function of the model and the records.

    Parameters
    ----------
    model:
        The target, e.g. :func:`target_model` of the run's final federated vector.
    members:
        Records the target was trained on.
    non_members:
        Records of the same distribution it was not trained on; as many as ``members``
        (:func:`balanced_sets`).

    Raises
    ------
    AttackInputError
        If a set is empty, the sets differ in size or record shape, a label is outside the
        model's classes, or the model's outputs are not finite.
    """
    _check_balanced(members, non_members)
    return score_attack(LOSS_THRESHOLD, -per_example_loss(model, members),
                        -per_example_loss(model, non_members))


def attack_features(model: nn.Module, data: SiteData) -> np.ndarray:
    """The shadow attack's view of each record: float64 ``(N, 3 + min(C, 3))``.

    Columns: the record's loss; whether the model predicts its label (0/1); the entropy of
    the prediction; and the log-probabilities of the ``min(C, 3)`` most likely classes,
    sorted descending (Shokri et al. 2017 §IV-B use the whole sorted vector; its top is what
    carries the signal, and logarithms keep it from saturating at 1).
    """
    logp = np.maximum(log_probabilities(model, data), _LOG_FLOOR)
    labels = np.asarray(data.labels)
    rows = np.arange(len(labels))
    loss = -logp[rows, labels]
    correct = (logp.argmax(axis=1) == labels).astype(np.float64)
    entropy = -(np.exp(logp) * logp).sum(axis=1)
    top = -np.sort(-logp, axis=1)[:, :min(3, logp.shape[1])]
    return np.column_stack([loss, correct, entropy, top])


@dataclass(frozen=True)
class ShadowAttack:
    """A fitted shadow-model attack classifier (Shokri et al. 2017, §IV): apply it to any
    number of targets of the architecture and training procedure it was fitted for.

    Made by :func:`fit_shadow_attack`; :meth:`attack` scores a target.

    Attributes
    ----------
    n_shadows, shadow_size, seed:
        How it was fitted.
    record_shape:
        The shape of one record the shadows took as input; a target's records must match.
    training_auc:
        The classifier's AUC on the shadows' own in/out records: how well membership could be
        told apart where the attacker knows the truth. Near 0.5 the attack has nothing to
        transfer to a target.
    """

    n_shadows: int
    shadow_size: int
    seed: int
    record_shape: tuple[int, ...]
    training_auc: float
    _score: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def attack(self, model: nn.Module, members: SiteData, non_members: SiteData) -> AttackResult:
        """Score ``model`` on balanced ``members`` / ``non_members`` with the fitted classifier.

        Raises
        ------
        AttackInputError
            As :func:`loss_threshold_attack`, and if the records' shape is not the shadows'.
        """
        _check_balanced(members, non_members)
        if members.features.shape[1:] != self.record_shape:
            raise AttackInputError(
                f"the target's records have shape {members.features.shape[1:]}, the shadows "
                f"were trained on records of shape {self.record_shape}"
            )
        return score_attack(SHADOW_MODEL, self._score(attack_features(model, members)),
                            self._score(attack_features(model, non_members)))


def fit_shadow_attack(
    attacker_pool: SiteData,
    *,
    make_model: ModelFactory,
    train_shadow: ShadowTrainer,
    shadow_size: int,
    n_shadows: int = 4,
    seed: int = 0,
) -> ShadowAttack:
    """Train ``n_shadows`` shadow models and the attack classifier (Shokri et al. 2017, §IV).

    1. ``attacker_pool`` is shuffled with ``seed`` and cut into ``n_shadows`` disjoint parts
       of ``2 · shadow_size`` records; shadow ``i`` is built by ``make_model(seed + i)`` and
       trained by ``train_shadow(shadow, in_i, seed + i)`` on the first half ``in_i``; the
       second half ``out_i`` is never shown to it.
    2. :func:`attack_features` of every shadow on its own ``in_i`` (label 1) and ``out_i``
       (label 0) train one standardised logistic regression (scikit-learn, L-BFGS:
       deterministic). Shokri et al. train one attack network per class; one linear model on
       class-independent, sorted features needs far fewer shadow records.

    Parameters
    ----------
    attacker_pool:
        The attacker's own records of the target's distribution, disjoint from the target's
        members and non-members (the attack's premise; not checked record by record).
    make_model:
        A fresh model of the target's architecture from a seed, e.g.
        ``lambda s: build_model(spec, s)``.
    train_shadow:
        The target's training procedure as the attacker knows it, e.g.
        :func:`local_training` of the job's training configuration.
    shadow_size:
        Records each shadow trains on. The attack transfers best when the shadows overfit
        as the target did: match the target's training-set size when it is known.
    n_shadows:
        ``k``, at least 1.
    seed:
        Makes the pool split, the shadows' initialisation and their training deterministic.

    Raises
    ------
    AttackInputError
        If ``n_shadows`` or ``shadow_size`` is below 1 or the pool holds fewer than
        ``2 · n_shadows · shadow_size`` records.
    """
    for name, value in (("n_shadows", n_shadows), ("shadow_size", shadow_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AttackInputError(f"{name} must be an integer >= 1, got {value!r}")
    needed = 2 * n_shadows * shadow_size
    if len(attacker_pool) < needed:
        raise AttackInputError(
            f"attacker_pool has {len(attacker_pool)} records; {n_shadows} shadows of "
            f"{shadow_size} 'in' and {shadow_size} 'out' records each need {needed} "
            f"disjoint records"
        )
    order = np.random.default_rng(seed).permutation(len(attacker_pool))
    features, truth = [], []
    for i in range(n_shadows):
        part = order[i * 2 * shadow_size:(i + 1) * 2 * shadow_size]
        shadow_in = _subset(attacker_pool, part[:shadow_size])
        shadow_out = _subset(attacker_pool, part[shadow_size:])
        shadow = make_model(seed + i)
        train_shadow(shadow, shadow_in, seed + i)
        features += [attack_features(shadow, shadow_in), attack_features(shadow, shadow_out)]
        truth += [np.ones(shadow_size, dtype=np.int8), np.zeros(shadow_size, dtype=np.int8)]
    x, y = np.concatenate(features), np.concatenate(truth)
    score = _attack_classifier(x, y)
    from sklearn.metrics import roc_auc_score

    return ShadowAttack(n_shadows=n_shadows, shadow_size=shadow_size, seed=seed,
                        record_shape=tuple(attacker_pool.features.shape[1:]),
                        training_auc=float(roc_auc_score(y, score(x))), _score=score)


def shadow_model_attack(
    model: nn.Module,
    members: SiteData,
    non_members: SiteData,
    *,
    attacker_pool: SiteData,
    make_model: ModelFactory,
    train_shadow: ShadowTrainer,
    n_shadows: int = 4,
    shadow_size: int | None = None,
    seed: int = 0,
) -> AttackResult:
    """The shadow-model membership attack (Shokri et al. 2017, §IV, simplified) on ``model``:
    :func:`fit_shadow_attack`, then :meth:`ShadowAttack.attack`.

    Parameters
    ----------
    model:
        The target.
    members, non_members:
        As in :func:`loss_threshold_attack`; balanced, non-empty.
    attacker_pool, make_model, train_shadow, n_shadows, seed:
        As in :func:`fit_shadow_attack`.
    shadow_size:
        Records each shadow trains on; defaults to ``len(members)``.

    Raises
    ------
    AttackInputError
        If the sets are empty or unbalanced, the pool's records differ in shape from the
        target's, or as :func:`fit_shadow_attack`.
    """
    _check_balanced(members, non_members)
    fitted = fit_shadow_attack(
        attacker_pool, make_model=make_model, train_shadow=train_shadow,
        shadow_size=len(members) if shadow_size is None else shadow_size,
        n_shadows=n_shadows, seed=seed)
    return fitted.attack(model, members, non_members)


def _subset(data: SiteData, idx: np.ndarray) -> SiteData:
    idx = np.sort(idx)
    return SiteData(features=data.features[idx], labels=data.labels[idx])


def _attack_classifier(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    pipeline.fit(x, y)

    def member_score(features: np.ndarray) -> np.ndarray:
        # the log-odds, not predict_proba: the same ranking, without saturating to exactly
        # 1.0 for a whole block of confidently "member" records (ties blunt the ROC)
        return np.asarray(pipeline.decision_function(features), dtype=np.float64)

    return member_score


def local_training(config: TrainingConfig) -> ShadowTrainer:
    """A shadow trainer that runs the sites' own non-private local training.

    It calls :func:`fedtune.client.trainer.train` with ``config`` (so ``local_epochs``,
    ``batch_size``, ``learning_rate`` and the optimiser are the target job's) and the
    shadow's seed as the round seed. A federated target saw ``rounds`` such trainings from
    moving starting points; an attacker who knows the job can raise ``local_epochs`` to
    ``rounds · local_epochs`` to imitate it.
    """
    from fedtune.client import trainer

    if config.local_epochs < 1:
        raise AttackInputError(f"local_epochs must be >= 1, got {config.local_epochs}")

    def run(model: nn.Module, data: SiteData, seed: int) -> None:
        trainer.train(model, data, config, seed)

    return run


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage (ε, δ)-DP allows: ``(e^ε - 1 + 2δ) / (e^ε + 1)``.

    DP confines every test of "record in" vs "record out" to the region
    ``FPR + e^ε·FNR >= 1 - δ`` and ``e^ε·FPR + FNR >= 1 - δ`` (Kairouz, Oh and Viswanath,
    "The Composition Theorem for Differential Privacy", ICML 2015, Theorem 2.1); the largest
    ``TPR - FPR`` in it is at ``FPR = FNR = (1 - δ)/(1 + e^ε)`` (Humphries et al., "Investigating
    Membership Inference Attacks under Data Dependencies", CSF 2023, Theorem 1). It is tighter
    than Yeom et al. 2018's ``e^ε - 1``. Infinite ε gives 1.
    """
    if not (epsilon >= 0.0) or not (0.0 <= delta <= 1.0):
        raise AttackInputError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    if math.isinf(epsilon):
        return 1.0
    return min(1.0, math.tanh(epsilon / 2.0)
               + 2.0 * delta * math.exp(-epsilon) / (1.0 + math.exp(-epsilon)))


def chance_advantage(n: int) -> float:
    """The advantage a threshold adversary reaches *by chance* on ``n`` members and ``n``
    non-members that are indistinguishable: the mean of the one-sided two-sample
    Kolmogorov–Smirnov statistic ``D+``.

    ``sqrt(n/2)·D+`` tends to the law ``P(K+ > λ) = exp(-2λ²)`` (Smirnov 1939), whose mean
    is ``sqrt(pi/8)``, so ``E[D+] ≈ sqrt(pi / 4n)`` (0.125 for ``n = 50``). For small ``n`` the
    exact mean is a little lower (0.114 for ``n = 50``): as a chance level it errs on the
    side of calling less leakage. A measured advantage near it is no evidence of leakage.
    """
    _check_count(n)
    return math.sqrt(math.pi / (4.0 * n))


def chance_advantage_sd(n: int) -> float:
    """The standard deviation of the chance advantage of :func:`chance_advantage`:
    ``sqrt((1 - pi/4) / n)`` from the same limit law (``Var K+ = 1/2 - pi/8``)."""
    _check_count(n)
    return math.sqrt((1.0 - math.pi / 4.0) / n)


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AttackInputError(f"n must be an integer >= 1, got {n!r}")


__all__ = [
    "ATTACKS",
    "LOSS_THRESHOLD",
    "SHADOW_MODEL",
    "AttackInputError",
    "AttackResult",
    "ModelFactory",
    "ShadowAttack",
    "ShadowTrainer",
    "attack_features",
    "balanced_sets",
    "chance_advantage",
    "chance_advantage_sd",
    "dp_advantage_bound",
    "fit_shadow_attack",
    "local_training",
    "log_probabilities",
    "loss_threshold_attack",
    "per_example_loss",
    "score_attack",
    "shadow_model_attack",
    "target_model",
]
