"""Round overhead with training switched off: transport vs coordinator work, bytes per parameter.

What it runs
    The real coordinator (``fedtune.server.app.start``, in this process, insecure loopback,
    port 0) and ``n`` real site agents (:class:`fedtune.client.agent.SiteAgent`) as threads of
    this process, talking real gRPC over 127.0.0.1. The agents do no work: a subclass returns
    a fixed float32 vector from ``compute_input`` and a one-row data set from ``_site_data``,
    so everything left in a round is protocol: polling, offers, parameter download, input
    upload, validation, aggregation, the server optimiser and the checkpoint.

What it measures (per sites × parameters; the first training round is a warm-up, the final
evaluation-only round is left out)
    * round time: ``round_started`` → ``round_completed`` of the coordinator's structured log;
    * coordinator work: time the run loop spends in ``WeightedSum.add``/``mean_delta``,
      ``ServerOptimizer.step`` and ``Coordinator._checkpoint`` (which calls
      ``checkpoint.save``), timed by wrapping those functions;
    * site work: wall time during which at least one site is in ``compute_input``,
      ``_site_data`` or ``models.build_model`` (≈ 0 here, measured anyway);
    * transport = round − coordinator work − site work;
    * message round trip: median of 200 unary ``GetStatus`` and ``PollTask(wait_ms=0)`` calls
      over one loopback channel (run idle, after the rounds);
    * bytes uploaded per parameter: serialized ``InputChunk`` messages of one site's
      submission ÷ parameter count, and the same with the site's other requests added.

Baselines (same invocation, so the report is ratios, not seconds from a noisy machine)
    * memory floor: ``total += v`` in float64 over the ``n`` site vectors (numpy);
    * raw gRPC: ``n`` threads, one channel each, download and upload the same bytes in the same
      1 MiB chunks against a bare generic gRPC server (no protobuf, no coordinator logic);
    * raw unary round trip: a bytes echo on that server.

Run ``python bench/round_overhead.py --help``; ``bench/README.md`` explains the columns.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import logging
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedtune import models, tensor_codec
from fedtune.client import agent as agent_module
from fedtune.client.agent import SiteAgent, SiteAgentConfig
from fedtune.client.data import SiteData
from fedtune.federation import FederationConfig, load_federation
from fedtune.identity import load_identity, write_identity
from fedtune.job import JobConfig, ModelConfig
from fedtune.local_federation import default_job, toml_dumps
from fedtune.policy import PolicyConfig
from fedtune.privacy.signatures import auth_statement, sign
from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.server import app
from fedtune.server import checkpoint as ckpt
from fedtune.server import coordinator as coordinator_module
from fedtune.server.aggregation import WeightedSum
from fedtune.server.coordinator import Coordinator
from fedtune.server.optimisers import ServerOptimizer
from fedtune.tensor_codec import CHUNK_BYTES, TensorAssembler
from fedtune.transport import CHANNEL_OPTIONS, open_channel

TARGET_RTT_MS = 20.0
TARGET_UPLOAD_BYTES_PER_PARAM = 4.1
TARGET_ROUND_S = 1.0
TARGET_ROUND_AT = (10, 1_000_000)  # (sites, parameters) the round target applies to

NUM_CLASSES = 2
LATENCY_CALLS = 200
HOST = "127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results" / "round_overhead.json"

#: timed spans that are coordinator work (run-loop thread, inside the round window)
COORDINATOR_SPANS = ("aggregate", "optimiser", "checkpoint")
#: timed spans that are a site's local work (site threads)
SITE_SPANS = ("site_data", "compute_input", "build_model")


# ---------------------------------------------------------------------------- timing spans


@dataclass(frozen=True)
class Span:
    name: str
    thread: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Recorder:
    """Collects timed spans from every thread (``list.append`` is atomic under the GIL)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def reset(self) -> None:
        self.spans = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans.append(Span(name, threading.current_thread().name, start, time.time()))

        return timed


