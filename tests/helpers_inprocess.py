"""A coordinator started in this process and sites driven by hand over loopback gRPC.

The tests of bad input, authentication and TLS need to put one precise message in front of a
real coordinator at a precise moment (the offer phase of round 2, the input phase after a site
refused, ...). :class:`HandSite` is a site agent without a trainer: it authenticates with the
site's identity key, polls tasks, and sends exactly the messages a test builds, good or bad.
:class:`Federation` ties a running coordinator to its hand-driven sites and can finish the
current round with well-behaved inputs, which is how the tests show that a refused request
lost nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtune.federation import FederationConfig, load_federation
from fedtune.identity import load_identity, write_identity
from fedtune.local_federation import toml_dumps
from fedtune.privacy.signatures import auth_statement, sign
from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.server.app import RunningCoordinator, start
from fedtune.tensor_codec import CHUNK_BYTES, spec_for, to_bytes
from fedtune.transport import SESSION_METADATA

#: Deadline of every call a test makes: a hung coordinator fails the test instead of blocking.
CALL_TIMEOUT_S = 10.0
#: A tiny registry model (50 parameters): nothing in these tests trains it.
TINY_MODEL = {"id": "tabular-mlp", "input_dim": 4, "num_classes": 2, "hidden": 4}


# ---------------------------------------------------------------------------- files


def fast_job(model: dict[str, Any] | None = None, *, rounds: int = 10, min_sites: int = 1,
             gather: float = 2.0, offer: float = 10.0, input_s: float = 10.0) -> dict[str, Any]:
    """A plain-mode job whose phases end as soon as every site has answered."""
    return {
        "job_id": "test",
        "rounds": rounds,
        "min_sites": min_sites,
        "model": dict(model or TINY_MODEL),
        "training": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.05, "seed": 0,
                     "max_examples": 1000},
        "deadlines": {"gather": gather, "offer": offer, "input": input_s},
        # plain mode: these tests put single plaintext messages in front of the coordinator
        "secure_aggregation": {"enabled": False},
    }


def federation_tables(sites: Iterable[tuple[str, str]], job: dict[str, Any],
                      tls: dict[str, str] | None = None) -> dict[str, Any]:
    """The tables of a federation file for ``(site id, base64 public key)`` pairs."""
    coordinator: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    if tls is not None:
        coordinator["tls"] = dict(tls)
    return {
        "federation": {"run_dir": "run"},
        "coordinator": coordinator,
        "sites": [{"id": site_id, "public_key": key} for site_id, key in sites],
        "job": job,
    }


@dataclass
class FederationFiles:
    path: Path
    keys: dict[str, Path]

    def config(self) -> FederationConfig:
        return load_federation(self.path)

    def identity(self, site_id: str) -> Ed25519PrivateKey:
        return load_identity(self.keys[site_id])


def write_federation(root: Path, *, n_sites: int = 2, job: dict[str, Any] | None = None,
                     tls: dict[str, str] | None = None) -> FederationFiles:
    """Identity keys for ``site-1`` … ``site-N`` and a federation file enrolling them."""
    root.mkdir(parents=True, exist_ok=True)
    keys: dict[str, Path] = {}
    sites = []
    for i in range(1, n_sites + 1):
        site_id = f"site-{i}"
        key, pub = write_identity(root / "keys", site_id, force=True)
        keys[site_id] = key
        sites.append((site_id, pub.read_text().strip()))
    path = root / "federation.toml"
    path.write_text(toml_dumps(federation_tables(sites, job or fast_job(), tls)))
    return FederationFiles(path, keys)


@contextlib.contextmanager
def running(config: FederationConfig, **kwargs: Any) -> Iterator[RunningCoordinator]:
    """``server.app.start`` on a free loopback port (plaintext unless told otherwise)."""
    kwargs.setdefault("port", 0)
    kwargs.setdefault("insecure", True)
    coordinator = start(config, **kwargs)
    try:
        yield coordinator
    finally:
        coordinator.stop(grace=0.2)


# ---------------------------------------------------------------------------- messages


def good_metrics(weight: float = 2.0) -> pb.PlainMetrics:
    return pb.PlainMetrics(train_loss_sum=1.4, eval_loss_sum=0.7, eval_correct=1.0,
                           eval_count=2.0, train_count=weight, weight=weight)


def good_vector(expected: pb.TensorSpec, value: float = 0.01) -> np.ndarray:
    return np.full([int(d) for d in expected.shape], value, dtype="<f4")


def input_stream(ref: pb.RoundRef, vector: np.ndarray | None = None,
                 metrics: pb.PlainMetrics | None = None, *, spec: pb.TensorSpec | None = None,
                 data: bytes | None = None,
                 chunk_bytes: int = CHUNK_BYTES) -> list[pb.InputChunk]:
    """A SubmitInput stream: the header, then the data in chunks.

    ``spec`` and ``data`` default to the truthful spec and bytes of ``vector``; a test
    overrides one of them to lie about the other. ``metrics=None`` sends good metrics.
    """
    if spec is None:
        assert vector is not None
        spec = spec_for(vector)
    if data is None:
        assert vector is not None
        data = to_bytes(vector)
    if metrics is None:
        metrics = good_metrics()
    header = pb.InputHeader(ref=ref, vector=spec, metrics=metrics)
    stream = [pb.InputChunk(header=header)]
    stream += [pb.InputChunk(data=data[i:i + chunk_bytes])
               for i in range(0, len(data), chunk_bytes)]
    return stream


def spec_of(dtype: str, shape: list[int], data: bytes, nbytes: int | None = None) -> pb.TensorSpec:
    """A spec with any claims a test likes (spec_for only ever describes the truth)."""
    return pb.TensorSpec(dtype=dtype, shape=shape, nbytes=len(data) if nbytes is None else nbytes,
                         sha256=hashlib.sha256(data).digest())


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The error a call fails with; fails the test when the call succeeds."""
    try:
        result = call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"the call succeeded: {result!r}")


