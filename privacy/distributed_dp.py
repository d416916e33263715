"""Distributed DP in the ring Z_(2^bits): the site-side and server-side transforms.

Each site clips its update, rotates it with a randomised Hadamard transform, scales it by
``γ``, rounds it to integers, adds Skellam noise and reduces it mod 2^bits; secure
aggregation sums the residues; the coordinator centres the sum, divides by ``γ`` and rotates
back (Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", ICML 2021, §4 and Algorithm 1-2; Agarwal, Kairouz and Liu,
"The Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021, §4).
So not even the coordinator sees an un-noised aggregate.

Noise and dropouts. The coordinator may only release a sum of at least ``t = min_sites``
survivors. Each site adds ``Sk(μ_site, μ_site)`` with ``μ_site = μ_total / t``, so any ``k ≥ t``
survivors add ``Sk(k·μ_site, ·)``, at least the calibrated ``Sk(μ_total, μ_total)``
(variance ``2·μ_total = (σ·C·γ)²``); more survivors only add noise. Accounting uses
``μ_total`` (:func:`skellam_release`). This assumes the survivors' noise is honest; to be
robust to ``c`` colluding sites that subtract their own noise, calibrate with
``min_sites = t - c``.

Neighbouring relation: one site's update replaced by zero (zero-out). A zero update rounds to
zero exactly, so the sum changes by one site's integer vector ``z``.

Rounding and sensitivity. Stochastic rounding of ``x = γ·R·clip(u)`` (``‖x‖₂ ≤ γC``) adds
``e`` with ``|e_i| < 1``, so ``‖z‖₂ < γC + √d`` always. Tighter, conditional randomised
rounding (Kairouz et al. 2021, §4) re-draws the rounding until ::

    ‖z‖₂² ≤ γ²C² + d/4 + √(2·ln(1/β))·(γC + √d/2)                  (B₂)

which one draw meets with probability ``≥ 1 - β`` (Hoeffding on ``Σ 2x_i e_i + e_i²``, whose
terms have ranges ``≤ 2|x_i| + 1``, and ``E e_i² ≤ 1/4``). The L2 sensitivity is
``Δ₂ = min(γC + √d, B₂)`` (times ``1 + 2^-20`` for float rounding in the norm check), and
since ``z`` is an integer vector ``Δ₁ = min(√d·Δ₂, Δ₂²)`` (``|z_i| ≤ z_i²``), with ``d`` the
padded dimension (the same bounds as Google's ``rounded_l2_norm_bound`` /
``rounded_l1_norm_bound``).

No wrap-around. Let ``w = Σ clip(u_i)`` (``‖w‖₂ ≤ nC``) over ``k ≤ n`` survivors. Coordinate
``j`` of the integer sum is ``γ(Rw)_j + Σ e_ij + N_j``. With random signs independent of the
updates, ``(Rw)_j = Σ_l ±w_l/√d`` is a Rademacher sum, sub-Gaussian with variance proxy
``v = n²C²/d`` (Hoeffding); ``N_j ~ Sk(kμ_site, kμ_site)`` has
``E e^{λN} = exp(2kμ_site(cosh λ - 1))``; and ``|Σ e_ij| < n``. By Chernoff and a union bound
over the ``d`` coordinates, with ``τ = 2^(bits-1) - 1 - n``::

    P(wrap) ≤ 2d · min_{λ>0} exp(λ²γ²v/2 + 2nμ_site(cosh λ - 1) - λτ)

:meth:`DistributedDPParams.calibrate` takes the largest ``γ`` for which this is at most
``delta_wrap`` (default 1e-9 per round). A wrap would only corrupt the model: DP does not
depend on it, since reduction mod 2^bits is post-processing of the noised integer sum. The
bound needs the rotation seed to be independent of the updates (e.g. derived from the round
seed); a site that could choose its update after seeing the signs could force a wrap,
which is a poisoning problem (out of scope, DESIGN.md §1) and not a privacy one.

Rotation. ``R = H·D/√d``: ``D`` a diagonal of ±1 signs derived from a public seed with
SHA-256 and AES-256-CTR (:func:`fedtune.privacy.masks.aes_ctr_keystream`) so that every party
derives the same signs without sharing state, ``H`` the Sylvester Hadamard matrix applied by
an O(d log d) fast Walsh–Hadamard transform. ``R`` is orthogonal, so the L2 norm and the
isotropic noise are unchanged, and ``R⁻¹ = D·H/√d``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .accountants import Release
from .masks import aes_ctr_keystream
from .quantization import QuantizationError, dequantize
from .skellam import MAX_POISSON_MEAN, sample_skellam

MIN_BITS = 2
MAX_BITS = 62  # sums and noise stay exact in int64 / uint64, as in quantization.py
MAX_DIMENSION = 2**30
MIN_SEED_BYTES = 16
DEFAULT_ROUNDING_BETA = math.exp(-0.5)  # as in Kairouz et al.'s experiments: √(2 ln 1/β) = 1
DEFAULT_DELTA_WRAP = 1e-9
DEFAULT_MAX_L2_INFLATION = 0.1
# Relative slack on the reported L2 sensitivity for float64 rounding in the norm check of
# conditional rounding (float error of a d-term sum of squares is below d·2^-53 ≤ 2^-23).
_NORM_CHECK_SLACK = 2.0**-20
_MAX_ROUNDING_DRAWS = 200  # each draw succeeds with probability >= 1 - β; 0.61^200 < 1e-42
_MAX_EXACT_SCALED = 2.0**52  # |γ·y| below this rounds exactly in float64
_SIGN_DOMAIN = b"fedtune.privacy.distributed_dp/hadamard-signs/v1\x00"

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]


class DistributedDPError(ValueError):
    """Invalid distributed-DP parameters or inputs (too few bits, wrong shapes, bad seed)."""


def clip_l2(x: npt.ArrayLike, c: float) -> tuple[F64Array, bool]:
    """Scale ``x`` down to L2 norm ``c`` if it is longer (McMahan et al. 2018, DP-FedAvg
    ``ClipFn``); returns ``(clipped, was_clipped)``."""
    if not (math.isfinite(c) and c > 0):
        raise DistributedDPError(f"clip norm must be a finite number > 0, got {c!r}")
    v = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise DistributedDPError("cannot clip a vector with NaN or infinite values")
    norm = float(np.linalg.norm(v))
    if norm <= c:
        return v.copy(), False
    clipped: F64Array = v * (c / norm)
    return clipped, True


def pad_to_power_of_two(x: npt.ArrayLike) -> F64Array:
    """Zero-pad a 1-D vector to the next power of two (a length-1 vector stays as it is)."""
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise DistributedDPError(f"expected a non-empty 1-D vector, got shape {v.shape}")
    d = _next_power_of_two(v.size)
    if d == v.size:
        return v.copy()
    padded = np.zeros(d, dtype=np.float64)
    padded[: v.size] = v
    return padded


def rotate(x: npt.ArrayLike, seed: bytes) -> F64Array:
    """Randomised Hadamard rotation ``H·D·pad(x)/√d`` (module docstring), length ``d``, the
    next power of two. Deterministic in ``seed``: every party gets the same rotation."""
    v = pad_to_power_of_two(x)
    signs = _hadamard_signs(seed, v.size)
    return _fwht(v * signs) / math.sqrt(v.size)


def unrotate(y: npt.ArrayLike, seed: bytes, original_length: int) -> F64Array:
    """Inverse of :func:`rotate`: ``D·H·y/√d``, truncated to ``original_length``."""
    v = np.asarray(y, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or v.size & (v.size - 1):
        raise DistributedDPError(
            f"expected a 1-D vector whose length is a power of two, got shape {v.shape}"
        )
    if isinstance(original_length, bool) or not 1 <= original_length <= v.size:
        raise DistributedDPError(
            f"original_length must be in 1..{v.size}, got {original_length!r}"
        )
    signs = _hadamard_signs(seed, v.size)
    back: F64Array = (_fwht(v) / math.sqrt(v.size) * signs)[:original_length]
    return back


def gaussian_noise(
    shape: int | tuple[int, ...], std: float, rng: np.random.Generator
) -> F64Array:
    """Central-mode noise ``N(0, std²)`` per coordinate; the coordinator adds it to the
    unmasked sum with ``std = σ·C`` (McMahan et al. 2018, DP-FedAvg)."""
    if not isinstance(rng, np.random.Generator):
        raise DistributedDPError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}"
        )
    if not (math.isfinite(std) and std >= 0):
        raise DistributedDPError(f"std must be a finite number >= 0, got {std!r}")
    noise: F64Array = rng.normal(0.0, std, shape)
    return noise


@dataclass(frozen=True)
class DistributedDPParams:
    """Everything sites and coordinator must agree on for one distributed-DP job.

    Parameters
    ----------
    bits:
        The ring is Z_(2^bits) (the secure-aggregation modulus).
    clip_norm:
        ``C``: each site's update is clipped to this L2 norm (real units).
    scale:
        ``γ``: real → integer scale applied after rotation.
    noise_mu_per_site:
        Each site adds ``Sk(μ_site, μ_site)`` per coordinate (variance ``2·μ_site``).
    min_sites:
        ``t``: the fewest survivors a round may release; noise is calibrated for ``t``.
    dimension:
        Length of the (unpadded) update vector.
    n_sites_max:
        ``n``: the most sites whose inputs can be summed (bounds the no-wrap analysis).
    rounding_beta:
        ``β`` of conditional randomised rounding (0 means plain stochastic rounding with the
        deterministic bound ``γC + √d``).
    """

    bits: int
    clip_norm: float
    scale: float
    noise_mu_per_site: float
    min_sites: int
    dimension: int
    n_sites_max: int
    rounding_beta: float = DEFAULT_ROUNDING_BETA

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        _check_positive("clip_norm", self.clip_norm)
        _check_positive("scale", self.scale)
        if not (math.isfinite(self.noise_mu_per_site)
                and 0 <= self.noise_mu_per_site <= MAX_POISSON_MEAN):
            raise DistributedDPError(
                f"noise_mu_per_site must be in [0, {MAX_POISSON_MEAN:.3g}], "
                f"got {self.noise_mu_per_site!r}"
            )
        _check_sites(self.n_sites_max, self.min_sites)
        _check_dimension(self.dimension)
        if not (math.isfinite(self.rounding_beta) and 0 <= self.rounding_beta < 1):
            raise DistributedDPError(
                f"rounding_beta must be in [0, 1), got {self.rounding_beta!r}"
            )

    @property
    def padded_dimension(self) -> int:
        """``d``: the dimension after padding to a power of two (what is sent and summed)."""
        return _next_power_of_two(self.dimension)

    @property
    def noise_mu_total(self) -> float:
        """``μ_total = t·μ_site``: the aggregate noise parameter the accountant may rely on."""
        return self.noise_mu_per_site * self.min_sites

    @property
    def noise_multiplier(self) -> float:
        """σ: the standard deviation of ``t`` sites' noise in real units, divided by ``C``."""
        return math.sqrt(2.0 * self.noise_mu_total) / (self.scale * self.clip_norm)

    @classmethod
    def calibrate(
        cls,
        target_noise_multiplier: float,
        clip_norm: float,
        dimension: int,
        n_sites_max: int,
        min_sites: int,
        bits: int,
        delta_wrap: float = DEFAULT_DELTA_WRAP,
        *,
        rounding_beta: float = DEFAULT_ROUNDING_BETA,
        max_l2_inflation: float = DEFAULT_MAX_L2_INFLATION,
    ) -> DistributedDPParams:
        """Choose ``γ`` and ``μ_site`` for noise multiplier σ on the sum of ``t`` sites.

        (a) ``2·μ_total = (σ·C·γ)²`` and ``μ_site = μ_total / t``: the noise of any ``t``
        survivors has standard deviation ``σ·C`` in real units.
        (b) ``γ`` is the largest scale at which the wrap-around bound of the module docstring
        is at most ``delta_wrap`` (also capped so that Poisson means and ``γC`` stay exactly
        representable).

        Raises :class:`DistributedDPError` when even that ``γ`` is so coarse that rounding
        inflates the L2 sensitivity by more than ``max_l2_inflation`` (relative to ``γC``),
        naming the smallest ``bits`` that would do.
        """
        _check_positive("target_noise_multiplier", target_noise_multiplier)
        _check_positive("clip_norm", clip_norm)
        _check_dimension(dimension)
        _check_sites(n_sites_max, min_sites)
        _check_bits(bits)
        if not (math.isfinite(delta_wrap) and 0 < delta_wrap < 1):
            raise DistributedDPError(f"delta_wrap must be in (0, 1), got {delta_wrap!r}")
        if not (math.isfinite(max_l2_inflation) and max_l2_inflation > 0):
            raise DistributedDPError(
                f"max_l2_inflation must be a finite number > 0, got {max_l2_inflation!r}"
            )
        d = _next_power_of_two(dimension)

        def scale_at(b: int) -> float:
            return _largest_scale(target_noise_multiplier, clip_norm, d, n_sites_max,
                                  min_sites, b, delta_wrap)

        def inflation(gamma: float) -> float:
            if gamma <= 0:
                return math.inf
            return _rounded_l2_bound(gamma * clip_norm, d, rounding_beta) / (gamma * clip_norm) - 1

        gamma = scale_at(bits)
        if inflation(gamma) > max_l2_inflation:
            enough = [b for b in range(bits + 1, MAX_BITS + 1)
                      if inflation(scale_at(b)) <= max_l2_inflation]
            fix = (f"use at least {enough[0]} bits" if enough
                   else f"no ring of at most {MAX_BITS} bits suffices")
            raise DistributedDPError(
                f"{bits} bits leave a scale γ={gamma:.4g} for σ={target_noise_multiplier}, "
                f"C={clip_norm}, d={d}, n={n_sites_max}, t={min_sites}: rounding would inflate "
                f"the L2 sensitivity by {inflation(gamma):.1%} (> {max_l2_inflation:.0%}); "
                f"{fix}, or lower σ, n or d"
            )
        mu_total = (target_noise_multiplier * clip_norm * gamma) ** 2 / 2.0
        return cls(bits=bits, clip_norm=float(clip_norm), scale=gamma,
                   noise_mu_per_site=mu_total / min_sites, min_sites=min_sites,
                   dimension=dimension, n_sites_max=n_sites_max, rounding_beta=rounding_beta)


