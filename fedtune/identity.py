"""Identity keys and development TLS certificates on disk (``fedtune keys``).

A site's long-term identity is an Ed25519 key pair: the private key stays in a PEM file
(PKCS#8, readable by the owner only); the public key is enrolled in the coordinator's
federation file as 32 raw bytes in base64. TLS certificates made here are for development
and tests: production deployments use their organisation's PKI.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class KeyFileError(ValueError):
    """A key file is missing or is not what it should be."""


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_identity(out_dir: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Create ``NAME.key`` (private, mode 0600) and ``NAME.pub`` (base64 raw public key)."""
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if key_path.exists() and not force:
        raise KeyFileError(f"{key_path}: exists already (use --force to replace it)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, pem)
    pub_path.write_text(public_key_b64(key.public_key()) + "\n")
    return key_path, pub_path


def load_identity(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{p}: identity key file not found") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{p}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an Ed25519 key")
    return key


def decode_public_key(text: str) -> bytes:
    """Decode an enrolled public key (base64 of 32 raw bytes)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError("not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


def write_dev_tls(out_dir: Path, hosts: list[str], clients: list[str], days: int = 365) -> list[Path]:
    """A development CA, a server certificate for ``hosts`` and client certificates.

    Writes ``ca.pem`` / ``ca.key``, ``server.pem`` / ``server.key`` and, for each client
    name, ``NAME.client.pem`` / ``NAME.client.key`` (for mutual TLS). ECDSA P-256, SHA-256.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtune development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    written = _write_pair(out_dir, "ca", ca_cert, ca_key)

    def leaf(name: str, file_stem: str, sans: list[x509.GeneralName],
             usage: x509.ObjectIdentifier) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        written.extend(_write_pair(out_dir, file_stem, builder.sign(ca_key, hashes.SHA256()), key))

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    leaf("fedtune coordinator", "server", sans, ExtendedKeyUsageOID.SERVER_AUTH)
    for client in clients:
        # ``NAME.client.pem``: never clashes with the identity key ``NAME.key`` in one folder.
        leaf(client, f"{client}.client", [x509.DNSName(client)], ExtendedKeyUsageOID.CLIENT_AUTH)
    return written


def _write_pair(out_dir: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> list[Path]:
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return [cert_path, key_path]
