"""Scenario files: what a replay runs, injects, attacks and expects (DESIGN.md §5).

A scenario is one TOML file, documented field by field in ``scenarios/README.md``. It is
parsed once, here, into frozen dataclasses; every problem is a
:class:`~fedtune.toml_fields.ConfigError` naming the file, the field and the problem, e.g.
``lying.toml: expect[1].op: expected one of <=, <, >=, >, ==; found '=<'``.

The ``[job]`` table is exactly a federation file's ``[job]`` table and is validated by the
same parser (:func:`fedtune.job.parse_job`), so a scenario cannot declare a job the
coordinator would not run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtune.client.agent import DROP_PHASES  # the phases of ``fedtune site --drop-at``
from fedtune.datasets import DATASETS
from fedtune.job import JobConfig, parse_job
from fedtune.policy import parse_policy
from fedtune.toml_fields import ConfigError, Fields, load_toml

ADVERSARIES = ("both_lists", "substitute_key", "inconsistent_lists", "replay_advertisements")
MIA_METHODS = ("loss_threshold", "shadow")
PARTITIONS = ("iid", "dirichlet", "institution")

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
    "==": operator.eq,
}

#: every metric an expectation can name, with what it measures (the README lists them too).
#: For each declared attack, ``attack.NAME.auc`` and ``attack.NAME.advantage`` (membership
#: inference) or ``attack.NAME.recovered`` (reconstruction: 1 if the coordinator could rebuild
#: the site's input in some round, else 0) are added.
METRICS: dict[str, str] = {
    "accuracy.final": "held-out accuracy of the final model, aggregated over the sites",
    "accuracy.initial": "held-out accuracy of the initial model (first round's evaluation)",
    "rounds.completed": "training rounds that released an aggregate",
    "rounds.aborted": "round attempts that aborted and released nothing",
    "epsilon.site_level": "site-level ε of the job at the end (coordinator's privacy.json)",
    "epsilon.record_level": "record-level ε per site at the end (coordinator's privacy.json)",
    "epsilon.ledger_max": "largest ε any site's own ledger shows for its dataset (site's accountant)",
    "charges.extra": "largest number, over sites, of record-level charges in this run beyond "
                     "the rounds that released an aggregate (0: nothing was charged twice)",
    "charges.coordinator_extra": "site-level releases the coordinator charged beyond the "
                                 "completed training rounds",
    "refusals.sites": "sites that refused at least one offer or secure round",
    "updates_visible": "(site, round) pairs whose individual input the coordinator could "
                       "reconstruct from everything it received (plain mode: every input)",
    "audit.failures": "discrepancies found by `fedtune audit verify` on the transcript and "
                      "the site egress logs",
    "coordinator.restarts": "times the coordinator was killed and restarted",
    "audit.epsilon.site_level": "site-level ε the auditor recomputed from the transcript",
    "audit.epsilon.record_level": "record-level ε the auditor recomputed from the transcript",
}


@dataclass(frozen=True)
class FederationSpec:
    dataset: str
    sites: int
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    #: 0: every site keeps its whole part of the split
    examples_per_site: int = 0


@dataclass(frozen=True)
class SiteDrop:
    site: str
    phase: str
    round: int


@dataclass(frozen=True)
class CoordinatorRestart:
    #: killed (SIGKILL) once this many training rounds have completed, then restarted
    after_round: int


@dataclass(frozen=True)
class AdversarySpec:
    kind: str
    victim: str
    rounds: tuple[int, ...]
    #: inconsistent_lists: the sites told that the victim dropped
    fooled: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttackSpec:
    name: str
    kind: str  # "membership_inference" | "reconstruction"
    site: str
    method: str = ""  # membership inference only


@dataclass(frozen=True)
class Expectation:
    metric: str
    op: str
    value: float

    def holds(self, found: float) -> bool:
        return OPS[self.op](found, self.value)

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    timeout_s: float
    federation: FederationSpec
    job_table: dict[str, Any]
    job: JobConfig
    policy_table: dict[str, Any]
    drops: tuple[SiteDrop, ...] = ()
    restarts: tuple[CoordinatorRestart, ...] = ()
    adversary: AdversarySpec | None = None
    attacks: tuple[AttackSpec, ...] = ()
    expectations: tuple[Expectation, ...] = field(default_factory=tuple)

    @property
    def site_ids(self) -> tuple[str, ...]:
        return tuple(f"site-{i}" for i in range(1, self.federation.sites + 1))


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate a scenario file.

    Raises
    ------
    ConfigError
        Naming the file, the field and the problem.
    """
    p = Path(path)
    root = Fields(str(p), "", load_toml(p))
    head = root.sub("scenario", required=True)
    name = head.string("name")
    description = head.string("description", "")
    timeout_s = head.number("timeout_s", 600.0, minimum=1.0)
    head.reject_unknown()

    fed = root.sub("federation", required=True)
    federation = FederationSpec(
        dataset=fed.string("dataset", choices=tuple(DATASETS)),
        sites=fed.integer("sites", minimum=2, maximum=50),
        partition=fed.string("partition", "iid", choices=PARTITIONS),
        alpha=fed.number("alpha", 0.5, minimum=0.0, exclusive_minimum=True),
        seed=fed.integer("seed", 0, minimum=0),
        examples_per_site=fed.integer("examples_per_site", 0, minimum=0),
    )
    fed.reject_unknown()
    sites = tuple(f"site-{i}" for i in range(1, federation.sites + 1))

    job_fields = root.sub("job", required=True)
    job_table = dict(job_fields.table)
    job_table.setdefault("job_id", name)
    job = parse_job(Fields(str(p), "job", job_table))
    root._read.add("job")

    policy_table = dict(root.sub("policy").table)
    policy_table.setdefault("allowed_models", [job.model.id])
    policy_table.setdefault("max_rounds", max(100, job.rounds))
    parse_policy(Fields(str(p), "", {"policy": policy_table}))  # a site would refuse to start

    drops: list[SiteDrop] = []
    restarts: list[CoordinatorRestart] = []
    for f in root.table_list("fault"):
        kind = f.string("kind", choices=("site_drop", "coordinator_restart"))
        if kind == "site_drop":
            drops.append(SiteDrop(site=_site(f, "site", sites),
                                  phase=f.string("phase", choices=DROP_PHASES),
                                  round=f.integer("round", minimum=1)))
        else:
            restarts.append(CoordinatorRestart(
                after_round=f.integer("after_round", minimum=1, maximum=job.rounds - 1
                                      if job.rounds > 1 else 1)))
        f.reject_unknown()
    if len({d.site for d in drops}) != len(drops):
        raise root.error("fault", "a site can drop out only once (it exits when it drops)")

    adversary = None
    if "adversary" in root.table:
        a = root.sub("adversary")
        kind = a.string("kind", choices=ADVERSARIES)
        victim = _site(a, "victim", sites) if kind != "replay_advertisements" else \
            a.string("victim", "")
        adversary = AdversarySpec(
            kind=kind, victim=victim,
            rounds=a.int_list("rounds", (2,) if kind == "replay_advertisements" else (1,)),
            fooled=tuple(_check_site(a, "fooled", s, sites)
                         for s in a.string_list("fooled", ())) if kind == "inconsistent_lists"
            else ())
        if kind == "inconsistent_lists" and not adversary.fooled:
            raise a.error("fooled", "inconsistent_lists needs the sites to fool")
        a.reject_unknown()
        if not job.secure_aggregation.enabled:
            raise a.error("kind", "the adversaries attack secure aggregation: set "
                          "[job.secure_aggregation] enabled = true")

    attacks: list[AttackSpec] = []
    for a in root.table_list("attack"):
        kind = a.string("kind", choices=("membership_inference", "reconstruction"))
        method = a.string("method", "loss_threshold", choices=MIA_METHODS) \
            if kind == "membership_inference" else ""
        site = _site(a, "site", sites)
        default_name = f"mia_{method}_{site}" if method else f"reconstruction_{site}"
        attack = AttackSpec(name=a.string("name", default_name), kind=kind, site=site,
                            method=method)
        a.reject_unknown()
        if any(x.name == attack.name for x in attacks):
            raise a.error("name", f"two attacks are named {attack.name!r}")
        attacks.append(attack)

    metrics = set(METRICS) | {f"attack.{a.name}.{m}" for a in attacks for m in attack_metrics(a)}
    expectations: list[Expectation] = []
    for e in root.table_list("expect"):
        metric = e.string("metric")
        if metric not in metrics:
            raise e.error("metric", f"unknown metric {metric!r}; known: "
                          f"{', '.join(sorted(metrics))}")
        expectations.append(Expectation(metric=metric, op=e.string("op", choices=tuple(OPS)),
                                        value=e.number("value")))
        e.reject_unknown()
    root.reject_unknown()
    return Scenario(path=p, name=name, description=description, timeout_s=timeout_s,
                    federation=federation, job_table=job_table, job=job,
                    policy_table=policy_table, drops=tuple(drops), restarts=tuple(restarts),
                    adversary=adversary, attacks=tuple(attacks),
                    expectations=tuple(expectations))


def attack_metrics(attack: AttackSpec) -> tuple[str, ...]:
    return ("auc", "advantage") if attack.kind == "membership_inference" else ("recovered",)


def _site(f: Fields, key: str, sites: tuple[str, ...]) -> str:
    return _check_site(f, key, f.string(key), sites)


def _check_site(f: Fields, key: str, site: str, sites: tuple[str, ...]) -> str:
    if site not in sites:
        raise f.error(key, f"no site {site!r} in this federation (sites: {', '.join(sites)})")
    return site


__all__ = [
    "ADVERSARIES", "DROP_PHASES", "METRICS", "OPS", "AdversarySpec", "AttackSpec",
    "ConfigError", "CoordinatorRestart", "Expectation", "FederationSpec", "Scenario",
    "SiteDrop", "attack_metrics", "load_scenario",
]
