"""Privacy accounting: RDP and PLD accountants, the Skellam RDP bound, noise calibration.

Reference values are computed in each test, independently of fedtune, with Opacus
(``opacus.accountants.RDPAccountant``) and Google's ``dp_accounting`` (``RdpAccountant``,
``PLDAccountant``, the analytic Gaussian), or from the paper's closed form.
"""

from __future__ import annotations

import itertools
import math
import warnings

import dp_accounting
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant as OpacusRDPAccountant

from fedtune.privacy import accountants as acc
from fedtune.privacy import calibration as cal
from fedtune.privacy import skellam

SIGMAS = (0.8, 1.1, 2.0)
RATES = (0.01, 0.1, 1.0)
STEPS = (1, 10, 200)
DELTAS = (1e-5, 1e-6)
GRID = list(itertools.product(SIGMAS, RATES, STEPS, DELTAS))
PLD_INTERVAL = 1e-3  # coarser than the default, for test time; both sides use the same grid


def _opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    reference = OpacusRDPAccountant()
    reference.history = list(history)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": informational
        warnings.simplefilter("ignore")
        return float(reference.get_epsilon(delta, alphas=list(acc.DEFAULT_ORDERS)))


def _gaussian_event(sigma: float, q: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    return gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), GRID)
def test_rdp_epsilon_matches_opacus_and_dp_accounting(
    sigma: float, q: float, steps: int, delta: float
) -> None:
    ours = acc.epsilon([acc.Release("gaussian", sigma, q, steps)], delta, "rdp")

    google = dp_accounting.rdp.RdpAccountant(orders=list(acc.DEFAULT_ORDERS))
    google.compose(dp_accounting.SelfComposedDpEvent(_gaussian_event(sigma, q), steps))

    assert ours == pytest.approx(_opacus_epsilon([(sigma, q, steps)], delta), rel=1e-3)
    assert ours == pytest.approx(google.get_epsilon(delta), rel=1e-3)


@pytest.mark.parametrize(("sigma", "q", "steps"),
                         list(itertools.product((0.8, 2.0), (0.01, 0.1), STEPS)))
def test_pld_epsilon_matches_dp_accounting_pld(sigma: float, q: float, steps: int) -> None:
    ours = acc.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    ours.add(acc.Release("gaussian", sigma, q, steps))

    google = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    google.compose(dp_accounting.SelfComposedDpEvent(_gaussian_event(sigma, q), steps))

    for delta in DELTAS:
        assert ours.get_epsilon(delta) == pytest.approx(google.get_epsilon(delta), rel=1e-3)


@pytest.mark.parametrize(("sigma", "steps"), list(itertools.product(SIGMAS, STEPS)))
def test_pld_epsilon_of_gaussian_rounds_matches_the_analytic_gaussian(
    sigma: float, steps: int
) -> None:
    # k rounds of the Gaussian mechanism are exactly one Gaussian with σ/√k (Dong et al.
    # 2019); dp_accounting's analytic Gaussian (Balle and Wang 2018) computes its exact ε.
    ours = acc.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    ours.add(acc.Release("gaussian", sigma, 1.0, steps))
    for delta in DELTAS:
        exact = dp_accounting.get_epsilon_gaussian(sigma / math.sqrt(steps), delta)
        assert ours.get_epsilon(delta) == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize(("batch_size", "dataset_size", "epochs"),
                         [(32, 1000, 3), (64, 569, 5), (50, 1797, 1), (100, 1000, 2)])
