"""The committed gRPC stubs are exactly what the pinned generator makes from fedtune.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtune.proto import generate

pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) regenerates the stubs")


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path):
    fresh = generate.generate(tmp_path)
    stale = [p.name for p in fresh
             if p.read_bytes() != (generate.PROTO_DIR / p.name).read_bytes()]
    assert not stale, (f"stale generated files {stale}: run `python -m fedtune.proto.generate` "
                       "and commit the result")


def test_the_service_covers_every_phase_of_a_round():
    from fedtune.proto import fedtune_pb2 as pb

    methods = set(pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name)
    assert {"Hello", "Authenticate", "PollTask", "RespondOffer", "GetParameters",
            "AdvertiseKeys", "ShareKeys", "SubmitInput", "Unmask", "GetStatus"} <= methods
    tasks = {f.name for f in pb.Task.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert {"offer", "share_keys", "submit_input", "unmask", "round_result", "finished"} <= tasks
