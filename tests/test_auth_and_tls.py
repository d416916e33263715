"""TLS, mutual TLS, loopback-only plaintext, health checking and reflection.

A real site agent (``SiteAgent`` in a thread) authenticates and trains against a coordinator
started in this process with certificates from ``write_dev_tls``; clients that cannot prove
what TLS asks of them are refused before they reach the API; plaintext is allowed on loopback
only; and the stock gRPC health and reflection services answer as operators expect.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers_inprocess import (
    CALL_TIMEOUT_S,
    HandSite,
    fast_job,
    preserved_logging,
    rpc_error,
    running,
    started_federation,
    write_federation,
)

from fedtune import local_federation as lf
from fedtune.cli import main
from fedtune.client.agent import SiteAgent, SiteAgentConfig, SiteOutcome, TLSFiles
from fedtune.federation import load_federation
from fedtune.identity import load_identity, write_dev_tls
from fedtune.policy import load_policy
from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.server.app import InsecureNotAllowed, start

SERVICE = "fedtune.v1.Coordinator"
#: A refused TLS handshake surfaces as one of these, depending on where it failed.
HANDSHAKE_REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    out = tmp_path / "tls"
    write_dev_tls(out, ["127.0.0.1", "localhost"], ["site-1", "site-2"])
    return out


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """Another development CA with its own server and site-1 certificates."""
    out = tmp_path / "other-tls"
    write_dev_tls(out, ["127.0.0.1", "localhost"], ["site-1"])
    return out


def tls_table(tls_dir: Path, mutual: bool) -> dict[str, str]:
    table = {"cert": str(tls_dir / "server.pem"), "key": str(tls_dir / "server.key")}
    if mutual:
        table["client_ca"] = str(tls_dir / "ca.pem")
    return table


def training_federation(root: Path, tls: dict[str, str]) -> lf.LocalFederation:
    """One site with real data, a one-round job, and a federation file that asks for TLS."""
    model = {"id": "tabular-mlp", "input_dim": 30, "num_classes": 2, "hidden": 8}
    job = lf.default_job(model, rounds=1, min_sites=1, secure=False)
    job["training"]["local_epochs"] = 1
    fed = lf.prepare(root, dataset="breast-cancer", n_sites=1, rounds=1, job=job)
    tables = {
        "federation": {"run_dir": "run"},
        "coordinator": {"host": "127.0.0.1", "port": 0, "tls": tls},
        "sites": [{"id": s.site_id, "public_key": s.public_key} for s in fed.sites],
        "job": job,
    }
    fed.federation.write_text(lf.toml_dumps(tables))
    return fed


def run_agent(fed: lf.LocalFederation, port: int, tls: TLSFiles,
              timeout: float = 60.0) -> SiteOutcome:
    site = fed.sites[0]
    agent = SiteAgent(SiteAgentConfig(
        coordinator=f"127.0.0.1:{port}", site_id=site.site_id, identity=load_identity(site.key),
        data_path=site.data, policy=load_policy(site.policy), tls=tls, poll_wait_ms=500,
        give_up_after_s=10.0))
    thread = threading.Thread(target=agent.run, name="test-site-agent", daemon=True)
    thread.start()
    thread.join(timeout)
    agent.stop()
    thread.join(5)
    assert not thread.is_alive(), "the site agent did not stop"
    return agent.outcome


def secure_site(port: int, site_id: str, key_path: Path, *, ca: Path, cert: Path | None = None,
                key: Path | None = None) -> HandSite:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None)
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    return HandSite(channel, site_id, load_identity(key_path))


@pytest.fixture
def mtls_coordinator(tmp_path: Path, tls_dir: Path) -> Iterator[tuple[int, Path]]:
    """A coordinator that requires client certificates; yields its port and site-1's key."""
    files = write_federation(tmp_path / "fed", n_sites=1,
                             tls=tls_table(tls_dir, mutual=True))
    with running(files.config(), insecure=False) as coordinator:
        yield coordinator.port, files.keys["site-1"]


# ---------------------------------------------------------------------------- TLS works


def test_site_agent_authenticates_and_trains_over_tls(tmp_path, tls_dir):
    fed = training_federation(tmp_path / "fed", tls_table(tls_dir, mutual=False))
    with running(load_federation(fed.federation), insecure=False) as coordinator:
        outcome = run_agent(fed, coordinator.port, TLSFiles(ca_cert=tls_dir / "ca.pem"))
        assert outcome.finished
        assert outcome.rounds_contributed == 1
        assert coordinator.coordinator.completed_rounds == 1


