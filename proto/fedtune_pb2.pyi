from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_OFFER: _ClassVar[Phase]
    PHASE_ADVERTISE_KEYS: _ClassVar[Phase]
    PHASE_SHARE_KEYS: _ClassVar[Phase]
    PHASE_MASKED_INPUT: _ClassVar[Phase]
    PHASE_UNMASK: _ClassVar[Phase]
    PHASE_AGGREGATE: _ClassVar[Phase]
    PHASE_CONSISTENCY_CHECK: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
PHASE_OFFER: Phase
PHASE_ADVERTISE_KEYS: Phase
PHASE_SHARE_KEYS: Phase
PHASE_MASKED_INPUT: Phase
PHASE_UNMASK: Phase
PHASE_AGGREGATE: Phase
PHASE_CONSISTENCY_CHECK: Phase

class RoundRef(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("message", "next")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    message: str
    next: Task
    def __init__(self, message: _Optional[str] = ..., next: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("dtype", "shape", "nbytes", "sha256")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    nbytes: int
    sha256: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., nbytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("spec", "offset", "data")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    spec: TensorSpec
    offset: int
    data: bytes
    def __init__(self, spec: _Optional[_Union[TensorSpec, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("site_id",)
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    def __init__(self, site_id: _Optional[str] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("run_id", "nonce", "ttl_s")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    nonce: bytes
    ttl_s: int
    def __init__(self, run_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("site_id", "nonce", "signature")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    nonce: bytes
    signature: bytes
    def __init__(self, site_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("token", "run_id", "session_ttl_s")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_S_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    run_id: str
    session_ttl_s: int
    def __init__(self, token: _Optional[bytes] = ..., run_id: _Optional[str] = ..., session_ttl_s: _Optional[int] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("id", "input_dim", "num_classes", "image_shape", "hidden", "base_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    input_dim: int
    num_classes: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    hidden: int
    base_sha256: str
    def __init__(self, id: _Optional[str] = ..., input_dim: _Optional[int] = ..., num_classes: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., hidden: _Optional[int] = ..., base_sha256: _Optional[str] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "optimizer", "momentum", "eval_fraction", "seed", "weighting", "max_examples")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    momentum: float
    eval_fraction: float
    seed: int
    weighting: str
    max_examples: int
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ..., eval_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., weighting: _Optional[str] = ..., max_examples: _Optional[int] = ...) -> None: ...

class RecordLevelDP(_message.Message):
    __slots__ = ("enabled", "noise_multiplier", "max_grad_norm", "target_epsilon", "delta", "sample_rate", "clipping")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CLIPPING_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    noise_multiplier: float
    max_grad_norm: float
    target_epsilon: float
    delta: float
    sample_rate: float
    clipping: str
    def __init__(self, enabled: bool = ..., noise_multiplier: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., sample_rate: _Optional[float] = ..., clipping: _Optional[str] = ...) -> None: ...

class SiteLevelDP(_message.Message):
    __slots__ = ("mode", "clip_norm", "noise_multiplier", "target_epsilon", "delta", "max_sites")
    MODE_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_SITES_FIELD_NUMBER: _ClassVar[int]
    mode: str
    clip_norm: float
    noise_multiplier: float
    target_epsilon: float
    delta: float
    max_sites: int
    def __init__(self, mode: _Optional[str] = ..., clip_norm: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., max_sites: _Optional[int] = ...) -> None: ...

class PrivacySpec(_message.Message):
    __slots__ = ("record_level", "site_level")
    RECORD_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SITE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    record_level: RecordLevelDP
    site_level: SiteLevelDP
    def __init__(self, record_level: _Optional[_Union[RecordLevelDP, _Mapping]] = ..., site_level: _Optional[_Union[SiteLevelDP, _Mapping]] = ...) -> None: ...

class SecureAggregationSpec(_message.Message):
    __slots__ = ("enabled", "threshold", "neighbours", "bits", "value_range", "loss_bound")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    VALUE_RANGE_FIELD_NUMBER: _ClassVar[int]
    LOSS_BOUND_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    threshold: int
    neighbours: int
    bits: int
    value_range: float
    loss_bound: float
    def __init__(self, enabled: bool = ..., threshold: _Optional[int] = ..., neighbours: _Optional[int] = ..., bits: _Optional[int] = ..., value_range: _Optional[float] = ..., loss_bound: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "model", "training", "privacy", "secure_aggregation", "rounds", "min_sites")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SITES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: ModelSpec
    training: TrainingSpec
    privacy: PrivacySpec
    secure_aggregation: SecureAggregationSpec
    rounds: int
    min_sites: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., privacy: _Optional[_Union[PrivacySpec, _Mapping]] = ..., secure_aggregation: _Optional[_Union[SecureAggregationSpec, _Mapping]] = ..., rounds: _Optional[int] = ..., min_sites: _Optional[int] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("wait_ms",)
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    wait_ms: int
    def __init__(self, wait_ms: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("wait", "offer", "share_keys", "submit_input", "unmask", "round_result", "finished", "consistency")
    WAIT_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_INPUT_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    ROUND_RESULT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    wait: Wait
    offer: Offer
    share_keys: ShareKeysTask
    submit_input: SubmitInputTask
    unmask: UnmaskTask
    round_result: RoundResult
    finished: Finished
    consistency: ConsistencyTask
    def __init__(self, wait: _Optional[_Union[Wait, _Mapping]] = ..., offer: _Optional[_Union[Offer, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeysTask, _Mapping]] = ..., submit_input: _Optional[_Union[SubmitInputTask, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskTask, _Mapping]] = ..., round_result: _Optional[_Union[RoundResult, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyTask, _Mapping]] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("retry_after_ms", "reason")
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    reason: str
    def __init__(self, retry_after_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("ref", "job", "job_digest", "parameters", "evaluate_only", "round_seed", "deadline")
    REF_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    JOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    job: Job
    job_digest: bytes
    parameters: TensorSpec
    evaluate_only: bool
    round_seed: bytes
    deadline: float
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., job_digest: _Optional[bytes] = ..., parameters: _Optional[_Union[TensorSpec, _Mapping]] = ..., evaluate_only: bool = ..., round_seed: _Optional[bytes] = ..., deadline: _Optional[float] = ...) -> None: ...

class OfferResponse(_message.Message):
    __slots__ = ("ref", "accept", "refusal_reason")
    REF_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_REASON_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    accept: bool
    refusal_reason: str
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., accept: bool = ..., refusal_reason: _Optional[str] = ...) -> None: ...

class ParametersRequest(_message.Message):
    __slots__ = ("ref", "chunk_bytes")
    REF_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    chunk_bytes: int
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class KeyAdvertisement(_message.Message):
    __slots__ = ("ref", "site_id", "encryption_public_key", "mask_public_key")
    REF_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    site_id: str
    encryption_public_key: bytes
    mask_public_key: bytes
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., site_id: _Optional[str] = ..., encryption_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ...) -> None: ...

class SignedKeyAdvertisement(_message.Message):
    __slots__ = ("advertisement", "signature")
    ADVERTISEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    advertisement: KeyAdvertisement
    signature: bytes
    def __init__(self, advertisement: _Optional[_Union[KeyAdvertisement, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ShareKeysTask(_message.Message):
    __slots__ = ("ref", "advertisements", "deadline")
    REF_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    advertisements: _containers.RepeatedCompositeFieldContainer[SignedKeyAdvertisement]
    deadline: float
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., advertisements: _Optional[_Iterable[_Union[SignedKeyAdvertisement, _Mapping]]] = ..., deadline: _Optional[float] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("from_site", "to_site", "ciphertext")
    FROM_SITE_FIELD_NUMBER: _ClassVar[int]
    TO_SITE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    from_site: str
    to_site: str
    ciphertext: bytes
    def __init__(self, from_site: _Optional[str] = ..., to_site: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class EncryptedShares(_message.Message):
    __slots__ = ("ref", "shares")
    REF_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class SubmitInputTask(_message.Message):
    __slots__ = ("ref", "shares", "expected", "deadline")
    REF_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    expected: TensorSpec
    deadline: float
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., expected: _Optional[_Union[TensorSpec, _Mapping]] = ..., deadline: _Optional[float] = ...) -> None: ...

class PlainMetrics(_message.Message):
    __slots__ = ("train_loss_sum", "eval_loss_sum", "eval_correct", "eval_count", "train_count", "weight")
    TRAIN_LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    EVAL_CORRECT_FIELD_NUMBER: _ClassVar[int]
    EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    train_loss_sum: float
    eval_loss_sum: float
    eval_correct: float
    eval_count: float
    train_count: float
    weight: float
    def __init__(self, train_loss_sum: _Optional[float] = ..., eval_loss_sum: _Optional[float] = ..., eval_correct: _Optional[float] = ..., eval_count: _Optional[float] = ..., train_count: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class InputHeader(_message.Message):
    __slots__ = ("ref", "vector", "metrics")
    REF_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    vector: TensorSpec
    metrics: PlainMetrics
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., vector: _Optional[_Union[TensorSpec, _Mapping]] = ..., metrics: _Optional[_Union[PlainMetrics, _Mapping]] = ...) -> None: ...

class InputChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: InputHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[InputHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SignedSurvivors(_message.Message):
    __slots__ = ("ref", "survivors", "dropouts", "signature")
    REF_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropouts: _containers.RepeatedScalarFieldContainer[str]
    signature: bytes
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., survivors: _Optional[_Iterable[str]] = ..., dropouts: _Optional[_Iterable[str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ConsistencyTask(_message.Message):
    __slots__ = ("ref", "lists", "deadline")
    REF_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    lists: SignedSurvivors
    deadline: float
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., lists: _Optional[_Union[SignedSurvivors, _Mapping]] = ..., deadline: _Optional[float] = ...) -> None: ...

class SurvivorConfirmation(_message.Message):
    __slots__ = ("ref", "site_id", "signature")
    REF_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    site_id: str
    signature: bytes
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., site_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskTask(_message.Message):
    __slots__ = ("ref", "lists", "deadline", "confirmations")
    REF_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    lists: SignedSurvivors
    deadline: float
    confirmations: _containers.RepeatedCompositeFieldContainer[SurvivorConfirmation]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., lists: _Optional[_Union[SignedSurvivors, _Mapping]] = ..., deadline: _Optional[float] = ..., confirmations: _Optional[_Iterable[_Union[SurvivorConfirmation, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("of_site", "kind", "share")
    OF_SITE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    of_site: str
    kind: str
    share: bytes
    def __init__(self, of_site: _Optional[str] = ..., kind: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("ref", "shares")
    REF_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class AggregateMetrics(_message.Message):
    __slots__ = ("train_loss", "eval_loss", "eval_accuracy", "eval_count", "train_count")
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    train_loss: float
    eval_loss: float
    eval_accuracy: float
    eval_count: float
    train_count: float
    def __init__(self, train_loss: _Optional[float] = ..., eval_loss: _Optional[float] = ..., eval_accuracy: _Optional[float] = ..., eval_count: _Optional[float] = ..., train_count: _Optional[float] = ...) -> None: ...

class RoundResult(_message.Message):
    __slots__ = ("ref", "aborted", "abort_reason", "contributors", "metrics")
    REF_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    aborted: bool
    abort_reason: str
    contributors: _containers.RepeatedScalarFieldContainer[str]
    metrics: AggregateMetrics
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., aborted: bool = ..., abort_reason: _Optional[str] = ..., contributors: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Union[AggregateMetrics, _Mapping]] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("run_id", "rounds_completed", "final_metrics", "failed", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    rounds_completed: int
    final_metrics: AggregateMetrics
    failed: bool
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., rounds_completed: _Optional[int] = ..., final_metrics: _Optional[_Union[AggregateMetrics, _Mapping]] = ..., failed: bool = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteStatus(_message.Message):
    __slots__ = ("site_id", "connected", "last_seen", "last_refusal")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    connected: bool
    last_seen: float
    last_refusal: str
    def __init__(self, site_id: _Optional[str] = ..., connected: bool = ..., last_seen: _Optional[float] = ..., last_refusal: _Optional[str] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "aborted", "abort_reason", "contributors", "metrics", "evaluate_only")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    round: int
    aborted: bool
    abort_reason: str
    contributors: int
    metrics: AggregateMetrics
    evaluate_only: bool
    def __init__(self, round: _Optional[int] = ..., aborted: bool = ..., abort_reason: _Optional[str] = ..., contributors: _Optional[int] = ..., metrics: _Optional[_Union[AggregateMetrics, _Mapping]] = ..., evaluate_only: bool = ...) -> None: ...

class FederationStatus(_message.Message):
    __slots__ = ("run_id", "job_id", "round", "phase", "rounds_total", "rounds_completed", "finished", "sites", "history", "epsilon_spent")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    round: int
    phase: Phase
    rounds_total: int
    rounds_completed: int
    finished: bool
    sites: _containers.RepeatedCompositeFieldContainer[SiteStatus]
    history: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    epsilon_spent: float
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., rounds_total: _Optional[int] = ..., rounds_completed: _Optional[int] = ..., finished: bool = ..., sites: _Optional[_Iterable[_Union[SiteStatus, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ..., epsilon_spent: _Optional[float] = ...) -> None: ...
