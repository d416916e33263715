"""gRPC channels to a coordinator: TLS or mutual TLS, loopback-only plaintext, keepalives."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

#: Metadata of every site call after authentication: the hex session token.
SESSION_METADATA = "fedtune-session"
#: Metadata of a message call whose Ack should bring the site's next task (fedtune.proto,
#: ``message Ack``): how many milliseconds the coordinator may wait for it.
AWAIT_NEXT_METADATA = "fedtune-await-next-ms"

#: Per gRPC message: tensors are streamed in 1 MiB chunks, so 8 MiB refuses anything bigger.
MAX_MESSAGE_BYTES = 8 << 20

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]")


def open_channel(address: str, *, insecure: bool, ca_cert: Path | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> grpc.Channel:
    """A channel to ``address``; plaintext only to a loopback address."""
    if insecure:
        if not is_loopback(host_of(address)):
            raise ValueError(f"--insecure is allowed only for a loopback coordinator, not {address!r}")
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    if ca_cert is None:
        raise ValueError("pass --ca-cert (TLS) or --insecure (loopback only)")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together (mutual TLS)")
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_cert.read_bytes(),
        private_key=tls_key.read_bytes() if tls_key else None,
        certificate_chain=tls_cert.read_bytes() if tls_cert else None)
    return grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
