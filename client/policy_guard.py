"""The site's policy guard: every offered job is checked against the local policy file.

A site runs no code from the coordinator (DESIGN.md §1.2); the job only names a registry
model and parameters, and this guard decides whether those are acceptable. The first rule a
job breaks is returned as the refusal reason, which the site sends back and logs.
"""

from __future__ import annotations

from fedtune.job import JobConfig
from fedtune.policy import PolicyConfig


def refusal_reason(job: JobConfig, policy: PolicyConfig, offered_round: int = 0) -> str | None:
    """``None`` when the policy allows the job, else the reason for refusing it."""
    if job.model.id not in policy.allowed_models:
        allowed = ", ".join(policy.allowed_models) or "none"
        return f"model {job.model.id!r} is not allowed by the site policy (allowed: {allowed})"
    if job.rounds > policy.max_rounds:
        return f"job asks for {job.rounds} rounds, the site policy allows at most {policy.max_rounds}"
    if job.training.local_epochs > policy.max_local_epochs:
        return (f"job asks for {job.training.local_epochs} local epochs, the site policy allows "
                f"at most {policy.max_local_epochs}")
    if job.min_sites < policy.min_sites:
        return (f"job allows rounds with {job.min_sites} sites, the site policy requires at "
                f"least {policy.min_sites}")
    if policy.require_secure_aggregation and not job.secure_aggregation.enabled:
        return "the site policy requires secure aggregation; the job runs in plain mode"
    if policy.require_record_level_dp and not job.record_dp.enabled:
        return "the site policy requires record-level DP (DP-SGD); the job does not enable it"
    if policy.require_site_level_dp and job.site_dp.mode == "none":
        return "the site policy requires site-level DP; the job's site_level.mode is 'none'"
    return None