def wrap_probability_bound(params: DistributedDPParams) -> float:
    """Upper bound on the probability that a round's sum wraps around Z_(2^bits) for any
    ``k ≤ n_sites_max`` survivors (module docstring)."""
    d = params.padded_dimension
    n = params.n_sites_max
    tau = 2.0 ** (params.bits - 1) - 1 - n
    if tau <= 0:
        return 1.0
    signal_var = (params.scale * n * params.clip_norm) ** 2 / d
    noise_var = 2.0 * n * params.noise_mu_per_site
    return min(1.0, math.exp(_log_wrap_bound(signal_var, noise_var, tau, d)))


def sensitivities(params: DistributedDPParams) -> tuple[float, float]:
    """``(Δ₁, Δ₂)`` of one site's integer vector, for the Skellam accountant (module
    docstring: rounding inflation, integer L1 bound, padded dimension)."""
    d = params.padded_dimension
    l2 = _rounded_l2_bound(params.scale * params.clip_norm, d, params.rounding_beta)
    l2 *= 1.0 + _NORM_CHECK_SLACK
    l1 = min(math.sqrt(d) * l2, l2 * l2)
    return l1, l2


def skellam_release(params: DistributedDPParams, rounds: int = 1) -> Release:
    """The :class:`Release` of ``rounds`` distributed-DP rounds with these parameters: Skellam
    noise ``Sk(μ_total, μ_total)`` (the ``t`` survivors'), every site asked (q = 1)."""
    l1, l2 = sensitivities(params)
    return Release(mechanism="skellam", noise_multiplier=params.noise_multiplier,
                   sample_rate=1.0, steps=rounds, skellam_mu=params.noise_mu_total,
                   l1_sensitivity=l1, l2_sensitivity=l2)