@contextlib.contextmanager
def instrumented(recorder: Recorder) -> Iterator[None]:
    """Wrap the library functions whose time we attribute, and restore them afterwards.

    Times use ``time.time()``, the clock of ``LogRecord.created``, so spans and the
    coordinator's log events share one time line.
    """
    patches: list[tuple[Any, str, str]] = [
        # coordinator work (run loop)
        (WeightedSum, "add", "aggregate"),
        (WeightedSum, "mean_delta", "aggregate"),
        (ServerOptimizer, "step", "optimiser"),
        (Coordinator, "_checkpoint", "checkpoint"),
        (ckpt, "save", "checkpoint_save"),
        (Coordinator, "_claim_round_id", "claim_round_id"),
        # coordinator work on the RPC threads (in parallel with transport)
        (Coordinator, "submit_input", "server_intake"),
        (coordinator_module, "spec_for", "server_offer_spec"),
        (tensor_codec, "spec_for", "server_download_spec"),  # via iter_chunks (GetParameters)
        (TensorAssembler, "finish", "verify"),  # server: received input; site: parameters
        (agent_module, "spec_for", "site_input_spec"),
        # site work
        (models, "build_model", "build_model"),
    ]
    saved = [(obj, attr, obj.__dict__[attr]) for obj, attr, _ in patches]
    try:
        for obj, attr, name in patches:
            setattr(obj, attr, recorder.wrap(name, getattr(obj, attr)))
        yield
    finally:
        for obj, attr, original in saved:
            setattr(obj, attr, original)


