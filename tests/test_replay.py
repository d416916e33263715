"""``fedtune replay``: real processes, a failed expectation says which and by how much.

One short replay (3 site processes and a coordinator over loopback gRPC, one round of
DP-SGD on digits) with an expectation that cannot hold: ε ≤ 0.01.
"""

from __future__ import annotations

import contextlib
import io
import json

import jsonschema
import pytest

from fedtune.cli import main
from fedtune.scenarios.report import load_schema

pytestmark = pytest.mark.slow

IMPOSSIBLE = """
[scenario]
name = "impossible-epsilon"
description = "one DP-SGD round can not cost 0.01"
timeout_s = 240

[federation]
dataset = "digits"
sites = 3

[job]
rounds = 1
min_sites = 3

[job.model]
id = "image-cnn"
num_classes = 10
image_shape = [1, 8, 8]

[job.training]
local_epochs = 1

[job.privacy.record_level]
enabled = true
noise_multiplier = 1.0
max_grad_norm = 1.0
sample_rate = 0.1
delta = 1e-5

[job.secure_aggregation]
enabled = true

[job.deadlines]
gather = 5.0
input = 60.0

[[expect]]
metric = "epsilon.record_level"
op = "<="
value = 0.01

[[expect]]
metric = "rounds.completed"
op = "=="
value = 1

[[expect]]
metric = "audit.failures"
op = "=="
value = 0
"""


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    scenario = root / "impossible.toml"
    scenario.write_text(IMPOSSIBLE)
    out = root / "out"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["replay", str(scenario), "--out", str(out)])
    return code, buffer.getvalue(), out


def test_an_expectation_that_cannot_hold_makes_the_replay_exit_non_zero(replayed):
    code, _, _ = replayed
    assert code == 1


def test_the_summary_names_the_failed_expectation_and_by_how_much(replayed):
    _, printed, out = replayed
    report = json.loads((out / "report.json").read_text())
    failed = [e for e in report["expectations"] if not e["met"]]
    assert [e["name"] for e in failed] == ["epsilon.record_level"]
    found = failed[0]["found"]
    assert found > 0.01
    assert failed[0]["margin"] == pytest.approx(0.01 - found)
    assert f"FAILED epsilon.record_level <= 0.01: found {found:g} (failed by " in printed
    assert report["verdict"] == "fail"


def test_the_other_expectations_held(replayed):
    _, _, out = replayed
    report = json.loads((out / "report.json").read_text())
    met = {e["name"]: e["met"] for e in report["expectations"]}
    assert met == {"epsilon.record_level": False, "rounds.completed": True,
                   "audit.failures": True}


def test_the_report_validates_against_its_schema_and_the_html_exists(replayed):
    _, _, out = replayed
    jsonschema.validate(json.loads((out / "report.json").read_text()), load_schema())
    html = (out / "report.html").read_text()
    assert 'id="plot-epsilon"' in html and "impossible-epsilon" in html


def test_the_replay_leaves_the_parties_files_for_inspection(replayed):
    _, _, out = replayed
    assert (out / "run" / "transcript.jsonl").exists()
    assert (out / "run" / "privacy.json").exists()
    for site in ("site-1", "site-2", "site-3"):
        assert (out / "state" / site / "ledger.sqlite").exists()
        assert (out / "state" / site / "egress.jsonl").exists()


def test_replay_refuses_a_non_empty_output_folder(tmp_path, capsys):
    scenario = tmp_path / "s.toml"
    scenario.write_text(IMPOSSIBLE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["replay", str(scenario), "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"

