"""A whole federation on one machine: files, keys and processes.

``fedtune demo``, the end-to-end tests and the benchmarks all need the same thing: per-site
data files, identity keys, policies, a federation file, and then a coordinator and site
agents running as separate processes over loopback gRPC. This module builds that layout and
starts the processes through the public CLI, exactly as an operator would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtune.datasets import write_split
from fedtune.identity import write_identity


@dataclass
class SiteFiles:
    site_id: str
    key: Path
    public_key: str
    data: Path
    policy: Path


@dataclass
class LocalFederation:
    root: Path
    federation: Path
    run_dir: Path
    port: int
    sites: list[SiteFiles] = field(default_factory=list)
    #: identity keys every site trusts: the coordinator's and the sites' (``--peers``)
    peers: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def transcript(self) -> Path:
        """The coordinator's signed transcript (``fedtune audit verify`` reads it)."""
        return self.run_dir / "transcript.jsonl"

    def state_dir(self, site: SiteFiles) -> Path:
        """A site's state directory: its privacy ledger and its signed egress log."""
        return self.root / "state" / site.site_id

    def egress_logs(self) -> list[Path]:
        """Every site's egress log, for ``fedtune audit verify RUN_DIR LOG ...``."""
        return [self.state_dir(s) / "egress.jsonl" for s in self.sites]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_dumps(tables: dict[str, Any]) -> str:
    """Minimal TOML writer for the nested dicts of strings, numbers, booleans and lists we write."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_list(v)}
        if prefix and (scalars or not d):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(name, v)
            elif _is_table_list(v):
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    for ik, iv in item.items():
                        lines.append(f"{ik} = {value(iv)}")

    table("", tables)
    return "\n".join(lines).lstrip() + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def default_job(model: dict[str, Any], rounds: int, min_sites: int,
                secure: bool = True) -> dict[str, Any]:
    return {
        "job_id": "demo",
        "rounds": rounds,
        "min_sites": min_sites,
        "model": {k: v for k, v in model.items() if v not in (None, "", [], ())},
        "training": {"local_epochs": 2, "batch_size": 32, "learning_rate": 0.05,
                     "optimizer": "sgd", "momentum": 0.9, "eval_fraction": 0.2, "seed": 0},
        "server_optimizer": {"name": "fedavg", "learning_rate": 1.0},
        "deadlines": {"gather": 3.0, "offer": 30.0, "keys": 30.0, "input": 120.0,
                      "unmask": 30.0},
        "secure_aggregation": {"enabled": secure},
    }


def prepare(root: Path, *, dataset: str = "digits", n_sites: int = 3, rounds: int = 5,
            partition: str = "iid", alpha: float = 0.5, seed: int = 0,
            job: dict[str, Any] | None = None, policy: dict[str, Any] | None = None,
            port: int | None = None) -> LocalFederation:
    """Write data splits, keys, policies and a federation file under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = write_split(dataset, n_sites, partition, alpha, seed, root / "data")
    port = port or free_port()
    fed = LocalFederation(root=root, federation=root / "federation.toml", run_dir=root / "run",
                          port=port, peers=root / "peers.toml")
    _, coordinator_pub = write_identity(root / "keys", "coordinator", force=True)
    policy_table = policy or {"policy": {"allowed_models": ["tabular-mlp", "image-cnn"],
                                         "max_rounds": 100}}
    for i, site in enumerate(manifest["sites"], start=1):
        site_id = f"site-{i}"
        key, pub = write_identity(root / "keys", site_id, force=True)
        policy_path = root / "policies" / f"{site_id}.toml"
        policy_path.parent.mkdir(parents=True, exist_ok=True)
        policy_path.write_text(toml_dumps(policy_table))
        fed.sites.append(SiteFiles(site_id, key, pub.read_text().strip(),
                                   root / "data" / site["file"], policy_path))
    job_table = job or default_job(manifest["model"], rounds, min_sites=min(2, n_sites))
    assert fed.peers is not None
    fed.peers.write_text(toml_dumps({
        "coordinator": {"public_key": coordinator_pub.read_text().strip()},
        "sites": [{"id": s.site_id, "public_key": s.public_key} for s in fed.sites],
    }))
    fed.federation.write_text(toml_dumps({
        "federation": {"run_dir": "run"},
        "coordinator": {"host": "127.0.0.1", "port": port,
                        "identity": "keys/coordinator.key"},
        "sites": [{"id": s.site_id, "public_key": s.public_key} for s in fed.sites],
        "job": job_table,
    }))
    return fed


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # two cores: one torch thread per process keeps four processes from thrashing
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_server(fed: LocalFederation, log_name: str = "coordinator.out",
                 extra: list[str] | None = None) -> subprocess.Popen:
    with open(fed.root / log_name, "ab") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [sys.executable, "-m", "fedtune", "server", "--federation", str(fed.federation),
             "--insecure", "--linger", "5", *(extra or [])],
            stdout=out, stderr=subprocess.STDOUT, env=_env())


def start_site(fed: LocalFederation, site: SiteFiles, log_name: str | None = None,
               extra: list[str] | None = None) -> subprocess.Popen:
    with open(fed.root / (log_name or f"{site.site_id}.out"), "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fedtune", "site", "--coordinator", fed.address,
             "--site-id", site.site_id, "--identity", str(site.key), "--data", str(site.data),
             "--policy", str(site.policy), "--peers", str(fed.peers),
             "--state-dir", str(fed.state_dir(site)), "--insecure",
             *(extra or [])],
            stdout=out, stderr=subprocess.STDOUT, env=_env())


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def stop_processes(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate what is still running, and kill what has not ended ``grace`` seconds later."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
