"""The coordinator's privacy accounting for one job (DESIGN.md §1.4).

* **Site level** (DP-FedAvg, McMahan et al. 2018): every released round is one Gaussian
  release (``central``: the coordinator adds N(0, (σC)²) to the sum) or one Skellam release
  (``distributed``: the sites add Skellam noise in the ring, calibrated for the minimum number
  of surviving sites, Agarwal et al. 2021). The coordinator refuses to start a round whose
  release would push ε over the job's target; a round that aborts releases nothing and is not
  charged. The count of charged rounds is stored in the checkpoint together with the model it
  produced, so a restart neither forgets nor repeats a charge.
* **Record level** (DP-SGD at each site, Poisson sampling at the job's fixed rate): every site
  pays the same ε per round it contributes to, so the coordinator can report the ε of a site
  that took part in every released round; each site enforces its own budget in its ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedtune.job import JobConfig
from fedtune.privacy.accountants import epsilon
from fedtune.privacy_plan import record_level_release, site_level_release


@dataclass
class PrivacyBudget:
    job: JobConfig
    dimension: int
    site_releases: int = 0  # released (charged) rounds at site level
    record_releases: int = 0  # released training rounds (record level, if enabled)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def site_level(self) -> bool:
        return self.job.site_dp.mode != "none"

    def site_epsilon(self, rounds: int | None = None) -> float:
        k = self.site_releases if rounds is None else rounds
        if not self.site_level or k == 0:
            return 0.0
        release = site_level_release(self.job, self.dimension)
        return epsilon([release] * k, self.job.site_dp.delta)

    def record_epsilon(self, rounds: int | None = None) -> float:
        k = self.record_releases if rounds is None else rounds
        if not self.job.record_dp.enabled or k == 0:
            return 0.0
        return epsilon([record_level_release(self.job)] * k, self.job.record_dp.delta)

    def refusal(self) -> str | None:
        """Why the next training round may not start, or None."""
        if self.site_level and self.job.site_dp.target_epsilon > 0:
            after = self.site_epsilon(self.site_releases + 1)
            if after > self.job.site_dp.target_epsilon:
                return (f"site-level ε would reach {after:.3f} > target "
                        f"{self.job.site_dp.target_epsilon:g} (δ = {self.job.site_dp.delta:g})")
        if self.job.record_dp.enabled and self.job.record_dp.target_epsilon > 0:
            after = self.record_epsilon(self.record_releases + 1)
            if after > self.job.record_dp.target_epsilon:
                return (f"record-level ε would reach {after:.3f} > target "
                        f"{self.job.record_dp.target_epsilon:g} (δ = {self.job.record_dp.delta:g})")
        return None

    def charge_round(self, round_id: int) -> dict[str, float]:
        """Charge one released training round; returns the new ε figures."""
        if self.site_level:
            self.site_releases += 1
        if self.job.record_dp.enabled:
            self.record_releases += 1
        entry = {"round": float(round_id), "site_epsilon": self.site_epsilon(),
                 "record_epsilon": self.record_epsilon()}
        self.history.append(entry)
        return entry

    def state(self) -> dict[str, object]:
        return {"site_releases": self.site_releases, "record_releases": self.record_releases,
                "history": self.history}

    def load_state(self, state: dict[str, object]) -> None:
        self.site_releases = int(state.get("site_releases", 0))  # type: ignore[arg-type]
        self.record_releases = int(state.get("record_releases", 0))  # type: ignore[arg-type]
        self.history = list(state.get("history", []))  # type: ignore[arg-type]

    def report(self) -> dict[str, object]:
        """The run directory's ``privacy.json``.

        A level without DP reports ``epsilon`` (``epsilon_per_site_at_most``) as ``null``:
        its privacy loss is unbounded, and 0.0 would read as perfect privacy. An enabled level
        that has released nothing yet reports 0.0.
        """
        s, r = self.job.site_dp, self.job.record_dp
        return {
            "site_level": {
                "mode": s.mode, "noise_multiplier": s.noise_multiplier,
                "clip_norm": s.clip_norm, "delta": s.delta,
                "target_epsilon": s.target_epsilon, "released_rounds": self.site_releases,
                "epsilon": self.site_epsilon() if self.site_level else None,
                "mechanism": ("gaussian" if s.mode == "central" else
                              "skellam" if s.mode == "distributed" else "none"),
            },
            "record_level": {
                "enabled": r.enabled, "noise_multiplier": r.noise_multiplier,
                "max_grad_norm": r.max_grad_norm, "sample_rate": r.sample_rate,
                "delta": r.delta, "target_epsilon": r.target_epsilon,
                "released_rounds": self.record_releases,
                "epsilon_per_site_at_most": self.record_epsilon() if r.enabled else None,
            },
            "history": self.history,
        }
