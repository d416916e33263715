"""The federation file: who may join, where the coordinator listens, and the job.

Example (``fedtune demo`` writes one like it)::

    [federation]
    run_id = "demo"                 # optional; fixed at first start otherwise
    run_dir = "run"                 # relative to this file

    [coordinator]
    host = "127.0.0.1"
    port = 50051
    identity = "keys/coordinator.key"  # Ed25519; signs survivor lists (secure aggregation)
    [coordinator.tls]               # optional; omit and pass --insecure on loopback only
    cert = "tls/server.pem"
    key = "tls/server.key"
    client_ca = "tls/ca.pem"        # set: mutual TLS, sites must present a certificate

    [[sites]]
    id = "site-1"
    public_key = "base64 of the 32-byte Ed25519 key (fedtune keys site)"

    [job]                           # see fedtune/job.py for every field
    rounds = 5
    min_sites = 2
    [job.model]
    id = "tabular-mlp"
    input_dim = 30
    num_classes = 2
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedtune.identity import decode_public_key
from fedtune.job import JobConfig, parse_job
from fedtune.toml_fields import ConfigError, Fields, load_toml

_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class SiteEntry:
    id: str
    public_key: bytes


@dataclass(frozen=True)
class FederationConfig:
    path: Path
    run_id: str
    run_dir: Path
    host: str
    port: int
    tls: TLSConfig | None
    sites: tuple[SiteEntry, ...]
    job: JobConfig
    identity: Path | None = None

    def site(self, site_id: str) -> SiteEntry | None:
        for entry in self.sites:
            if entry.id == site_id:
                return entry
        return None


def valid_site_id(site_id: str) -> bool:
    return bool(_SITE_ID.match(site_id))


def load_federation(path: str | Path) -> FederationConfig:
    p = Path(path)
    root = Fields(str(p), "", load_toml(p))
    base = p.resolve().parent
    fed = root.sub("federation")
    run_id = fed.string("run_id", "")
    if run_id and not valid_site_id(run_id):
        raise fed.error("run_id", "use letters, digits, '.', '_' or '-' (at most 64)")
    run_dir = base / fed.string("run_dir", "run")
    fed.reject_unknown()

    coord = root.sub("coordinator")
    host = coord.string("host", "127.0.0.1")
    port = coord.integer("port", 50051, minimum=0, maximum=65535)
    identity = _existing(coord, base, "identity") if "identity" in coord.table else None
    tls = None
    if "tls" in coord.table:
        t = coord.sub("tls")
        tls = TLSConfig(
            cert=_existing(t, base, "cert"),
            key=_existing(t, base, "key"),
            client_ca=_existing(t, base, "client_ca") if "client_ca" in t.table else None,
        )
        t.reject_unknown()
    coord.reject_unknown()

    sites = []
    seen: set[str] = set()
    site_tables = root.table_list("sites")
    if not site_tables:
        raise ConfigError(p, "sites", "no sites enrolled (add [[sites]] tables with id and public_key)")
    for s in site_tables:
        site_id = s.string("id")
        if not valid_site_id(site_id):
            raise s.error("id", f"{site_id!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        if site_id in seen:
            raise s.error("id", f"site {site_id!r} is enrolled twice")
        seen.add(site_id)
        try:
            key = decode_public_key(s.string("public_key"))
        except ValueError as exc:
            raise s.error("public_key", str(exc)) from None
        s.reject_unknown()
        sites.append(SiteEntry(site_id, key))

    job = parse_job(root.sub("job", required=True))
    if job.min_sites > len(sites):
        raise ConfigError(p, "job.min_sites", f"{job.min_sites} exceeds the {len(sites)} enrolled sites")
    if job.secure_aggregation.enabled and identity is None:
        raise ConfigError(p, "coordinator.identity", "secure aggregation needs the coordinator's "
                          "Ed25519 identity key (fedtune keys site --site-id coordinator)")
    if job.secure_aggregation.enabled and job.min_sites < 2:
        raise ConfigError(p, "job.min_sites", "secure aggregation needs at least 2 sites per round")
    root.reject_unknown()
    return FederationConfig(p, run_id, run_dir, host, port, tls, tuple(sites), job, identity)


def _existing(fields: Fields, base: Path, key: str) -> Path:
    path = base / fields.string(key)
    if not path.is_file():
        raise fields.error(key, f"file not found: {path}")
    return path
