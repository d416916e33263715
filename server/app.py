"""Builds and runs the coordinator's gRPC server: TLS, health checking, reflection.

Operators get the conventions of gRPC services (DESIGN.md §5b): ``grpc.health.v1`` reports
SERVING while the run is live and NOT_SERVING once it has finished, and server reflection lets
stock tools such as ``grpcurl`` list and call the API.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedtune.federation import FederationConfig, TLSConfig
from fedtune.logs import log_event
from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.server.behaviour import HonestBehaviour
from fedtune.server.coordinator import Coordinator
from fedtune.server.servicer import CoordinatorServicer
from fedtune.transport import MAX_MESSAGE_BYTES, is_loopback

log = logging.getLogger("fedtune.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # a second coordinator must not share the port (and split the sites between two runs)
    ("grpc.so_reuseport", 0),
]


class InsecureNotAllowed(ValueError):
    pass


class RunDirLocked(ValueError):
    pass


def lock_run_dir(run_dir: Path) -> int:
    """An exclusive lock on the run directory: one coordinator per run, also on restart."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirLocked(f"{run_dir}: another coordinator is running on this run directory") \
            from None
    return fd


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


@dataclass
class RunningCoordinator:
    coordinator: Coordinator
    server: grpc.Server
    port: int
    thread: threading.Thread
    health: health.HealthServicer
    lock: int = -1

    def wait(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def stop(self, grace: float = 1.0) -> None:
        self.coordinator.stop()
        self.thread.join(timeout=10)
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if not self.thread.is_alive():  # the run loop may still be writing otherwise
            self.coordinator.close()
        if self.lock >= 0:
            os.close(self.lock)  # releases the run directory's lock
            self.lock = -1


def start(config: FederationConfig, *, host: str | None = None, port: int | None = None,
          insecure: bool = False, run_dir: Path | None = None,
          behaviour: HonestBehaviour | None = None) -> RunningCoordinator:
    """Start serving and the run loop in the background; return handles to both."""
    host = host or config.host
    port = config.port if port is None else port
    if config.tls is None and not insecure:
        raise InsecureNotAllowed(
            f"{config.path}: coordinator.tls is not set; configure TLS or pass --insecure "
            "(allowed on a loopback address only)")
    if insecure and not is_loopback(host):  # also when TLS is configured but --insecure skips it
        raise InsecureNotAllowed(f"--insecure is allowed only on loopback, not on {host!r}")
    lock = lock_run_dir(run_dir or config.run_dir)
    try:
        coordinator = Coordinator(config, run_dir=run_dir, behaviour=behaviour)
    except BaseException:  # e.g. a transcript that does not verify: free the run directory
        os.close(lock)
        raise
    # each site holds one long poll and at most one other call; beyond the pool, calls are
    # refused at once (RESOURCE_EXHAUSTED) instead of queueing behind long polls
    workers = max(16, 3 * len(config.sites) + 8)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="fedtune-rpc"),
                         options=SERVER_OPTIONS, maximum_concurrent_rpcs=workers)
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(coordinator), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if config.tls is not None and not insecure:
        bound = server.add_secure_port(address, server_credentials(config.tls))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def run() -> None:
        try:
            coordinator.run()
        except Exception:  # the run loop must never die silently
            log.exception("run loop crashed")
            coordinator.failure = "run loop crashed (see log)"
        finally:
            for name in ("", SERVICE_NAME):
                health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    thread = threading.Thread(target=run, name="fedtune-run", daemon=True)
    thread.start()
    log_event(log, "coordinator_listening", run=coordinator.run_id, address=f"{host}:{bound}",
              tls=config.tls is not None and not insecure,
              mutual_tls=bool(config.tls and config.tls.client_ca and not insecure),
              sites=[s.id for s in config.sites], rounds=config.job.rounds,
              completed_rounds=coordinator.completed_rounds)
    return RunningCoordinator(coordinator, server, bound, thread, health_servicer, lock)
