"""A 100 M-parameter vector goes through the real coordinator over gRPC, both ways.

No single gRPC message holds it: it is streamed in 1 MiB chunks under the 8 MiB message limit.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers_inprocess import (
    CALL_TIMEOUT_S,
    HandSite,
    channel_to,
    fast_job,
    good_metrics,
    input_stream,
    running,
    write_federation,
)

from fedtune.proto import fedtune_pb2 as pb
from fedtune.tensor_codec import TensorAssembler

pytestmark = pytest.mark.slow

# tabular-mlp: 1_562_500·64 + 64 + 64·64 + 64 + 64·2 + 2 = 100_004_354 parameters
HUGE_MODEL = {"id": "tabular-mlp", "input_dim": 1_562_500, "hidden": 64, "num_classes": 2}
N_PARAMS = 100_004_354


def test_a_100m_parameter_model_downloads_and_uploads_through_the_coordinator(tmp_path):
    files = write_federation(tmp_path, n_sites=1, job=fast_job(
        HUGE_MODEL, rounds=1, min_sites=1, gather=0.1, offer=60.0, input_s=120.0))
    with running(files.config()) as coordinator:
        channel = channel_to(f"127.0.0.1:{coordinator.port}")
        site = HandSite(channel, "site-1", files.identity("site-1"))
        site.authenticate()
        offer = site.next_task("offer", timeout=60)
        assert offer.parameters.nbytes == 4 * N_PARAMS
        site.answer(offer.ref)
        task = site.next_task("submit_input", timeout=60)

        assembler = None
        chunks = 0
        for chunk in site.stub.GetParameters(pb.ParametersRequest(ref=offer.ref),
                                             metadata=site.metadata, timeout=120):
            assert chunk.ByteSize() <= (1 << 20) + 256
            if assembler is None:
                assembler = TensorAssembler(chunk.spec, expected=offer.parameters)
            assembler.add(chunk.data, chunk.offset)
            chunks += 1
        params = assembler.finish()
        assert chunks == 382 and params.shape == (N_PARAMS,)
        np.testing.assert_array_equal(params[:1000], coordinator.coordinator.params[:1000])

        update = np.full(params.shape, 1e-3, dtype="<f4")
        metrics = good_metrics(weight=2.0)
        ack = site.stub.SubmitInput(iter(input_stream(task.ref, update, metrics)),
                                    metadata=site.metadata, timeout=120 + CALL_TIMEOUT_S)
        assert "received" in ack.message
        deadline = time.monotonic() + 120
        while not coordinator.coordinator.history and time.monotonic() < deadline:
            time.sleep(0.1)
        history = coordinator.coordinator.history
        assert history and history[0].contributors == 1
        # the site sent w·Δ = 1e-3 with w = 2; FedAvg (server lr 1) moves the model by Δ
        moved = coordinator.coordinator.params[-1000:] - params[-1000:]
        np.testing.assert_allclose(moved, 5e-4, rtol=1e-3)
        channel.close()