def site_encode(
    update: npt.ArrayLike,
    params: DistributedDPParams,
    rotation_seed: bytes,
    rng: np.random.Generator,
) -> U64Array:
    """A site's input to secure aggregation: clip to ``C`` → rotate → scale by ``γ`` →
    conditional stochastic rounding → add ``Sk(μ_site, μ_site)`` → mod 2^bits (uint64,
    length :attr:`DistributedDPParams.padded_dimension`)."""
    if not isinstance(rng, np.random.Generator):
        raise DistributedDPError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}"
        )
    u = np.asarray(update, dtype=np.float64)
    if u.shape != (params.dimension,):
        raise DistributedDPError(
            f"update has shape {u.shape}, the parameters expect ({params.dimension},)"
        )
    clipped, _ = clip_l2(u, params.clip_norm)
    scaled = rotate(clipped, rotation_seed) * params.scale
    bound = _rounded_l2_bound(params.scale * params.clip_norm, scaled.size, params.rounding_beta)
    integers = _conditional_round(scaled, bound, rng)
    noisy = integers + sample_skellam(integers.shape, params.noise_mu_per_site, rng)
    encoded = noisy.astype(np.uint64)  # two's complement mod 2^64; 2^bits divides 2^64
    encoded &= np.uint64((1 << params.bits) - 1)
    return encoded


