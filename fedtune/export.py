"""Export a run's final model as ``safetensors``, with its privacy card (DESIGN.md §4).

``fedtune export RUN_DIR --out DIR`` reads the coordinator's run directory and writes, into
``DIR``, the model the run released plus ``privacy_card.json`` and ``privacy_card.md``
(:mod:`fedtune.privacy_card`). Nothing is ever written with pickle.

What is exported
----------------
Pretrained LoRA models (:data:`fedtune.models.PRETRAINED_IDS`)
    ``adapter_config.json`` and ``adapter_model.safetensors`` in peft's own format: the
    registry model is rebuilt from the job, the checkpoint's federated vector is set into it
    with :func:`fedtune.models.set_flat`, and the peft model inside saves itself (the task
    head goes in as a ``modules_to_save`` module, the way peft saves it). On the same base::

        base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=K)
        model = PeftModel.from_pretrained(base, DIR)
        logits = fedtune.pretrained.sentence_logits(model, input_ids, attention_mask)

    gives the coordinator's final model (``minilm-lora``'s head reads the mean-pooled
    sentence embedding, not BERT's pooler: :func:`fedtune.pretrained.sentence_logits`; for
    ``smollm2-lora`` load ``AutoModelForCausalLM`` from the GGUF file instead). The exporter then checks the files: exactly the
    adapter tensors peft holds, bit for bit, adding up to the federated vector's length.
    Nothing of the base is exported; the card names it by package, file and sha256, and the
    export is refused when the installed base's sha256 differs from the job's.
Other registry models (``tabular-mlp``, ``image-cnn``, ``image-linear``)
    ``model.safetensors``: the module's ``state_dict`` (every parameter of these models is
    federated), with the model spec as JSON in the file's metadata (``fedtune.model``).
    Rebuild the module with :func:`fedtune.models.build_model` and ``load_state_dict``.

Where the job comes from
------------------------
``run.json`` records only the job's digest; the job itself is read from, in this order:

1. the federation file the coordinator ran with, when ``--federation`` names it, completed as
   the coordinator completes it before offering it (:func:`fedtune.privacy_plan.finalize_job`);
2. the first record (``job_accepted``) of ``RUN_DIR/transcript.jsonl``, whose ``job_proto`` is
   the offered job message itself (it lacks the server-only settings: the card then shows no
   server optimiser);
3. ``RUN_DIR/../federation.toml`` when that file's ``run_dir`` is ``RUN_DIR`` (the layout of
   ``fedtune demo``), completed as in 1.

Whatever the source, the job must hash to ``run.json``'s digest.

A run directory on which a coordinator is running is refused: the checkpoint and
``privacy.json`` are rewritten one after the other, and the card must describe one state.

Every refusal is an :class:`ExportError` that names the file, the field and the problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError
from torch import nn

import fedtune
from fedtune import models, pretrained, privacy_card
from fedtune.federation import load_federation
from fedtune.job import JobConfig, job_digest, job_from_proto, job_to_proto
from fedtune.privacy_plan import finalize_job
from fedtune.proto import fedtune_pb2 as pb
from fedtune.server import checkpoint as ckpt
from fedtune.server.privacy_budget import PrivacyBudget

log = logging.getLogger("fedtune.export")

RUN_JSON = "run.json"
PRIVACY_JSON = "privacy.json"
FEDERATION_FILE = "federation.toml"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
STATE_DICT = "model.safetensors"
#: every file an export may write; ``--force`` replaces these and leaves any other file alone
EXPORT_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, STATE_DICT,
                privacy_card.CARD_JSON, privacy_card.CARD_MD)
#: relative tolerance when privacy.json's figures are checked against the checkpoint's state
_EPSILON_RTOL = 1e-9


class ExportError(ValueError):
    """A run directory, job or output folder the exporter refuses: ``file: field: problem``."""

    def __init__(self, file: str | Path, field: str, problem: str) -> None:
        self.file, self.field, self.problem = str(file), field, problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


@dataclass(frozen=True)
class RunRecord:
    """What the coordinator left in a run directory (``run.json``, checkpoint, privacy.json)."""

    run_dir: Path
    run_id: str
    job_id: str
    job_digest: str
    params: np.ndarray
    meta: dict[str, Any]
    privacy: dict[str, Any]
    history: list[pb.RoundSummary]
    final_metrics: pb.AggregateMetrics | None

    @property
    def completed_rounds(self) -> int:
        return int(self.meta["completed_rounds"])


@dataclass(frozen=True)
class ExportResult:
    """The files written (in ``out``) and the card's JSON object."""

    out: Path
    files: list[Path]
    card: dict[str, Any]


