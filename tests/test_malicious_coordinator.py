"""A coordinator that lies: honest sites refuse, and what it holds reveals no single input.

Real coordinator (with an adversarial behaviour) and real site agents over loopback gRPC,
in this process so that the test can inspect everything the coordinator received.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fedtune import local_federation as lf
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.federation import load_federation
from fedtune.identity import load_identity
from fedtune.peers import load_peers
from fedtune.policy import load_policy
from fedtune.privacy.quantization import RoundingCoins, dequantize
from fedtune.scenarios.adversaries import (
    BothLists,
    InconsistentLists,
    RecordingBehaviour,
    ReplayAdvertisements,
    SubstituteKey,
    reconstruction_attempt,
)
from fedtune.server import app
from fedtune.server import checkpoint as ckpt

DIGITS = {"id": "image-cnn", "num_classes": 10, "image_shape": [1, 8, 8]}


def _federation(root: Path, n_sites: int, rounds: int) -> lf.LocalFederation:
    job = lf.default_job(DIGITS, rounds=rounds, min_sites=2, secure=True)
    job["training"]["local_epochs"] = 1
    job["deadlines"] = {"gather": 1.0, "offer": 10.0, "keys": 5.0, "input": 30.0, "unmask": 3.0}
    return lf.prepare(root, n_sites=n_sites, rounds=rounds, job=job)


def _run(fed: lf.LocalFederation, behaviour, timeout: float = 120):
    running = app.start(load_federation(fed.federation), port=0, insecure=True,
                        behaviour=behaviour)
    agents = [SiteAgent(SiteAgentConfig(
        coordinator=f"127.0.0.1:{running.port}", site_id=s.site_id,
        identity=load_identity(s.key), data_path=s.data, policy=load_policy(s.policy),
        peers=load_peers(fed.peers), give_up_after_s=5, poll_wait_ms=500)) for s in fed.sites]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    try:
        for t in threads:
            t.start()
        assert running.wait(timeout=timeout), "the run did not finish"
        for t in threads:
            t.join(timeout=30)
        return running.coordinator, {a.config.site_id: a for a in agents}
    finally:
        running.stop(grace=0.2)


def _refusals(agents) -> dict[str, list[str]]:
    return {s: a.outcome.refusals for s, a in agents.items() if a.outcome.refusals}


def test_a_site_listed_as_survivor_and_dropout_makes_every_site_refuse(tmp_path):
    fed = _federation(tmp_path, n_sites=3, rounds=1)
    adversary = BothLists(victim="site-2", rounds=(1,))
    coordinator, agents = _run(fed, adversary)

    assert coordinator.history[0].aborted
    refusals = _refusals(agents)
    assert set(refusals) == {"site-1", "site-2", "site-3"}
    assert all("as survivor and as dropout" in r[0] for r in refusals.values())
    attempt = reconstruction_attempt(adversary, "site-2", round_id=1)
    assert attempt.self_mask_shares == 0 and attempt.mask_key_shares == 0
    assert not attempt.input_recoverable
    # the next, honest round trains as usual
    assert [h.aborted for h in coordinator.history] == [True, False, False]


def test_a_substituted_key_is_refused_before_any_share_is_sent(tmp_path):
    fed = _federation(tmp_path, n_sites=3, rounds=1)
    adversary = SubstituteKey(victim="site-1", rounds=(1,))
    coordinator, agents = _run(fed, adversary)

    assert coordinator.history[0].aborted
    refusals = _refusals(agents)
    assert set(refusals) == {"site-1", "site-2", "site-3"}
    assert all("signature does not verify" in r[0] or "own keys" in r[0]
               for r in refusals.values())
    # nobody shared keys in round 1, so nobody's secrets can be reconstructed
    assert not [r for r in adversary.received if r.kind == "shares"
                and r.payload.ref.round == 1]


def test_inconsistent_survivor_lists_are_caught_by_the_consistency_check(tmp_path):
    fed = _federation(tmp_path, n_sites=5, rounds=1)
    # site-4 and site-5 are told site-1 dropped: two confirmations, below t = 3
    adversary = InconsistentLists(victim="site-1", fooled=("site-4", "site-5"), rounds=(1,))
    coordinator, agents = _run(fed, adversary)

    refusals = _refusals(agents)
    assert set(refusals) == {"site-4", "site-5"}
    assert all("confirmed the same list" in r[0] for r in refusals.values())
    attempt = reconstruction_attempt(adversary, "site-1", round_id=1)
    assert attempt.mask_key_shares == 0 and not attempt.mask_key_recovered
    assert not attempt.input_recoverable
    # the honest majority still completed the round with the true survivors
    assert not coordinator.history[0].aborted
    assert coordinator.history[0].contributors == 5


def test_a_replayed_key_list_from_the_previous_round_is_refused(tmp_path):
    fed = _federation(tmp_path, n_sites=3, rounds=2)
    adversary = ReplayAdvertisements(rounds=(2,))
    coordinator, agents = _run(fed, adversary)

    by_round = {h.round: h for h in coordinator.history}
    assert not by_round[1].aborted and by_round[2].aborted
    refusals = _refusals(agents)
    assert set(refusals) == {"site-1", "site-2", "site-3"}
    assert all("round 1, not this round" in r[0] for r in refusals.values())
    assert not [r for r in adversary.received if r.kind == "shares"
                and r.payload.ref.round == 2]
    assert sum(not h.aborted and not h.evaluate_only for h in coordinator.history) == 2


def test_no_buffer_the_coordinator_receives_or_stores_is_a_single_sites_update(
        tmp_path, monkeypatch):
    from fedtune.client import secure_phases

    sent: list[np.ndarray] = []
    rounding: list[object] = []
    original = secure_phases.encode

    def recording_encode(*args, **kwargs):
        rounding.append(args[3])  # the source of the rounding randomness
        quantised = original(*args, **kwargs)
        sent.append(quantised.astype(np.uint64))  # a copy: the site masks it in place
        return quantised

    monkeypatch.setattr(secure_phases, "encode", recording_encode)
    fed = _federation(tmp_path, n_sites=3, rounds=2)
    recorder = RecordingBehaviour()
    coordinator, _ = _run(fed, recorder)

    assert sum(not h.aborted for h in coordinator.history) == 3
    received = [r.payload.astype(np.uint64) for r in recorder.masked_inputs()]  # uint32 words
    assert len(received) == len(sent) == 9  # 3 sites × (2 training + 1 evaluation rounds)
    # every input was rounded with fresh AES-CTR coins (a CSPRNG), never a statistical generator
    assert all(isinstance(r, RoundingCoins) for r in rounding)
    assert len({id(r) for r in rounding}) == len(rounding)
    scale = 1.0  # any fixed reading of the ring: a masked vector is far from every input
    for y in received:
        for x in sent:
            if x.shape != y.shape:
                continue
            assert not np.array_equal(x, y)
            gap = np.abs(dequantize(y, scale, 32) - dequantize(x, scale, 32))
            # within quantisation of an input would mean |gap| of a few units everywhere
            assert np.median(gap) > 2 ** 20
    # and the only model state the coordinator stores is the aggregate
    state = ckpt.load(fed.run_dir)
    assert set(state.optimiser_state) == set()
    for y in received:
        assert y.shape[0] != state.params.shape[0] or not np.array_equal(y, state.params)


@pytest.mark.parametrize("victim", ["site-2"])
def test_an_honest_round_reveals_no_mask_key_of_a_survivor(tmp_path, victim):
    fed = _federation(tmp_path, n_sites=3, rounds=1)
    recorder = RecordingBehaviour()
    _run(fed, recorder)
    attempt = reconstruction_attempt(recorder, victim, round_id=1)
    assert attempt.self_mask_shares >= attempt.threshold  # its input is in the sum...
    assert attempt.mask_key_shares == 0  # ...but its pairwise masks stay secret
    assert not attempt.input_recoverable