# ---------------------------------------------------------------------------- sites


class HandSite:
    """A site whose every message is written by the test."""

    def __init__(self, channel: grpc.Channel, site_id: str, key: Ed25519PrivateKey) -> None:
        self.channel = channel
        self.stub = pb_grpc.CoordinatorStub(channel)
        self.site_id = site_id
        self.key = key
        self.token = b""
        self.run_id = ""

    # -- authentication --------------------------------------------------------------------

    def hello(self) -> pb.Challenge:
        return self.stub.Hello(pb.HelloRequest(site_id=self.site_id), timeout=CALL_TIMEOUT_S)

    def signature(self, challenge: pb.Challenge) -> bytes:
        return sign(self.key, auth_statement(challenge.run_id, self.site_id, challenge.nonce))

    def authenticate(self, challenge: pb.Challenge | None = None) -> pb.Session:
        challenge = challenge or self.hello()
        session = self.stub.Authenticate(
            pb.AuthenticateRequest(site_id=self.site_id, nonce=challenge.nonce,
                                   signature=self.signature(challenge)),
            timeout=CALL_TIMEOUT_S)
        self.token, self.run_id = session.token, session.run_id
        return session

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [(SESSION_METADATA, self.token.hex())]

    # -- tasks -----------------------------------------------------------------------------

    def poll(self, wait_ms: int = 200) -> pb.Task:
        return self.stub.PollTask(pb.PollRequest(wait_ms=wait_ms), metadata=self.metadata,
                                  timeout=CALL_TIMEOUT_S + wait_ms / 1000)

    def next_task(self, kind: str, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Poll until a task of ``kind`` comes; skip waits and results of earlier rounds."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            task = self.poll(wait_ms=500)
            got = task.WhichOneof("kind")
            if got == kind:
                return getattr(task, kind)
            seen.append(got)
            if got not in ("wait", "round_result"):
                raise AssertionError(f"{self.site_id}: expected a {kind} task, got {got}")
        raise AssertionError(f"{self.site_id}: no {kind} task within {timeout} s (got {seen})")

    def answer(self, ref: pb.RoundRef, accept: bool = True, reason: str = "") -> pb.Ack:
        return self.stub.RespondOffer(pb.OfferResponse(ref=ref, accept=accept,
                                                       refusal_reason=reason),
                                      metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    def submit(self, stream: Iterable[pb.InputChunk]) -> pb.Ack:
        return self.stub.SubmitInput(iter(list(stream)), metadata=self.metadata,
                                     timeout=CALL_TIMEOUT_S)

    def submit_good(self, task: pb.SubmitInputTask, value: float = 0.01) -> pb.Ack:
        vector = good_vector(task.expected, value)
        # an evaluation-only round expects an empty vector and carries no update weight
        metrics = good_metrics() if vector.size else good_metrics(weight=0.0)
        return self.submit(input_stream(task.ref, vector, metrics))


def channel_to(address: str) -> grpc.Channel:
    # no send limit on the test's side: the coordinator's limit is what is under test
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])


