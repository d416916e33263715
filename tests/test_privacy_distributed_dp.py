"""Distributed DP in Z_(2^bits): clipping, rotation, noise calibration, no wrap-around, and the
pure-layer round trip site_encode → modular sum → server_decode."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.linalg import hadamard

from fedtune.privacy import accountants as acc
from fedtune.privacy import calibration as cal
from fedtune.privacy import distributed_dp as ddp
from fedtune.privacy import masks, skellam
from fedtune.privacy.quantization import dequantize

SEED = bytes(range(32))


def _relative_tolerance(n_draws: int, excess_kurtosis: float = 0.0, sds: float = 6.0) -> float:
    """``sds`` standard deviations of the sample variance's relative error at ``n_draws``
    draws: ``Var(s²)/σ⁴ ≈ (2 + κ)/n`` (κ = excess kurtosis; 1/(2μ) for Sk(μ, μ))."""
    return sds * math.sqrt((2.0 + excess_kurtosis) / n_draws)


def _params(**overrides: object) -> ddp.DistributedDPParams:
    settings: dict[str, object] = {
        "target_noise_multiplier": 1.0, "clip_norm": 1.0, "dimension": 1000,
        "n_sites_max": 8, "min_sites": 5, "bits": 20,
    }
    settings.update(overrides)
    return ddp.DistributedDPParams.calibrate(**settings)  # type: ignore[arg-type]


# --- clipping and rotation -------------------------------------------------------------------


def test_vector_longer_than_clip_norm_is_scaled_to_it() -> None:
    x = np.array([3.0, 4.0])
    clipped, was_clipped = ddp.clip_l2(x, 1.0)
    assert was_clipped
    assert np.linalg.norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped, x / 5.0)


def test_vector_within_clip_norm_is_unchanged() -> None:
    x = np.array([0.3, -0.4])
    clipped, was_clipped = ddp.clip_l2(x, 1.0)
    assert not was_clipped
    np.testing.assert_array_equal(clipped, x)


@pytest.mark.parametrize("length", [1, 2, 7, 64, 1000, 4097])
def test_rotate_then_unrotate_round_trips(length: int) -> None:
    x = np.random.default_rng(length).normal(size=length)
    y = ddp.rotate(x, SEED)
    assert y.size == 1 << (length - 1).bit_length()
    np.testing.assert_allclose(ddp.unrotate(y, SEED, length), x, atol=1e-12)


def test_rotation_preserves_the_l2_norm() -> None:
    x = np.random.default_rng(0).normal(size=777)
    assert np.linalg.norm(ddp.rotate(x, SEED)) == pytest.approx(np.linalg.norm(x), rel=1e-12)


def test_rotation_is_a_dense_hadamard_matrix_times_fixed_random_signs() -> None:
    # rotate(x) = H·D·x/√d, so (H/√d)·rotate(x) = D·x: a ±1 multiple of x, coordinate by
    # coordinate, with the same signs for every x (scipy's dense Sylvester Hadamard matrix).
    d = 256
    h = hadamard(d) / math.sqrt(d)
    rng = np.random.default_rng(1)
    signs = []
    for _ in range(3):
        x = rng.uniform(0.5, 1.5, d)
        ratio = h @ ddp.rotate(x, SEED) / x
        np.testing.assert_allclose(np.abs(ratio), 1.0, atol=1e-10)
        signs.append(np.sign(ratio))
    assert all(np.array_equal(s, signs[0]) for s in signs)
    assert 0.35 < np.mean(signs[0] > 0) < 0.65


def test_every_party_derives_the_same_rotation_from_the_seed_and_another_seed_differs() -> None:
    x = np.random.default_rng(2).normal(size=100)
    np.testing.assert_array_equal(ddp.rotate(x, SEED), ddp.rotate(x.copy(), bytes(SEED)))
    assert not np.allclose(ddp.rotate(x, SEED), ddp.rotate(x, bytes(reversed(SEED))))


def test_short_rotation_seed_is_refused() -> None:
    with pytest.raises(ddp.DistributedDPError, match="at least 16 bytes"):
        ddp.rotate(np.ones(4), b"short")


# --- noise calibration -----------------------------------------------------------------------


def test_calibrated_noise_has_std_sigma_c_for_min_sites_in_the_integer_domain() -> None:
    params = _params(target_noise_multiplier=1.3, clip_norm=2.0)
    assert 2 * params.noise_mu_total == pytest.approx(
        (1.3 * 2.0 * params.scale) ** 2, rel=1e-12)
    assert params.noise_multiplier == pytest.approx(1.3, rel=1e-12)


@pytest.mark.parametrize("survivors", [5, 6, 8])  # t = 5 ≤ k ≤ n = 8
def test_aggregate_skellam_noise_of_k_survivors_has_k_over_t_times_the_target_variance(
    survivors: int,
) -> None:
    params = _params(bits=16)  # small μ, so the Skellam is visibly discrete
    rng = np.random.default_rng(10 + survivors)
    n_draws = 200_000
    total = sum(skellam.sample_skellam(n_draws, params.noise_mu_per_site, rng)
                for _ in range(survivors))
    target = 2 * params.noise_mu_total  # what t = min_sites survivors add
    expected = target * survivors / params.min_sites
    kurtosis = 1 / (2 * params.noise_mu_per_site * survivors)
    assert float(np.mean(total)) == pytest.approx(0.0, abs=6 * math.sqrt(expected / n_draws))
    assert np.var(total) == pytest.approx(expected, rel=_relative_tolerance(n_draws, kurtosis))
    assert np.var(total) >= target * (1 - _relative_tolerance(n_draws, kurtosis))


@pytest.mark.parametrize("survivors", [5, 8])
def test_decoded_noise_of_zero_updates_has_std_sigma_c_scaled_by_survivors(
    survivors: int,
) -> None:
    params = _params(target_noise_multiplier=0.7, clip_norm=3.0, dimension=4096)
    rng = np.random.default_rng(survivors)
    inputs = [ddp.site_encode(np.zeros(4096), params, SEED, rng) for _ in range(survivors)]
    noise = ddp.server_decode(masks.mod_sum(inputs, params.bits), params, SEED)
    expected = (0.7 * 3.0) ** 2 * survivors / params.min_sites
    assert np.var(noise) == pytest.approx(expected, rel=_relative_tolerance(noise.size))


def test_central_gaussian_noise_has_the_target_variance() -> None:
    sigma, clip = 1.1, 0.5
    noise = ddp.gaussian_noise(400_000, sigma * clip, np.random.default_rng(3))
    assert np.var(noise) == pytest.approx((sigma * clip) ** 2,
                                          rel=_relative_tolerance(noise.size))
    assert float(np.mean(noise)) == pytest.approx(0.0, abs=6 * sigma * clip / math.sqrt(4e5))


# --- the round trip --------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "survivors"), [(1.0, 6), (0.01, 5), (0.01, 8)])
def test_decoded_sum_is_the_sum_of_clipped_updates_within_the_expected_noise(
    sigma: float, survivors: int
) -> None:
    d = 4000
    params = _params(target_noise_multiplier=sigma, dimension=d, bits=24)
    rng = np.random.default_rng(4)
    updates = [rng.normal(size=d) * rng.uniform(0.3, 3.0) / math.sqrt(d)
               for _ in range(survivors)]  # norms ≈ 0.3 … 3: some clipped, some not
    inputs = [ddp.site_encode(u, params, SEED, rng) for u in updates]
    decoded = ddp.server_decode(masks.mod_sum(inputs, params.bits), params, SEED)

    expected_sum = np.sum([ddp.clip_l2(u, 1.0)[0] for u in updates], axis=0)
    error = decoded - expected_sum
    # noise variance (σC)²·k/t plus unbiased rounding, at most k/(4γ²) per coordinate
    noise_var = sigma**2 * survivors / params.min_sites
    rounding_var = survivors / (4 * params.scale**2)
    assert np.var(error) <= (noise_var + rounding_var) * (1 + _relative_tolerance(d))
    assert np.var(error) >= noise_var * (1 - _relative_tolerance(d))
    assert np.max(np.abs(error)) < 6 * math.sqrt(noise_var + rounding_var)


def _worst_case_trials(params: ddp.DistributedDPParams, trials: int) -> list[float]:
    """Every one of the n sites sends the same vector of norm C (the longest possible sum),
    with a fresh rotation seed per trial. Returns, per trial, the largest deviation of the
    centred integer sum from ``γ·R(Σ u)``: rounding plus noise without a wrap, about
    ``2^bits`` more with one."""
    rng = np.random.default_rng(5)
    n = params.n_sites_max
    deviations = []
    for trial in range(trials):
        seed = trial.to_bytes(32, "little")
        u = rng.normal(size=params.dimension)
        u *= params.clip_norm / np.linalg.norm(u)
        inputs = [ddp.site_encode(u, params, seed, rng) for _ in range(n)]
        centred = dequantize(masks.mod_sum(inputs, params.bits), 1.0, params.bits)
        deviations.append(float(np.max(np.abs(centred - params.scale * ddp.rotate(n * u, seed)))))
    return deviations


def test_calibrated_bits_never_wrap_over_many_trials() -> None:
    params = _params(target_noise_multiplier=0.5, dimension=256, n_sites_max=10, bits=12)
    assert ddp.wrap_probability_bound(params) <= 1e-9 * (1 + 1e-6)
    noise_std = math.sqrt(2 * params.n_sites_max * params.noise_mu_per_site)  # all n survive
    largest = max(_worst_case_trials(params, trials=300))
    assert largest < 7 * noise_std + params.n_sites_max < 2 ** (params.bits - 1)


def test_a_four_times_larger_scale_wraps_so_the_trials_can_see_a_wrap() -> None:
    params = _params(target_noise_multiplier=0.5, dimension=256, n_sites_max=10, bits=12)
    greedy = dataclasses.replace(params, scale=4 * params.scale)
    assert ddp.wrap_probability_bound(greedy) == 1.0
    assert max(_worst_case_trials(greedy, trials=20)) > 2 ** (params.bits - 1)


def test_wrap_probability_bound_of_calibrated_parameters_is_delta_wrap() -> None:
    params = _params(delta_wrap=1e-12)
    assert ddp.wrap_probability_bound(params) == pytest.approx(1e-12, rel=1e-6)
    assert ddp.wrap_probability_bound(dataclasses.replace(params, scale=1.01 * params.scale,
                                      noise_mu_per_site=1.0201 * params.noise_mu_per_site)) \
        > 1e-12


def test_too_few_bits_raise_naming_the_bits_needed() -> None:
    settings = {"target_noise_multiplier": 1.0, "clip_norm": 1.0, "dimension": 2**16,
                "n_sites_max": 100, "min_sites": 50}
    with pytest.raises(ddp.DistributedDPError, match="use at least 13 bits"):
        ddp.DistributedDPParams.calibrate(bits=12, **settings)  # type: ignore[arg-type]
    ddp.DistributedDPParams.calibrate(bits=13, **settings)  # type: ignore[arg-type]


def test_integer_vectors_stay_within_the_reported_sensitivities() -> None:
    params = dataclasses.replace(_params(dimension=300, bits=16), noise_mu_per_site=0.0)
    l1, l2 = ddp.sensitivities(params)
    rng = np.random.default_rng(6)
    norms = []
    for _ in range(200):
        u = rng.normal(size=300) * rng.uniform(0.5, 5.0)
        z = dequantize(ddp.site_encode(u, params, SEED, rng), 1.0, params.bits)
        norms.append(float(np.linalg.norm(z)))
        assert np.sum(np.abs(z)) <= l1
    assert max(norms) <= l2
    assert params.scale * params.clip_norm <= l2 < 1.01 * params.scale * params.clip_norm


def test_skellam_release_accounts_the_noise_of_min_sites_without_sampling() -> None:
    params = _params()
    release = ddp.skellam_release(params, rounds=30)
    assert (release.mechanism, release.sample_rate, release.steps) == ("skellam", 1.0, 30)
    assert release.skellam_mu == pytest.approx(params.min_sites * params.noise_mu_per_site)
    assert (release.l1_sensitivity, release.l2_sensitivity) == ddp.sensitivities(params)


def test_skellam_epsilon_with_ample_bits_is_the_gaussian_epsilon_of_the_same_sigma() -> None:
    params = _params(bits=32)
    skellam_eps = acc.epsilon([ddp.skellam_release(params, rounds=100)], 1e-5)
    gaussian_eps = acc.epsilon([acc.Release("gaussian", 1.0, 1.0, 100)], 1e-5)
    assert gaussian_eps <= skellam_eps <= gaussian_eps * 1.001


def test_distributed_parameters_for_a_target_meet_it_closely() -> None:
    params = cal.distributed_dp_params_for(4.0, 1e-5, rounds=50, clip_norm=1.0, dimension=1000,
                                           n_sites_max=10, min_sites=5, bits=18)
    spent = acc.epsilon([ddp.skellam_release(params, 50)], 1e-5)
    assert 4.0 * (1 - 1e-3) <= spent <= 4.0
    assert cal.noise_multiplier_for(4.0, 1e-5, 50, mechanism="skellam", clip_norm=1.0,
                                    dimension=1000, n_sites_max=10, min_sites=5,
                                    bits=18) == pytest.approx(params.noise_multiplier)


def test_target_needing_more_noise_than_the_ring_carries_raises() -> None:
    with pytest.raises(cal.CalibrationError, match="use at least 17 bits"):
        cal.distributed_dp_params_for(0.05, 1e-5, rounds=100, clip_norm=1.0, dimension=1000,
                                      n_sites_max=10, min_sites=5, bits=16)


def test_update_of_the_wrong_length_is_refused() -> None:
    params = _params(dimension=10)
    with pytest.raises(ddp.DistributedDPError, match="expect"):
        ddp.site_encode(np.zeros(11), params, SEED, np.random.default_rng(0))