def server_decode(
    sum_mod: U64Array,
    params: DistributedDPParams,
    rotation_seed: bytes,
    original_length: int | None = None,
) -> F64Array:
    """The noised sum of the survivors' clipped updates, in real units: centre the residues
    into ``[-2^(bits-1), 2^(bits-1))`` and divide by ``γ``
    (:func:`fedtune.privacy.quantization.dequantize`), rotate back, truncate."""
    length = params.dimension if original_length is None else original_length
    if getattr(sum_mod, "shape", None) != (params.padded_dimension,):
        raise DistributedDPError(
            f"sum has shape {getattr(sum_mod, 'shape', None)}, the parameters expect "
            f"({params.padded_dimension},)"
        )
    try:
        rotated = dequantize(sum_mod, params.scale, params.bits)
    except QuantizationError as exc:
        raise DistributedDPError(str(exc)) from exc
    return unrotate(rotated, rotation_seed, length)


def _conditional_round(x: F64Array, bound: float, rng: np.random.Generator) -> I64Array:
    """Unbiased stochastic rounding, re-drawn until ``‖z‖₂ ≤ bound`` (Kairouz et al. 2021,
    §4, conditional randomised rounding)."""
    if x.size and float(np.max(np.abs(x))) >= _MAX_EXACT_SCALED:
        raise DistributedDPError("scaled values exceed 2^52: the scale γ is too large")
    floor = np.floor(x)
    fraction = x - floor
    limit = bound * bound
    for _ in range(_MAX_ROUNDING_DRAWS):
        z = floor + (rng.random(x.shape) < fraction)
        if float(np.dot(z, z)) <= limit:
            return z.astype(np.int64)
    raise DistributedDPError(
        f"conditional rounding found no draw within the norm bound {bound:.6g} in "
        f"{_MAX_ROUNDING_DRAWS} tries; the input was not clipped to the parameters' norm"
    )