# ---------------------------------------------------------------------------- federation


@dataclass
class Federation:
    """A running coordinator with hand-driven sites (see :func:`started_federation`)."""

    files: FederationFiles
    coordinator: RunningCoordinator
    channel: grpc.Channel
    sites: dict[str, HandSite] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    @property
    def stub(self) -> pb_grpc.CoordinatorStub:
        return pb_grpc.CoordinatorStub(self.channel)

    @property
    def checkpoint(self) -> Path:
        return self.coordinator.coordinator.run_dir / "checkpoint.npz"

    def checkpoint_bytes(self) -> bytes:
        return self.checkpoint.read_bytes() if self.checkpoint.exists() else b""

    def status(self) -> pb.FederationStatus:
        return self.stub.GetStatus(pb.StatusRequest(), timeout=CALL_TIMEOUT_S)

    def site(self, site_id: str) -> HandSite:
        if site_id not in self.sites:
            self.sites[site_id] = HandSite(self.channel, site_id,
                                           self.files.identity(site_id))
        return self.sites[site_id]

    def wait_for(self, what: Callable[[pb.FederationStatus], bool],
                 timeout: float = CALL_TIMEOUT_S) -> pb.FederationStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if what(status):
                return status
            time.sleep(0.02)
        raise AssertionError(f"status never matched within {timeout} s: {self.status()}")

    def finish_round(self, timeout: float = CALL_TIMEOUT_S) -> pb.FederationStatus:
        """Let every site behave well until the current (or next) round has released."""
        status = self.status()
        first = status.round or max((h.round for h in status.history), default=0) + 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for site in self.sites.values():
                task = site.poll(wait_ms=50)
                kind = task.WhichOneof("kind")
                if kind == "offer":
                    site.answer(task.offer.ref)
                elif kind == "submit_input":
                    site.submit_good(task.submit_input)
            status = self.status()
            if any(h.round >= first and not h.aborted for h in status.history):
                return status
        raise AssertionError(f"no round from round {first} on completed within {timeout} s")


@contextlib.contextmanager
def started_federation(root: Path, *, n_sites: int = 2, job: dict[str, Any] | None = None,
                       completed_rounds: int = 1,
                       join: Iterable[str] | None = None) -> Iterator[Federation]:
    """A coordinator with ``n_sites`` authenticated hand sites and a checkpoint on disk.

    The sites in ``join`` (default: all) authenticate; the federation completes
    ``completed_rounds`` well-behaved rounds (so ``checkpoint.npz`` exists) and is handed over
    once the next round offers its job, in the offer phase with nobody answered.
    """
    files = write_federation(root, n_sites=n_sites, job=job)
    with running(files.config()) as coordinator:
        channel = channel_to(f"127.0.0.1:{coordinator.port}")
        fed = Federation(files, coordinator, channel)
        try:
            joining = list(files.keys if join is None else join)
            challenges = [(fed.site(s), fed.site(s).hello()) for s in joining]
            for site, challenge in challenges:  # back to back: every site joins round 1
                site.authenticate(challenge)
            for _ in range(completed_rounds):
                fed.finish_round()
            fed.wait_for(lambda s: s.round > completed_rounds and s.phase == pb.PHASE_OFFER)
            yield fed
        finally:
            channel.close()


# ---------------------------------------------------------------------------- logs


class EventLog(logging.Handler):
    """Collects the structured events (``fedtune.logs.log_event``) of one logger tree."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        found = []
        for record in self.records:
            recorded = getattr(record, "fields", {}) or {}
            if getattr(record, "event", None) == event and all(
                    recorded.get(k) == v for k, v in fields.items()):
                found.append(dict(recorded, level=record.levelname))
        return found


@contextlib.contextmanager
def recorded_events(logger_name: str = "fedtune") -> Iterator[EventLog]:
    """Record every event under ``logger_name`` whatever handlers the CLI installed."""
    logger = logging.getLogger(logger_name)
    handler, level = EventLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def preserved_logging(logger_name: str = "fedtune") -> Iterator[None]:
    """Undo what ``fedtune.logs.configure`` (run by the CLI) does to the ``fedtune`` logger."""
    logger = logging.getLogger(logger_name)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield
    finally:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
