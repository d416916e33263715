"""FedAvg, FedAdam and FedYogi follow Reddi et al. 2021, Algorithm 2."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.job import ServerOptimizerConfig
from fedtune.server.optimisers import ServerOptimizer


def test_fedavg_with_learning_rate_one_adds_the_mean_delta():
    opt = ServerOptimizer(ServerOptimizerConfig("fedavg", learning_rate=1.0), 3)
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_allclose(opt.step(x, np.array([0.5, -1.0, 0.0])), [1.5, 1.0, 3.0])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimisers_match_the_paper_over_several_steps(name):
    c = ServerOptimizerConfig(name, learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    opt = ServerOptimizer(c, 4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=4).astype(np.float32)
    m, v, ref = np.zeros(4), np.full(4, c.tau ** 2), x.astype(np.float64)
    for _ in range(5):
        d = rng.normal(size=4)
        m = c.beta1 * m + (1 - c.beta1) * d
        if name == "fedadam":
            v = c.beta2 * v + (1 - c.beta2) * d * d
        else:
            v = v - (1 - c.beta2) * d * d * np.sign(v - d * d)
        ref = ref + c.learning_rate * m / (np.sqrt(v) + c.tau)
        x = opt.step(x, d)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)


def test_optimiser_state_survives_a_checkpoint_round_trip():
    c = ServerOptimizerConfig("fedadam")
    a, b = ServerOptimizer(c, 3), ServerOptimizer(c, 3)
    x = np.zeros(3, dtype=np.float32)
    x = a.step(x, np.ones(3))
    b.load_state({k: v.copy() for k, v in a.state.items()})
    np.testing.assert_array_equal(a.step(x, np.ones(3)), b.step(x, np.ones(3)))


def test_loading_state_of_the_wrong_shape_is_refused():
    opt = ServerOptimizer(ServerOptimizerConfig("fedyogi"), 3)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state({"m": np.zeros(4), "v": np.zeros(4)})
