"""What a job's differential privacy costs, derived identically by the coordinator and the sites.

Both sides compute the same releases from the same job message (the sites never take the
coordinator's word for an ε): a site checks a job against its policy with these functions,
and the coordinator accounts the job's budget with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

from fedtune.job import JobConfig
from fedtune.privacy.accountants import Release
from fedtune.privacy.calibration import distributed_dp_params_for, noise_multiplier_for
from fedtune.privacy.distributed_dp import DistributedDPParams, skellam_release
from fedtune.privacy.input_encoding import InputEncoding


def record_level_release(job: JobConfig) -> Release:
    """What one round of DP-SGD costs every participating site."""
    r = job.record_dp
    steps = job.training.local_epochs * math.ceil(1.0 / r.sample_rate)
    return Release(mechanism="gaussian", noise_multiplier=r.noise_multiplier,
                   sample_rate=r.sample_rate, steps=steps)


def distributed_params(job: JobConfig, dimension: int) -> DistributedDPParams:
    """The distributed-DP parameters every party derives from the job (same inputs, same
    result): calibrated for ``max_sites`` summands and ``min_sites`` surviving noise adders."""
    s = job.site_dp
    return DistributedDPParams.calibrate(
        target_noise_multiplier=s.noise_multiplier, clip_norm=s.clip_norm, dimension=dimension,
        n_sites_max=max(s.max_sites, job.min_sites), min_sites=job.min_sites,
        bits=job.secure_aggregation.bits)


def site_level_release(job: JobConfig, dimension: int) -> Release:
    """What one released round costs at site level."""
    s = job.site_dp
    if s.mode == "central":
        return Release(mechanism="gaussian", noise_multiplier=s.noise_multiplier,
                       sample_rate=1.0, steps=1)
    return skellam_release(distributed_params(job, dimension), rounds=1)




def input_encoding(job: JobConfig, n_summands: int, dimension: int,
                   evaluate_only: bool) -> InputEncoding:
    """How a site quantises its update and metrics for secure aggregation (both sides call
    this with the same arguments). Under distributed DP the update is encoded by
    :func:`fedtune.privacy.distributed_dp.site_encode` instead, and this holds metrics only."""
    sa, training = job.secure_aggregation, job.training
    encodes_update = not evaluate_only and job.site_dp.mode != "distributed"
    return InputEncoding(
        bits=sa.bits, n_summands=n_summands, length=dimension if encodes_update else 0,
        value_range=sa.value_range,
        max_weight=float(training.max_examples) if training.weighting == "examples" else 1.0,
        max_examples=float(training.max_examples), loss_bound=sa.loss_bound)


def rotation_seed(round_seed: bytes) -> bytes:
    """The public seed of a round's randomised Hadamard rotation (distributed DP)."""
    return hashlib.sha256(b"fedtune/v1/rotation" + round_seed).digest()


def finalize_job(job: JobConfig, n_sites: int, dimension: int) -> JobConfig:
    """The job as offered: ``max_sites`` filled in and σ calibrated from the target ε."""
    s = job.site_dp
    if s.mode == "none":
        return job
    s = dataclasses.replace(s, max_sites=n_sites)
    if s.noise_multiplier <= 0:
        if s.mode == "central":
            sigma = noise_multiplier_for(s.target_epsilon, s.delta, job.rounds, sample_rate=1.0)
        else:
            params = distributed_dp_params_for(
                s.target_epsilon, s.delta, job.rounds, s.clip_norm, dimension,
                n_sites_max=max(n_sites, job.min_sites), min_sites=job.min_sites,
                bits=job.secure_aggregation.bits)
            sigma = params.noise_multiplier
        s = dataclasses.replace(s, noise_multiplier=sigma)
    return dataclasses.replace(job, site_dp=s)
