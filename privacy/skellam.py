"""The Skellam mechanism: its Rényi-DP bound and its noise.

Parametrisation. ``Sk(μ, μ)`` is the law of ``P₁ - P₂`` with ``P₁, P₂ ~ Poisson(μ)``
independent: integer-valued, symmetric, mean 0, **variance 2μ**. Everywhere in fedtune ``μ``
means this Poisson mean (not the variance). Skellam noise is closed under summation:
``Sk(μ₁, μ₁) + Sk(μ₂, μ₂) = Sk(μ₁ + μ₂, μ₁ + μ₂)`` for independent summands, so ``k`` sites
that each add ``Sk(μ/k, μ/k)`` to every coordinate give the aggregate exactly ``Sk(μ, μ)``
noise (Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021, arXiv:2110.04995, §3 and §4).

RDP bound. The d-dimensional Skellam mechanism ``M(D) = f(D) + Z`` with ``Z ~ Sk(μ, μ)^d``
and an integer-valued query ``f`` of L1 sensitivity ``Δ₁`` and L2 sensitivity ``Δ₂``
satisfies ``(α, ε(α))``-RDP for every integer ``α > 1`` with (Agarwal et al. 2021,
Theorem 3.5, the multi-dimensional Skellam mechanism; the same bound written with the
variance ``2μ`` is the corollary they use for federated learning)::

    ε(α) = α·Δ₂² / (4μ) + min( ((2α - 1)·Δ₂² + 6·Δ₁) / (16μ²),  3·Δ₁ / (4μ) )

The first term is exactly the RDP of the Gaussian mechanism with the same variance,
``α·Δ₂² / (2σ²)`` with ``σ² = 2μ``; the second vanishes relative to it as ``μ`` grows.
The theorem is stated for integer orders; for a non-integer ``α > 1`` we return the bound at
``⌈α⌉``, which is an upper bound because Rényi divergence is non-decreasing in its order
(van Erven and Harremoës, "Rényi Divergence and Kullback-Leibler Divergence", IEEE Trans. IT
2014, Theorem 3). The sensitivities are those of the *integer* query, in the same scaled
domain as ``μ`` (see :func:`fedtune.privacy.distributed_dp.sensitivities`).

Google's reference implementation (``distributed_dp/accounting_utils.py`` in
google-research/federated, ``_skellam_rdp``) states the same bound in real units, with the
variance ``σ²`` of the aggregate and the scale ``s``; substituting ``Δ → s·Δ`` and
``2μ = s²·σ²`` gives the expression above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]

# numpy's Poisson sampler refuses means above about 9.2e18 (int64 range); stay well inside.
MAX_POISSON_MEAN = 2.0**60


class SkellamError(ValueError):
    """Invalid Skellam-mechanism parameters (order, variance parameter, sensitivities)."""


def skellam_rdp(alpha: float, mu: float, l1: float, l2: float) -> float:
    """RDP ``ε(α)`` of one release of the d-dimensional Skellam mechanism.

    Agarwal, Kairouz and Liu 2021, Theorem 3.5 (module docstring)::

        ε(α) = α·l2² / (4μ) + min( ((2α - 1)·l2² + 6·l1) / (16μ²),  3·l1 / (4μ) )

    Parameters
    ----------
    alpha:
        Rényi order, ``> 1``. A non-integer order is rounded up (sound: RDP is
        non-decreasing in ``α``).
    mu:
        Poisson mean of the aggregate noise ``Sk(μ, μ)`` per coordinate (variance ``2μ``),
        ``> 0``, in the integer domain.
    l1, l2:
        L1 and L2 sensitivity of the integer query (``l1 >= 0``, ``l2 >= 0``).

    Returns
    -------
    float
        ``ε(α)`` in nats.
    """
    _check_order(alpha)
    _check_mu(mu)
    _check_sensitivities(l1, l2)
    a = float(math.ceil(alpha))
    gaussian_part = a * l2 * l2 / (4.0 * mu)
    correction = min(((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu),
                     3.0 * l1 / (4.0 * mu))
    return gaussian_part + correction


def skellam_rdp_curve(
    orders: Sequence[float], mu: float, l1: float, l2: float, steps: int
) -> F64Array:
    """RDP of ``steps`` adaptive compositions of the Skellam mechanism at each order:
    ``steps · ε(α)`` (RDP composes additively, Mironov 2017, Proposition 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SkellamError(f"steps must be an integer >= 0, got {steps!r}")
    curve = np.array([skellam_rdp(a, mu, l1, l2) for a in orders], dtype=np.float64)
    result: F64Array = curve * float(steps)
    return result


def sample_skellam(
    shape: int | tuple[int, ...], mu_per_site: float, rng: np.random.Generator
) -> I64Array:
    """Draw ``Sk(μ, μ)`` noise of the given shape: ``Poisson(μ) - Poisson(μ)``, variance ``2μ``.

    A site in distributed DP draws with ``μ = noise_mu_per_site``; ``k`` sites together add
    ``Sk(k·μ, k·μ)`` (closure under summation, module docstring). ``μ = 0`` gives zeros.
    """
    if not isinstance(rng, np.random.Generator):
        raise SkellamError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}"
        )
    if not (math.isfinite(mu_per_site) and 0.0 <= mu_per_site <= MAX_POISSON_MEAN):
        raise SkellamError(
            f"mu_per_site must be a finite number in [0, {MAX_POISSON_MEAN:.3g}], "
            f"got {mu_per_site!r}"
        )
    first = rng.poisson(mu_per_site, shape).astype(np.int64)
    second = rng.poisson(mu_per_site, shape).astype(np.int64)
    noise: I64Array = first - second
    return noise


def _check_order(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha > 1.0):
        raise SkellamError(f"the Rényi order must be a finite number > 1, got {alpha!r}")


def _check_mu(mu: float) -> None:
    if not (math.isfinite(mu) and mu > 0.0):
        raise SkellamError(
            f"mu (Poisson mean of the aggregate Skellam noise) must be finite and > 0, "
            f"got {mu!r}"
        )


def _check_sensitivities(l1: float, l2: float) -> None:
    for name, value in (("l1", l1), ("l2", l2)):
        if not (math.isfinite(value) and value >= 0.0):
            raise SkellamError(f"{name} sensitivity must be a finite number >= 0, got {value!r}")
