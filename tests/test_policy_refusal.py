"""A site refuses a job its policy forbids; the reason reaches and is recorded by the coordinator."""

from __future__ import annotations

import threading

from fedtune import local_federation as lf
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.federation import load_federation
from fedtune.identity import load_identity
from fedtune.policy import load_policy
from fedtune.server import app


def test_a_refused_job_is_recorded_with_the_sites_reason(tmp_path, caplog):
    fed = lf.prepare(tmp_path, n_sites=3, rounds=1)
    job = lf.default_job({"id": "image-cnn", "num_classes": 10, "image_shape": [1, 8, 8]},
                         rounds=1, min_sites=2, secure=False)
    job["deadlines"] = {"gather": 0.5, "offer": 10.0, "input": 30.0}
    text = fed.federation.read_text()
    fed.federation.write_text(text[:text.index("[job]")] + lf.toml_dumps({"job": job}))
    strict = fed.sites[2]
    strict.policy.write_text(lf.toml_dumps({"policy": {"allowed_models": ["tabular-mlp"]}}))

    running = app.start(load_federation(fed.federation), port=0, insecure=True)
    agents = [SiteAgent(SiteAgentConfig(
        coordinator=f"127.0.0.1:{running.port}", site_id=s.site_id,
        identity=load_identity(s.key), data_path=s.data, policy=load_policy(s.policy),
        give_up_after_s=5)) for s in fed.sites]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    try:
        with caplog.at_level("INFO", logger="fedtune"):
            for t in threads:
                t.start()
            assert running.wait(timeout=120), "the run did not finish"
            status = running.coordinator.status()
            for t in threads:
                t.join(timeout=30)
    finally:
        running.stop()

    reason = "model 'image-cnn' is not allowed by the site policy (allowed: tabular-mlp)"
    assert agents[2].outcome.refusals and agents[2].outcome.refusals[0] == reason
    assert agents[2].outcome.rounds_contributed == 0
    assert [a.outcome.rounds_contributed for a in agents[:2]] == [1, 1]
    refused = [r for r in caplog.records if getattr(r, "event", "") == "offer_refused"]
    assert refused and refused[0].fields["site"] == strict.site_id
    assert refused[0].fields["reason"] == reason
    assert {s.site_id: s.last_refusal for s in status.sites}[strict.site_id] == reason
    assert not [r for r in caplog.records if getattr(r, "event", "") == "round_aborted"]


def test_a_refusal_for_bad_local_data_never_carries_the_data(tmp_path, caplog):
    fed = lf.prepare(tmp_path, dataset="breast-cancer", n_sites=2, rounds=1)
    job = lf.default_job({"id": "tabular-mlp", "input_dim": 30, "num_classes": 2},
                         rounds=1, min_sites=1, secure=False)
    job["deadlines"] = {"gather": 0.5, "offer": 10.0, "input": 30.0}
    text = fed.federation.read_text()
    fed.federation.write_text(text[:text.index("[job]")] + lf.toml_dumps({"job": job}))
    leaky = fed.sites[1]
    lines = leaky.data.read_text().splitlines()
    cells = lines[3].split(",")
    cells[0] = "Jane Doe HIV positive"
    lines[3] = ",".join(cells)
    leaky.data.write_text("\n".join(lines) + "\n")

    running = app.start(load_federation(fed.federation), port=0, insecure=True)
    agents = [SiteAgent(SiteAgentConfig(
        coordinator=f"127.0.0.1:{running.port}", site_id=s.site_id,
        identity=load_identity(s.key), data_path=s.data, policy=load_policy(s.policy),
        give_up_after_s=5)) for s in fed.sites]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    try:
        with caplog.at_level("INFO", logger="fedtune"):
            for t in threads:
                t.start()
            assert running.wait(timeout=120), "the run did not finish"
            status = running.coordinator.status()
    finally:
        running.stop()
    refused = {s.site_id: s.last_refusal for s in status.sites}[leaky.site_id]
    assert "does not fit" in refused and "Jane" not in refused
    coordinator_lines = [r.getMessage() + str(getattr(r, "fields", ""))
                         for r in caplog.records if r.name.startswith("fedtune.server")]
    assert not [line for line in coordinator_lines if "Jane" in line]
    # the detail stays in the site's own log
    assert any("Jane" in str(getattr(r, "fields", "")) for r in caplog.records
               if r.name == "fedtune.site")
