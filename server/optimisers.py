"""Server optimisers: FedAvg, FedAdam and FedYogi.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2. The aggregated site
delta Δ_t = mean_k (x_k − x_t) is a pseudo-gradient (a descent direction, hence the sign):

* FedAvg:  x_{t+1} = x_t + η Δ_t                                     (η = 1: plain averaging)
* FedAdam: m_t = β1 m_{t−1} + (1−β1) Δ_t,  v_t = β2 v_{t−1} + (1−β2) Δ_t²
* FedYogi: m_t as above,  v_t = v_{t−1} − (1−β2) Δ_t² sign(v_{t−1} − Δ_t²)
  and for both: x_{t+1} = x_t + η m_t / (√v_t + τ).

State is a dict of numpy arrays so it goes into the checkpoint as is.
"""

from __future__ import annotations

import numpy as np

from fedtune.job import ServerOptimizerConfig


class ServerOptimizer:
    def __init__(self, config: ServerOptimizerConfig, size: int) -> None:
        self.config = config
        self.state: dict[str, np.ndarray] = {}
        if config.name in ("fedadam", "fedyogi"):
            self.state = {
                "m": np.zeros(size, dtype=np.float64),
                # Reddi et al. initialise v with τ² (Alg. 2, "v_{-1} ≥ τ²").
                "v": np.full(size, config.tau ** 2, dtype=np.float64),
            }

    def step(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Return the new global parameters (float32) for the mean delta ``delta``."""
        c = self.config
        d = delta.astype(np.float64)
        if c.name == "fedavg":
            return (params.astype(np.float64) + c.learning_rate * d).astype(np.float32)
        m, v = self.state["m"], self.state["v"]
        m *= c.beta1
        m += (1.0 - c.beta1) * d
        d2 = d * d
        if c.name == "fedadam":
            v *= c.beta2
            v += (1.0 - c.beta2) * d2
        else:  # fedyogi
            v -= (1.0 - c.beta2) * d2 * np.sign(v - d2)
        update = c.learning_rate * m / (np.sqrt(v) + c.tau)
        return (params.astype(np.float64) + update).astype(np.float32)

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for key, value in self.state.items():
            if key not in state or state[key].shape != value.shape:
                raise ValueError(f"checkpoint lacks optimiser state {key!r} of shape {value.shape}")
            self.state[key] = state[key].astype(np.float64).copy()
