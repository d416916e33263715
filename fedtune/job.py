"""The job: a declarative description of what every site trains (DESIGN.md §1.2).

A job names a model from the site's installed registry, hyper-parameters and privacy
parameters; it never carries code. It is parsed from the ``[job]`` table of a federation
file, sent to sites inside every offer as the ``fedtune.v1.Job`` message, and identified by
the sha256 of that message's deterministic serialisation (:func:`job_digest`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from fedtune.proto import fedtune_pb2 as pb
from fedtune.toml_fields import Fields

SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")
SITE_DP_MODES = ("none", "central", "distributed")
#: how DP-SGD clips per-sample gradients (``record_level.clipping``): Opacus' hooks ("flat")
#: or ghost clipping; both release the same mechanism (:mod:`fedtune.client.trainer`)
CLIPPING_MODES = ("flat", "ghost")


@dataclass(frozen=True)
class ModelConfig:
    """Which registry model to build and its shape parameters."""

    id: str
    input_dim: int = 0
    num_classes: int = 2
    image_shape: tuple[int, ...] = ()
    hidden: int = 64
    base_sha256: str = ""


@dataclass(frozen=True)
class TrainingConfig:
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    eval_fraction: float = 0.2
    seed: int = 0
    weighting: str = "examples"
    max_examples: int = 100_000


@dataclass(frozen=True)
class RecordLevelDPConfig:
    """DP-SGD at every site; Poisson sampling at ``sample_rate`` (ε is the same at every site)."""

    enabled: bool = False
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    #: the job's promise per site; 0: only the sites' own policy budgets apply
    target_epsilon: float = 0.0
    delta: float = 1e-5
    sample_rate: float = 0.01
    #: "flat": per-sample gradients from Opacus' hooks; "ghost": ghost clipping (Li et al.
    #: 2022), which never materialises them (worth it for full fine-tuning, not for LoRA)
    clipping: str = "flat"


@dataclass(frozen=True)
class SiteLevelDPConfig:
    mode: str = "none"
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0
    delta: float = 1e-5
    #: set by the coordinator to the number of enrolled sites (distributed DP's scaling)
    max_sites: int = 0


@dataclass(frozen=True)
class SecureAggregationConfig:
    """SecAgg+ (Bell et al. 2020) with the malicious-server checks of Bonawitz et al. 2017."""

    #: on by default (DESIGN.md §1.1); plain mode is for development only
    enabled: bool = True
    #: Shamir threshold t; 0 means more than half of the sites that advertise keys.
    threshold: int = 0
    #: neighbour-graph degree; 0 means about 2·log2(n), even, at least t.
    neighbours: int = 0
    bits: int = 32
    #: each coordinate of a site's (unweighted) update is clipped to ±value_range.
    value_range: float = 1.0
    #: per-example loss bound inside the securely aggregated metrics.
    loss_bound: float = 20.0


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """Server optimiser of Reddi et al. 2021, "Adaptive Federated Optimization" (Alg. 2)."""

    name: str = "fedavg"
    learning_rate: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True)
class Deadlines:
    """Seconds each phase may last; a site silent past a deadline is a dropout."""

    #: once ``min_sites`` are connected, how long to wait for the other enrolled sites.
    gather: float = 5.0
    offer: float = 30.0
    #: secure aggregation: advertising keys, and sharing them, each
    keys: float = 30.0
    input: float = 300.0
    #: secure aggregation: the consistency check, and the unmasking, each
    unmask: float = 30.0


@dataclass(frozen=True)
class JobConfig:
    job_id: str
    model: ModelConfig
    rounds: int
    min_sites: int
    training: TrainingConfig = field(default_factory=TrainingConfig)
    record_dp: RecordLevelDPConfig = field(default_factory=RecordLevelDPConfig)
    site_dp: SiteLevelDPConfig = field(default_factory=SiteLevelDPConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    server_optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    deadlines: Deadlines = field(default_factory=Deadlines)


def parse_job(job: Fields) -> JobConfig:
    """Parse and validate the ``[job]`` table of a federation file."""
    from fedtune.models import MODEL_IDS  # registry ids, validated at the edge

    m = job.sub("model", required=True)
    model = ModelConfig(
        id=m.string("id", choices=MODEL_IDS),
        input_dim=m.integer("input_dim", 0, minimum=0),
        num_classes=m.integer("num_classes", 2, minimum=2),
        image_shape=m.int_list("image_shape", ()),
        hidden=m.integer("hidden", 64, minimum=1),
        base_sha256=m.string("base_sha256", ""),
    )
    m.reject_unknown()
    t = job.sub("training")
    training = TrainingConfig(
        local_epochs=t.integer("local_epochs", 1, minimum=1, maximum=1000),
        batch_size=t.integer("batch_size", 32, minimum=1),
        learning_rate=t.number("learning_rate", 0.05, minimum=0.0, exclusive_minimum=True),
        optimizer=t.string("optimizer", "sgd", choices=("sgd", "adam")),
        momentum=t.number("momentum", 0.0, minimum=0.0, maximum=1.0),
        eval_fraction=t.number("eval_fraction", 0.2, minimum=0.0, maximum=0.9),
        seed=t.integer("seed", 0, minimum=0),
        weighting=t.string("weighting", "examples", choices=("examples", "uniform")),
        max_examples=t.integer("max_examples", 100_000, minimum=1),
    )
    t.reject_unknown()
    privacy = job.sub("privacy")
    r = privacy.sub("record_level")
    record_dp = RecordLevelDPConfig(
        enabled=r.boolean("enabled", False),
        noise_multiplier=r.number("noise_multiplier", 0.0, minimum=0.0),
        max_grad_norm=r.number("max_grad_norm", 1.0, minimum=0.0, exclusive_minimum=True),
        target_epsilon=r.number("target_epsilon", 0.0, minimum=0.0),
        delta=r.number("delta", 1e-5, minimum=0.0, maximum=1.0),
        sample_rate=r.number("sample_rate", 0.01, minimum=0.0, maximum=1.0,
                             exclusive_minimum=True),
        clipping=r.string("clipping", "flat", choices=CLIPPING_MODES),
    )
    if record_dp.enabled and record_dp.noise_multiplier <= 0:
        raise r.error("noise_multiplier", "DP-SGD needs a noise multiplier > 0")
    r.reject_unknown()
    s = privacy.sub("site_level")
    site_dp = SiteLevelDPConfig(
        mode=s.string("mode", "none", choices=SITE_DP_MODES),
        clip_norm=s.number("clip_norm", 0.0, minimum=0.0),
        noise_multiplier=s.number("noise_multiplier", 0.0, minimum=0.0),
        target_epsilon=s.number("target_epsilon", 0.0, minimum=0.0),
        delta=s.number("delta", 1e-5, minimum=0.0, maximum=1.0),
    )
    s.reject_unknown()
    privacy.reject_unknown()
    a = job.sub("secure_aggregation")
    secagg = SecureAggregationConfig(
        enabled=a.boolean("enabled", True),
        threshold=a.integer("threshold", 0, minimum=0),
        neighbours=a.integer("neighbours", 0, minimum=0),
        bits=a.integer("bits", 32, minimum=16, maximum=62),
        value_range=a.number("value_range", 1.0, minimum=0.0, exclusive_minimum=True),
        loss_bound=a.number("loss_bound", 20.0, minimum=0.0, exclusive_minimum=True),
    )
    a.reject_unknown()
    o = job.sub("server_optimizer")
    optimizer = ServerOptimizerConfig(
        name=o.string("name", "fedavg", choices=SERVER_OPTIMIZERS),
        learning_rate=o.number("learning_rate", 1.0, minimum=0.0, exclusive_minimum=True),
        beta1=o.number("beta1", 0.9, minimum=0.0, maximum=1.0),
        beta2=o.number("beta2", 0.99, minimum=0.0, maximum=1.0),
        tau=o.number("tau", 1e-3, minimum=0.0, exclusive_minimum=True),
    )
    o.reject_unknown()
    d = job.sub("deadlines")
    deadlines = Deadlines(
        gather=d.number("gather", 5.0, minimum=0.0),
        offer=d.number("offer", 30.0, minimum=0.0, exclusive_minimum=True),
        keys=d.number("keys", 30.0, minimum=0.0, exclusive_minimum=True),
        input=d.number("input", 300.0, minimum=0.0, exclusive_minimum=True),
        unmask=d.number("unmask", 30.0, minimum=0.0, exclusive_minimum=True),
    )
    d.reject_unknown()
    config = JobConfig(
        job_id=job.string("job_id", "job"),
        model=model,
        rounds=job.integer("rounds", minimum=1, maximum=100_000),
        min_sites=job.integer("min_sites", 2, minimum=1),
        training=training,
        record_dp=record_dp,
        site_dp=site_dp,
        secure_aggregation=secagg,
        server_optimizer=optimizer,
        deadlines=deadlines,
    )
    job.reject_unknown()
    if site_dp.mode != "none":
        if site_dp.clip_norm <= 0:
            raise s.error("clip_norm", f"site-level DP ({site_dp.mode}) needs clip_norm > 0")
        if site_dp.noise_multiplier <= 0 and site_dp.target_epsilon <= 0:
            raise s.error("noise_multiplier", "set noise_multiplier > 0, or target_epsilon > 0 "
                          "to have the coordinator calibrate it")
        if training.weighting != "uniform":
            raise t.error("weighting", "site-level DP bounds each site's contribution: use "
                          "weighting = \"uniform\"")
        if site_dp.mode == "distributed" and not secagg.enabled:
            raise s.error("mode", "distributed DP adds noise under secure aggregation: enable "
                          "[job.secure_aggregation]")
    return config


def job_to_proto(job: JobConfig) -> pb.Job:
    return pb.Job(
        job_id=job.job_id,
        model=pb.ModelSpec(
            id=job.model.id,
            input_dim=job.model.input_dim,
            num_classes=job.model.num_classes,
            image_shape=list(job.model.image_shape),
            hidden=job.model.hidden,
            base_sha256=job.model.base_sha256,
        ),
        training=pb.TrainingSpec(
            local_epochs=job.training.local_epochs,
            batch_size=job.training.batch_size,
            learning_rate=job.training.learning_rate,
            optimizer=job.training.optimizer,
            momentum=job.training.momentum,
            eval_fraction=job.training.eval_fraction,
            seed=job.training.seed,
            weighting=job.training.weighting,
            max_examples=job.training.max_examples,
        ),
        privacy=pb.PrivacySpec(
            record_level=pb.RecordLevelDP(
                enabled=job.record_dp.enabled,
                noise_multiplier=job.record_dp.noise_multiplier,
                max_grad_norm=job.record_dp.max_grad_norm,
                target_epsilon=job.record_dp.target_epsilon,
                delta=job.record_dp.delta,
                sample_rate=job.record_dp.sample_rate,
                # the default travels as "" so that a job without ghost clipping keeps the
                # digest (and so the resumable run directory) it had before the field existed
                clipping="" if job.record_dp.clipping == "flat" else job.record_dp.clipping,
            ),
            site_level=pb.SiteLevelDP(
                mode=job.site_dp.mode,
                clip_norm=job.site_dp.clip_norm,
                noise_multiplier=job.site_dp.noise_multiplier,
                target_epsilon=job.site_dp.target_epsilon,
                delta=job.site_dp.delta,
                max_sites=job.site_dp.max_sites,
            ),
        ),
        secure_aggregation=pb.SecureAggregationSpec(
            enabled=job.secure_aggregation.enabled,
            threshold=job.secure_aggregation.threshold,
            neighbours=job.secure_aggregation.neighbours,
            bits=job.secure_aggregation.bits,
            value_range=job.secure_aggregation.value_range,
            loss_bound=job.secure_aggregation.loss_bound,
        ),
        rounds=job.rounds,
        min_sites=job.min_sites,
    )


def job_from_proto(message: pb.Job) -> JobConfig:
    """The site's view of an offered job (server-only settings take their defaults)."""
    return JobConfig(
        job_id=message.job_id,
        model=ModelConfig(
            id=message.model.id,
            input_dim=message.model.input_dim,
            num_classes=message.model.num_classes,
            image_shape=tuple(message.model.image_shape),
            hidden=message.model.hidden,
            base_sha256=message.model.base_sha256,
        ),
        rounds=message.rounds,
        min_sites=message.min_sites,
        training=TrainingConfig(
            local_epochs=message.training.local_epochs,
            batch_size=message.training.batch_size,
            learning_rate=message.training.learning_rate,
            optimizer=message.training.optimizer,
            momentum=message.training.momentum,
            eval_fraction=message.training.eval_fraction,
            seed=message.training.seed,
            weighting=message.training.weighting,
            max_examples=message.training.max_examples,
        ),
        record_dp=RecordLevelDPConfig(
            enabled=message.privacy.record_level.enabled,
            noise_multiplier=message.privacy.record_level.noise_multiplier,
            max_grad_norm=message.privacy.record_level.max_grad_norm,
            target_epsilon=message.privacy.record_level.target_epsilon,
            delta=message.privacy.record_level.delta,
            sample_rate=message.privacy.record_level.sample_rate,
            clipping=message.privacy.record_level.clipping or "flat",
        ),
        site_dp=SiteLevelDPConfig(
            mode=message.privacy.site_level.mode or "none",
            clip_norm=message.privacy.site_level.clip_norm,
            noise_multiplier=message.privacy.site_level.noise_multiplier,
            target_epsilon=message.privacy.site_level.target_epsilon,
            delta=message.privacy.site_level.delta,
            max_sites=message.privacy.site_level.max_sites,
        ),
        secure_aggregation=SecureAggregationConfig(
            enabled=message.secure_aggregation.enabled,
            threshold=message.secure_aggregation.threshold,
            neighbours=message.secure_aggregation.neighbours,
            bits=message.secure_aggregation.bits,
            value_range=message.secure_aggregation.value_range,
            loss_bound=message.secure_aggregation.loss_bound,
        ),
    )