def _rounded_l2_bound(norm: float, d: int, beta: float) -> float:
    """``min(‖x‖ + √d, B₂)``: the L2 norm of a (conditionally) rounded vector of norm
    ``≤ norm`` in ``d`` dimensions (module docstring)."""
    plain = norm + math.sqrt(d)
    if beta <= 0:
        return plain
    squared = norm * norm + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (
        norm + math.sqrt(d) / 2.0
    )
    return min(plain, math.sqrt(squared))


def _largest_scale(sigma: float, clip_norm: float, d: int, n: int, t: int, bits: int,
                   delta_wrap: float) -> float:
    """The largest γ whose wrap-around bound is ``<= delta_wrap`` (0.0 if none is)."""
    tau = 2.0 ** (bits - 1) - 1 - n
    if tau <= 0:
        return 0.0
    target = math.log(delta_wrap)

    def log_bound(gamma: float) -> float:
        signal_var = (gamma * n * clip_norm) ** 2 / d
        noise_var = n * (sigma * clip_norm * gamma) ** 2 / t  # 2·n·μ_site
        return _log_wrap_bound(signal_var, noise_var, tau, d)

    # Caps: μ_site within numpy's Poisson range; γC exactly representable for rounding.
    cap = min(math.sqrt(2.0 * t * MAX_POISSON_MEAN) / (sigma * clip_norm),
              _MAX_EXACT_SCALED / 4 / clip_norm)
    if log_bound(cap) <= target:
        return cap
    lo = cap
    while log_bound(lo) > target:
        lo /= 2.0
        if lo < 1e-300:
            return 0.0
    hi = 2.0 * lo
    for _ in range(80):  # bisection on log γ; the bound is increasing in γ
        mid = math.sqrt(lo * hi)
        if log_bound(mid) <= target:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-12:
            break
    return lo


