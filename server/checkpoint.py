"""Atomic checkpoints of the global model, the optimiser and the run's history.

One file, ``checkpoint.npz`` (numpy's zip of raw arrays, loaded with ``allow_pickle=False``),
holds the parameters, the server-optimiser state and a JSON metadata record. It is written to
a temporary file in the same folder, flushed to disk, then renamed over the old one, so a
crash at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT = "checkpoint.npz"


@dataclass
class Checkpoint:
    params: np.ndarray
    optimiser_state: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


class CheckpointError(ValueError):
    pass


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(run_dir: Path, checkpoint: Checkpoint) -> Path:
    arrays = {"params": checkpoint.params}
    arrays.update({f"opt_{k}": v for k, v in checkpoint.optimiser_state.items()})
    arrays["meta"] = np.frombuffer(json.dumps(checkpoint.meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = run_dir / CHECKPOINT
    atomic_write(path, buffer.getvalue())
    return path


def load(run_dir: Path) -> Checkpoint | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            params = data["params"].copy()
            state = {k[4:]: data[k].copy() for k in data.files if k.startswith("opt_")}
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    return Checkpoint(params, state, meta)


def read_history(run_dir: Path) -> tuple[list, Any]:
    """The round summaries and final metrics recorded in a run directory's checkpoint."""
    state = load(run_dir)
    return ([], None) if state is None else history_of(state.meta)


def history_of(meta: dict[str, Any]) -> tuple[list, Any]:
    """The round summaries and final metrics in a checkpoint's metadata."""
    from fedtune.proto import fedtune_pb2 as pb

    history = []
    for entry in meta.get("history", []):
        summary = pb.RoundSummary()
        summary.ParseFromString(bytes.fromhex(entry))
        history.append(summary)
    final = None
    if meta.get("final_metrics"):
        final = pb.AggregateMetrics()
        final.ParseFromString(bytes.fromhex(meta["final_metrics"]))
    return history, final