# ---------------------------------------------------------------------------- reading a run


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ExportError(path, "", f"missing: {what}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(path, "", f"unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ExportError(path, "", "expected a JSON object")
    return value


def _field(record: dict[str, Any], path: Path, name: str, kind: type) -> Any:
    if name not in record:
        raise ExportError(path, name, "missing")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ExportError(path, name, f"expected {kind.__name__}, found {value!r}")
    return value


def read_run(run_dir: Path) -> RunRecord:
    """Read and cross-check a coordinator's run directory.

    Raises
    ------
    ExportError
        If the folder, ``run.json``, ``checkpoint.npz`` or ``privacy.json`` is missing or
        malformed, if they belong to different jobs, or if no training round completed.
    """
    if not run_dir.is_dir():
        raise ExportError(run_dir, "", "run directory not found")
    run_path = run_dir / RUN_JSON
    run = _read_json(run_path, "not a coordinator run directory (the coordinator writes "
                               "run.json when it first starts)")
    run_id = _field(run, run_path, "run_id", str)
    job_id = _field(run, run_path, "job_id", str)
    digest = _field(run, run_path, "job_digest", str)
    ckpt_path = run_dir / ckpt.CHECKPOINT
    try:
        state = ckpt.load(run_dir)
    except ckpt.CheckpointError as exc:
        raise ExportError(ckpt_path, "", str(exc).removeprefix(f"{ckpt_path}: ")) from None
    if state is None:
        raise ExportError(ckpt_path, "", "missing: no round of this run completed, there is "
                                         "no model to export")
    meta = state.meta
    if meta.get("job_digest") != digest:
        raise ExportError(ckpt_path, "meta.job_digest",
                          f"{meta.get('job_digest')!r} differs from {run_path}'s {digest!r}")
    if meta.get("run_id") != run_id:
        raise ExportError(ckpt_path, "meta.run_id",
                          f"{meta.get('run_id')!r} differs from {run_path}'s {run_id!r}")
    completed = meta.get("completed_rounds")
    if not isinstance(completed, int) or isinstance(completed, bool) or completed < 0:
        raise ExportError(ckpt_path, "meta.completed_rounds", f"malformed: {completed!r}")
    if completed == 0:
        raise ExportError(ckpt_path, "meta.completed_rounds",
                          "0: no training round completed, the model is the initial one")
    params = state.params
    if params.dtype != np.float32 or params.ndim != 1 or not np.isfinite(params).all():
        raise ExportError(ckpt_path, "params", f"expected a finite 1-D float32 vector, found "
                                               f"{params.dtype} of shape {params.shape}")
    try:
        history, final = ckpt.history_of(meta)
    except (ValueError, TypeError, DecodeError) as exc:
        raise ExportError(ckpt_path, "meta.history", f"malformed ({exc})") from None
    privacy_path = run_dir / PRIVACY_JSON
    privacy = _read_json(privacy_path, "the coordinator writes it after every round")
    for level in ("record_level", "site_level"):
        if not isinstance(privacy.get(level), dict):
            raise ExportError(privacy_path, level, "missing or not an object")
    return RunRecord(run_dir, run_id, job_id, digest, params, meta, privacy, history, final)


@contextlib.contextmanager
def _stopped_run(run_dir: Path) -> Iterator[None]:
    """Hold a shared lock on the run directory: no coordinator may run on it meanwhile.

    A running coordinator holds ``RUN_DIR/.lock`` exclusively (``fedtune.server.app``) and
    rewrites the checkpoint and ``privacy.json`` one after the other; an export reads them
    only while they stand still. A run directory without a lock file had no coordinator.
    """
    lock = run_dir / ".lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(run_dir, "", "a coordinator is running on this run directory; "
                                           "export the run once it has stopped") from None
        yield
    finally:
        os.close(fd)


def default_federation(run_dir: Path) -> Path | None:
    """``RUN_DIR/../federation.toml`` if that file's ``run_dir`` is ``RUN_DIR``, else None.

    This is the layout ``fedtune demo`` and the local federations write.
    """
    candidate = run_dir.resolve().parent / FEDERATION_FILE
    if not candidate.is_file():
        return None
    try:
        config = load_federation(candidate)
    except ValueError:
        return None
    return candidate if config.run_dir.resolve() == run_dir.resolve() else None