def _log_wrap_bound(signal_var: float, noise_var: float, tau: float, d: int) -> float:
    """``log(2d) + min_λ [λ²·signal_var/2 + noise_var·(cosh λ - 1) - λτ]``: the log of the
    Chernoff/union bound on a wrap (module docstring); ``noise_var = 2·n·μ_site``."""
    if noise_var == 0:  # sub-Gaussian signal only: the optimum is λ = τ / signal_var
        return math.log(2.0 * d) - tau * tau / (2.0 * signal_var)

    def slope(lam: float) -> float:
        return lam * signal_var + noise_var * math.sinh(lam) - tau

    hi = tau / signal_var
    if noise_var > 0:
        hi = min(hi, math.asinh(tau / noise_var))
    lo = 0.0
    for _ in range(200):  # the exponent is convex in λ: bisect its derivative
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-15 * hi:
            break
    lam = 0.5 * (lo + hi)
    # cosh λ - 1 = 2 sinh²(λ/2), accurate for small λ
    exponent = lam * lam * signal_var / 2.0 + noise_var * 2.0 * math.sinh(lam / 2.0) ** 2
    return math.log(2.0 * d) + exponent - lam * tau


def _hadamard_signs(seed: bytes, d: int) -> F64Array:
    if not isinstance(seed, bytes | bytearray) or len(seed) < MIN_SEED_BYTES:
        raise DistributedDPError(
            f"rotation seed must be at least {MIN_SEED_BYTES} bytes, got "
            f"{len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__}"
        )
    # Domain-separated key: the keystream is public randomness, not a mask, so expanding it
    # again for every party (and for the inverse) is the point, not a key reuse.
    key = hashlib.sha256(_SIGN_DOMAIN + bytes(seed)).digest()
    stream = np.frombuffer(aes_ctr_keystream(key, (d + 7) // 8), dtype=np.uint8)
    bits = np.unpackbits(stream, bitorder="little")[:d]
    signs: F64Array = 1.0 - 2.0 * bits.astype(np.float64)
    return signs


def _fwht(v: F64Array) -> F64Array:
    """Unnormalised fast Walsh–Hadamard transform ``H·v`` (Sylvester order), O(d log d)."""
    d = v.size
    y = v.copy()
    h = 1
    while h < d:
        pairs = y.reshape(-1, 2, h)
        y = np.stack((pairs[:, 0, :] + pairs[:, 1, :], pairs[:, 0, :] - pairs[:, 1, :]),
                     axis=1).reshape(d)
        h *= 2
    return y


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise DistributedDPError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise DistributedDPError(f"{name} must be a finite number > 0, got {value!r}")


def _check_sites(n_sites_max: int, min_sites: int) -> None:
    for name, value in (("n_sites_max", n_sites_max), ("min_sites", min_sites)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DistributedDPError(f"{name} must be an integer >= 1, got {value!r}")
    if min_sites > n_sites_max:
        raise DistributedDPError(
            f"min_sites ({min_sites}) cannot exceed n_sites_max ({n_sites_max})"
        )


def _check_dimension(dimension: int) -> None:
    if (isinstance(dimension, bool) or not isinstance(dimension, int)
            or not 1 <= dimension <= MAX_DIMENSION):
        raise DistributedDPError(
            f"dimension must be an integer in 1..{MAX_DIMENSION}, got {dimension!r}"
        )