class EventLog(logging.Handler):
    """Keeps the coordinator's structured events (``log_event``'s ``record.fields``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[float, str, dict[str, Any], int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(getattr(record, "fields", None) or {})
        event = getattr(record, "event", None) or record.getMessage()
        self.events.append((record.created, event, fields, record.levelno))


@contextlib.contextmanager
def capture_server_events() -> Iterator[EventLog]:
    logger = logging.getLogger("fedtune.server")
    handler = EventLog()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


#: functions in which a thread waits rather than works; left out of the profile listing
_WAITS = ("wait", "_next", "next_event", "get", "join", "result", "_wait_once", "_blocking",
          "channel_spin", "_serve", "_worker", "run", "<module>")
#: built-in methods in which a thread waits (cProfile names them ``<method 'NAME' of ...>``)
_WAIT_BUILTINS = ("'acquire'", "'__enter__' of '_thread.RLock'", "'_acquire_restore'",
                  "'wait'", "'poll'", "'select'", "sleep")


@contextlib.contextmanager
def profiled_threads(top: int, dump: Path) -> Iterator[None]:
    """cProfile every thread started inside the block (and this one); print the hot spots.

    cProfile only sees the thread that enabled it, so ``threading.Thread.run`` is wrapped to
    give each new thread (site agents, the run loop, gRPC's worker pool) its own profiler;
    the profiles are merged at the end. Timings under cProfile are inflated; read the ranks.
    """
    profiles: list[cProfile.Profile] = []
    original_run = threading.Thread.run

    def run(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            original_run(thread)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign,assignment]
    main_profile = cProfile.Profile()
    main_profile.enable()
    try:
        yield
    finally:
        main_profile.disable()
        threading.Thread.run = original_run  # type: ignore[method-assign]
        stats = pstats.Stats(main_profile)
        for profile in profiles:
            stats.add(profile)
        dump.parent.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(dump)
        busy = {key: value for key, value in stats.stats.items()  # type: ignore[attr-defined]
                if key[2] not in _WAITS and not any(w in key[2] for w in _WAIT_BUILTINS)}
        stats.stats = busy  # type: ignore[attr-defined]
        text = io.StringIO()
        stats.stream = text  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(top)
        print(f"\nProfile, all threads, waits left out (full profile: {dump})")
        print("\n".join(line for line in text.getvalue().splitlines()
                        if line.strip() and not line.startswith(("   Ordered", "   List"))))


# ---------------------------------------------------------------------------- zero-work site


@dataclass
class Traffic:
    """Serialized message bytes one site sent and received (``ByteSize()`` =
    ``len(SerializeToString())``; gRPC's 5-byte message prefix and HTTP/2 framing excluded)."""

    input_bytes: dict[int, int] = field(default_factory=dict)  # round → InputChunk bytes
    input_messages: dict[int, int] = field(default_factory=dict)
    other_sent: int = 0  # every other request (Hello, PollTask, RespondOffer, ...)
    other_calls: int = 0
    parameter_bytes: dict[int, int] = field(default_factory=dict)  # round → TensorChunk bytes
    other_received: int = 0


class _CountingStub:
    """Wraps a ``CoordinatorStub`` and counts the serialized size of what crosses it."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, traffic: Traffic) -> None:
        self._stub = stub
        self._traffic = traffic

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self._stub, method)
        traffic = self._traffic
        if method == "SubmitInput":  # its request stream is counted in _input_stream
            def submit(requests: Iterator[pb.InputChunk], **kwargs: Any) -> Any:
                response = call(requests, **kwargs)
                traffic.other_received += response.ByteSize()
                return response
            return submit
        if method == "GetParameters":
            def download(request: Any, **kwargs: Any) -> Iterator[pb.TensorChunk]:
                traffic.other_sent += request.ByteSize()
                traffic.other_calls += 1
                received = 0
                for chunk in call(request, **kwargs):
                    received += chunk.ByteSize()
                    yield chunk
                traffic.parameter_bytes[request.ref.round] = received
            return download

        def unary(request: Any, **kwargs: Any) -> Any:
            traffic.other_sent += request.ByteSize()
            traffic.other_calls += 1
            response = call(request, **kwargs)
            traffic.other_received += response.ByteSize()
            return response
        return unary


class ZeroWorkSite(SiteAgent):
    """A site agent whose trainer does nothing: the round is all protocol.

    ``compute_input`` returns a fixed float32 vector (drawn once, so nothing downstream can
    profit from zeros) and trivial metrics; ``_site_data`` returns one row, so no file is read.
    """

    def __init__(self, config: SiteAgentConfig, size: int, input_dim: int, seed: int,
                 recorder: Recorder) -> None:
        super().__init__(config)
        self.traffic = Traffic()
        self._vector = (np.random.default_rng(seed).standard_normal(size) * 1e-3).astype(np.float32)
        one_row = SiteData(np.zeros((1, input_dim), dtype=np.float32), np.zeros(1, dtype=np.int64))
        self._one_row = (one_row, one_row)
        self._timed_site_data = recorder.wrap("site_data", lambda: self._one_row)
        self._timed_compute = recorder.wrap("compute_input", self._zero_work)

    def _open_channel(self) -> None:
        super()._open_channel()
        assert self._stub is not None
        self._stub = _CountingStub(self._stub, self.traffic)  # type: ignore[assignment,has-type]

    def _site_data(self, model: ModelConfig, job: JobConfig) -> tuple[SiteData, SiteData]:
        return self._timed_site_data()

    def compute_input(self, job: JobConfig, global_params: np.ndarray, evaluate_only: bool,
                      round_id: int) -> tuple[np.ndarray, pb.PlainMetrics]:
        return self._timed_compute(evaluate_only)

    def _zero_work(self, evaluate_only: bool) -> tuple[np.ndarray, pb.PlainMetrics]:
        if evaluate_only:
            return np.zeros(0, dtype=np.float32), pb.PlainMetrics(eval_count=1)
        return self._vector, pb.PlainMetrics(train_loss_sum=0.0, train_count=1, eval_count=1,
                                             weight=1.0)

    def _input_stream(self, ref: pb.RoundRef, vector: np.ndarray,  # type: ignore[override]
                      metrics: pb.PlainMetrics, spec: pb.TensorSpec | None = None
                      ) -> Iterator[pb.InputChunk]:
        total = count = 0
        for message in SiteAgent._input_stream(ref, vector, metrics, spec):
            total += message.ByteSize()
            count += 1
            yield message
        self.traffic.input_bytes[ref.round] = total
        self.traffic.input_messages[ref.round] = count


# ---------------------------------------------------------------------------- the federation


def parse_count(text: str) -> int:
    """``100k`` → 100000, ``1M`` → 1000000, ``2500`` → 2500."""
    t = text.strip()
    scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(t[-1:], 1)
    number = float(t[:-1] if scale != 1 else t)
    value = round(number * scale)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need a positive count")
    return value


def mlp_for(target: int) -> tuple[int, int, int]:
    """``tabular-mlp`` (input_dim, hidden, exact trainable count) closest to ``target``.

    Count = input_dim·h + h + h·h + h + h·c + c (three Linear layers, c = 2 classes); h is the
    power of two nearest √(target/4), so the first layer holds most of the parameters.
    """
    hidden = int(min(1024, max(8, 2 ** round(math.log2(math.sqrt(target / 4))))))
    c = NUM_CLASSES
    fixed = hidden * hidden + 2 * hidden + hidden * c + c
    input_dim = max(1, round((target - fixed) / hidden))
    return input_dim, hidden, input_dim * hidden + fixed


@dataclass
class Federation:
    config: FederationConfig
    keys: dict[str, Any]
    run_dir: Path
    root: Path


def write_federation(root: Path, n_sites: int, input_dim: int, hidden: int,
                     training_rounds: int) -> Federation:
    """Keys, a federation file with a zero-wait job, parsed back with ``load_federation``."""
    keys = {}
    site_tables = []
    for i in range(1, n_sites + 1):
        site_id = f"site-{i}"
        key_path, pub_path = write_identity(root / "keys", site_id, force=True)
        keys[site_id] = load_identity(key_path)
        site_tables.append({"id": site_id, "public_key": pub_path.read_text().strip()})
    job = default_job({"id": "tabular-mlp", "input_dim": input_dim, "hidden": hidden,
                       "num_classes": NUM_CLASSES}, training_rounds, min_sites=n_sites,
                      secure=False)  # plain rounds: bench/secagg.py measures secure ones
    job["job_id"] = "round-overhead"
    job["training"]["weighting"] = "uniform"
    # All sites answer at once: only `gather` could make a round wait; the other two are
    # generous ceilings so a stuck benchmark fails instead of hanging.
    job["deadlines"] = {"gather": 0.5, "offer": 30.0, "input": 60.0}
    path = root / "federation.toml"
    path.write_text(toml_dumps({
        "federation": {"run_dir": "run"},
        "coordinator": {"host": HOST, "port": 0},
        "sites": site_tables,
        "job": job,
    }))
    config = load_federation(path)
    return Federation(config, keys, root / "run", root)


# ---------------------------------------------------------------------------- measurements


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` (wall time during which any of them runs)."""
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def unary_latency_ms(call: Callable[[], Any], n: int = LATENCY_CALLS, warmup: int = 20) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return median(samples) * 1e3


def protocol_latency(port: int, fed: Federation) -> dict[str, float]:
    """Median round trip of GetStatus and PollTask(wait_ms=0) over one loopback channel."""
    channel = open_channel(f"{HOST}:{port}", insecure=True)
    try:
        stub = pb_grpc.CoordinatorStub(channel)
        status_ms = unary_latency_ms(lambda: stub.GetStatus(pb.StatusRequest(), timeout=5))
        site_id = fed.config.sites[0].id
        challenge = stub.Hello(pb.HelloRequest(site_id=site_id), timeout=5)
        signature = sign(fed.keys[site_id], auth_statement(challenge.run_id, site_id,
                                                            challenge.nonce))
        session = stub.Authenticate(pb.AuthenticateRequest(
            site_id=site_id, nonce=challenge.nonce, signature=signature), timeout=5)
        metadata = [(agent_module.SESSION_METADATA, session.token.hex())]
        poll_ms = unary_latency_ms(lambda: stub.PollTask(pb.PollRequest(wait_ms=0),
                                                         metadata=metadata, timeout=5))
    finally:
        channel.close()
    return {"get_status_ms": status_ms, "poll_task_ms": poll_ms}


def memory_floor_s(n_sites: int, size: int, repeats: int = 5) -> float:
    """``total += v`` over ``n_sites`` float64 vectors: the memory-rate floor of the sum."""
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(size) for _ in range(n_sites)]
    total = np.zeros(size, dtype=np.float64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for v in vectors:
            np.add(total, v, out=total)
        times.append(time.perf_counter() - start)
    return median(times)


_RAW_SERVICE = "fedtune.bench.Raw"


def raw_grpc_baseline(n_sites: int, size: int, repeats: int) -> dict[str, Any]:
    """The same bytes through bare loopback gRPC: no protobuf, no checks, no coordinator.

    Each of ``n_sites`` threads (one channel each, as the sites) downloads ``4·size`` bytes as
    a server stream and uploads them as a client stream, in ``CHUNK_BYTES`` messages.
    """
    payload = np.random.default_rng(1).standard_normal(size).astype("<f4").tobytes()
    chunks = [payload[i:i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)]

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from chunks

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        received = sum(len(chunk) for chunk in requests)
        return received.to_bytes(8, "little")

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handlers = {
        "Download": grpc.unary_stream_rpc_method_handler(download),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
    }
    workers = max(16, 4 * n_sites + 8)  # as fedtune.server.app.start
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=app.SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_RAW_SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    channels = [grpc.insecure_channel(f"{HOST}:{port}", options=CHANNEL_OPTIONS)
                for _ in range(n_sites)]
    try:
        def one_site(channel: grpc.Channel) -> None:
            got = sum(len(c) for c in channel.unary_stream(f"/{_RAW_SERVICE}/Download")(b"", timeout=60))
            sent = channel.stream_unary(f"/{_RAW_SERVICE}/Upload")(iter(chunks), timeout=60)
            assert got == len(payload) and int.from_bytes(sent, "little") == len(payload)

        def one_round() -> float:
            threads = [threading.Thread(target=one_site, args=(c,)) for c in channels]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - start

        one_round()  # warm-up: connections, HTTP/2 windows
        rounds = [one_round() for _ in range(repeats)]
        echo_call = channels[0].unary_unary(f"/{_RAW_SERVICE}/Echo")
        echo_ms = unary_latency_ms(lambda: echo_call(b"x" * 16, timeout=5))
    finally:
        for c in channels:
            c.close()
        server.stop(0).wait()
    return {"raw_grpc_round_s": median(rounds), "raw_grpc_rounds_s": rounds,
            "raw_echo_ms": echo_ms}


# ---------------------------------------------------------------------------- one configuration


def _between(spans: list[Span], start: float, end: float) -> list[Span]:
    return [s for s in spans if start <= s.start and s.end <= end]


def run_config(n_sites: int, target_params: int, measured_rounds: int, recorder: Recorder
               ) -> dict[str, Any]:
    input_dim, hidden, expected = mlp_for(target_params)
    warmup = 1
    training_rounds = warmup + measured_rounds
    result: dict[str, Any] = {
        "sites": n_sites, "params_target": target_params, "params": expected,
        "model": {"id": "tabular-mlp", "input_dim": input_dim, "hidden": hidden,
                  "num_classes": NUM_CLASSES},
        "rounds_measured": measured_rounds, "warmup_rounds": warmup,
    }
    with tempfile.TemporaryDirectory(prefix="fedtune-bench-") as tmp, \
            capture_server_events() as events:
        fed = write_federation(Path(tmp), n_sites, input_dim, hidden, training_rounds)
        recorder.reset()
        running = app.start(fed.config, host=HOST, port=0, insecure=True, run_dir=fed.run_dir)
        size = int(running.coordinator.params.size)
        if size != expected:
            raise AssertionError(f"parameter count {size} != formula {expected}")
        agents = [ZeroWorkSite(SiteAgentConfig(
            coordinator=f"{HOST}:{running.port}", site_id=s.id, identity=fed.keys[s.id],
            data_path=fed.root / "unused.csv", policy=PolicyConfig(("tabular-mlp",)),
            give_up_after_s=30.0), size, input_dim, seed=i, recorder=recorder)
            for i, s in enumerate(fed.config.sites)]
        threads = [threading.Thread(target=a.run, name=a.config.site_id, daemon=True)
                   for a in agents]
        try:
            started = time.perf_counter()
            for t in threads:
                t.start()
            budget = 60.0 + 15.0 * (training_rounds + 1) * max(1.0, n_sites * size / 1e7)
            if not running.wait(timeout=budget):
                raise TimeoutError(f"the run did not finish within {budget:.0f} s")
            for t in threads:
                t.join(timeout=30)
            result["run_wall_s"] = time.perf_counter() - started
            if running.coordinator.failure:
                raise RuntimeError(f"coordinator failed: {running.coordinator.failure}")
            result["latency"] = protocol_latency(running.port, fed)
        finally:
            for a in agents:
                a.stop()
            running.stop(grace=0.5)
            for t in threads:
                t.join(timeout=10)
        spans = list(recorder.spans)
        event_list = list(events.events)

    result.update(_round_stats(event_list, spans, agents, size, warmup))
    return result


def _round_stats(event_list: list[tuple[float, str, dict[str, Any], int]], spans: list[Span],
                 agents: list[ZeroWorkSite], size: int, warmup: int) -> dict[str, Any]:
    starts: dict[int, tuple[float, dict[str, Any]]] = {}
    input_phase: dict[int, float] = {}
    completed: dict[int, float] = {}
    problems = []
    for created, event, fields, level in event_list:
        r = int(fields.get("round") or 0)
        if event == "round_started":
            starts[r] = (created, fields)
        elif event == "phase_started" and fields.get("phase") == "masked_input":
            input_phase[r] = created
        elif event == "round_completed":
            completed[r] = created
        if level >= logging.WARNING:
            problems.append({"event": event, **{k: str(v) for k, v in fields.items()}})

    training = sorted(r for r, (_, f) in starts.items() if not f.get("evaluate_only"))
    measured = [r for r in training[warmup:] if r in completed]
    ordered_starts = sorted(t for t, _ in starts.values())
    rounds: list[dict[str, Any]] = []
    for r in measured:
        t0, t1 = starts[r][0], completed[r]
        inside = _between(spans, t0, t1)
        coordinator_s = {name: sum(s.seconds for s in inside
                                   if s.name == name and s.thread == "fedtune-run")
                         for name in COORDINATOR_SPANS}
        site_s = union_seconds([(s.start, s.end) for s in inside
                                if s.name in SITE_SPANS and s.thread.startswith("site-")])
        round_s = t1 - t0
        coord_total = sum(coordinator_s.values())
        later = [t for t in ordered_starts if t > t0]
        rpc = {name: sum(s.seconds for s in inside if s.name == name)
               for name in ("server_intake", "server_offer_spec", "server_download_spec",
                            "site_input_spec")}
        rpc["server_verify"] = sum(s.seconds for s in inside
                                   if s.name == "verify" and not s.thread.startswith("site-"))
        rpc["site_verify"] = sum(s.seconds for s in inside
                                 if s.name == "verify" and s.thread.startswith("site-"))
        rounds.append({
            "round": r,
            "round_s": round_s,
            "offer_phase_s": input_phase.get(r, t1) - t0,
            "input_phase_s": t1 - input_phase.get(r, t0),
            "cycle_s": (later[0] - t0) if later else None,
            "coordinator_s": coord_total,
            "coordinator_breakdown_s": coordinator_s,
            "checkpoint_save_s": sum(s.seconds for s in inside if s.name == "checkpoint_save"),
            "site_s": site_s,
            "site_breakdown_thread_s": {name: sum(s.seconds for s in inside if s.name == name
                                                  and s.thread.startswith("site-"))
                                        for name in SITE_SPANS},
            "transport_s": round_s - coord_total - site_s,
            "rpc_thread_s": rpc,
        })
    claims = [s.seconds for s in spans if s.name == "claim_round_id"]

    training_rounds_done = [r for r in training if r in completed]
    per_site_input = [a.traffic.input_bytes[r] for a in agents for r in training_rounds_done
                      if r in a.traffic.input_bytes]
    input_bytes = median([float(b) for b in per_site_input])
    all_rounds = len(completed)
    other_sent = median([a.traffic.other_sent / max(all_rounds, 1) for a in agents])
    params_down = median([float(a.traffic.parameter_bytes[r]) for a in agents
                          for r in training_rounds_done if r in a.traffic.parameter_bytes])

    def med(key: str) -> float:
        return median([x[key] for x in rounds])

    cycles = [x["cycle_s"] for x in rounds if x["cycle_s"] is not None]
    return {
        "rounds": rounds,
        "round_s": med("round_s"),
        "cycle_s": median(cycles),
        "offer_phase_s": med("offer_phase_s"),
        "input_phase_s": med("input_phase_s"),
        "coordinator_s": med("coordinator_s"),
        "coordinator_breakdown_s": {name: median([x["coordinator_breakdown_s"][name]
                                                  for x in rounds])
                                    for name in COORDINATOR_SPANS},
        "checkpoint_save_s": med("checkpoint_save_s"),
        "claim_round_id_s": median(claims),
        "site_s": med("site_s"),
        "site_breakdown_thread_s": {name: median([x["site_breakdown_thread_s"][name]
                                                  for x in rounds]) for name in SITE_SPANS},
        "transport_s": med("transport_s"),
        "rpc_thread_s": {k: median([x["rpc_thread_s"][k] for x in rounds])
                             for k in (rounds[0]["rpc_thread_s"] if rounds else {})},
        "bytes": {
            "input_chunk_bytes_per_site_round": input_bytes,
            "input_messages_per_site_round": median([float(m) for a in agents
                                                     for m in a.traffic.input_messages.values()]),
            "other_request_bytes_per_site_round": other_sent,
            "upload_bytes_per_param": input_bytes / size,
            "upload_bytes_per_param_with_requests": (input_bytes + other_sent) / size,
            "download_bytes_per_param": params_down / size,
        },
        "warnings": problems,
    }


# ---------------------------------------------------------------------------- report


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def print_table(results: list[dict[str, Any]], measured_rounds: int) -> None:
    print()
    print(f"Round overhead, zero-work sites (threads in this process, real loopback gRPC, "
          f"insecure 127.0.0.1); median of {measured_rounds} rounds after 1 warm-up round")
    header = ("sites", "params", "round s", "coord s", "site s", "transport s", "×raw gRPC",
              "×np.add", "RTT ms Status/Poll/raw", "up B/param")
    rows = []
    for r in results:
        if "error" in r:
            rows.append((str(r["sites"]), f"{r['params']:,}", "failed: " + r["error"][:60],
                         "", "", "", "", "", "", ""))
            continue
        lat = r["latency"]
        b = r["bytes"]
        rows.append((
            str(r["sites"]), f"{r['params']:,}", _fmt(r["round_s"]), _fmt(r["coordinator_s"]),
            _fmt(r["site_s"]), _fmt(r["transport_s"]),
            _fmt(r["round_s"] / r["baseline"]["raw_grpc_round_s"], 1),
            _fmt(r["round_s"] / r["baseline"]["np_add_s"], 0),
            (f"{lat['get_status_ms']:.2f}/{lat['poll_task_ms']:.2f}/"
            f"{r['baseline']['raw_echo_ms']:.2f}"),
            f"{b['upload_bytes_per_param']:.4f}",
        ))
    _print_rows(header, rows)

    print()
    print("Where the time goes (seconds per round, medians; thread-s = span wall time summed "
          "over threads, GIL waits included)")
    header2 = ("sites", "params", "offer ph", "input ph", "aggregate", "optimiser", "checkpoint",
               "(fsync'd save)", "raw gRPC s", "np.add s", "srv codec thread-s",
               "site codec thread-s", "cycle s")
    rows2 = []
    for r in results:
        if "error" in r:
            continue
        c, rpc = r["coordinator_breakdown_s"], r["rpc_thread_s"]
        server_codec = (rpc["server_offer_spec"] + rpc["server_download_spec"]
                        + rpc["server_verify"] + rpc["server_intake"])
        rows2.append((
            str(r["sites"]), f"{r['params']:,}", _fmt(r["offer_phase_s"]),
            _fmt(r["input_phase_s"]), _fmt(c["aggregate"], 4), _fmt(c["optimiser"], 4),
            _fmt(c["checkpoint"], 4), _fmt(r["checkpoint_save_s"], 4),
            _fmt(r["baseline"]["raw_grpc_round_s"]), _fmt(r["baseline"]["np_add_s"], 4),
            _fmt(server_codec), _fmt(rpc["site_input_spec"] + rpc["site_verify"]),
            _fmt(r["cycle_s"]),
        ))
    _print_rows(header2, rows2)

    print()
    print("Targets")
    for r in results:
        if "error" in r:
            continue
        lat = max(r["latency"]["get_status_ms"], r["latency"]["poll_task_ms"])
        up = r["bytes"]["upload_bytes_per_param"]
        line = (f"  {r['sites']:>2} sites × {r['params']:>9,}: RTT {lat:.2f} ms "
                f"{'ok' if lat < TARGET_RTT_MS else 'MISSED'} (< {TARGET_RTT_MS:g} ms); "
                f"upload {up:.4f} B/param {'ok' if up <= TARGET_UPLOAD_BYTES_PER_PARAM else 'MISSED'}"
                f" (≤ {TARGET_UPLOAD_BYTES_PER_PARAM}); with other requests "
                f"{r['bytes']['upload_bytes_per_param_with_requests']:.4f}")
        if (r["sites"], r["params_target"]) == TARGET_ROUND_AT:
            ok = r["round_s"] < TARGET_ROUND_S
            line += (f"; round {r['round_s']:.3f} s {'ok' if ok else 'MISSED'} "
                     f"(< {TARGET_ROUND_S:g} s)")
        print(line)
        if r["warnings"]:
            print(f"     {len(r['warnings'])} warning event(s) from the coordinator, first: "
                  f"{r['warnings'][0]}")


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="3,10,20",
                        help="comma-separated site counts (default 3,10,20)")
    parser.add_argument("--params", default="100k,1M",
                        help="comma-separated parameter counts, k/M suffixes (default 100k,1M)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured rounds per configuration, after 1 warm-up round (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 sites × 100k, 2 measured rounds")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default bench/results/round_overhead.json, "
                             "or round_overhead.profiled.json with --profile)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile every thread and print the hot spots (inflates timings)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sites, args.params, args.rounds = "3", "100k", 2
    sites = [int(s) for s in args.sites.split(",") if s.strip()]
    params = [parse_count(p) for p in args.params.split(",") if p.strip()]
    if args.rounds < 1 or not sites or min(sites) < 1:
        parser.error("--rounds and every --sites value must be at least 1")

    recorder = Recorder()
    results = []
    started = time.perf_counter()
    out = args.out or (RESULTS.with_suffix(".profiled.json") if args.profile else RESULTS)
    with instrumented(recorder):
        for target in params:
            input_dim, hidden, exact = mlp_for(target)
            print(f"params {target:,}: tabular-mlp input_dim={input_dim} hidden={hidden} "
                  f"classes={NUM_CLASSES} → {exact:,} trainable float32 parameters", flush=True)
            for n in sites:
                t0 = time.perf_counter()
                profiling = (profiled_threads(30, out.with_name(f"{out.stem}.{n}x{target}.pstats"))
                             if args.profile else contextlib.nullcontext())
                try:
                    with profiling:
                        r = run_config(n, target, args.rounds, recorder)
                except Exception as exc:  # noqa: BLE001  (report it, run the other configurations)
                    r = {"sites": n, "params_target": target, "params": exact,
                         "error": f"{type(exc).__name__}: {exc}"}
                    print(f"  {n} sites: FAILED {r['error']}", flush=True)
                    results.append(r)
                    continue
                r["baseline"] = {"np_add_s": memory_floor_s(n, r["params"]),
                                 **raw_grpc_baseline(n, r["params"], args.rounds)}
                r["config_wall_s"] = time.perf_counter() - t0
                print(f"  {n:>2} sites: round {r['round_s']:.3f} s "
                      f"(raw gRPC {r['baseline']['raw_grpc_round_s']:.3f} s), "
                      f"{r['config_wall_s']:.1f} s for this configuration", flush=True)
                results.append(r)

    print_table(results, args.rounds)
    document = {
        "benchmark": "round_overhead",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sites_as": "threads in one process",
        "transport": "gRPC, insecure loopback 127.0.0.1",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "grpc": grpc.__version__, "numpy": np.__version__},
        "targets": {"rtt_ms_below": TARGET_RTT_MS,
                    "upload_bytes_per_param_at_most": TARGET_UPLOAD_BYTES_PER_PARAM,
                    "round_s_below": TARGET_ROUND_S,
                    "round_target_at": {"sites": TARGET_ROUND_AT[0], "params": TARGET_ROUND_AT[1]}},
        "args": {"sites": sites, "params": params, "rounds": args.rounds, "quick": args.quick,
                 "profile": args.profile},
        "total_wall_s": time.perf_counter() - started,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nJSON: {out}  ({document['total_wall_s']:.0f} s in all)")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