def test_dp_sgd_release_counts_steps_and_rate_as_opacus(
    batch_size: int, dataset_size: int, epochs: int
) -> None:
    sigma, delta = 1.1, 1e-5
    release = acc.dp_sgd_release(sigma, batch_size, dataset_size, epochs)

    # What PrivacyEngine.make_private does: q = 1/len(data_loader), one step per batch.
    loader = torch.utils.data.DataLoader(list(range(dataset_size)), batch_size=batch_size)
    reference = OpacusRDPAccountant()
    for _ in range(epochs * len(loader)):
        reference.step(noise_multiplier=sigma, sample_rate=1 / len(loader))

    assert (release.sample_rate, release.steps) == (1 / len(loader), epochs * len(loader))
    assert acc.epsilon([release], delta) == pytest.approx(
        _opacus_epsilon(reference.history, delta), rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_composition_across_releases_equals_one_release_with_summed_steps(
    accountant: str
) -> None:
    make = (acc.RDPAccountant if accountant == "rdp"
            else lambda: acc.PLDAccountant(value_discretization_interval=PLD_INTERVAL))
    split, whole = make(), make()
    for steps in (3, 40, 17):  # e.g. three jobs on the same dataset
        split.add(acc.Release("gaussian", 1.1, 0.05, steps))
    whole.add(acc.Release("gaussian", 1.1, 0.05, 60))
    assert split.get_epsilon(1e-5) == pytest.approx(whole.get_epsilon(1e-5), rel=1e-9)


def test_mixed_gaussian_and_skellam_rdp_curves_add_up() -> None:
    gaussian = acc.Release("gaussian", 1.3, 0.02, 50)
    distributed = acc.Release("skellam", 0.0, 1.0, 7, skellam_mu=2e6, l1_sensitivity=8e4,
                              l2_sensitivity=2e3)
    both = acc.RDPAccountant()
    both.add(gaussian)
    both.add(distributed)
    alone = [acc.RDPAccountant(), acc.RDPAccountant()]
    alone[0].add(gaussian)
    alone[1].add(distributed)
    np.testing.assert_allclose(both.get_rdp(), alone[0].get_rdp() + alone[1].get_rdp())
    assert both.get_epsilon(1e-5) > max(a.get_epsilon(1e-5) for a in alone)


def test_accountant_without_releases_has_spent_nothing() -> None:
    assert acc.RDPAccountant().get_epsilon(1e-5) == 0.0
    assert acc.PLDAccountant().get_epsilon(1e-5) == 0.0


def test_copy_is_independent_of_the_original() -> None:
    original = acc.RDPAccountant()
    original.step(noise_multiplier=1.0, sample_rate=1.0, steps=10)
    trial = original.copy()
    trial.add(acc.Release("gaussian", 1.0, 1.0, 10))
    assert len(original.history) == 1 and len(trial.history) == 2
    assert trial.get_epsilon(1e-5) > original.get_epsilon(1e-5)


def test_sampled_skellam_release_is_refused_by_rdp_accountant() -> None:
    release = acc.Release("skellam", 0.0, 0.5, 1, skellam_mu=1e4, l1_sensitivity=10.0,
                          l2_sensitivity=10.0)
    with pytest.raises(acc.AccountingError, match="sample_rate=1"):
        acc.RDPAccountant().add(release)


def test_skellam_release_is_refused_by_pld_accountant() -> None:
    release = acc.Release("skellam", 0.0, 1.0, 1, skellam_mu=1e4, l1_sensitivity=10.0,
                          l2_sensitivity=10.0)
    with pytest.raises(acc.AccountingError, match="Gaussian releases only"):
        acc.PLDAccountant().add(release)


@pytest.mark.parametrize("kwargs", [
    {"mechanism": "laplace"}, {"sample_rate": 0.0}, {"sample_rate": 1.5}, {"steps": -1},
    {"noise_multiplier": 0.0}, {"mechanism": "skellam"},
])
def test_invalid_release_is_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"mechanism": "gaussian", "noise_multiplier": 1.0,
                                 "sample_rate": 1.0, "steps": 1}
    fields.update(kwargs)
    with pytest.raises(acc.AccountingError):
        acc.Release(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
def test_delta_outside_the_open_unit_interval_is_refused(delta: float) -> None:
    with pytest.raises(acc.AccountingError, match="delta"):
        acc.epsilon([acc.Release("gaussian", 1.0, 1.0, 1)], delta)


# --- Skellam RDP (Agarwal, Kairouz and Liu 2021) ---------------------------------------------


def _paper_skellam_rdp(alpha: int, mu: float, l1: float, l2: float) -> float:
    """Theorem 3.5 of Agarwal et al. 2021, noise Sk(μ, μ)^d (variance 2μ)."""
    return (alpha * l2**2 / (4 * mu)
            + min(((2 * alpha - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu)))


def _google_skellam_rdp(alpha: int, variance: float, scale: float, l1_real: float,
                        l2_real: float) -> float:
    """The same bound as Google's reference states it: real-unit sensitivities, the
    aggregate's variance in real units, and the scale s (integer = s · real)."""
    rdp = alpha / (2 * variance) * l2_real**2
    return rdp + min(((2 * alpha - 1) * scale * l2_real**2 + 6 * l1_real)
                     / (4 * scale**3 * variance**2), 3 * l1_real / (2 * scale * variance))


@pytest.mark.parametrize(("alpha", "mu", "l1", "l2"), [
    (2, 10.0, 3.0, 1.0), (8, 1e3, 100.0, 10.0), (32, 5e5, 4e4, 1e3), (256, 1e8, 1e6, 1e4),
    (5, 0.5, 1.0, 1.0),
])
def test_skellam_rdp_matches_the_papers_closed_form(
    alpha: int, mu: float, l1: float, l2: float
) -> None:
    ours = skellam.skellam_rdp(alpha, mu, l1, l2)
    assert ours == pytest.approx(_paper_skellam_rdp(alpha, mu, l1, l2), rel=1e-12)
    s = 3.0  # any scale: the real-unit form must agree after the change of variables
    assert ours == pytest.approx(
        _google_skellam_rdp(alpha, 2 * mu / s**2, s, l1 / s, l2 / s), rel=1e-12)


@pytest.mark.parametrize("alpha", [2, 10, 64])
def test_skellam_rdp_approaches_gaussian_rdp_of_the_same_variance(alpha: int) -> None:
    l1, l2 = 300.0, 30.0
    ratios = []
    for mu in (1e2, 1e4, 1e6, 1e8):
        gaussian = alpha * l2**2 / (2 * (2 * mu))  # α·Δ₂²/(2σ²) with σ² = 2μ
        ratios.append(skellam.skellam_rdp(alpha, mu, l1, l2) / gaussian)
    assert all(r >= 1.0 for r in ratios)
    assert all(a > b for a, b in itertools.pairwise(ratios))  # strictly closer as μ grows
    assert ratios[-1] == pytest.approx(1.0, abs=1e-5)


def test_skellam_rdp_at_a_fractional_order_is_the_bound_at_the_next_integer() -> None:
    assert skellam.skellam_rdp(2.3, 1e3, 50.0, 10.0) == skellam.skellam_rdp(3, 1e3, 50.0, 10.0)


def test_skellam_rdp_curve_composes_steps_additively() -> None:
    orders = [2.0, 4.0, 16.0]
    curve = skellam.skellam_rdp_curve(orders, 1e4, 40.0, 20.0, steps=7)
    np.testing.assert_allclose(curve, [7 * skellam.skellam_rdp(a, 1e4, 40.0, 20.0)
                                       for a in orders])


@pytest.mark.parametrize(("alpha", "mu", "l1", "l2"),
                         [(1.0, 1.0, 1.0, 1.0), (2, 0.0, 1.0, 1.0), (2, 1.0, -1.0, 1.0)])
def test_invalid_skellam_parameters_are_refused(
    alpha: float, mu: float, l1: float, l2: float
) -> None:
    with pytest.raises(skellam.SkellamError):
        skellam.skellam_rdp(alpha, mu, l1, l2)


# --- calibration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "delta", "rounds", "q"), [
    (1.0, 1e-5, 100, 1.0), (3.0, 1e-5, 1000, 0.1), (8.0, 1e-6, 5000, 0.01), (0.5, 1e-5, 1, 1.0),
])
def test_calibrated_noise_multiplier_meets_the_target_closely(
    target: float, delta: float, rounds: int, q: float
) -> None:
    sigma = cal.noise_multiplier_for(target, delta, rounds, q)
    spent = acc.epsilon([acc.Release("gaussian", sigma, q, rounds)], delta)
    assert target * (1 - 1e-3) <= spent <= target