def test_site_agent_authenticates_and_trains_over_mutual_tls(tmp_path, tls_dir):
    fed = training_federation(tmp_path / "fed", tls_table(tls_dir, mutual=True))
    with running(load_federation(fed.federation), insecure=False) as coordinator:
        outcome = run_agent(fed, coordinator.port, TLSFiles(
            ca_cert=tls_dir / "ca.pem", cert=tls_dir / "site-1.client.pem",
            key=tls_dir / "site-1.client.key"))
        assert outcome.finished
        assert outcome.rounds_contributed == 1
        assert coordinator.coordinator.completed_rounds == 1


def test_site_with_a_client_certificate_authenticates_under_mutual_tls(mtls_coordinator,
                                                                        tls_dir):
    port, key = mtls_coordinator
    site = secure_site(port, "site-1", key, ca=tls_dir / "ca.pem",
                       cert=tls_dir / "site-1.client.pem", key=tls_dir / "site-1.client.key")
    session = site.authenticate()
    assert len(session.token) == 32
    assert site.poll(wait_ms=0).WhichOneof("kind") in ("wait", "offer")
    site.channel.close()


def test_a_new_channel_with_the_same_client_certificate_keeps_the_session(mtls_coordinator,
                                                                           tls_dir):
    # a site agent that reconnects (a new channel, the same certificate) keeps its session
    port, key = mtls_coordinator
    cert = {"ca": tls_dir / "ca.pem", "cert": tls_dir / "site-1.client.pem",
            "key": tls_dir / "site-1.client.key"}
    first = secure_site(port, "site-1", key, **cert)
    first.authenticate()
    again = secure_site(port, "site-1", key, **cert)
    again.token = first.token
    assert again.poll(wait_ms=0).WhichOneof("kind") in ("wait", "offer")
    first.channel.close()
    again.channel.close()


# ---------------------------------------------------------------------------- TLS refuses


def test_client_without_a_certificate_is_refused_under_mutual_tls(mtls_coordinator, tls_dir):
    port, key = mtls_coordinator
    site = secure_site(port, "site-1", key, ca=tls_dir / "ca.pem")
    err = rpc_error(site.hello)
    assert err.code() in HANDSHAKE_REFUSED
    site.channel.close()


def test_session_token_is_refused_over_another_client_certificate(tmp_path, tls_dir):
    # Threat: a session token leaks (a log, a proxy, a compromised peer) to another enrolled
    # client with its own valid certificate. Under mutual TLS the session is bound to the
    # certificate it was opened over, so the token is worthless anywhere else.
    files = write_federation(tmp_path / "fed", n_sites=2, tls=tls_table(tls_dir, mutual=True))
    with running(files.config(), insecure=False) as coordinator:
        owner = secure_site(coordinator.port, "site-1", files.keys["site-1"],
                            ca=tls_dir / "ca.pem", cert=tls_dir / "site-1.client.pem",
                            key=tls_dir / "site-1.client.key")
        owner.authenticate()
        thief = secure_site(coordinator.port, "site-1", files.keys["site-2"],
                            ca=tls_dir / "ca.pem", cert=tls_dir / "site-2.client.pem",
                            key=tls_dir / "site-2.client.key")
        thief.token = owner.token
        err = rpc_error(lambda: thief.poll(wait_ms=0))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "another TLS client certificate" in err.details()
        # nothing was lost: the owner's session still works, the coordinator still serves
        assert owner.poll(wait_ms=0).WhichOneof("kind") in ("wait", "offer")
        owner.channel.close()
        thief.channel.close()


def test_client_certificate_from_another_ca_is_refused_under_mutual_tls(mtls_coordinator,
                                                                        tls_dir, other_ca):
    port, key = mtls_coordinator
    site = secure_site(port, "site-1", key, ca=tls_dir / "ca.pem",
                       cert=other_ca / "site-1.client.pem", key=other_ca / "site-1.client.key")
    err = rpc_error(site.hello)
    assert err.code() in HANDSHAKE_REFUSED
    site.channel.close()


def test_client_trusting_another_ca_refuses_the_coordinator(tmp_path, tls_dir, other_ca):
    files = write_federation(tmp_path / "fed", n_sites=1, tls=tls_table(tls_dir, mutual=False))
    with running(files.config(), insecure=False) as coordinator:
        site = secure_site(coordinator.port, "site-1", files.keys["site-1"],
                           ca=other_ca / "ca.pem")
        err = rpc_error(site.hello)
        assert err.code() in HANDSHAKE_REFUSED
        site.channel.close()


def test_plaintext_client_cannot_talk_to_a_tls_coordinator(tmp_path, tls_dir):
    files = write_federation(tmp_path / "fed", n_sites=1, tls=tls_table(tls_dir, mutual=False))
    with running(files.config(), insecure=False) as coordinator:
        with grpc.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            err = rpc_error(lambda: pb_grpc.CoordinatorStub(channel).GetStatus(
                pb.StatusRequest(), timeout=CALL_TIMEOUT_S))
        assert err.code() in HANDSHAKE_REFUSED


