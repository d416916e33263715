"""A malformed federation or policy file is a ``ConfigError`` naming the file, field and problem.

The CLI turns it into one line, ``fedtune: error: <file>: <field>: <problem>``, and exit
status 2, never a traceback.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_inprocess import fast_job, federation_tables, preserved_logging

from fedtune.cli import main
from fedtune.federation import load_federation
from fedtune.identity import write_identity
from fedtune.local_federation import toml_dumps
from fedtune.policy import load_policy
from fedtune.toml_fields import ConfigError, Fields

KEY_1 = base64.b64encode(bytes(range(32))).decode()
KEY_2 = base64.b64encode(bytes(range(32, 64))).decode()


def federation() -> dict[str, Any]:
    """The tables of a valid federation file: two sites, a job needing both."""
    return federation_tables([("site-1", KEY_1), ("site-2", KEY_2)], fast_job(min_sites=2))


def policy() -> dict[str, Any]:
    return {"policy": {"allowed_models": ["tabular-mlp"], "max_rounds": 50,
                       "record_level_dp": {"required": False, "max_epsilon": 8.0,
                                           "delta": 1e-5}}}


def write(path: Path, tables: dict[str, Any]) -> Path:
    path.write_text(toml_dumps(tables))
    return path


def config_error(load: Callable[[Path], Any], path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


def assert_names(exc: ConfigError, path: Path, field: str, problem: str) -> None:
    """The error names the file and the field and says what is wrong, in one message."""
    assert exc.file == str(path)
    assert exc.field == field
    assert problem in exc.problem
    prefix = f"{path}: {field}: " if field else f"{path}: "
    assert str(exc) == prefix + exc.problem


# ---------------------------------------------------------------------------- federation file


def test_the_valid_federation_file_loads(tmp_path):
    config = load_federation(write(tmp_path / "federation.toml", federation()))
    assert [s.id for s in config.sites] == ["site-1", "site-2"]
    assert config.job.min_sites == 2


def _delete(*keys: str) -> Callable[[dict], None]:
    def mutate(tables: dict) -> None:
        table = tables
        for key in keys[:-1]:
            table = table[key]
        del table[keys[-1]]
    return mutate


def _set(value: Any, *keys: str) -> Callable[[dict], None]:
    def mutate(tables: dict) -> None:
        table = tables
        for key in keys[:-1]:
            table = table[key]
        table[keys[-1]] = value
    return mutate


def _site(index: int, **fields: Any) -> Callable[[dict], None]:
    def mutate(tables: dict) -> None:
        tables["sites"][index].update(fields)
    return mutate


FEDERATION_CASES = [
    ("missing-job-rounds", _delete("job", "rounds"), "job.rounds", "required field is missing"),
    ("missing-job-table", _delete("job"), "job", "required field is missing"),
    ("missing-model-id", _delete("job", "model", "id"), "job.model.id",
     "required field is missing"),
    ("integer-as-string", _set("many", "job", "training", "batch_size"),
     "job.training.batch_size", "expected an integer >= 1, found 'many'"),
    ("boolean-as-integer", _set(True, "job", "rounds"), "job.rounds",
     "expected an integer >= 1 and <= 100000, found True"),
    ("port-out-of-range", _set(70000, "coordinator", "port"), "coordinator.port",
     "expected an integer >= 0 and <= 65535, found 70000"),
    ("nan-learning-rate", _set(float("nan"), "job", "training", "learning_rate"),
     "job.training.learning_rate", "expected a finite number, found nan"),
    ("string-instead-of-table", _set("tabular-mlp", "job", "model"), "job.model",
     "expected a table, found 'tabular-mlp'"),
    ("typo-in-a-job-field", _set(0.1, "job", "training", "learning_rat"),
     "job.training.learning_rat", "unknown field (check the spelling)"),
    ("typo-in-a-table-name", _set({"run_dir": "run"}, "federaton"), "federaton",
     "unknown field (check the spelling)"),
    ("unknown-site-field", _site(1, name="Hospital B"), "sites[1].name",
     "unknown field (check the spelling)"),
    ("duplicate-site-id", _site(1, id="site-1"), "sites[1].id", "site 'site-1' is enrolled twice"),
    ("invalid-site-id", _site(0, id="site 1"), "sites[0].id",
     "'site 1': use letters, digits, '.', '_' or '-'"),
    ("public-key-not-base64", _site(0, public_key="not base64!"), "sites[0].public_key",
     "not valid base64"),
    ("public-key-too-short", _site(1, public_key=base64.b64encode(b"k" * 16).decode()),
     "sites[1].public_key", "an Ed25519 public key is 32 bytes, this one is 16"),
    ("no-sites", _delete("sites"), "sites", "no sites enrolled"),
    ("min-sites-above-enrolled", _set(3, "job", "min_sites"), "job.min_sites",
     "3 exceeds the 2 enrolled sites"),
    ("model-not-in-registry", _set("resnet-50", "job", "model", "id"), "job.model.id",
     ("expected one of tabular-mlp, image-cnn, image-linear, minilm-lora, smollm2-lora; "
      "found 'resnet-50'")),
    ("optimizer-not-a-choice", _set("rmsprop", "job", "training", "optimizer"),
     "job.training.optimizer", "expected one of sgd, adam; found 'rmsprop'"),
    ("negative-deadline", _set(-1.0, "job", "deadlines", "input"), "job.deadlines.input",
     "expected a number > 0.0, found -1.0"),
    ("tls-cert-missing", _set({"cert": "tls/server.pem", "key": "tls/server.key"},
                              "coordinator", "tls"),
     "coordinator.tls.cert", "file not found: "),
]


@pytest.mark.parametrize(("mutate", "field", "problem"),
                         [case[1:] for case in FEDERATION_CASES],
                         ids=[case[0] for case in FEDERATION_CASES])
def test_malformed_federation_file_names_the_file_field_and_problem(tmp_path, mutate, field,
                                                                    problem):
    tables = copy.deepcopy(federation())
    mutate(tables)
    path = write(tmp_path / "federation.toml", tables)
    assert_names(config_error(load_federation, path), path, field, problem)


def test_missing_tls_client_ca_names_the_field_and_the_path(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "server.pem").write_text("cert")
    (tls / "server.key").write_text("key")
    tables = federation()
    tables["coordinator"]["tls"] = {"cert": "tls/server.pem", "key": "tls/server.key",
                                    "client_ca": "tls/ca.pem"}
    path = write(tmp_path / "federation.toml", tables)
    exc = config_error(load_federation, path)
    assert_names(exc, path, "coordinator.tls.client_ca", "file not found: ")
    assert str(tls / "ca.pem") in exc.problem


def test_tls_table_without_a_key_names_the_missing_field(tmp_path):
    (tmp_path / "server.pem").write_text("cert")
    tables = federation()
    tables["coordinator"]["tls"] = {"cert": "server.pem"}
    path = write(tmp_path / "federation.toml", tables)
    assert_names(config_error(load_federation, path), path, "coordinator.tls.key",
                 "required field is missing")


def test_federation_file_with_invalid_toml_syntax_names_the_line(tmp_path):
    path = tmp_path / "federation.toml"
    path.write_text('[federation]\nrun_dir = "run"\n[job\nrounds = 3\n')
    exc = config_error(load_federation, path)
    assert_names(exc, path, "", "not valid TOML")
    assert "line 3" in exc.problem


def test_federation_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "federation.toml"
    path.write_bytes(b'[federation]\nrun_id = "caf\xe9"\n')
    assert_names(config_error(load_federation, path), path, "", "not UTF-8")


def test_missing_federation_file_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere.toml"
    assert_names(config_error(load_federation, path), path, "", "file not found")


def test_federation_path_that_is_a_folder_is_a_config_error(tmp_path):
    assert_names(config_error(load_federation, tmp_path), tmp_path, "", "cannot read")


def test_error_about_a_whole_table_names_the_table():
    exc = Fields("f.toml", "job.privacy", {}).error("", "not implemented")
    assert exc.field == "job.privacy"
    assert str(exc) == "f.toml: job.privacy: not implemented"


# ---------------------------------------------------------------------------- policy file


def test_the_valid_policy_file_loads(tmp_path):
    loaded = load_policy(write(tmp_path / "policy.toml", policy()))
    assert loaded.allowed_models == ("tabular-mlp",)
    assert loaded.record_max_epsilon == 8.0


POLICY_CASES = [
    ("missing-policy-table", _delete("policy"), "policy", "required field is missing"),
    ("missing-allowed-models", _delete("policy", "allowed_models"), "policy.allowed_models",
     "required field is missing"),
    ("allowed-models-not-a-list", _set("tabular-mlp", "policy", "allowed_models"),
     "policy.allowed_models", "expected a list of strings, found 'tabular-mlp'"),
    ("integer-as-string", _set("ten", "policy", "max_rounds"), "policy.max_rounds",
     "expected an integer >= 1, found 'ten'"),
    ("zero-rounds", _set(0, "policy", "max_rounds"), "policy.max_rounds",
     "expected an integer >= 1, found 0"),
    ("boolean-as-string", _set("yes", "policy", "require_secure_aggregation"),
     "policy.require_secure_aggregation", "expected true or false, found 'yes'"),
    ("typo-in-a-field", _set(10, "policy", "max_round"), "policy.max_round",
     "unknown field (check the spelling)"),
    ("typo-in-a-table", _set({"required": True}, "policy", "record_dp"), "policy.record_dp",
     "unknown field (check the spelling)"),
    ("zero-epsilon", _set(0.0, "policy", "record_level_dp", "max_epsilon"),
     "policy.record_level_dp.max_epsilon", "expected a number > 0.0, found 0.0"),
    ("delta-above-one", _set(2.0, "policy", "record_level_dp", "delta"),
     "policy.record_level_dp.delta", "expected a number >= 0.0 and <= 1.0, found 2.0"),
]


@pytest.mark.parametrize(("mutate", "field", "problem"),
                         [case[1:] for case in POLICY_CASES],
                         ids=[case[0] for case in POLICY_CASES])
def test_malformed_policy_file_names_the_file_field_and_problem(tmp_path, mutate, field,
                                                                problem):
    tables = copy.deepcopy(policy())
    mutate(tables)
    path = write(tmp_path / "policy.toml", tables)
    assert_names(config_error(load_policy, path), path, field, problem)


def test_policy_file_with_invalid_toml_syntax_is_a_config_error(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("[policy]\nallowed_models = [tabular-mlp]\n")
    assert_names(config_error(load_policy, path), path, "", "not valid TOML")


def test_missing_policy_file_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere.toml"
    assert_names(config_error(load_policy, path), path, "", "file not found")


# ---------------------------------------------------------------------------- the CLI


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with preserved_logging():
        code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


def test_server_with_a_malformed_federation_file_exits_2_naming_file_field_and_problem(
        tmp_path, capsys):
    tables = federation()
    del tables["job"]["rounds"]
    path = write(tmp_path / "bad.toml", tables)
    code, err = run_cli(["server", "--federation", str(path), "--insecure"], capsys)
    assert code == 2
    assert err == f"fedtune: error: {path}: job.rounds: required field is missing\n"


def test_server_with_invalid_toml_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[job\n")
    code, err = run_cli(["server", "--federation", str(path), "--insecure"], capsys)
    assert code == 2
    assert err.startswith(f"fedtune: error: {path}: not valid TOML")


def test_server_with_a_missing_federation_file_exits_2(tmp_path, capsys):
    path = tmp_path / "nowhere.toml"
    code, err = run_cli(["server", "--federation", str(path), "--insecure"], capsys)
    assert code == 2
    assert err == f"fedtune: error: {path}: file not found\n"


def _site_argv(tmp_path: Path, policy_path: Path) -> list[str]:
    key, _ = write_identity(tmp_path / "keys", "site-1")
    return ["site", "--coordinator", "127.0.0.1:1", "--insecure", "--site-id", "site-1",
            "--identity", str(key), "--data", str(tmp_path / "site-1.csv"),
            "--policy", str(policy_path)]


def test_site_with_a_malformed_policy_file_exits_2_naming_file_field_and_problem(
        tmp_path, capsys):
    tables = policy()
    tables["policy"]["max_rounds"] = "ten"
    path = write(tmp_path / "bad.toml", tables)
    code, err = run_cli(_site_argv(tmp_path, path), capsys)
    assert code == 2
    assert err == (f"fedtune: error: {path}: policy.max_rounds: "
                   "expected an integer >= 1, found 'ten'\n")


def test_site_with_a_missing_policy_file_exits_2(tmp_path, capsys):
    path = tmp_path / "nowhere.toml"
    code, err = run_cli(_site_argv(tmp_path, path), capsys)
    assert code == 2
    assert err == f"fedtune: error: {path}: file not found\n"


def test_site_with_an_identity_that_is_not_a_key_exits_2(tmp_path, capsys):
    policy_path = write(tmp_path / "policy.toml", policy())
    argv = _site_argv(tmp_path, policy_path)
    bad_key = tmp_path / "keys" / "site-1.key"
    bad_key.write_text("not a key")
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith(f"fedtune: error: {bad_key}: not a PEM private key")
