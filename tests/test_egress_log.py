"""The site's egress log: signed, chained JSON lines a site administrator can read."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtune import audit
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.client.egress_log import EgressLog
from fedtune.client.ledger import Ledger
from fedtune.policy import PolicyConfig
from fedtune.privacy.accountants import Release, epsilon
from fedtune.proto import fedtune_pb2 as pb

RELEASE = Release("gaussian", 1.0, 0.25, 4)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check(path, key: Ed25519PrivateKey):
    lines, tail = audit.read_lines(path)
    assert not tail
    return audit.check_chain(lines, audit.EGRESS_DOMAIN, source=path.name,
                             pinned_key=key.public_key().public_bytes_raw())


def test_a_sent_message_is_logged_with_its_digest_and_signed_by_the_site(tmp_path):
    key = Ed25519PrivateKey.generate()
    log = EgressLog(tmp_path, "hospital-a", key, coordinator_key=b"\x01" * 32)
    response = pb.OfferResponse(ref=pb.RoundRef(run_id="run-1", round=3), accept=True)
    seq = log.sent("RespondOffer", "run-1", 3, response, job_digest="ab" * 32, accept=True)
    log.failed(seq, "RespondOffer", "run-1", 3, "FAILED_PRECONDITION")
    log.close()

    opened, sent, failed = _lines(tmp_path / "egress.jsonl")
    assert opened["event"] == "log_opened" and opened["site"] == "hospital-a"
    assert opened["coordinator_key"] == base64.b64encode(b"\x01" * 32).decode()
    data = response.SerializeToString(deterministic=True)
    assert sent["event"] == "sent"
    assert (sent["type"], sent["run"], sent["round"]) == ("RespondOffer", "run-1", 3)
    assert sent["sha256"] == hashlib.sha256(data).hexdigest() and sent["size"] == len(data)
    assert sent["job_digest"] == "ab" * 32 and sent["accept"] is True
    assert failed["of_seq"] == sent["seq"] and failed["code"] == "FAILED_PRECONDITION"
    assert _check(tmp_path / "egress.jsonl", key) == []


def test_reopening_continues_the_chain_and_records_the_start(tmp_path):
    key = Ed25519PrivateKey.generate()
    EgressLog(tmp_path, "s", key, None).close()
    log = EgressLog(tmp_path, "s", key, None)
    log.sent("PollTask", "run-1", 0, pb.PollRequest(wait_ms=500))
    log.close()
    records = _lines(tmp_path / "egress.jsonl")
    assert [r["event"] for r in records] == ["log_opened", "log_opened", "sent"]
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert "ledger_baseline" in records[0] and "ledger_baseline" not in records[1]
    assert _check(tmp_path / "egress.jsonl", key) == []


def test_ledger_changes_state_the_datasets_epsilon_from_a_baseline(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.reserve("data-1", "old-run", 1, "old-job", RELEASE)  # before the egress log existed
    ledger.commit("old-run", 1)
    key = Ed25519PrivateKey.generate()
    log = EgressLog(tmp_path, "s", key, None)
    ledger.reserve("data-1", "run-2", 1, "job", RELEASE)
    (charge,) = ledger.commit("run-2", 1)
    spent = ledger.spent("data-1", 1e-5)
    log.ledger("commit", "released", charge, 1e-5, spent)
    log.close()
    opened, change = _lines(tmp_path / "egress.jsonl")
    assert [e["round"] for e in opened["ledger_baseline"]["data-1"]] == [1]
    assert change["action"] == "commit" and change["dataset"] == "data-1"
    assert change["release"]["noise_multiplier"] == 1.0 and change["release"]["steps"] == 4
    assert change["dataset_epsilon"] == epsilon([RELEASE, RELEASE], 1e-5)


def test_a_cancelled_or_committed_charge_is_returned_for_the_log(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.reserve("d", "run", 1, "job", RELEASE)
    ledger.reserve("d", "run", 2, "job", RELEASE)
    assert [c.round for c in ledger.cancel("run", 1)] == [1]
    assert [c.round for c in ledger.commit("run", 2)] == [2]
    assert ledger.commit("run", 2) == [] and ledger.cancel("run", 2) == []


def test_a_site_whose_egress_log_does_not_verify_refuses_to_run(tmp_path):
    key = Ed25519PrivateKey.generate()
    EgressLog(tmp_path, "s", key, None).close()
    path = tmp_path / "egress.jsonl"
    path.write_text(path.read_text().replace('"site":"s"', '"site":"t"'))
    agent = SiteAgent(SiteAgentConfig(coordinator="127.0.0.1:1", site_id="s", identity=key,
                                      data_path=tmp_path / "none.csv", policy=PolicyConfig(("tabular-mlp",)),
                                      state_dir=tmp_path))
    outcome = agent.run()  # returns before connecting: nothing is ever sent unlogged
    assert outcome.failed and "egress log" in outcome.failure and "seq 0" in outcome.failure
