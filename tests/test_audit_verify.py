"""``fedtune audit verify``: clean runs verify; every kind of tampering is found and located.

Two real runs over loopback gRPC (coordinator and site agents in this process, breast-cancer
data, a small MLP), shared by the tests of this module; each test tampers with its own copy:

* secure aggregation with distributed (Skellam) site-level DP and DP-SGD at the sites;
* plain mode with central site-level DP and DP-SGD, whose coordinator is stopped after the
  first released round and restarted on the same run directory.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from fedtune import audit
from fedtune import local_federation as lf
from fedtune.cli import main
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.federation import load_federation
from fedtune.identity import load_identity
from fedtune.job import job_digest, job_from_proto
from fedtune.peers import load_peers
from fedtune.policy import load_policy
from fedtune.privacy.accountants import epsilon
from fedtune.privacy_plan import record_level_release
from fedtune.proto import fedtune_pb2 as pb
from fedtune.scenarios.adversaries import InconsistentLists
from fedtune.server import app

MODEL = {"id": "tabular-mlp", "input_dim": 30, "num_classes": 2, "hidden": 8}
RECORD = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.25,
          "delta": 1e-5}


def _job(*, secure: bool, site_level: dict, rounds: int) -> dict:
    job = lf.default_job(MODEL, rounds=rounds, min_sites=2, secure=secure)
    job["training"].update({"local_epochs": 1, "weighting": "uniform"})
    job["deadlines"] = {"gather": 0.5, "offer": 10.0, "keys": 5.0, "input": 30.0, "unmask": 5.0}
    job["privacy"] = {"record_level": RECORD, "site_level": site_level}
    return job


def _start_sites(fed: lf.LocalFederation) -> list[threading.Thread]:
    """Site agents as threads of this process, each with a state directory (egress log)."""
    agents = [SiteAgent(SiteAgentConfig(
        coordinator=fed.address, site_id=s.site_id, identity=load_identity(s.key),
        data_path=s.data, policy=load_policy(s.policy), peers=load_peers(fed.peers),
        give_up_after_s=30, poll_wait_ms=500, backoff_initial_s=0.1, backoff_max_s=0.5,
        state_dir=fed.state_dir(s))) for s in fed.sites]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    return threads


def _finish(running: app.RunningCoordinator, threads: list[threading.Thread]) -> None:
    try:
        assert running.wait(timeout=120), "the run did not finish"
        for t in threads:
            t.join(timeout=30)
    finally:
        running.stop(grace=0.2)
    assert not running.coordinator.failure


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory) -> lf.LocalFederation:
    site = {"mode": "distributed", "clip_norm": 0.5, "target_epsilon": 20.0, "delta": 1e-5}
    fed = lf.prepare(tmp_path_factory.mktemp("secure"), dataset="breast-cancer", n_sites=3,
                     job=_job(secure=True, site_level=site, rounds=2))
    running = app.start(load_federation(fed.federation), port=fed.port, insecure=True)
    _finish(running, _start_sites(fed))
    return fed


@pytest.fixture(scope="module")
def restarted_run(tmp_path_factory) -> lf.LocalFederation:
    site = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 1.0, "delta": 1e-5}
    fed = lf.prepare(tmp_path_factory.mktemp("plain"), dataset="breast-cancer", n_sites=3,
                     job=_job(secure=False, site_level=site, rounds=3))
    first = app.start(load_federation(fed.federation), port=fed.port, insecure=True)
    threads = _start_sites(fed)
    deadline = time.monotonic() + 60
    while first.coordinator.completed_rounds < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.stop(grace=0.2)  # the sites lose the coordinator and keep reconnecting
    assert first.coordinator.completed_rounds >= 1
    second = app.start(load_federation(fed.federation), port=fed.port, insecure=True)
    _finish(second, threads)
    return fed


@dataclass
class Copy:
    """A run's files, copied for one test to tamper with."""

    root: Path
    fed: lf.LocalFederation

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def transcript(self) -> Path:
        return self.run_dir / "transcript.jsonl"

    def log(self, site: str) -> Path:
        return self.root / "state" / site / "egress.jsonl"

    @property
    def logs(self) -> list[Path]:
        return [self.log(s.site_id) for s in self.fed.sites]

    def key(self, name: str):
        return load_identity(self.root / "keys" / f"{name}.key")