@dataclass(frozen=True)
class RunJob:
    """The run's job as the coordinator offered it, and where it was read.

    Attributes
    ----------
    origin, prefix:
        The file the job came from and how its fields are named there (``job.`` in a
        federation file, ``job_proto.`` in the transcript), for error messages.
    source:
        ``"federation file PATH"`` or ``"transcript"``, for the card.
    server_optimizer:
        ``{name, learning_rate}``, or None when the source does not hold it.
    """

    job: JobConfig
    enrolled: list[str]
    origin: Path
    prefix: str
    source: str
    server_optimizer: dict[str, Any] | None


def load_run_job(run: RunRecord, federation: Path | None,
                 transcript: privacy_card.TranscriptSummary | None) -> RunJob:
    """The run's job, from the first source that exists, checked against ``run.json``.

    Sources, in order: ``federation`` when given; the transcript's ``job_accepted`` record
    (``job_proto``, the offered job message itself); the federation file found by
    :func:`default_federation`.

    Raises
    ------
    ExportError
        If there is no source, or the job found is not the run's (its digest differs).
    fedtune.toml_fields.ConfigError
        If the federation file is invalid.
    """
    if federation is not None:
        return _job_from_federation(run, federation)
    if transcript is not None and "job_proto" in transcript.first:
        return _job_from_transcript(run, transcript)
    found = default_federation(run.run_dir)
    if found is not None:
        return _job_from_federation(run, found)
    raise ExportError(run.run_dir / RUN_JSON, "job_digest",
                      "the run directory records only the job's digest and has no transcript; "
                      "pass --federation FILE, the federation file the coordinator ran with")


def _job_from_federation(run: RunRecord, federation: Path) -> RunJob:
    config = load_federation(federation)
    # completed as the coordinator completes it before offering it: max_sites, calibrated σ
    job = finalize_job(config.job, len(config.sites), int(run.params.size))
    found = job_digest(job_to_proto(job)).hex()
    if found != run.job_digest:
        raise ExportError(federation, "job",
                          f"not the job of run {run.run_id!r}: its digest is {found[:16]}…, "
                          f"{run.run_dir / RUN_JSON} names {run.job_digest[:16]}…")
    if config.run_id and config.run_id != run.run_id:
        raise ExportError(federation, "federation.run_id",
                          f"{config.run_id!r}, the run directory holds run {run.run_id!r}")
    server = {"name": job.server_optimizer.name,
              "learning_rate": job.server_optimizer.learning_rate}
    return RunJob(job, [s.id for s in config.sites], federation, "job.",
                  f"federation file {federation}", server)


def _job_from_transcript(run: RunRecord, transcript: privacy_card.TranscriptSummary) -> RunJob:
    record, path = transcript.first, transcript.path
    try:
        raw = bytes.fromhex(str(record["job_proto"]))
        message = pb.Job.FromString(raw)
    except (ValueError, DecodeError) as exc:
        raise ExportError(path, "job_proto", f"not a serialised job message ({exc})") from None
    found = hashlib.sha256(raw).hexdigest()
    if found != run.job_digest:
        raise ExportError(path, "job_proto",
                          f"hashes to {found[:16]}…, {run.run_dir / RUN_JSON} names "
                          f"{run.job_digest[:16]}…")
    sites = record.get("sites")
    if not isinstance(sites, dict):
        raise ExportError(path, "sites", f"expected the enrolled sites, found {sites!r}")
    return RunJob(job_from_proto(message), sorted(str(s) for s in sites), path, "job_proto.",
                  "transcript", None)


def check_privacy_report(run: RunRecord, job: JobConfig) -> None:
    """``privacy.json`` must say what the checkpoint's accountant state says.

    The checkpoint holds the exported parameters and the count of charged releases that
    produced them; ``privacy.json`` is written just after it. Recomputing the report from the
    checkpoint binds the card's ε to the exported model (a stale or edited ``privacy.json``
    is refused rather than copied).

    Raises
    ------
    ExportError
        Naming the first field of ``privacy.json`` that differs.
    """
    budget = PrivacyBudget(job, int(run.params.size))
    budget.load_state(run.meta.get("privacy", {}))
    expected = json.loads(json.dumps(budget.report()))  # the JSON round trip the file took
    problem = _first_difference(expected, run.privacy, "")
    if problem is not None:
        field, want, found = problem
        raise ExportError(run.run_dir / PRIVACY_JSON, field,
                          f"{found!r}, but the checkpoint's accountant state gives {want!r}")


