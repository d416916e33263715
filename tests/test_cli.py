"""The CLI: keys, data split, status; user errors exit 2 with one line, never a traceback."""

from __future__ import annotations

import json

import pytest

from fedtune import local_federation as lf
from fedtune.cli import main
from fedtune.federation import load_federation
from fedtune.identity import decode_public_key, load_identity
from fedtune.server import app


def test_keys_site_writes_a_private_key_and_the_enrolment_entry(tmp_path, capsys):
    assert main(["keys", "site", "--site-id", "hospital-a", "--out", str(tmp_path)]) == 0
    key = tmp_path / "hospital-a.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    load_identity(key)
    assert len(decode_public_key((tmp_path / "hospital-a.pub").read_text())) == 32
    assert '[[sites]]\nid = "hospital-a"' in capsys.readouterr().out


def test_keys_site_refuses_to_overwrite_an_identity(tmp_path, capsys):
    main(["keys", "site", "--site-id", "a", "--out", str(tmp_path)])
    assert main(["keys", "site", "--site-id", "a", "--out", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_keys_tls_writes_a_ca_a_server_and_client_certificates(tmp_path):
    assert main(["keys", "tls", "--out", str(tmp_path), "--clients", "site-1"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"ca.pem", "ca.key", "server.pem", "server.key",
            "site-1.client.pem", "site-1.client.key"} <= names


def test_data_split_by_institution_writes_site_files_and_a_manifest(tmp_path, capsys):
    out = tmp_path / "lung"
    assert main(["data", "split", "--dataset", "lung", "--sites", "3",
                 "--partition", "institution", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["sites"]] == ["site-1.csv", "site-2.csv", "site-3.csv"]
    assert sum(s["rows"] for s in manifest["sites"]) == 185
    assert "site-1.csv" in capsys.readouterr().out


def test_data_split_institution_on_a_set_without_institutions_is_a_user_error(tmp_path, capsys):
    assert main(["data", "split", "--dataset", "digits", "--partition", "institution",
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("fedtune: error:")


def test_server_refuses_insecure_on_a_non_loopback_address(tmp_path, capsys):
    fed = lf.prepare(tmp_path, n_sites=2, rounds=1)
    assert main(["server", "--federation", str(fed.federation), "--insecure",
                 "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_server_without_tls_or_insecure_is_a_user_error(tmp_path, capsys):
    fed = lf.prepare(tmp_path, n_sites=2, rounds=1)
    assert main(["server", "--federation", str(fed.federation)]) == 2
    assert "coordinator.tls is not set" in capsys.readouterr().err


def test_status_shows_the_sites_and_the_round(tmp_path, capsys):
    fed = lf.prepare(tmp_path, n_sites=2, rounds=1)
    running = app.start(load_federation(fed.federation), port=0, insecure=True)
    try:
        assert main(["status", "--coordinator", f"127.0.0.1:{running.port}", "--insecure"]) == 0
        out = capsys.readouterr().out
        assert "0/1 rounds" in out and "site-1" in out and "site-2" in out
        assert main(["status", "--coordinator", f"127.0.0.1:{running.port}", "--insecure",
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rounds_total"] == 1
    finally:
        running.stop()


def test_status_of_an_unreachable_coordinator_is_a_user_error(capsys):
    assert main(["status", "--coordinator", f"127.0.0.1:{lf.free_port()}", "--insecure"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["server", "--help"], ["site", "--help"],
                                  ["demo", "--help"]])
def test_help_is_available_for_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: fedtune" in capsys.readouterr().out
