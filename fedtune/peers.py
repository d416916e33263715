"""The identities a site trusts: the coordinator's key and its peers' keys (``--peers``).

Secure aggregation against a malicious coordinator (Bonawitz et al. 2017 §4) assumes every
site knows the other sites' identity keys from a source the coordinator does not control.
A site reads them from this file, which its administrator obtains out of band (e.g. from
the federation's governance body) and checks::

    [coordinator]
    public_key = "base64 of the coordinator's Ed25519 key"

    [[sites]]
    id = "hospital-a"
    public_key = "base64 of hospital-a's Ed25519 key"

Every key advertisement relayed by the coordinator is verified against these keys, and so
is the coordinator's signature on the survivor list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedtune.identity import decode_public_key
from fedtune.toml_fields import ConfigError, Fields, load_toml


@dataclass(frozen=True)
class Peers:
    coordinator_key: bytes
    site_keys: dict[str, bytes]


def load_peers(path: str | Path) -> Peers:
    root = Fields(str(path), "", load_toml(path))
    coord = root.sub("coordinator", required=True)
    try:
        coordinator_key = decode_public_key(coord.string("public_key"))
    except ValueError as exc:
        raise coord.error("public_key", str(exc)) from None
    coord.reject_unknown()
    sites: dict[str, bytes] = {}
    for s in root.table_list("sites"):
        site_id = s.string("id")
        if site_id in sites:
            raise s.error("id", f"site {site_id!r} is listed twice")
        try:
            sites[site_id] = decode_public_key(s.string("public_key"))
        except ValueError as exc:
            raise s.error("public_key", str(exc)) from None
        s.reject_unknown()
    if not sites:
        raise ConfigError(path, "sites", "no sites listed")
    root.reject_unknown()
    return Peers(coordinator_key, sites)
