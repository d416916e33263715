"""Scenario files: the library parses, and every malformed field is named with its problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtune.cli import main
from fedtune.scenarios.spec import METRICS, load_scenario
from fedtune.toml_fields import ConfigError

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
LIBRARY = sorted(SCENARIOS.glob("*.toml"))

BASE = """
[scenario]
name = "t"

[federation]
dataset = "digits"
sites = 3

[job]
rounds = 2

[job.model]
id = "image-cnn"
num_classes = 10
image_shape = [1, 8, 8]
"""


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(BASE + extra)
    return path


def test_the_library_holds_the_five_scenarios_of_the_issue():
    names = {p.stem for p in LIBRARY}
    assert {"hospitals-lung", "digits-distributed-dp-dropouts", "coordinator-crash",
            "lying-coordinator", "text-minilm-lora"} <= names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_every_library_scenario_parses_and_expects_something(path):
    scenario = load_scenario(path)
    assert scenario.expectations
    assert scenario.name == path.stem


def test_a_minimal_scenario_gets_the_documented_defaults(tmp_path):
    s = load_scenario(_write(tmp_path, ""))
    assert s.federation.partition == "iid" and s.timeout_s == 600.0
    assert s.policy_table["allowed_models"] == ["image-cnn"]
    assert s.job.job_id == "t" and s.site_ids == ("site-1", "site-2", "site-3")


@pytest.mark.parametrize("extra, field, problem", [
    ('[[expect]]\nmetric = "epsilon.site_level"\nop = "=<"\nvalue = 1\n', "expect[0].op",
     "expected one of"),
    ('[[expect]]\nmetric = "accuracy"\nop = ">="\nvalue = 1\n', "expect[0].metric",
     "unknown metric"),
    ('[[fault]]\nkind = "site_drop"\nsite = "site-9"\nphase = "input"\nround = 1\n',
     "fault[0].site", "no site 'site-9'"),
    ('[[fault]]\nkind = "site_drop"\nsite = "site-1"\nphase = "lunch"\nround = 1\n',
     "fault[0].phase", "expected one of"),
    ('[[fault]]\nkind = "meteor"\n', "fault[0].kind", "expected one of"),
    ('[adversary]\nkind = "both_lists"\nvictim = "site-1"\ncolour = "red"\n',
     "adversary.colour", "unknown field"),
    ('[adversary]\nkind = "inconsistent_lists"\nvictim = "site-1"\n', "adversary.fooled",
     "needs the sites to fool"),
    ('[[attack]]\nkind = "membership_inference"\nmethod = "psychic"\nsite = "site-1"\n',
     "attack[0].method", "expected one of"),
    ('[policy]\nmax_rounds = "many"\n', "policy.max_rounds", "expected an integer"),
])
def test_a_bad_field_is_named_with_its_problem(tmp_path, extra, field, problem):
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, extra))
    assert info.value.field == field
    assert problem in info.value.problem


def test_a_bad_job_field_is_named_as_in_a_federation_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace("rounds = 2", "rounds = 0"))
    with pytest.raises(ConfigError, match=r"job\.rounds: expected an integer >= 1"):
        load_scenario(path)


def test_an_expectation_can_name_a_declared_attack(tmp_path):
    s = load_scenario(_write(tmp_path, (
        '[[attack]]\nkind = "membership_inference"\nsite = "site-2"\nname = "m"\n'
        '[[expect]]\nmetric = "attack.m.advantage"\nop = "<="\nvalue = 0.2\n')))
    assert s.expectations[0].metric == "attack.m.advantage"
    assert s.attacks[0].method == "loss_threshold"


def test_adversaries_need_secure_aggregation(tmp_path):
    path = _write(tmp_path, '[job.secure_aggregation]\nenabled = false\n'
                            '[adversary]\nkind = "both_lists"\nvictim = "site-1"\n')
    with pytest.raises(ConfigError, match="attack secure aggregation"):
        load_scenario(path)


def test_every_metric_is_documented_in_the_scenarios_readme():
    readme = (SCENARIOS / "README.md").read_text()
    for metric in METRICS:
        assert f"`{metric}`" in readme, metric


def test_replay_of_an_invalid_file_is_a_usage_error_naming_the_field(tmp_path, capsys):
    path = _write(tmp_path, '[[fault]]\nkind = "meteor"\n')
    assert main(["replay", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "s.toml: fault[0].kind: expected one of" in err
    assert not (tmp_path / "out").exists()


def test_replay_of_a_missing_file_says_so(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: file not found" in capsys.readouterr().err
