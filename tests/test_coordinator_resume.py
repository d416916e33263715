"""A restarted coordinator resumes exactly: model, server-optimiser state, history, budget."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_inprocess import fast_job, write_federation

from fedtune.server import checkpoint as ckpt
from fedtune.server.coordinator import Coordinator


@pytest.mark.parametrize("optimiser", ["fedadam", "fedyogi"])
def test_a_restarted_coordinator_has_the_checkpointed_optimiser_state(tmp_path, optimiser):
    job = fast_job()
    job["server_optimizer"] = {"name": optimiser, "learning_rate": 0.1}
    files = write_federation(tmp_path, n_sites=2, job=job)
    first = Coordinator(files.config())
    rng = np.random.default_rng(0)
    for _ in range(3):  # three aggregated rounds' worth of optimiser steps
        first._set_params(first.optimiser.step(first.params, rng.normal(size=first.params.size)))
    first.completed_rounds = 3
    first._checkpoint(first.history)

    second = Coordinator(files.config())
    assert second.completed_rounds == 3
    np.testing.assert_array_equal(second.params, first.params)
    assert set(second.optimiser.state) == {"m", "v"}
    for key in ("m", "v"):
        np.testing.assert_array_equal(second.optimiser.state[key], first.optimiser.state[key])
    delta = rng.normal(size=first.params.size)
    np.testing.assert_array_equal(second.optimiser.step(second.params, delta),
                                  first.optimiser.step(first.params, delta))


def test_a_corrupt_run_record_is_reported_with_its_file(tmp_path):
    files = write_federation(tmp_path, n_sites=2)
    Coordinator(files.config())
    run_file = tmp_path / "run" / "run.json"
    run_file.write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="run.json"):
        Coordinator(files.config())
