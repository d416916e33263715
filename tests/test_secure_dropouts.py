"""Secure rounds survive a site dropping at any phase; below t a round aborts and releases
nothing. Real coordinator and site-agent processes over loopback gRPC; each dropping site
vanishes mid-phase (``fedtune site --drop-at PHASE:ROUND``) and its process exits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers_processes import read_events, wait_for_event

from fedtune import local_federation as lf
from fedtune.server import checkpoint as ckpt

pytestmark = pytest.mark.slow

DIGITS = {"id": "image-cnn", "num_classes": 10, "image_shape": [1, 8, 8]}


def test_a_site_dropping_at_each_phase_and_a_round_below_threshold(fed_factory, processes):
    job = lf.default_job(DIGITS, rounds=10, min_sites=2, secure=True)
    job["training"]["local_epochs"] = 1
    # gather: on a loaded two-core machine five site processes take seconds to start; round 1
    # must wait for all five (it was 1 s, and round 1 once started with two sites)
    job["deadlines"] = {"gather": 6.0, "offer": 4.0, "keys": 4.0, "input": 20.0, "unmask": 4.0}
    fed = fed_factory(n_sites=5, job=job)
    log = fed.run_dir / "coordinator.log"
    drops = {"site-5": "unmask:1", "site-4": "input:2", "site-3": "share:3",
             "site-2": "advertise:4"}
    server = processes.add(lf.start_server(fed))
    lf.wait_for_port(fed.port)
    sites = {s.site_id: processes.add(lf.start_site(
        fed, s, extra=["--drop-at", drops[s.site_id]] if s.site_id in drops else []))
        for s in fed.sites}

    def completed(round_id: int) -> dict:
        return wait_for_event(log, lambda e: e["event"] in ("round_completed", "round_aborted")
                              and e["round"] == round_id, 120, [server])

    # round 1: site-5 confirms the survivors, then vanishes before revealing its shares;
    # its input is in the sum, and the other four reveal enough shares to remove its mask
    r1 = completed(1)
    assert r1["event"] == "round_completed" and r1["contributors"] == 5
    # round 2: site-4 shared its keys but never delivers its input: a dropout, whose
    # pairwise masks the others' shares of its mask key remove
    r2 = completed(2)
    assert r2["event"] == "round_completed" and r2["contributors"] == 3
    assert r2["dropouts"] == ["site-4"]
    # round 3: site-3 advertised keys but never shares them: the others leave it out
    r3 = completed(3)
    assert r3["event"] == "round_completed" and r3["contributors"] == 2
    before = ckpt.load(fed.run_dir)
    assert before is not None and before.meta["completed_rounds"] == 3
    # round 4: site-2 accepts and vanishes before advertising; one site is below the
    # minimum, so the round aborts and releases nothing
    r4 = completed(4)
    assert r4["event"] == "round_aborted"
    assert "1 sites advertised keys" in r4["reason"]
    after = ckpt.load(fed.run_dir)
    np.testing.assert_array_equal(after.params, before.params)
    assert after.meta["completed_rounds"] == 3
    started_4 = next(e for e in read_events(log) if e["event"] == "round_started"
                     and e["round"] == 4)
    assert started_4["params_sha256"] == hashlib.sha256(before.params.tobytes()).hexdigest()

    for site_id in drops:
        assert sites[site_id].wait(timeout=30) == 3, f"{site_id} should exit as dropped"
    refused = [e for e in read_events(log) if e["event"] == "request_refused"]
    assert not refused, refused
