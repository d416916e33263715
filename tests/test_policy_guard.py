"""A site refuses, with a reason, every job its policy does not allow."""

from __future__ import annotations

import dataclasses

import pytest

from fedtune.client.policy_guard import refusal_reason
from fedtune.job import JobConfig, ModelConfig, SecureAggregationConfig, TrainingConfig
from fedtune.policy import PolicyConfig

JOB = JobConfig(job_id="j", model=ModelConfig("tabular-mlp", input_dim=4), rounds=10, min_sites=3,
                secure_aggregation=SecureAggregationConfig(enabled=False))
POLICY = PolicyConfig(allowed_models=("tabular-mlp",), max_rounds=20, max_local_epochs=5)


def test_a_job_within_the_policy_is_accepted():
    assert refusal_reason(JOB, POLICY) is None


@pytest.mark.parametrize("job, policy, reason", [
    (dataclasses.replace(JOB, model=ModelConfig("image-cnn", image_shape=(1, 8, 8))), POLICY,
     "model 'image-cnn' is not allowed"),
    (dataclasses.replace(JOB, rounds=50), POLICY, "at most 20"),
    (dataclasses.replace(JOB, training=TrainingConfig(local_epochs=9)), POLICY, "local epochs"),
    (JOB, dataclasses.replace(POLICY, min_sites=5), "at least 5"),
    (JOB, dataclasses.replace(POLICY, require_secure_aggregation=True), "secure aggregation"),
    (JOB, dataclasses.replace(POLICY, require_record_level_dp=True), "record-level DP"),
    (JOB, dataclasses.replace(POLICY, require_site_level_dp=True), "site-level DP"),
])
def test_a_job_outside_the_policy_is_refused_with_the_rule_it_breaks(job, policy, reason):
    assert reason in refusal_reason(job, policy)


def test_secure_aggregation_satisfies_a_policy_that_requires_it():
    job = dataclasses.replace(JOB, secure_aggregation=SecureAggregationConfig(enabled=True))
    assert refusal_reason(job, dataclasses.replace(POLICY, require_secure_aggregation=True)) is None
