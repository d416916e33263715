"""Noise calibration: the smallest noise that keeps a plan of releases within (ε, δ).

ε is non-increasing in the noise multiplier for every mechanism here (more noise is
post-processing of less), so a bisection on the accountant finds the smallest σ whose
composed ε is at most the target — the same approach as Opacus' ``get_noise_multiplier``,
with a relative tolerance, an optional history of releases already spent (a site's ledger, a
job's earlier rounds), and a clear error when the target cannot be met.

The returned σ always satisfies ``ε(σ) ≤ target`` (with a 1e-9 relative margin for float
round trips); bisection stops once ``ε(σ) ≥ (1 - rtol)·target`` (or the bracket is below
float resolution).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .accountants import ACCOUNTANTS, AccountingError, Release, dp_sgd_release, epsilon
from .distributed_dp import (
    DEFAULT_DELTA_WRAP,
    DEFAULT_MAX_L2_INFLATION,
    DEFAULT_ROUNDING_BETA,
    DistributedDPError,
    DistributedDPParams,
    skellam_release,
)

MAX_NOISE_MULTIPLIER = 1e6  # as Opacus' MAX_SIGMA
DEFAULT_RTOL = 1e-3
_ROUND_TRIP_MARGIN = 1e-9


class CalibrationError(ValueError):
    """The privacy target cannot be met with the given plan, or the request is malformed."""


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float = 1.0,
    accountant: str = "rdp",
    mechanism: str = "gaussian",
    *,
    steps_per_round: int = 1,
    spent: Sequence[Release] = (),
    rtol: float = DEFAULT_RTOL,
    clip_norm: float | None = None,
    dimension: int | None = None,
    n_sites_max: int | None = None,
    min_sites: int | None = None,
    bits: int | None = None,
    delta_wrap: float = DEFAULT_DELTA_WRAP,
) -> float:
    """The smallest noise multiplier σ such that ``rounds × steps_per_round`` releases at
    sampling rate ``sample_rate``, composed after ``spent``, are (``target_epsilon``,
    ``delta``)-DP.

    ``mechanism="gaussian"``: σ is noise standard deviation ÷ L2 sensitivity (DP-SGD steps,
    central DP-FedAvg rounds). ``mechanism="skellam"`` (RDP accountant and ``sample_rate=1``
    only): σ is the nominal noise multiplier of distributed DP; pass ``clip_norm``,
    ``dimension``, ``n_sites_max``, ``min_sites`` and ``bits`` and the ε is that of the
    parameters :meth:`DistributedDPParams.calibrate` chooses for σ — use
    :func:`distributed_dp_params_for` to get those parameters directly.

    Raises :class:`CalibrationError` when the target is unreachable (it needs σ above
    ``MAX_NOISE_MULTIPLIER``, ``spent`` alone exceeds it, or the ring is too small for the
    noise it needs) or an argument is invalid.
    """
    if mechanism == "skellam":
        if (clip_norm is None or dimension is None or n_sites_max is None
                or min_sites is None or bits is None):
            raise CalibrationError(
                "mechanism='skellam' needs the distributed-DP setting: pass clip_norm, "
                "dimension, n_sites_max, min_sites and bits"
            )
        if sample_rate != 1.0 or steps_per_round != 1:
            raise CalibrationError(
                "distributed DP (Skellam) is accounted without sampling: sample_rate and "
                "steps_per_round must be 1"
            )
        return distributed_dp_params_for(
            target_epsilon, delta, rounds, clip_norm, dimension, n_sites_max, min_sites, bits,
            accountant=accountant, delta_wrap=delta_wrap, spent=spent, rtol=rtol,
        ).noise_multiplier
    if mechanism != "gaussian":
        raise CalibrationError(f"mechanism must be 'gaussian' or 'skellam', got {mechanism!r}")
    _check_plan(target_epsilon, delta, rounds, accountant, rtol)
    if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) \
            or steps_per_round < 1:
        raise CalibrationError(f"steps_per_round must be an integer >= 1, got {steps_per_round!r}")
    if not (math.isfinite(sample_rate) and 0 < sample_rate <= 1):
        raise CalibrationError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    steps = rounds * steps_per_round

    def eps_of(sigma: float) -> float:
        return _epsilon(
            [*spent, Release("gaussian", sigma, sample_rate, steps)], delta, accountant
        )

    _check_spent(spent, target_epsilon, delta, accountant)
    describe = f"ε={target_epsilon} at δ={delta} over {steps} Gaussian steps at q={sample_rate}"
    start = 1.0
    if accountant == "pld":  # the RDP answer is cheap and close (RDP is the looser bound)
        start = noise_multiplier_for(target_epsilon, delta, rounds, sample_rate, "rdp",
                                     steps_per_round=steps_per_round, spent=spent, rtol=0.05)
    return _smallest_noise(eps_of, target_epsilon, rtol, describe, start)


def dp_sgd_noise_multiplier(
    target_epsilon: float,
    delta: float,
    batch_size: int,
    dataset_size: int,
    epochs: float,
    rounds: int = 1,
    accountant: str = "rdp",
    *,
    spent: Sequence[Release] = (),
    rtol: float = DEFAULT_RTOL,
) -> float:
    """σ for record-level DP-SGD: ``rounds`` federated rounds, each ``epochs`` local epochs of
    Opacus DP-SGD at batch size ``batch_size`` on ``dataset_size`` records (counted as
    :func:`fedtune.privacy.accountants.dp_sgd_release` does), after ``spent``."""
    try:
        per_round = dp_sgd_release(1.0, batch_size, dataset_size, epochs)
    except AccountingError as exc:
        raise CalibrationError(str(exc)) from exc
    if per_round.steps < 1:
        raise CalibrationError(f"epochs={epochs} is no training step: nothing to calibrate")
    return noise_multiplier_for(
        target_epsilon, delta, rounds, per_round.sample_rate, accountant,
        steps_per_round=per_round.steps, spent=spent, rtol=rtol,
    )


def distributed_dp_params_for(
    target_epsilon: float,
    delta: float,
    rounds: int,
    clip_norm: float,
    dimension: int,
    n_sites_max: int,
    min_sites: int,
    bits: int,
    *,
    accountant: str = "rdp",
    delta_wrap: float = DEFAULT_DELTA_WRAP,
    spent: Sequence[Release] = (),
    rtol: float = DEFAULT_RTOL,
    rounding_beta: float = DEFAULT_ROUNDING_BETA,
    max_l2_inflation: float = DEFAULT_MAX_L2_INFLATION,
) -> DistributedDPParams:
    """Distributed-DP parameters whose ``rounds`` Skellam releases (after ``spent``) are
    (``target_epsilon``, ``delta``)-DP, with the least noise: bisection on the nominal σ
    given to :meth:`DistributedDPParams.calibrate`, accounting the exact Skellam bound with
    the rounding-inflated sensitivities (so ε here is slightly above the Gaussian ε of the
    same σ)."""
    _check_plan(target_epsilon, delta, rounds, accountant, rtol)
    if accountant != "rdp":
        raise CalibrationError(
            "Skellam releases are accounted with the RDP accountant only (accountant='rdp')"
        )

    def params_of(sigma: float) -> DistributedDPParams:
        return DistributedDPParams.calibrate(
            sigma, clip_norm, dimension, n_sites_max, min_sites, bits, delta_wrap,
            rounding_beta=rounding_beta, max_l2_inflation=max_l2_inflation,
        )

    def eps_of(sigma: float) -> float:
        return _epsilon([*spent, skellam_release(params_of(sigma), rounds)], delta, accountant)

    _check_spent(spent, target_epsilon, delta, accountant)
    sigma = _smallest_noise(eps_of, target_epsilon, rtol, describe=(
        f"ε={target_epsilon} at δ={delta} over {rounds} Skellam rounds with {bits} bits, "
        f"d={dimension}, n={n_sites_max}, t={min_sites}"
    ))
    return params_of(sigma)


def _smallest_noise(eps_of: Callable[[float], float], target: float, rtol: float,
                    describe: str, start: float = 1.0) -> float:
    """Bisection for the smallest σ with ``eps_of(σ) <= target`` (ε non-increasing in σ).

    ``start`` is a first guess: the bracket is found by doubling up from it and halving down
    from it, so a good guess (the RDP answer for the PLD accountant) spares the evaluations
    at small σ, where a PLD is slowest.

    The search aims at ``target·(1 - 1e-9)``, so that σ can make a float round trip (through
    a job message, or :attr:`DistributedDPParams.noise_multiplier` and back into
    :meth:`DistributedDPParams.calibrate`) without its ε crossing the target.
    """
    target *= 1.0 - _ROUND_TRIP_MARGIN
    lo, hi = 0.0, start
    eps_hi = _eps_or_error(eps_of, hi)
    while isinstance(eps_hi, DistributedDPError):  # the ring carries less noise: go lower
        hi *= 0.5
        if hi < 1e-9:
            raise CalibrationError(f"unreachable: {describe}: {eps_hi}") from eps_hi
        eps_hi = _eps_or_error(eps_of, hi)
    if eps_hi <= target:  # halve down until infeasible (a σ below a feasible one is feasible)
        lo = hi
        while True:
            lo *= 0.5
            if lo < 1e-9:
                lo = 0.0
                break
            eps_lo = eps_of(lo)
            if eps_lo > target:
                break
            hi, eps_hi = lo, eps_lo
    while eps_hi > target:  # double up until feasible
        lo, hi = hi, 2.0 * hi
        if hi > MAX_NOISE_MULTIPLIER:
            raise CalibrationError(
                f"unreachable: {describe} needs a noise multiplier above "
                f"{MAX_NOISE_MULTIPLIER:g} (ε is still {eps_hi:.4g} at σ={lo:g}); raise the "
                "target ε or δ, or plan fewer steps"
            )
        result = _eps_or_error(eps_of, hi)
        if isinstance(result, DistributedDPError):
            hi, eps_hi = _below_ring_limit(eps_of, target, lo, hi, result, describe)
        else:
            eps_hi = result
    while target - eps_hi > rtol * target and hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        eps_mid = eps_of(mid)
        if eps_mid <= target:
            hi, eps_hi = mid, eps_mid
        else:
            lo = mid
    return hi


def _below_ring_limit(eps_of: Callable[[float], float], target: float, lo: float,
                      too_much: float, error: DistributedDPError,
                      describe: str) -> tuple[float, float]:
    """Between ``lo`` (feasible, ε above target) and ``too_much`` (more noise than the ring
    carries), find a feasible σ meeting the target, or raise: the ring cannot carry enough."""
    while too_much - lo > 1e-9 * too_much:
        mid = 0.5 * (lo + too_much)
        result = _eps_or_error(eps_of, mid)
        if isinstance(result, DistributedDPError):
            too_much, error = mid, result
        elif result <= target:
            return mid, result
        else:
            lo = mid
    raise CalibrationError(
        f"unreachable: {describe} needs σ > {lo:.4g}, more noise than the ring can carry: "
        f"{error}"
    ) from error


def _eps_or_error(eps_of: Callable[[float], float], sigma: float) -> float | DistributedDPError:
    """ε at σ, or the error saying the distributed-DP ring cannot carry σ."""
    try:
        return eps_of(sigma)
    except DistributedDPError as exc:
        return exc


def _epsilon(releases: Sequence[Release], delta: float, accountant: str) -> float:
    try:
        return epsilon(releases, delta, accountant)
    except AccountingError as exc:
        raise CalibrationError(str(exc)) from exc


def _check_spent(spent: Sequence[Release], target: float, delta: float, accountant: str) -> None:
    if not spent:
        return
    already = _epsilon(spent, delta, accountant)
    if already >= target:
        raise CalibrationError(
            f"unreachable: the releases already spent cost ε={already:.4g} at δ={delta}, "
            f"which leaves nothing of the target ε={target}"
        )


def _check_plan(target_epsilon: float, delta: float, rounds: int, accountant: str,
                rtol: float) -> None:
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise CalibrationError(
            f"unreachable: target ε must be a finite number > 0, got {target_epsilon!r}"
        )
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise CalibrationError(f"delta must be in (0, 1), got {delta!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise CalibrationError(f"rounds must be an integer >= 1, got {rounds!r}")
    if accountant not in ACCOUNTANTS:
        raise CalibrationError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not (math.isfinite(rtol) and 0 < rtol < 1):
        raise CalibrationError(f"rtol must be in (0, 1), got {rtol!r}")
