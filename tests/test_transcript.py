"""The coordinator's transcript: the documented record format, restarts, torn lines, refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from helpers_inprocess import fast_job, started_federation, write_federation

from fedtune import audit
from fedtune.federation import load_federation
from fedtune.identity import load_identity, write_identity
from fedtune.server.coordinator import Coordinator
from fedtune.server.transcript import TranscriptError


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]


def _config(root):
    return load_federation(root / "federation.toml")


def test_each_record_is_chained_and_signed_exactly_as_the_format_documents(tmp_path):
    files = write_federation(tmp_path)
    Coordinator(files.config())
    Coordinator(files.config())  # a restart appends to the same chain
    run_dir = tmp_path / "run"
    raw_lines = (run_dir / "transcript.jsonl").read_bytes().split(b"\n")[:-1]
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(_records(run_dir)[0]["public_key"]))
    prev = "0" * 64
    for seq, raw in enumerate(raw_lines):
        record = json.loads(raw)
        # an auditor's own implementation of fedtune.audit's docstring, not the library's
        assert raw == json.dumps(record, sort_keys=True, separators=(",", ":"),
                                 ensure_ascii=True).encode()
        body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=True).encode()).digest()
        assert (record["seq"], record["prev"], record["hash"]) == (seq, prev, digest.hex())
        domain = b"fedtune/v1/transcript-record"
        signed = len(domain).to_bytes(2, "big") + domain + (32).to_bytes(4, "big") + digest
        key.verify(bytes.fromhex(record["signature"]), signed)  # raises if invalid
        prev = record["hash"]
    assert [r["event"] for r in _records(run_dir)] == ["job_accepted", "restart"]


def test_the_first_record_holds_the_job_its_digest_and_the_enrolled_keys(tmp_path):
    files = write_federation(tmp_path, n_sites=3)
    coordinator = Coordinator(files.config())
    first = _records(tmp_path / "run")[0]
    assert first["job_digest"] == coordinator.job_digest.hex()
    assert hashlib.sha256(bytes.fromhex(first["job_proto"])).hexdigest() == first["job_digest"]
    assert sorted(first["sites"]) == ["site-1", "site-2", "site-3"]
    assert first["secure_aggregation"]["enabled"] is False
    # plain mode without coordinator.identity: a run key, kept for every restart
    assert first["key_source"] == "run-key"
    assert (tmp_path / "run" / "transcript.key").exists()
    assert audit.verify(tmp_path / "run").ok


def test_a_coordinator_restart_continues_the_chain_and_it_still_verifies(tmp_path):
    with started_federation(tmp_path, completed_rounds=2):
        pass
    run_dir = tmp_path / "run"
    before = _records(run_dir)
    restarted = Coordinator(_config(tmp_path))
    after = _records(run_dir)
    assert after[:len(before)] == before
    restart = after[len(before)]
    assert restart["event"] == "restart" and restart["prev"] == before[-1]["hash"]
    assert restart["completed_rounds"] == restarted.completed_rounds == 2
    assert restart["next_round_id"] == restarted.next_round_id
    report = audit.verify(run_dir)
    assert report.ok, [d.describe() for d in report.discrepancies]
    assert report.restarts == 1 and report.rounds_released == 2


def test_a_torn_last_line_is_set_aside_and_recorded_by_the_restart(tmp_path):
    files = write_federation(tmp_path)
    Coordinator(files.config())
    path = tmp_path / "run" / "transcript.jsonl"
    size = path.stat().st_size
    torn = b'{"event":"round_started","hash":"4f'  # a crash in the middle of a write
    with open(path, "ab") as handle:
        handle.write(torn)
    report = audit.verify(tmp_path / "run")
    assert report.ok and any("incomplete" in w for w in report.warnings)

    Coordinator(files.config())
    restart = _records(tmp_path / "run")[-1]
    assert restart["event"] == "restart"
    assert restart["torn_tail"] == {"offset": size, "length": len(torn),
                                    "sha256": hashlib.sha256(torn).hexdigest(),
                                    "saved_as": f"transcript.jsonl.torn-{size}"}
    assert (tmp_path / "run" / f"transcript.jsonl.torn-{size}").read_bytes() == torn
    report = audit.verify(tmp_path / "run")
    assert report.ok, [d.describe() for d in report.discrepancies]
    assert any("torn" in w for w in report.warnings)


def test_a_tampered_transcript_is_not_continued(tmp_path):
    files = write_federation(tmp_path)
    Coordinator(files.config())
    path = tmp_path / "run" / "transcript.jsonl"
    path.write_text(path.read_text().replace('"rounds":10', '"rounds":11'))
    with pytest.raises(TranscriptError, match=r"transcript.jsonl seq 0 .*hash"):
        Coordinator(files.config())


def test_a_coordinator_with_another_key_does_not_sign_on_an_existing_transcript(tmp_path):
    files = write_federation(tmp_path)
    Coordinator(files.config())
    write_identity(tmp_path / "run", "transcript", force=True)  # the run key was replaced
    with pytest.raises(TranscriptError, match="a run keeps one key"):
        Coordinator(files.config())


def test_a_release_recorded_but_lost_from_the_checkpoint_stays_charged(tmp_path):
    job = fast_job()
    job["training"]["weighting"] = "uniform"
    job["privacy"] = {"site_level": {"mode": "central", "clip_norm": 1.0,
                                     "noise_multiplier": 1.0, "delta": 1e-5}}
    with started_federation(tmp_path, job=job, completed_rounds=1) as fed:
        charged = fed.coordinator.coordinator.budget.site_epsilon()
    run_dir = tmp_path / "run"
    # a crash after the release record, before the checkpoint: the model update is lost
    (run_dir / "checkpoint.npz").unlink()
    (run_dir / "privacy.json").unlink()
    restarted = Coordinator(_config(tmp_path))
    assert restarted.completed_rounds == 0
    assert restarted.budget.site_releases == 1
    assert restarted.budget.site_epsilon() == pytest.approx(charged)
    restart = _records(run_dir)[-1]
    assert restart["recovered_charges"] == [1]
    report = audit.verify(run_dir)
    assert report.ok, [d.describe() for d in report.discrepancies]
    assert any("recovered" in w for w in report.warnings)


def test_the_coordinator_identity_signs_the_transcript_when_it_has_one(tmp_path):
    files = write_federation(tmp_path)
    text = files.path.read_text()
    key, pub = write_identity(tmp_path / "keys", "coordinator", force=True)
    files.path.write_text(text.replace('[coordinator]\n', f'[coordinator]\nidentity = "{key}"\n'))
    Coordinator(files.config())
    first = _records(tmp_path / "run")[0]
    assert first["key_source"] == "identity"
    assert first["public_key"] == pub.read_text().strip()
    pinned = audit.decode_key_argument(str(pub))
    assert audit.verify(tmp_path / "run", coordinator_key=pinned).ok
    other = load_identity(write_identity(tmp_path / "other", "x")[0])
    report = audit.verify(tmp_path / "run", coordinator_key=other.public_key().public_bytes_raw())
    assert {d.field for d in report.discrepancies} >= {"public_key", "signature"}
    shutil.rmtree(tmp_path / "other")


def test_the_server_command_refuses_a_tampered_transcript_with_a_clear_error(tmp_path, capsys):
    from fedtune.cli import main

    files = write_federation(tmp_path)
    Coordinator(files.config())
    path = tmp_path / "run" / "transcript.jsonl"
    path.write_text(path.read_text().replace('"rounds":10', '"rounds":11'))
    assert main(["server", "--federation", str(files.path), "--insecure", "--port", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"fedtune: error: {path} seq 0 (line 1): hash:")
