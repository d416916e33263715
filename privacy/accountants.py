"""Privacy accountants: compose releases (DP-SGD steps, DP-FedAvg rounds) and convert to (ε, δ).

One small interface, in the style of ``opacus.accountants``: ``add(release)`` (or the
Opacus-shaped ``step(...)``), ``get_epsilon(delta)``, ``history`` and ``copy()``. A
:class:`Release` records everything needed to recompute its cost, so a ledger or a
transcript that stores releases lets an auditor recompute ε without trusting anyone.

* :class:`RDPAccountant` — Rényi DP (Mironov, "Rényi Differential Privacy", CSF 2017).
  The subsampled-Gaussian curve comes from Opacus (``opacus.accountants.analysis.rdp``,
  Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
  2019, §3.3); the Skellam curve is :func:`fedtune.privacy.skellam.skellam_rdp` (Agarwal et al.
  2021, Theorem 3.5), which neither library provides. Curves on the same orders add up
  (Mironov 2017, Proposition 1) and are converted with Balle et al., "Hypothesis Testing
  Interpretations and Rényi Differential Privacy", AISTATS 2020, Theorem 21 (as implemented
  by ``dp_accounting.rdp.compute_epsilon``, which also clamps at 0 and uses the KL bound for
  negligible RDP).
* :class:`PLDAccountant` — privacy loss distributions (Koskela et al. 2020; Doroshenko et al.,
  "Connect the Dots", PETS 2022) through Google's ``dp_accounting.pld``; Gaussian only.

Orders. The default orders are the integers 2..64 and a geometric tail up to 1024. Integer
orders are used because (a) the Skellam theorem is stated for integer ``α`` and (b) for
fractional orders the series of Opacus 1.6 and of ``dp_accounting`` 0.6 disagree by up to 1 %
(``dp_accounting`` drops the orders where the series does not converge, Opacus does not);
at integer orders both compute the same closed form. The largest order caps the smallest
reportable ε near ``ln(1/δ)/1023``.

Neighbouring relation: add/remove one record for DP-SGD (as Opacus); one site's update
replaced by zero for site-level DP-FedAvg, with sensitivity ``C`` (the clipping norm), so
that the noise multiplier is σ/C in both cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dp_accounting  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]
from opacus.accountants.analysis import rdp as opacus_rdp  # type: ignore[import-untyped]

from .skellam import SkellamError, skellam_rdp_curve

MECHANISMS = ("gaussian", "skellam")
ACCOUNTANTS = ("rdp", "pld")
DEFAULT_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 65)) + (
    80.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0,
)
# dp_accounting's PLD default; smaller is tighter and slower.
DEFAULT_PLD_DISCRETIZATION = 1e-4

F64Array = npt.NDArray[np.float64]


class AccountingError(ValueError):
    """A release or query the accountant cannot (soundly) account for."""


@dataclass(frozen=True)
class Release:
    """One privacy-consuming release: ``steps`` compositions of one mechanism.

    Parameters
    ----------
    mechanism:
        ``"gaussian"`` (DP-SGD steps, central DP-FedAvg rounds) or ``"skellam"`` (distributed
        DP-FedAvg rounds).
    noise_multiplier:
        Gaussian: noise standard deviation ÷ L2 sensitivity. Skellam: informational only
        (the nominal σ the parameters were calibrated for); the accountant uses
        ``skellam_mu`` and the sensitivities.
    sample_rate:
        Poisson sampling rate ``q`` in (0, 1] (records per batch for DP-SGD; sites per round
        for DP-FedAvg, 1 when every site is asked).
    steps:
        How many times the mechanism ran (steps of DP-SGD, rounds of DP-FedAvg); 0 costs 0.
    skellam_mu:
        Skellam only: Poisson mean ``μ`` of the aggregate noise ``Sk(μ, μ)`` per coordinate
        (variance ``2μ``) in the scaled integer domain, counting only the noise that the
        minimum number of surviving sites adds.
    l1_sensitivity, l2_sensitivity:
        Skellam only: sensitivities of the integer aggregate, same domain as ``skellam_mu``.
    """

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    skellam_mu: float = 0.0
    l1_sensitivity: float = 0.0
    l2_sensitivity: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise AccountingError(
                f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}"
            )
        if not (math.isfinite(self.sample_rate) and 0.0 < self.sample_rate <= 1.0):
            raise AccountingError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise AccountingError(f"steps must be an integer >= 0, got {self.steps!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0.0):
            raise AccountingError(
                f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}"
            )
        if self.mechanism == "gaussian":
            if self.noise_multiplier <= 0.0:
                raise AccountingError(
                    "a Gaussian release needs noise_multiplier > 0 (without noise ε is infinite)"
                )
            return
        if not (math.isfinite(self.skellam_mu) and self.skellam_mu > 0.0):
            raise AccountingError(
                f"a Skellam release needs skellam_mu > 0 (aggregate Poisson mean), "
                f"got {self.skellam_mu!r}"
            )
        for name in ("l1_sensitivity", "l2_sensitivity"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise AccountingError(f"a Skellam release needs {name} > 0, got {value!r}")


class Accountant(Protocol):
    """The interface every fedtune accountant has."""

    def add(self, release: Release) -> None: ...

    def get_epsilon(self, delta: float) -> float: ...

    @property
    def history(self) -> list[Release]: ...

    def copy(self) -> Accountant: ...


class RDPAccountant:
    """Rényi-DP accountant for subsampled Gaussian and (unsampled) Skellam releases.

    Parameters
    ----------
    orders:
        Rényi orders ``> 1`` on which the curves are evaluated (module docstring explains the
        default). Non-integer orders are accepted; the Skellam bound is then taken at
        ``⌈α⌉`` (an upper bound).
    """

    def __init__(self, orders: Sequence[float] | None = None) -> None:
        chosen = DEFAULT_ORDERS if orders is None else tuple(float(a) for a in orders)
        if not chosen or any(not (math.isfinite(a) and a > 1.0) for a in chosen):
            raise AccountingError(f"RDP orders must be finite numbers > 1, got {orders!r}")
        self._orders = chosen
        self._releases: list[Release] = []

    @property
    def orders(self) -> tuple[float, ...]:
        return self._orders

    @property
    def history(self) -> list[Release]:
        """The releases added so far, oldest first (a copy)."""
        return list(self._releases)

    def add(self, release: Release) -> None:
        """Compose one release. Skellam releases must have ``sample_rate == 1``."""
        if not isinstance(release, Release):
            raise AccountingError(f"expected a Release, got {type(release).__name__}")
        if release.mechanism == "skellam" and release.sample_rate != 1.0:
            raise AccountingError(
                "the Skellam RDP bound (Agarwal et al. 2021, Thm 3.5) is for the unsampled "
                f"mechanism; got sample_rate={release.sample_rate}. No amplification-by-"
                "sampling bound for Skellam is implemented: use sample_rate=1 (count every "
                "round at full cost)"
            )
        self._releases.append(release)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Opacus-shaped shortcut: compose ``steps`` subsampled-Gaussian steps."""
        self.add(Release("gaussian", noise_multiplier, sample_rate, steps))

    def get_rdp(self) -> F64Array:
        """The composed RDP curve ``ε(α)`` on :attr:`orders`."""
        total = np.zeros(len(self._orders), dtype=np.float64)
        for r in self._releases:
            total += _rdp_curve(r, self._orders)
        return total

    def get_epsilon(self, delta: float) -> float:
        """Smallest ε over the orders such that everything composed so far is (ε, δ)-DP."""
        return self.get_privacy_spent(delta)[0]

    def get_privacy_spent(self, delta: float) -> tuple[float, float]:
        """``(ε, best order)`` for the composition so far (Balle et al. 2020, Theorem 21)."""
        _check_delta(delta)
        if not self._releases:
            return 0.0, float("nan")
        eps, order = rdp_privacy_accountant.compute_epsilon(
            list(self._orders), list(self.get_rdp()), delta
        )
        return float(eps), float(order)

    def copy(self) -> RDPAccountant:
        """An independent accountant with the same orders and history (for "what if" checks)."""
        twin = RDPAccountant(self._orders)
        twin._releases = list(self._releases)
        return twin