def _first_difference(want: Any, found: Any, where: str) -> tuple[str, Any, Any] | None:
    if isinstance(want, dict):
        if not isinstance(found, dict):
            return where or "(top level)", want, found
        for key, value in want.items():
            sub = f"{where}.{key}" if where else key
            if key not in found:
                return sub, value, "missing"
            diff = _first_difference(value, found[key], sub)
            if diff is not None:
                return diff
        return None
    if isinstance(want, list):
        if not isinstance(found, list) or len(found) != len(want):
            return where, want, found
        for i, (a, b) in enumerate(zip(want, found, strict=True)):
            diff = _first_difference(a, b, f"{where}[{i}]")
            if diff is not None:
                return diff
        return None
    if isinstance(want, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        return None if math.isclose(want, found, rel_tol=_EPSILON_RTOL, abs_tol=0.0) else (
            where, want, found)
    return None if want == found and type(want) is type(found) else (where, want, found)


# ---------------------------------------------------------------------------- writing


def _peft_model(model: nn.Module) -> nn.Module:
    from peft import PeftModel

    found = [m for m in model.modules() if isinstance(m, PeftModel)]
    if len(found) != 1:
        raise ExportError(model.__class__.__name__, "", f"expected one peft model inside the "
                                                        f"registry model, found {len(found)}")
    return found[0]


def _write_adapter(model: nn.Module, params: np.ndarray, folder: Path,
                   upstream: str) -> list[str]:
    """peft's ``save_pretrained``, then a check of what it wrote; returns the file names.

    ``base_model_name_or_path`` in ``adapter_config.json`` becomes ``upstream`` (the base's
    Hub name): peft writes the folder the base was loaded from, a path of this machine's
    install that means nothing where the adapter is loaded.
    """
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = _peft_model(model)
    staging = folder / ".peft"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # save_embedding_layers=False: the registry never trains or resizes embeddings (the
        # length check below would catch one that did), and "auto" may look the base up on
        # the Hugging Face Hub when its folder holds no config.json (a GGUF base)
        peft_model.save_pretrained(staging, safe_serialization=True,
                                   save_embedding_layers=False)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (staging / name).is_file():
            raise ExportError(staging / name, "", "peft's save_pretrained did not write it")
        os.replace(staging / name, folder / name)
    shutil.rmtree(staging)  # peft's generic README.md: the privacy card replaces it
    written = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    written["base_model_name_or_path"] = upstream
    (folder / ADAPTER_CONFIG).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")

    saved = load_file(folder / ADAPTER_WEIGHTS)
    expected = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}
    if set(saved) != set(expected):
        raise ExportError(folder / ADAPTER_WEIGHTS, "", f"tensors {sorted(set(saved) ^ set(expected))} "
                                                        "differ from the model's adapters")
    for key, tensor in expected.items():
        if saved[key].dtype != tensor.dtype or not torch.equal(saved[key], tensor):
            raise ExportError(folder / ADAPTER_WEIGHTS, key, "differs from the model's value")
    total = sum(t.numel() for t in saved.values())
    if total != params.size:
        raise ExportError(folder / ADAPTER_WEIGHTS, "", f"holds {total} values, the federated "
                                                        f"vector {params.size}")
    config = LoraConfig.from_pretrained(str(folder))
    lora = peft_model.peft_config[peft_model.active_adapter]
    if (config.r, config.lora_alpha, set(config.target_modules or ()),
            list(config.modules_to_save or ())) != (lora.r, lora.lora_alpha,
                                                    set(lora.target_modules or ()),
                                                    list(lora.modules_to_save or ())):
        raise ExportError(folder / ADAPTER_CONFIG, "", "does not describe the model's LoRA")
    return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def _write_state_dict(model: nn.Module, params: np.ndarray, spec: dict[str, Any],
                      folder: Path) -> list[str]:
    """The whole module as safetensors (every parameter of these models is federated)."""
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = folder / STATE_DICT
    save_file(state, str(path), metadata={"fedtune.model": json.dumps(spec, sort_keys=True)})
    saved = load_file(path)
    flat = torch.cat([saved[name].reshape(-1) for name in models.trainable_names(model)])
    if set(saved) != set(state) or not np.array_equal(flat.numpy(), params):
        raise ExportError(path, "", "does not hold the federated vector")
    return [STATE_DICT]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _base_section(job: JobConfig) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if job.model.id not in models.PRETRAINED_IDS:
        return None, None
    b = pretrained.BASES[job.model.id]
    base = {"distribution": b.distribution, "file": "/".join(p for p in (b.folder, b.weights) if p),
            "sha256": pretrained.base_sha256(job.model.id),
            "named_by_job": bool(job.model.base_sha256)}
    lora = {"rank": b.lora_rank, "alpha": b.lora_alpha, "dropout": b.lora_dropout,
            "targets": list(b.lora_targets), "modules_to_save": [b.head] if b.head else []}
    return base, lora