def job_digest(message: pb.Job) -> bytes:
    """sha256 of the job message's deterministic serialisation."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def offered_job_problem(job: JobConfig) -> str | None:
    """What is wrong with an offered job, or None: a site checks every offer with the same
    bounds the coordinator's parser enforces, so a malformed or hostile offer is refused with
    a reason instead of crashing the site."""
    t, r, s, a = job.training, job.record_dp, job.site_dp, job.secure_aggregation

    def finite(x: float) -> bool:
        return math.isfinite(x)

    checks = [
        (1 <= job.rounds <= 100_000, "rounds must be in 1..100000"),
        (job.min_sites >= 1, "min_sites must be >= 1"),
        (1 <= t.local_epochs <= 1000, "training.local_epochs must be in 1..1000"),
        (t.batch_size >= 1, "training.batch_size must be >= 1"),
        (finite(t.learning_rate) and t.learning_rate > 0, "training.learning_rate must be > 0"),
        (t.optimizer in ("sgd", "adam"), "training.optimizer must be sgd or adam"),
        (finite(t.momentum) and 0 <= t.momentum <= 1, "training.momentum must be in [0, 1]"),
        (finite(t.eval_fraction) and 0 <= t.eval_fraction <= 0.9,
         "training.eval_fraction must be in [0, 0.9]"),
        (t.weighting in ("examples", "uniform"), "training.weighting must be examples or uniform"),
        (t.max_examples >= 1, "training.max_examples must be >= 1"),
        (s.mode in SITE_DP_MODES, f"privacy.site_level.mode must be one of {SITE_DP_MODES}"),
    ]
    if a.enabled:
        checks += [
            (16 <= a.bits <= 62, "secure_aggregation.bits must be in 16..62"),
            (finite(a.value_range) and a.value_range > 0, "secure_aggregation.value_range must be > 0"),
            (finite(a.loss_bound) and a.loss_bound > 0, "secure_aggregation.loss_bound must be > 0"),
        ]
    if r.enabled:
        checks += [
            (finite(r.noise_multiplier) and r.noise_multiplier > 0,
             "privacy.record_level.noise_multiplier must be > 0"),
            (finite(r.max_grad_norm) and r.max_grad_norm > 0,
             "privacy.record_level.max_grad_norm must be > 0"),
            (finite(r.sample_rate) and 0 < r.sample_rate <= 1,
             "privacy.record_level.sample_rate must be in (0, 1]"),
            (0 < r.delta < 1, "privacy.record_level.delta must be in (0, 1)"),
            (r.clipping in CLIPPING_MODES,
             f"privacy.record_level.clipping must be one of {CLIPPING_MODES}"),
        ]
    if s.mode != "none":
        checks += [
            (finite(s.clip_norm) and s.clip_norm > 0, "privacy.site_level.clip_norm must be > 0"),
            (finite(s.noise_multiplier) and s.noise_multiplier > 0,
             "privacy.site_level.noise_multiplier must be > 0"),
            (0 < s.delta < 1, "privacy.site_level.delta must be in (0, 1)"),
            (t.weighting == "uniform", "site-level DP needs training.weighting = uniform"),
            (s.mode != "distributed" or a.enabled, "distributed DP needs secure aggregation"),
        ]
    for ok, problem in checks:
        if not ok:
            return f"malformed job: {problem}"
    return None