class PLDAccountant:
    """Privacy-loss-distribution accountant for (subsampled) Gaussian releases, through
    ``dp_accounting.pld.PLDAccountant`` (add/remove-one neighbouring relation).

    Releases with ``sample_rate == 1`` are merged into one Gaussian of noise multiplier
    ``(Σ steps/σ²)^(-1/2)`` before composing: the privacy loss of a Gaussian mechanism is
    ``N(η, 2η)`` with ``η = 1/(2σ²)`` and composition adds the ``η`` (Dong, Roth and Su,
    "Gaussian Differential Privacy", JRSS-B 2022, §3: μ-GDP composes to √Σμ²), so the
    result is the same and avoids hundreds of discretised convolutions. Subsampled releases
    with the same ``(σ, q)`` are composed as one ``SelfComposedDpEvent``.

    Parameters
    ----------
    value_discretization_interval:
        The PLD grid step (dp_accounting's default 1e-4); the result is pessimistic by at
        most about this much per composition.
    """

    def __init__(self, value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION) -> None:
        if not (math.isfinite(value_discretization_interval) and value_discretization_interval > 0):
            raise AccountingError(
                "value_discretization_interval must be a finite number > 0, got "
                f"{value_discretization_interval!r}"
            )
        self._interval = float(value_discretization_interval)
        self._releases: list[Release] = []
        # (number of releases composed, dp_accounting PLD accountant): releases only append,
        # so one composition serves every δ queried until the next add.
        self._composed: tuple[int, Any] | None = None

    @property
    def history(self) -> list[Release]:
        """The releases added so far, oldest first (a copy)."""
        return list(self._releases)

    def add(self, release: Release) -> None:
        """Compose one Gaussian release; Skellam releases raise :class:`AccountingError`."""
        if not isinstance(release, Release):
            raise AccountingError(f"expected a Release, got {type(release).__name__}")
        if release.mechanism != "gaussian":
            raise AccountingError(
                f"PLDAccountant handles Gaussian releases only, got {release.mechanism!r}: "
                "dp_accounting has no Skellam privacy loss; use the RDP accountant"
            )
        self._releases.append(release)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Opacus-shaped shortcut: compose ``steps`` subsampled-Gaussian steps."""
        self.add(Release("gaussian", noise_multiplier, sample_rate, steps))

    def dp_event(self) -> dp_accounting.DpEvent:
        """The composition so far as one ``dp_accounting`` event (after the merges above)."""
        full_eta = 0.0
        sampled: dict[tuple[float, float], int] = {}
        for r in self._releases:
            if r.steps == 0:
                continue
            if r.sample_rate == 1.0:
                full_eta += r.steps / (r.noise_multiplier * r.noise_multiplier)
            else:
                key = (r.noise_multiplier, r.sample_rate)
                sampled[key] = sampled.get(key, 0) + r.steps
        events: list[dp_accounting.DpEvent] = []
        if full_eta > 0.0:
            events.append(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(full_eta)))
        for (sigma, q), count in sampled.items():
            events.append(dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                count,
            ))
        return dp_accounting.ComposedDpEvent(events)

    def get_epsilon(self, delta: float) -> float:
        """ε such that everything composed so far is (ε, δ)-DP, from the composed PLD."""
        _check_delta(delta)
        if self._composed is None or self._composed[0] != len(self._releases):
            event = self.dp_event()
            if not event.events:
                return 0.0
            pld = dp_accounting.pld.PLDAccountant(
                neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                value_discretization_interval=self._interval,
            )
            pld.compose(event)
            self._composed = (len(self._releases), pld)
        return max(0.0, float(self._composed[1].get_epsilon(delta)))

    def copy(self) -> PLDAccountant:
        """An independent accountant with the same grid and history."""
        twin = PLDAccountant(self._interval)
        twin._releases = list(self._releases)
        return twin


def make_accountant(accountant: str = "rdp") -> RDPAccountant | PLDAccountant:
    """A fresh accountant by name: ``"rdp"`` or ``"pld"``."""
    if accountant == "rdp":
        return RDPAccountant()
    if accountant == "pld":
        return PLDAccountant()
    raise AccountingError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def epsilon(
    releases: Sequence[Release], delta: float, accountant: str = "rdp"
) -> float:
    """ε of the composition of all ``releases`` (any rounds, any jobs) at ``delta``."""
    acc = make_accountant(accountant)
    for r in releases:
        acc.add(r)
    return acc.get_epsilon(delta)


def dp_sgd_release(
    noise_multiplier: float, batch_size: int, dataset_size: int, epochs: float
) -> Release:
    """The release of ``epochs`` epochs of Opacus DP-SGD (Abadi et al. 2016, Algorithm 1).

    Counted as Opacus counts them (``PrivacyEngine.make_private_with_epsilon``): the data
    loader has ``ceil(N / B)`` batches, the Poisson sample rate is ``q = 1 / ceil(N / B)``
    (``= B/N`` when ``B`` divides ``N``), and training runs ``ceil(epochs · ceil(N / B))``
    steps.
    """
    for name, value in (("batch_size", batch_size), ("dataset_size", dataset_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AccountingError(f"{name} must be an integer >= 1, got {value!r}")
    if batch_size > dataset_size:
        raise AccountingError(
            f"batch_size {batch_size} exceeds dataset_size {dataset_size}"
        )
    if not (math.isfinite(epochs) and epochs >= 0):
        raise AccountingError(f"epochs must be a finite number >= 0, got {epochs!r}")
    batches = -(-dataset_size // batch_size)
    steps = math.ceil(epochs * batches)
    return Release("gaussian", float(noise_multiplier), 1.0 / batches, steps)


def _rdp_curve(release: Release, orders: Sequence[float]) -> F64Array:
    if release.steps == 0:
        return np.zeros(len(orders), dtype=np.float64)
    if release.mechanism == "gaussian":
        curve = opacus_rdp.compute_rdp(
            q=release.sample_rate,
            noise_multiplier=release.noise_multiplier,
            steps=release.steps,
            orders=list(orders),
        )
        return np.asarray(curve, dtype=np.float64).reshape(len(orders))
    try:
        return skellam_rdp_curve(
            orders, release.skellam_mu, release.l1_sensitivity, release.l2_sensitivity,
            release.steps,
        )
    except SkellamError as exc:
        raise AccountingError(str(exc)) from exc


def _check_delta(delta: float) -> None:
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise AccountingError(f"delta must be in (0, 1), got {delta!r}")