def _rebuild(run: RunRecord, source: RunJob) -> nn.Module:
    """The registry model of the job with the checkpoint's federated vector, in eval mode."""
    from fedtune.pretrained import BaseWeightsMismatch, MissingPackageError

    where, model_field = source.origin, f"{source.prefix}model"
    try:
        model = models.build_model(source.job.model, seed=source.job.training.seed)
    except BaseWeightsMismatch as exc:
        raise ExportError(where, f"{model_field}.base_sha256",
                          f"cannot export onto this installation's base: {exc}") from None
    except MissingPackageError as exc:
        raise ExportError(where, f"{model_field}.id", str(exc)) from None
    except models.ModelError as exc:
        raise ExportError(where, model_field, str(exc)) from None
    try:
        models.set_flat(model, run.params)
    except models.ModelError as exc:
        raise ExportError(run.run_dir / ckpt.CHECKPOINT, "params",
                          f"does not fit the job's model: {exc}") from None
    return model.eval()


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(out, "", "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(out, "", "folder is not empty; pass --force to replace the export "
                                   f"files in it ({', '.join(EXPORT_FILES)})")


def export_run(run_dir: Path, out: Path, *, federation: Path | None = None,
               force: bool = False) -> ExportResult:
    """Export ``run_dir``'s final model and its privacy card into ``out``.

    Parameters
    ----------
    run_dir:
        The coordinator's run directory.
    out:
        The output folder; created if missing. A non-empty folder is refused unless
        ``force``, which replaces the files of :data:`EXPORT_FILES` and keeps any other.
    federation:
        The federation file the coordinator ran with (default: see the module docstring).

    Raises
    ------
    ExportError
        The run directory, job or output folder is refused (file, field, problem), or a
        coordinator is running on the run directory.
    fedtune.toml_fields.ConfigError
        The federation file is invalid.
    fedtune.models.ModelError
        The model cannot be rebuilt here, e.g.
        :class:`fedtune.pretrained.BaseWeightsMismatch` when the installed base's sha256
        differs from the job's, or :class:`fedtune.pretrained.MissingPackageError`.
    privacy_card.TranscriptError
        ``transcript.jsonl`` exists but its final hash cannot be read.
    OSError
        A file could not be written.
    """
    if not run_dir.is_dir():
        raise ExportError(run_dir, "", "run directory not found")
    with _stopped_run(run_dir):
        return _export_stopped_run(run_dir, out, federation, force)


def _export_stopped_run(run_dir: Path, out: Path, federation: Path | None,
                        force: bool) -> ExportResult:
    run = read_run(run_dir)
    transcript = privacy_card.read_transcript(run_dir)
    source = load_run_job(run, federation, transcript)
    job = source.job
    _check_out(out, force)
    check_privacy_report(run, job)
    model = _rebuild(run, source)
    base, lora = _base_section(job)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if base is not None:
            names = _write_adapter(model, run.params, staging,
                                   pretrained.BASES[job.model.id].upstream)
            model_format = "peft-lora"
        else:
            names = _write_state_dict(model, run.params, dataclasses.asdict(job.model), staging)
            model_format = "state-dict"
        files = {n: {"sha256": _sha256(staging / n), "bytes": (staging / n).stat().st_size}
                 for n in names}
        card = privacy_card.build_card(
            run_id=run.run_id, job=job, job_digest=run.job_digest, privacy=run.privacy,
            completed_rounds=run.completed_rounds, history=run.history,
            final_metrics=run.final_metrics, budget_stop=str(run.meta.get("budget_stop", "")),
            enrolled_sites=source.enrolled, model_format=model_format,
            federated_parameters=int(run.params.size), base=base, lora=lora, files=files,
            transcript=transcript, job_source=source.source,
            server_optimizer=source.server_optimizer, fedtune_version=fedtune.__version__,
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"))
        names += [p.name for p in privacy_card.write_card(card, staging)]
        out.mkdir(parents=True, exist_ok=True)
        if force:
            for name in EXPORT_FILES:
                (out / name).unlink(missing_ok=True)
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported run %s to %s", run.run_id, out)
    return ExportResult(out, [out / n for n in names], card)


__all__ = [
    "EXPORT_FILES",
    "ExportError",
    "ExportResult",
    "RunJob",
    "RunRecord",
    "check_privacy_report",
    "default_federation",
    "export_run",
    "load_run_job",
    "read_run",
]
