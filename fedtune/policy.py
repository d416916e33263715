"""A site's policy file: what jobs the site agrees to run (DESIGN.md §1.2).

Example::

    [policy]
    allowed_models = ["tabular-mlp", "image-cnn"]
    max_rounds = 100
    max_local_epochs = 20
    min_sites = 2                       # never be one of fewer sites than this
    require_secure_aggregation = false  # true: refuse plain-mode jobs

    [policy.record_level_dp]
    required = false                    # true: refuse jobs without DP-SGD
    max_epsilon = 8.0                   # total budget per dataset, across rounds and jobs
    delta = 1e-5

    [policy.site_level_dp]
    required = false                    # true: refuse jobs without central/distributed DP

The site's :mod:`fedtune.client.policy_guard` checks every offered job against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedtune.toml_fields import Fields, load_toml


@dataclass(frozen=True)
class PolicyConfig:
    allowed_models: tuple[str, ...]
    max_rounds: int = 1000
    max_local_epochs: int = 100
    min_sites: int = 1
    require_secure_aggregation: bool = False
    require_record_level_dp: bool = False
    record_max_epsilon: float = float("inf")
    record_delta: float = 1e-5
    require_site_level_dp: bool = False
    site_max_epsilon: float = float("inf")


def load_policy(path: str | Path) -> PolicyConfig:
    return parse_policy(Fields(str(path), "", load_toml(path)))


def parse_policy(root: Fields) -> PolicyConfig:
    """Parse and validate a policy file's tables (``root`` holds the ``[policy]`` table)."""
    p = root.sub("policy", required=True)
    record = p.sub("record_level_dp")
    site = p.sub("site_level_dp")
    policy = PolicyConfig(
        allowed_models=p.string_list("allowed_models"),
        max_rounds=p.integer("max_rounds", 1000, minimum=1),
        max_local_epochs=p.integer("max_local_epochs", 100, minimum=1),
        min_sites=p.integer("min_sites", 1, minimum=1),
        require_secure_aggregation=p.boolean("require_secure_aggregation", False),
        require_record_level_dp=record.boolean("required", False),
        record_max_epsilon=record.number("max_epsilon", float("inf"), minimum=0.0,
                                         exclusive_minimum=True) if "max_epsilon" in record.table
        else float("inf"),
        record_delta=record.number("delta", 1e-5, minimum=0.0, maximum=1.0),
        require_site_level_dp=site.boolean("required", False),
        site_max_epsilon=site.number("max_epsilon", 0.0, minimum=0.0, exclusive_minimum=True)
        if "max_epsilon" in site.table else float("inf"),
    )
    for table in (record, site, p, root):
        table.reject_unknown()
    return policy