def _copy(fed: lf.LocalFederation, tmp_path: Path) -> Copy:
    shutil.copytree(fed.root, tmp_path / "fed", ignore=shutil.ignore_patterns("*.lock"))
    return Copy(tmp_path / "fed", fed)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(audit.canonical(r) + b"\n" for r in records))


def _reseal(records: list[dict], key, domain: bytes) -> list[dict]:
    """What someone holding ``key`` can do: rewrite the whole chain so that it verifies."""
    out, prev = [], audit.GENESIS
    for seq, record in enumerate(records):
        body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
        sealed = audit.seal({**body, "seq": seq, "prev": prev}, key, domain)
        out.append(sealed)
        prev = sealed["hash"]
    return out


def _seq_of(records: list[dict], event: str, **fields) -> int:
    return next(r["seq"] for r in records if r["event"] == event
                and all(r.get(k) == v for k, v in fields.items()))


def _located(report: audit.AuditReport) -> set[tuple[str, int | None, str]]:
    return {(d.source, d.seq, d.field) for d in report.discrepancies}


def _cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(["audit", "verify", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------- clean runs


def test_a_clean_secure_run_with_dp_verifies_with_every_site_log_cross_checked(secure_run):
    pinned = audit.decode_key_argument(str(secure_run.root / "keys" / "coordinator.pub"))
    report = audit.verify(secure_run.run_dir, secure_run.egress_logs(), coordinator_key=pinned)
    assert report.ok, [d.describe() for d in report.discrepancies]
    assert report.key_source.startswith("pinned")
    assert report.rounds_released == 3 and report.restarts == 0  # 2 training + evaluation
    assert [s.site for s in report.sites] == ["site-1", "site-2", "site-3"]
    assert all(s.messages_checked == 6 * 3 for s in report.sites)  # 6 messages × 3 rounds
    assert report.not_cross_checked == []
    privacy = json.loads((secure_run.run_dir / "privacy.json").read_text())
    site, record = report.epsilon["site_level"], report.epsilon["record_level"]
    assert (site.mechanism, site.releases) == ("skellam", 2)
    assert site.epsilon == pytest.approx(privacy["site_level"]["epsilon"], rel=1e-9)
    assert 0 < site.epsilon <= 20.0
    assert record.epsilon == pytest.approx(privacy["record_level"]["epsilon_per_site_at_most"])
    for s in report.sites:  # each site's ledger ε, recomputed from its own log
        assert list(s.ledger_epsilon.values()) == [pytest.approx(record.epsilon)]


def test_a_restarted_coordinator_continues_the_chain_and_the_run_still_verifies(restarted_run):
    records = _read(restarted_run.transcript)
    assert [r["seq"] for r in records] == list(range(len(records)))
    restart = records[_seq_of(records, "restart")]
    assert restart["completed_rounds"] >= 1
    assert restart["public_key"] == records[0]["public_key"]
    report = audit.verify(restarted_run.run_dir, restarted_run.egress_logs())
    assert report.ok, [d.describe() for d in report.discrepancies]
    assert report.restarts == 1
    assert report.epsilon["site_level"].releases == 3  # one charge per released round
    assert report.epsilon["record_level"].releases == 3


def test_the_cli_prints_a_short_verdict_and_exits_zero_on_a_clean_run(secure_run, capsys):
    code = main(["audit", "verify", str(secure_run.run_dir), *map(str, secure_run.egress_logs()),
                 "--coordinator-key", str(secure_run.root / "keys" / "coordinator.pub")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("fedtune audit: OK")
    assert "ε recomputed, site level" in out and "ε recomputed, record level" in out
    assert "site site-2:" in out
    code, report = _cli(capsys, str(secure_run.run_dir))
    assert code == 0 and report["ok"] and report["not_cross_checked"] == [
        "site-1", "site-2", "site-3"]


def test_survivor_lists_shown_differently_to_sites_are_located(tmp_path):
    fed = lf.prepare(tmp_path, dataset="breast-cancer", n_sites=3,
                     job=_job(secure=True, site_level={"mode": "none"}, rounds=1))
    adversary = InconsistentLists(victim="site-3", fooled=("site-1",), rounds=(1,))
    running = app.start(load_federation(fed.federation), port=fed.port, insecure=True,
                        behaviour=adversary)
    _finish(running, _start_sites(fed))
    records = _read(fed.transcript)
    t = _seq_of(records, "survivors_announced", round=1)
    assert len(records[t]["signed_lists"]) == 2  # what each site was shown, as sent
    report = audit.verify(fed.run_dir, fed.egress_logs())
    assert ("transcript.jsonl", t, "signed_lists[0]") in _located(report)


@pytest.mark.slow
def test_a_coordinator_killed_mid_run_restarts_on_a_chain_that_still_verifies(tmp_path):
    """Real processes: SIGKILL can land anywhere, also in the middle of a record."""
    site = {"mode": "distributed", "clip_norm": 0.5, "target_epsilon": 30.0, "delta": 1e-5}
    fed = lf.prepare(tmp_path, dataset="breast-cancer", n_sites=3,
                     job=_job(secure=True, site_level=site, rounds=4))
    processes = [lf.start_server(fed)]
    try:
        lf.wait_for_port(fed.port)
        processes += [lf.start_site(fed, s) for s in fed.sites]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
                not fed.transcript.exists()
                or fed.transcript.read_text().count('"round_released"') < 2):
            time.sleep(0.02)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)
        processes.append(lf.start_server(fed, log_name="coordinator-2.out"))
        assert processes[-1].wait(timeout=240) == 0
    finally:
        for p in processes:  # a site that missed the end is stopped cleanly (SIGTERM)
            if p.poll() is None:
                p.terminate()
        for p in processes:
            p.wait(timeout=30)
    records = _read(fed.transcript)
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert sum(r["event"] == "restart" for r in records) == 1
    report = audit.verify(fed.run_dir, fed.egress_logs(),
                          coordinator_key=audit.decode_key_argument(
                              str(fed.root / "keys" / "coordinator.pub")))
    assert report.ok, [d.describe() for d in report.discrepancies]
    # 4 charged releases, also when the kill fell between a release record and its checkpoint
    # (that release stays charged: the budget then stops training one round early)
    assert report.epsilon["site_level"].releases == 4
    assert report.epsilon["site_level"].epsilon <= 30.0


# ---------------------------------------------------------------------------- tampering


def _flip_byte(copy: Copy, records: list[dict]) -> set:
    k = _seq_of(records, "round_released", evaluate_only=False)
    lines = copy.transcript.read_bytes().split(b"\n")
    at = lines[k].index(b'"aggregate_sha256":"') + len(b'"aggregate_sha256":"') + 5
    lines[k] = lines[k][:at] + bytes([lines[k][at] ^ 1]) + lines[k][at + 1:]
    copy.transcript.write_bytes(b"\n".join(lines))
    return {("transcript.jsonl", k, "hash")}


def _delete(copy: Copy, records: list[dict]) -> set:
    k = _seq_of(records, "survivors_announced")
    _write(copy.transcript, records[:k] + records[k + 1:])
    return {("transcript.jsonl", k + 1, "seq"), ("transcript.jsonl", k + 1, "prev")}


def _reorder(copy: Copy, records: list[dict]) -> set:
    k = _seq_of(records, "inputs_received")
    records[k], records[k + 1] = records[k + 1], records[k]
    _write(copy.transcript, records)
    return {("transcript.jsonl", k + 1, "seq"), ("transcript.jsonl", k, "seq")}


def _insert(copy: Copy, records: list[dict]) -> set:
    k = _seq_of(records, "round_released", evaluate_only=False)
    forged = audit.seal({"seq": k + 1, "prev": records[k]["hash"], "ts": records[k]["ts"],
                         "event": "round_aborted", "round": records[k]["round"],
                         "phase": "aggregate", "reason": "forged", "messages": []},
                        copy.key("site-1"), audit.TRANSCRIPT_DOMAIN)  # not the coordinator's key
    _write(copy.transcript, records[:k + 1] + [forged] + records[k + 1:])
    return {("transcript.jsonl", k + 1, "signature"), ("transcript.jsonl", k + 1, "seq")}


def _noise(records: list[dict]) -> int:
    k = _seq_of(records, "round_released", evaluate_only=False)
    records[k]["record_level"]["release"]["noise_multiplier"] = 2.0  # claims twice the noise
    return k


def _edit_noise(copy: Copy, records: list[dict]) -> set:
    k = _noise(records)
    _write(copy.transcript, records)
    return {("transcript.jsonl", k, "hash"),
            ("transcript.jsonl", k, "record_level.release.noise_multiplier"),
            ("transcript.jsonl", k, "accountant.record_level.epsilon")}


def _edit_noise_and_resign(copy: Copy, records: list[dict]) -> set:
    """The coordinator itself rewrites its transcript: every signature verifies."""
    k = _noise(records)
    _write(copy.transcript, _reseal(records, copy.key("coordinator"), audit.TRANSCRIPT_DOMAIN))
    return {("transcript.jsonl", k, "record_level.release.noise_multiplier"),
            ("transcript.jsonl", k, "accountant.record_level.epsilon")}


TAMPERING = {"flip one byte": _flip_byte, "delete a record": _delete,
             "reorder two records": _reorder, "insert a record": _insert,
             "edit a noise multiplier": _edit_noise,
             "edit a noise multiplier and re-sign": _edit_noise_and_resign}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_detected_and_located(secure_run, tmp_path, capsys, tamper):
    copy = _copy(secure_run, tmp_path)
    expected = tamper(copy, _read(copy.transcript))

    report = audit.verify(copy.run_dir)
    assert not report.ok
    assert expected <= _located(report), [d.describe() for d in report.discrepancies]

    code, printed = _cli(capsys, str(copy.run_dir))
    assert code == 1 and printed["ok"] is False
    assert expected <= {(d["source"], d["seq"], d["field"]) for d in printed["discrepancies"]}
    code = main(["audit", "verify", str(copy.run_dir)])
    text = capsys.readouterr().out
    assert code == 1 and text.startswith("fedtune audit: FAILED")
    source, seq, name = min(expected, key=str)
    assert f"DISCREPANCY {source} seq {seq}" in text and f"{name}:" in text


def test_a_signature_by_another_key_than_the_pinned_one_is_located(secure_run, tmp_path,
                                                                  capsys):
    copy = _copy(secure_run, tmp_path)
    records = _read(copy.transcript)  # a whole transcript forged by another key holder
    records[0]["public_key"] = audit.public_key_b64(copy.key("site-2"))
    _write(copy.transcript, _reseal(records, copy.key("site-2"), audit.TRANSCRIPT_DOMAIN))
    pub = copy.root / "keys" / "coordinator.pub"
    code, printed = _cli(capsys, str(copy.run_dir), "--coordinator-key", str(pub))
    assert code == 1
    assert {("transcript.jsonl", 0, "public_key"), ("transcript.jsonl", 0, "signature")} <= {
        (d["source"], d["seq"], d["field"]) for d in printed["discrepancies"]}
    # unpinned, the site logs still notice: their peers files hold the coordinator's key
    report = audit.verify(copy.run_dir, copy.logs)
    assert ("site-1/egress.jsonl", 0, "coordinator_key") in _located(report)


def test_records_cut_from_the_end_are_found_with_the_final_hash(secure_run, tmp_path):
    copy = _copy(secure_run, tmp_path)
    records = _read(copy.transcript)
    _write(copy.transcript, records[:-2])
    report = audit.verify(copy.run_dir, final_hash=records[-1]["hash"])
    assert ("transcript.jsonl", records[-3]["seq"], "hash") in _located(report)


def test_a_consistently_rewritten_job_is_caught_by_the_sites_logs(secure_run, tmp_path):
    """A coordinator claims, everywhere in its transcript, more DP-SGD noise than the job the
    sites accepted: the transcript alone is consistent, the sites' logs are not."""
    copy = _copy(secure_run, tmp_path)
    records = _read(copy.transcript)
    first = records[0]
    message = pb.Job.FromString(bytes.fromhex(first["job_proto"]))
    message.privacy.record_level.noise_multiplier = 3.0
    job, dimension = job_from_proto(message), first["dimension"]
    digest = job_digest(message).hex()
    first.update(job_proto=message.SerializeToString(deterministic=True).hex(), job_digest=digest,
                 job=MessageToDict(message, preserving_proto_field_name=True),
                 mechanisms=audit.mechanisms(job, dimension))
    release, charged = record_level_release(job), 0
    for record in records:
        if record["event"] == "round_released" and record["charged"]:
            charged += 1
            record["record_level"] = audit.round_release(job, dimension)["record_level"]
            record["accountant"]["record_level"]["epsilon"] = epsilon([release] * charged, 1e-5)
    _write(copy.transcript, _reseal(records, copy.key("coordinator"), audit.TRANSCRIPT_DOMAIN))
    (copy.run_dir / "privacy.json").unlink()  # the forger rewrites its other files too
    run = json.loads((copy.run_dir / "run.json").read_text())
    (copy.run_dir / "run.json").write_text(json.dumps({**run, "job_digest": digest}))

    assert audit.verify(copy.run_dir).ok  # a transcript cannot prove what sites were offered
    report = audit.verify(copy.run_dir, copy.logs)
    for site in ("site-1", "site-2", "site-3"):
        log = _read(copy.log(site))
        offers = [r["seq"] for r in log if r.get("type") == "RespondOffer"]
        assert {(f"{site}/egress.jsonl", seq, "job_digest") for seq in offers} <= _located(report)


# ---------------------------------------------------------------------------- site logs


def test_a_forged_site_log_entry_is_located_in_both_logs(secure_run, tmp_path):
    copy = _copy(secure_run, tmp_path)
    log = _read(copy.log("site-2"))
    k = _seq_of(log, "sent", type="SubmitInput", round=1)
    log[k]["sha256"] = "00" * 32  # the site claims it sent another input
    _write(copy.log("site-2"), _reseal(log, copy.key("site-2"), audit.EGRESS_DOMAIN))
    transcript = _read(copy.transcript)
    t = _seq_of(transcript, "inputs_received", round=1)

    report = audit.verify(copy.run_dir, copy.logs)
    assert ("transcript.jsonl", t, "messages[site-2].SubmitInput.sha256") in _located(report)
    assert ("site-2/egress.jsonl", k, "sha256") in _located(report)


def test_a_message_missing_from_a_site_log_is_located_in_the_transcript(secure_run, tmp_path):
    copy = _copy(secure_run, tmp_path)
    log = _read(copy.log("site-3"))
    k = _seq_of(log, "sent", type="ConfirmSurvivors", round=1)
    _write(copy.log("site-3"), _reseal(log[:k] + log[k + 1:], copy.key("site-3"),
                                       audit.EGRESS_DOMAIN))
    t = _seq_of(_read(copy.transcript), "survivors_confirmed", round=1)
    report = audit.verify(copy.run_dir, copy.logs)
    assert _located(report) == {("transcript.jsonl", t, "messages[site-3].ConfirmSurvivors.sha256")}


def test_an_entry_cut_from_a_site_log_breaks_its_chain(secure_run, tmp_path):
    copy = _copy(secure_run, tmp_path)
    log = _read(copy.log("site-1"))
    k = _seq_of(log, "sent", type="Unmask", round=2)
    _write(copy.log("site-1"), log[:k] + log[k + 1:])
    report = audit.verify(copy.run_dir, copy.logs)
    assert {("site-1/egress.jsonl", k + 1, "seq"),
            ("site-1/egress.jsonl", k + 1, "prev")} <= _located(report)


def test_a_site_message_the_coordinator_forged_is_located(secure_run, tmp_path):
    copy = _copy(secure_run, tmp_path)
    records = _read(copy.transcript)
    t = _seq_of(records, "keys_advertised", round=2)
    entry = next(m for m in records[t]["messages"] if m["site"] == "site-3")
    entry["sha256"] = "11" * 32  # a key advertisement site-3 never sent
    _write(copy.transcript, _reseal(records, copy.key("coordinator"), audit.TRANSCRIPT_DOMAIN))
    log = _read(copy.log("site-3"))
    k = _seq_of(log, "sent", type="AdvertiseKeys", round=2)
    report = audit.verify(copy.run_dir, copy.logs)
    assert ("transcript.jsonl", t, "messages[site-3].AdvertiseKeys.sha256") in _located(report)
    assert ("site-3/egress.jsonl", k, "sha256") in _located(report)


def test_malformed_fields_are_reported_never_a_traceback(secure_run, tmp_path):
    """A hostile log may hold anything where a field should be, also under a valid signature."""
    copy = _copy(secure_run, tmp_path)
    records, log = _read(copy.transcript), _read(copy.log("site-1"))
    coordinator, site = copy.key("coordinator"), copy.key("site-1")
    first_of = {}
    for record in records + log:
        first_of.setdefault(record["event"], record)
    for event, record in first_of.items():
        in_log = record in log
        for name in sorted(set(record) - set(audit.RESERVED) - {"public_key"}):
            mutated = [dict(r) for r in (log if in_log else records)]
            mutated[record["seq"]][name] = [None]
            if in_log:
                _write(copy.log("site-1"), _reseal(mutated, site, audit.EGRESS_DOMAIN))
            else:
                _write(copy.transcript, _reseal(mutated, coordinator, audit.TRANSCRIPT_DOMAIN))
            report = audit.verify(copy.run_dir, copy.logs)  # must not raise
            print("UNCHECKED", event, name) if report.ok else None
        _write(copy.transcript, records)
        _write(copy.log("site-1"), log)


# ---------------------------------------------------------------------------- CLI errors


def test_a_missing_file_is_a_clear_error_not_a_traceback(secure_run, tmp_path, capsys):
    assert main(["audit", "verify", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fedtune: error: {tmp_path / 'nowhere'}: transcript not found")
    assert main(["audit", "verify", str(secure_run.run_dir), str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fedtune: error: {tmp_path / 'egress.jsonl'}: site egress log not found")
    assert main(["audit", "verify", str(secure_run.run_dir), "--coordinator-key", "xyz"]) == 2
    assert "--coordinator-key" in capsys.readouterr().err


def test_a_file_that_is_not_a_log_is_reported_line_by_line(tmp_path, capsys):
    (tmp_path / "transcript.jsonl").write_text("not json\n[1, 2]\n")
    code, printed = _cli(capsys, str(tmp_path))
    assert code == 1
    assert [(d["line"], d["field"]) for d in printed["discrepancies"]][:2] == [(1, "line"),
                                                                              (2, "line")]
