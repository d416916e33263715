"""Checkpoints are atomic and round-trip the model, optimiser state and history."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.server import checkpoint as ckpt


def test_a_checkpoint_round_trips(tmp_path):
    state = ckpt.Checkpoint(np.arange(5, dtype=np.float32), {"m": np.ones(5)},
                            {"completed_rounds": 2, "history": []})
    ckpt.save(tmp_path, state)
    loaded = ckpt.load(tmp_path)
    np.testing.assert_array_equal(loaded.params, state.params)
    np.testing.assert_array_equal(loaded.optimiser_state["m"], np.ones(5))
    assert loaded.meta["completed_rounds"] == 2


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save(tmp_path, ckpt.Checkpoint(np.zeros(3, dtype=np.float32), {}, {"completed_rounds": 1}))
    before = (tmp_path / ckpt.CHECKPOINT).read_bytes()

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.save(tmp_path, ckpt.Checkpoint(np.ones(3, dtype=np.float32), {}, {"completed_rounds": 2}))
    assert (tmp_path / ckpt.CHECKPOINT).read_bytes() == before


def test_an_unreadable_checkpoint_is_reported_not_silently_replaced(tmp_path):
    (tmp_path / ckpt.CHECKPOINT).write_bytes(b"not a zip")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load(tmp_path)
