"""Membership inference on a final model (fedtune.scenarios.attacks).

The central claim, tested statistically over several seeds: a model that overfits a tiny
training set (50 digits, many epochs, no DP) lets both attacks tell its members from
held-out records far better than chance, and the same training under strong DP-SGD
(σ = 10, ε < 1 at δ = 1e-5, with the sites' own :func:`train_dp_sgd`) leaves them at chance.
"Chance" is not an advantage of 0: on ``n`` vs ``n`` indistinguishable records the best
threshold still reaches the one-sided Kolmogorov–Smirnov statistic, mean ``sqrt(pi/4n)``, sd
``sqrt((1 - pi/4)/n)``; and the AUC is ``0.5 ± sqrt((2n + 1) / 12n²)`` (Mann–Whitney). The
margins below are ``Z`` such standard deviations of a mean over the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp, mannwhitneyu

from fedtune.client import trainer
from fedtune.client.data import SiteData
from fedtune.datasets import load_bundled
from fedtune.job import TrainingConfig
from fedtune.models import build_model, get_flat
from fedtune.privacy.accountants import Release, epsilon
from fedtune.scenarios import attacks as A

N = 50  # members per seed: the target's whole training set; as many non-members
SEEDS = tuple(range(6))
Z = 4.0  # standard deviations of margin: a correct system fails about once in 30,000 runs
POOL = 400  # the shadow attacker's own records: 4 shadows × (50 in + 50 out)
OVERFIT = TrainingConfig(local_epochs=60, batch_size=25, learning_rate=0.01, optimizer="adam")
# 20 noisy steps on Poisson batches of about 25: ε = 0.92 at δ = 1e-5
DP_TRAINING = TrainingConfig(local_epochs=10, batch_size=25, learning_rate=0.01,
                             optimizer="adam")
DP_NOISE, DP_CLIP, DP_RATE, DP_DELTA = 10.0, 1.0, 0.5, 1e-5

AUC_SD = math.sqrt((2 * N + 1) / (12 * N * N))  # one seed's AUC under "no signal"
MEAN_AUC_MARGIN = Z * AUC_SD / math.sqrt(len(SEEDS))
CHANCE_BOUND = A.chance_advantage(N) + Z * A.chance_advantage_sd(N) / math.sqrt(len(SEEDS))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_bundled("digits")


def _subset(data, idx) -> SiteData:
    return SiteData(features=data.features[idx], labels=data.labels[idx])


@dataclass
class Outcome:
    loss: list[A.AttackResult]
    shadow: list[A.AttackResult]
    accuracy: list[float]


@dataclass
class Experiment:
    no_dp: Outcome
    dp: Outcome
    dp_epsilon: float
    shadow_training_auc: float


@pytest.fixture(scope="module")
def experiment(digits) -> Experiment:
    """Per seed: 50 members and 50 non-members drawn from digits outside the attacker's
    pool; one model trained on the members without DP, one with DP-SGD; both attacks on
    each. The shadow attack is fitted once, on the attacker's pool, with the non-private
    training procedure (what an attacker who read the job would imitate)."""
    order = np.random.default_rng(2024).permutation(len(digits))
    pool, rest = _subset(digits, order[:POOL]), order[POOL:]
    shadow = A.fit_shadow_attack(pool, make_model=lambda s: build_model(digits.model, s),
                                 train_shadow=A.local_training(OVERFIT), shadow_size=N,
                                 n_shadows=4, seed=7)
    outcomes = {False: Outcome([], [], []), True: Outcome([], [], [])}
    for seed in SEEDS:
        chosen = np.random.default_rng(seed).choice(rest, size=2 * N, replace=False)
        members, non_members = _subset(digits, chosen[:N]), _subset(digits, chosen[N:])
        for private in (False, True):
            model = build_model(digits.model, seed)
            if private:
                trainer.train_dp_sgd(model, members, DP_TRAINING, DP_NOISE, DP_CLIP, DP_RATE)
            else:
                trainer.train(model, members, OVERFIT, seed)
            out = outcomes[private]
            out.loss.append(A.loss_threshold_attack(model, members, non_members))
            out.shadow.append(shadow.attack(model, members, non_members))
            held_out = trainer.evaluate(model, non_members)
            out.accuracy.append(held_out.correct / held_out.count)
    steps = DP_TRAINING.local_epochs * math.ceil(1 / DP_RATE)  # train_dp_sgd's step count
    eps = epsilon([Release("gaussian", DP_NOISE, DP_RATE, steps)], DP_DELTA)
    return Experiment(outcomes[False], outcomes[True], eps, shadow.training_auc)


def _mean(results: list[A.AttackResult], what: str) -> float:
    return float(np.mean([getattr(r, what) for r in results]))


def _lower_confidence(results: list[A.AttackResult], what: str) -> float:
    values = np.array([getattr(r, what) for r in results])
    return float(values.mean() - Z * values.std(ddof=1) / math.sqrt(len(values)))


# -- the claim: overfitting leaks membership, strong DP does not ---------------------------------


@pytest.mark.parametrize("attack", ["loss", "shadow"])
def test_an_overfitted_model_without_dp_leaks_membership(experiment, attack):
    results = getattr(experiment.no_dp, attack)
    assert len(results) == len(SEEDS)
    assert all(r.n_members == r.n_non_members == N for r in results)
    # every seed on its own is far beyond chance...
    assert max(r.p_value for r in results) < 1e-4, [r.p_value for r in results]
    # ...and the mean, less Z standard errors of the seeds, clears chance plus Z of its own
    assert _lower_confidence(results, "advantage") > CHANCE_BOUND, \
        [r.advantage for r in results]
    assert _lower_confidence(results, "auc") > 0.5 + MEAN_AUC_MARGIN, [r.auc for r in results]


@pytest.mark.parametrize("attack", ["loss", "shadow"])
def test_strong_dp_leaves_membership_at_chance(experiment, attack):
    assert experiment.dp_epsilon < 1.0  # the premise: strong DP
    results = getattr(experiment.dp, attack)
    assert abs(_mean(results, "auc") - 0.5) <= MEAN_AUC_MARGIN, [r.auc for r in results]
    assert _mean(results, "advantage") <= CHANCE_BOUND, [r.advantage for r in results]


def test_the_shadow_attack_learned_membership_on_its_own_shadows(experiment):
    assert experiment.shadow_training_auc > 0.75


# -- scoring: ROC, AUC, advantage ---------------------------------------------------------------


def test_auc_and_advantage_agree_with_independent_statistics():
    rng = np.random.default_rng(3)
    members, non_members = rng.normal(0.4, 1.0, 80), rng.normal(0.0, 1.0, 80)
    result = A.score_attack("x", members, non_members)
    u = mannwhitneyu(members, non_members, alternative="greater")
    assert result.auc == pytest.approx(u.statistic / (80 * 80))
    assert result.p_value == pytest.approx(
        mannwhitneyu(members, non_members, alternative="greater", method="asymptotic").pvalue)
    # max over thresholds of TPR − FPR is the one-sided two-sample KS statistic
    assert result.advantage == pytest.approx(
        ks_2samp(non_members, members, alternative="greater").statistic)


def test_the_roc_curve_runs_from_corner_to_corner():
    rng = np.random.default_rng(4)
    result = A.score_attack("x", rng.normal(1, 1, 30), rng.normal(0, 1, 30))
    assert (result.roc_fpr[0], result.roc_tpr[0]) == (0.0, 0.0)
    assert (result.roc_fpr[-1], result.roc_tpr[-1]) == (1.0, 1.0)
    assert list(result.roc_fpr) == sorted(result.roc_fpr)
    assert list(result.roc_tpr) == sorted(result.roc_tpr)
    best = int(np.argmax(np.subtract(result.roc_tpr, result.roc_fpr)))
    assert result.advantage == pytest.approx(result.roc_tpr[best] - result.roc_fpr[best])


def test_separated_scores_give_auc_1_and_full_advantage():
    result = A.score_attack("x", np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0, 3.0]))
    assert (result.auc, result.advantage) == (1.0, 1.0)
    assert 3.0 < result.threshold <= 5.0


def test_indistinguishable_scores_give_auc_half_and_no_advantage():
    same = np.array([0.1, 0.2, 0.3, 0.4])
    result = A.score_attack("x", same, same.copy())
    assert (result.auc, result.advantage) == (0.5, 0.0)


def test_chance_advantage_matches_simulation():
    rng = np.random.default_rng(5)
    n = 200
    draws = [A.score_attack("x", rng.normal(size=n), rng.normal(size=n)).advantage
             for _ in range(300)]
    # the limit law overstates the small-sample mean a little (docstring): within 10 %
    assert np.mean(draws) == pytest.approx(A.chance_advantage(n), rel=0.1)
    assert np.std(draws) == pytest.approx(A.chance_advantage_sd(n), rel=0.2)


def test_dp_advantage_bound_has_the_hypothesis_testing_form():
    assert A.dp_advantage_bound(0.0, 0.0) == 0.0
    assert A.dp_advantage_bound(math.log(3.0), 0.0) == pytest.approx(0.5)  # (3 - 1)/(3 + 1)
    assert A.dp_advantage_bound(math.log(3.0), 0.01) == pytest.approx(0.5 + 0.02 / 4)
    assert A.dp_advantage_bound(math.inf, 1e-5) == 1.0
    assert A.dp_advantage_bound(1e4, 0.0) == 1.0  # no overflow


# -- the loss-threshold attack on a real model --------------------------------------------------


@pytest.fixture(scope="module")
def small_model_and_sets(digits):
    model = build_model(digits.model, 1)
    members, non_members = _subset(digits, np.arange(0, 30)), _subset(digits, np.arange(30, 60))
    trainer.train(model, members, TrainingConfig(local_epochs=5, batch_size=10,
                                                 learning_rate=0.01, optimizer="adam"), 1)
    return model, members, non_members


def test_the_loss_attack_scores_each_record_by_its_loss(small_model_and_sets):
    model, members, non_members = small_model_and_sets
    losses = A.per_example_loss(model, members)
    mean = trainer.evaluate(model, members).loss_sum / len(members)
    assert losses.shape == (len(members),) and losses.dtype == np.float64
    assert losses.mean() == pytest.approx(mean, rel=1e-4)  # the trainer's own loss
    result = A.loss_threshold_attack(model, members, non_members)
    expected = A.score_attack(A.LOSS_THRESHOLD, -losses, -A.per_example_loss(model, non_members))
    assert result == expected


def test_an_attack_leaves_the_model_as_it_found_it(small_model_and_sets):
    model, members, non_members = small_model_and_sets
    before = get_flat(model)
    model.train()
    first = A.loss_threshold_attack(model, members, non_members)
    assert model.training
    assert np.array_equal(get_flat(model), before)
    assert A.loss_threshold_attack(model, members, non_members) == first


def test_the_target_model_is_the_registry_model_with_the_federated_vector(digits,
                                                                          small_model_and_sets):
    model, members, non_members = small_model_and_sets
    rebuilt = A.target_model(digits.model, get_flat(model))
    assert A.loss_threshold_attack(rebuilt, members, non_members) == \
        A.loss_threshold_attack(model, members, non_members)


def test_the_shadow_attack_is_deterministic_from_its_seed(digits, small_model_and_sets):
    model, members, non_members = small_model_and_sets
    pool = _subset(digits, np.arange(100, 180))
    quick = TrainingConfig(local_epochs=3, batch_size=10, learning_rate=0.01, optimizer="adam")

    def run(seed: int) -> A.AttackResult:
        return A.shadow_model_attack(
            model, members, non_members, attacker_pool=pool,
            make_model=lambda s: build_model(digits.model, s),
            train_shadow=A.local_training(quick), n_shadows=2, shadow_size=20, seed=seed)

    first = run(11)
    assert first.name == A.SHADOW_MODEL
    assert run(11) == first


# -- inputs an attack refuses -------------------------------------------------------------------


def test_unbalanced_sets_are_refused(small_model_and_sets):
    model, members, non_members = small_model_and_sets
    fewer = _subset(non_members, np.arange(10))
    with pytest.raises(A.AttackInputError,
                       match=r"members \(30 records\) and non_members \(10 records\).*"
                             r"balanced_sets"):
        A.loss_threshold_attack(model, members, fewer)


def test_an_empty_set_is_refused(small_model_and_sets):
    model, members, _ = small_model_and_sets
    empty = _subset(members, np.arange(0))
    with pytest.raises(A.AttackInputError, match="non_members is empty"):
        A.loss_threshold_attack(model, members, empty)
    with pytest.raises(A.AttackInputError, match="members is empty"):
        A.balanced_sets(empty, members, seed=0)


def test_records_of_another_shape_are_refused(small_model_and_sets):
    model, members, _ = small_model_and_sets
    other = SiteData(features=np.zeros((30, 64), np.float32), labels=np.zeros(30, np.int64))
    with pytest.raises(A.AttackInputError, match=r"shape \(1, 8, 8\).*shape \(64,\)"):
        A.loss_threshold_attack(model, members, other)


def test_a_label_outside_the_models_classes_is_refused(small_model_and_sets):
    model, members, non_members = small_model_and_sets
    labels = non_members.labels.copy()
    labels[4] = 10
    bad = SiteData(features=non_members.features, labels=labels)
    with pytest.raises(A.AttackInputError, match="record 4 has label 10, outside the model's "
                                                 "10 classes"):
        A.loss_threshold_attack(model, members, bad)


def test_a_model_with_non_finite_outputs_is_refused(digits, small_model_and_sets):
    _, members, non_members = small_model_and_sets
    broken = build_model(digits.model, 0)
    with torch.no_grad():
        broken[-1].bias.fill_(math.nan)
    with pytest.raises(A.AttackInputError, match="non-finite outputs for 30 of 30 records"):
        A.loss_threshold_attack(broken, members, non_members)


def test_a_pool_too_small_for_the_shadows_is_refused(digits, small_model_and_sets):
    model, members, non_members = small_model_and_sets
    with pytest.raises(A.AttackInputError, match="attacker_pool has 50 records; 4 shadows of "
                                                 "30 'in' and 30 'out' records each need 240"):
        A.shadow_model_attack(model, members, non_members,
                              attacker_pool=_subset(digits, np.arange(100, 150)),
                              make_model=lambda s: build_model(digits.model, s),
                              train_shadow=A.local_training(OVERFIT))


def test_zero_shadows_are_refused(digits):
    with pytest.raises(A.AttackInputError, match="n_shadows must be an integer >= 1, got 0"):
        A.fit_shadow_attack(_subset(digits, np.arange(100)),
                            make_model=lambda s: build_model(digits.model, s),
                            train_shadow=A.local_training(OVERFIT), shadow_size=10, n_shadows=0)


def test_balanced_sets_subsample_the_larger_set_deterministically(digits):
    big, small = _subset(digits, np.arange(0, 40)), _subset(digits, np.arange(40, 52))
    members, non_members = A.balanced_sets(big, small, seed=3)
    assert len(members) == len(non_members) == 12
    assert non_members is small
    again, _ = A.balanced_sets(big, small, seed=3)
    assert np.array_equal(again.features, members.features)
    # kept records are records of the larger set, in their original order
    rows = [int(np.flatnonzero((big.features == f).all(axis=(1, 2, 3)))[0])
            for f in members.features]
    assert rows == sorted(rows) and len(set(rows)) == 12