def test_refused_handshakes_leave_the_coordinator_serving(mtls_coordinator, tls_dir, other_ca):
    port, key = mtls_coordinator
    for bad in (secure_site(port, "site-1", key, ca=tls_dir / "ca.pem"),
                secure_site(port, "site-1", key, ca=other_ca / "ca.pem")):
        rpc_error(bad.hello)
        bad.channel.close()
    good = secure_site(port, "site-1", key, ca=tls_dir / "ca.pem",
                       cert=tls_dir / "site-1.client.pem", key=tls_dir / "site-1.client.key")
    assert good.stub.GetStatus(pb.StatusRequest(), timeout=CALL_TIMEOUT_S).run_id
    good.channel.close()


# ---------------------------------------------------------------------------- plaintext: loopback only


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "fedtune.example.org"])
def test_start_refuses_plaintext_on_a_non_loopback_host(tmp_path, host):
    config = write_federation(tmp_path / "fed", n_sites=1).config()
    with pytest.raises(InsecureNotAllowed, match="loopback"):
        start(config, host=host, port=0, insecure=True)


def test_start_refuses_plaintext_on_a_non_loopback_host_even_with_tls_configured(tmp_path,
                                                                                  tls_dir):
    config = write_federation(tmp_path / "fed", n_sites=1,
                              tls=tls_table(tls_dir, mutual=False)).config()
    with pytest.raises(InsecureNotAllowed, match="loopback"):
        start(config, host="0.0.0.0", port=0, insecure=True)


def test_start_without_tls_or_insecure_is_refused(tmp_path):
    config = write_federation(tmp_path / "fed", n_sites=1).config()
    with pytest.raises(InsecureNotAllowed, match="coordinator.tls is not set"):
        start(config, port=0, insecure=False)


def test_cli_site_refuses_plaintext_to_a_non_loopback_coordinator(tmp_path, capsys):
    with preserved_logging():
        code = main(["site", "--insecure", "--coordinator", "10.0.0.1:5000",
                     "--site-id", "site-1", "--identity", str(tmp_path / "site-1.key"),
                     "--data", str(tmp_path / "site-1.csv"),
                     "--policy", str(tmp_path / "policy.toml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("fedtune: error: --insecure is allowed only for a loopback coordinator, "
                   "not '10.0.0.1'\n")


def test_cli_site_without_ca_cert_or_insecure_is_a_user_error(tmp_path, capsys):
    with preserved_logging():
        code = main(["site", "--coordinator", "10.0.0.1:5000", "--site-id", "site-1",
                     "--identity", str(tmp_path / "k"), "--data", str(tmp_path / "d"),
                     "--policy", str(tmp_path / "p")])
    assert code == 2
    assert "pass --ca-cert (TLS) or --insecure" in capsys.readouterr().err


# ---------------------------------------------------------------------------- health, reflection


def test_health_check_reports_the_coordinator_serving(tmp_path):
    with started_federation(tmp_path) as fed:
        health = health_pb2_grpc.HealthStub(fed.channel)
        for service in (SERVICE, ""):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service),
                                 timeout=CALL_TIMEOUT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_reports_not_serving_once_the_run_has_finished(tmp_path):
    with started_federation(tmp_path, job=fast_job(rounds=1)) as fed:
        fed.finish_round()  # the evaluation round after the last training round
        assert fed.coordinator.wait(CALL_TIMEOUT_S)
        health = health_pb2_grpc.HealthStub(fed.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE),
                             timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_check_of_an_unknown_service_is_not_found(tmp_path):
    with started_federation(tmp_path) as fed:
        health = health_pb2_grpc.HealthStub(fed.channel)
        err = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope.v1.X"),
                                             timeout=CALL_TIMEOUT_S))
        assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_coordinator_and_health_services(tmp_path):
    with started_federation(tmp_path) as fed:
        stub = reflection_pb2_grpc.ServerReflectionStub(fed.channel)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=CALL_TIMEOUT_S))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_reflection_describes_the_coordinator_service(tmp_path):
    from google.protobuf import descriptor_pb2

    with started_federation(tmp_path) as fed:
        stub = reflection_pb2_grpc.ServerReflectionStub(fed.channel)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]),
            timeout=CALL_TIMEOUT_S))
        protos = replies[0].file_descriptor_response.file_descriptor_proto
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in protos]
        methods = {m.name for f in files for s in f.service if s.name == "Coordinator"
                   for m in s.method}
        assert {"Hello", "Authenticate", "PollTask", "SubmitInput", "GetStatus"} <= methods