def test_calibration_with_pld_meets_the_target_closely() -> None:
    sigma = cal.noise_multiplier_for(2.0, 1e-5, 4, 1.0, accountant="pld")
    spent = acc.epsilon([acc.Release("gaussian", sigma, 1.0, 4)], 1e-5, "pld")
    assert 2.0 * (1 - 1e-3) <= spent <= 2.0


def test_dp_sgd_noise_multiplier_covers_every_round() -> None:
    sigma = cal.dp_sgd_noise_multiplier(3.0, 1e-5, batch_size=64, dataset_size=1797,
                                        epochs=2, rounds=10)
    one_round = acc.dp_sgd_release(sigma, 64, 1797, 2)
    spent = acc.epsilon([one_round] * 10, 1e-5)
    assert 3.0 * (1 - 1e-3) <= spent <= 3.0


def test_calibration_leaves_room_for_what_was_already_spent() -> None:
    earlier = [acc.Release("gaussian", 1.5, 0.05, 100)]
    sigma = cal.noise_multiplier_for(4.0, 1e-5, 50, 1.0, spent=earlier)
    total = acc.epsilon([*earlier, acc.Release("gaussian", sigma, 1.0, 50)], 1e-5)
    assert 4.0 * (1 - 1e-3) <= total <= 4.0


@pytest.mark.parametrize(("target", "match"), [(1e-4, "above"), (0.0, "> 0"), (-1.0, "> 0")])
def test_unreachable_target_raises(target: float, match: str) -> None:
    with pytest.raises(cal.CalibrationError, match=match):
        cal.noise_multiplier_for(target, 1e-5, 10_000)


def test_target_already_spent_raises() -> None:
    earlier = [acc.Release("gaussian", 0.8, 1.0, 10)]
    with pytest.raises(cal.CalibrationError, match="already spent"):
        cal.noise_multiplier_for(3.0, 1e-5, 1, spent=earlier)


def test_skellam_calibration_needs_the_distributed_setting() -> None:
    with pytest.raises(cal.CalibrationError, match="clip_norm"):
        cal.noise_multiplier_for(3.0, 1e-5, 10, mechanism="skellam")
