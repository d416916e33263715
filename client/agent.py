"""The site agent: connects to the coordinator, checks each job, trains locally, answers.

The agent is a gRPC *client*: it long-polls ``PollTask`` and answers the task it gets. It
never accepts connections and never runs code it receives. Connection loss (a coordinator
restart, a network cut) is handled by reconnecting with exponential backoff and
re-authenticating with a fresh challenge; a round the agent missed is simply a dropout.

With a state directory, every message the agent sends and every change to its privacy ledger
is first written to its signed egress log (:mod:`fedtune.client.egress_log`); an agent whose
existing egress log does not verify refuses to run rather than send anything unlogged.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtune import models
from fedtune.audit import ChainError
from fedtune.client import trainer
from fedtune.client.data import DataError, SiteData, load_site_data, train_eval_split
from fedtune.client.egress_log import CONTROL, EgressLog
from fedtune.client.ledger import Charge, Ledger, dataset_id
from fedtune.client.policy_guard import refusal_reason
from fedtune.client.secure_phases import SecureSiteMixin, SecureState
from fedtune.job import JobConfig, ModelConfig, job_digest, job_from_proto, offered_job_problem
from fedtune.logs import log_event
from fedtune.peers import Peers
from fedtune.policy import PolicyConfig
from fedtune.privacy.accountants import epsilon
from fedtune.privacy.distributed_dp import clip_l2
from fedtune.privacy.signatures import auth_statement, sign
from fedtune.privacy_plan import record_level_release, site_level_release
from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.tensor_codec import CHUNK_BYTES, TensorError, assemble, spec_for, to_bytes
from fedtune.transport import AWAIT_NEXT_METADATA, SESSION_METADATA, open_channel

log = logging.getLogger("fedtune.site")

#: Deadline of a unary call; streams get one proportional to their size.
CALL_TIMEOUT_S = 30.0
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    cert: Path | None = None  # with key: mutual TLS
    key: Path | None = None


@dataclass
class SiteAgentConfig:
    coordinator: str
    site_id: str
    identity: Ed25519PrivateKey
    data_path: Path
    policy: PolicyConfig
    tls: TLSFiles | None = None
    poll_wait_ms: int = 5_000
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    #: give up after this long without reaching the coordinator (None: never)
    give_up_after_s: float | None = None
    #: the coordinator's and the peers' identity keys (needed for secure aggregation)
    peers: Peers | None = None
    #: fault injection for tests and scenario replays: (phase, round id) at which this site
    #: vanishes without a word; phase is one of DROP_PHASES
    drop_at: tuple[str, int] | None = None
    #: where the site keeps its privacy ledger (needed for DP-SGD jobs) and its egress log
    state_dir: Path | None = None


#: refusal reasons are short policy statements, never data
MAX_REASON = 300

DROP_PHASES = ("advertise", "share", "input", "consistency", "unmask")


class SimulatedDropout(Exception):
    """Raised to make the agent vanish mid-round (fault injection)."""


@dataclass
class _Accepted:
    offer: pb.Offer
    job: JobConfig


@dataclass
class SiteOutcome:
    finished: bool
    dropped: bool = False
    failed: bool = False  # the run ended without completing its job
    failure: str = ""
    final_metrics: pb.AggregateMetrics | None = None
    rounds_contributed: int = 0
    refusals: list[str] = field(default_factory=list)


class SiteAgent(SecureSiteMixin):
    def __init__(self, config: SiteAgentConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.CoordinatorStub | None = None
        self._token: bytes | None = None
        self._run_id = ""
        self._accepted: dict[tuple[str, int], _Accepted] = {}
        self._secure: dict[tuple[str, int], SecureState] = {}
        self._abandoned: set[tuple[str, int]] = set()
        self._next: pb.Task | None = None  # the next task, when a message's Ack carried it
        self._ledger_db: Ledger | None = None
        self._param_counts: dict[ModelConfig, int] = {}
        self._dataset_digest: str | None = None
        self._data_cache: dict[tuple[ModelConfig, float, int], tuple[SiteData, SiteData]] = {}
        self._egress: EgressLog | None = None
        self.outcome = SiteOutcome(finished=False)

    # ------------------------------------------------------------------ connection

    def _open_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        tls = self.config.tls
        if tls is None:
            self._channel = open_channel(self.config.coordinator, insecure=True)
        else:
            self._channel = open_channel(self.config.coordinator, insecure=False,
                                         ca_cert=tls.ca_cert, tls_cert=tls.cert, tls_key=tls.key)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def _authenticate(self) -> None:
        assert self._stub is not None
        site = self.config.site_id
        hello = pb.HelloRequest(site_id=site)
        self._log_sent("Hello", "", 0, hello)
        challenge = self._stub.Hello(hello, timeout=CALL_TIMEOUT_S)
        signature = sign(self.config.identity, auth_statement(challenge.run_id, site, challenge.nonce))
        request = pb.AuthenticateRequest(site_id=site, nonce=challenge.nonce, signature=signature)
        self._log_sent("Authenticate", challenge.run_id, 0, request)
        session = self._stub.Authenticate(request, timeout=CALL_TIMEOUT_S)
        self._token, self._run_id = session.token, session.run_id
        log_event(log, "authenticated", run=self._run_id, site=site,
                  coordinator=self.config.coordinator)

    def _metadata(self, await_next: bool = False) -> list[tuple[str, str]]:
        """The call's metadata; ``await_next``: the coordinator returns this site's next task
        in the Ack (waiting up to ``poll_wait_ms`` for it), which saves the poll after it."""
        metadata = [(SESSION_METADATA, (self._token or b"").hex())]
        if await_next:
            metadata.append((AWAIT_NEXT_METADATA, str(self.config.poll_wait_ms)))
        return metadata

    def _timeout(self, base_s: float, await_next: bool) -> float:
        return base_s + (self.config.poll_wait_ms / 1000.0 if await_next else 0.0)

    def _keep_next(self, ack: pb.Ack) -> pb.Ack:
        """Keep the task an Ack carried for the main loop (a Wait is dropped: it polls)."""
        if ack.HasField("next") and ack.next.WhichOneof("kind") not in (None, "wait"):
            self._next = ack.next
        return ack

    def _connect_with_backoff(self) -> bool:
        """(Re)connect and authenticate; False when stopped or out of patience.

        Refused twice in a row on a fresh challenge (unknown site, wrong identity key), the
        agent gives up at once: waiting cannot fix a key.
        """
        delay = self.config.backoff_initial_s
        started = time.monotonic()
        refused = 0
        while not self._stop.is_set():
            try:
                self._open_channel()
                self._authenticate()
                return True
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    refused += 1
                    if refused >= 2:
                        raise  # the coordinator does not accept this site's identity
                    continue  # once more at once, with a fresh challenge
                refused = 0
                log_event(log, "connect_failed", logging.WARNING, site=self.config.site_id,
                          code=code.name, details=exc.details(), retry_in_s=round(delay, 2))
            give_up = self.config.give_up_after_s
            if give_up is not None and time.monotonic() - started > give_up:
                return False
            # full jitter (AWS architecture blog, "Exponential Backoff and Jitter")
            self._stop.wait(random.uniform(0.5, 1.0) * delay)
            delay = min(delay * 2, self.config.backoff_max_s)
        return False

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ main loop

    def run(self) -> SiteOutcome:
        if not self._open_egress_log():
            return self.outcome
        try:
            return self._run()
        finally:
            if self._egress is not None:
                self._egress.close()
                self._egress = None

    def _open_egress_log(self) -> bool:
        """Open the signed egress log of the state directory (none without one)."""
        if self.config.state_dir is None:
            return True
        peers = self.config.peers
        try:
            self._egress = EgressLog(self.config.state_dir, self.config.site_id,
                                     self.config.identity, peers.coordinator_key if peers else None)
        except (ChainError, OSError) as exc:
            self.outcome.failed = True
            self.outcome.failure = f"egress log: {exc}"
            log_event(log, "egress_log_unusable", logging.ERROR, site=self.config.site_id,
                      reason=str(exc))
            return False
        return True

    def _log_sent(self, kind: str, run: str, round_id: int, message=None, **extra) -> int | None:
        """Write the egress record of a message before it is sent (None: no egress log)."""
        if self._egress is None:
            return None
        return self._egress.sent(kind, run, round_id, message, **extra)

    def _send(self, kind: str, ref: pb.RoundRef, call, message=None, **extra):
        """Log, then make the call; a call the coordinator does not acknowledge is logged."""
        seq = self._log_sent(kind, ref.run_id, ref.round, message, **extra)
        try:
            return call()
        except grpc.RpcError as exc:
            if seq is not None and self._egress is not None and kind not in CONTROL:
                self._egress.failed(seq, kind, ref.run_id, ref.round, exc.code().name)
            raise

    def _run(self) -> SiteOutcome:
        if not self._connect_with_backoff():
            return self.outcome
        while not self._stop.is_set():
            try:
                assert self._stub is not None
                task, self._next = self._next, None
                if task is None:
                    wait_ms = self.config.poll_wait_ms
                    poll = pb.PollRequest(wait_ms=wait_ms)
                    self._log_sent("PollTask", self._run_id, 0, poll)
                    task = self._stub.PollTask(poll, metadata=self._metadata(),
                                               timeout=wait_ms / 1000.0 + CALL_TIMEOUT_S)
                if self._handle(task):
                    break
            except SimulatedDropout as exc:
                log_event(log, "fault_injected", logging.WARNING, site=self.config.site_id,
                          fault=str(exc))
                self.outcome.dropped = True
                break
            except grpc.RpcError as exc:
                if exc.code() in RETRYABLE:
                    log_event(log, "connection_lost", logging.WARNING, site=self.config.site_id,
                              code=exc.code().name, details=exc.details())
                    if not self._connect_with_backoff():
                        break
                else:
                    log_event(log, "request_refused", logging.WARNING, site=self.config.site_id,
                              code=exc.code().name, details=exc.details())
                    self._stop.wait(0.5)
        if self._channel is not None:
            self._channel.close()
        return self.outcome

    def _handle(self, task: pb.Task) -> bool:
        """Handle one task; True when the run is finished. A task that fails unexpectedly
        is logged and skipped (this site becomes a dropout of that round); the agent goes on."""
        try:
            return self._dispatch(task)
        except (SimulatedDropout, grpc.RpcError):
            raise
        except Exception:
            log.exception("task %s failed", task.WhichOneof("kind"))
            self._abandon(task)
            return False

    def _abandon(self, task: pb.Task) -> None:
        """Leave the round of a task that failed: it is not retried (the coordinator would
        re-deliver it on every poll); the site is a dropout of that round."""
        kind = task.WhichOneof("kind")
        ref = getattr(getattr(task, kind), "ref", None) if kind else None
        if ref is not None and ref.run_id:
            key = (ref.run_id, ref.round)
            self._accepted.pop(key, None)
            self._secure.pop(key, None)
            self._abandoned.add(key)
            self.outcome.refusals.append(f"left round {ref.round}: the {kind} task failed")

    def _dispatch(self, task: pb.Task) -> bool:
        kind = task.WhichOneof("kind")
        ref = getattr(getattr(task, kind), "ref", None) if kind else None
        if (kind in ("submit_input", "share_keys", "consistency", "unmask") and ref is not None
                and (ref.run_id, ref.round) in self._abandoned):
            self._stop.wait(1.0)  # a round this site left: do not spin on its tasks
            return False
        if kind == "offer":
            self._on_offer(task.offer)
        elif kind == "submit_input":
            ref = task.submit_input.ref
            if (ref.run_id, ref.round) in self._secure:
                self._on_secure_input(task.submit_input)
            else:
                self._on_submit_input(task.submit_input)
        elif kind == "share_keys":
            self._on_share_keys(task.share_keys)
        elif kind == "consistency":
            self._on_consistency(task.consistency)
        elif kind == "unmask":
            self._on_unmask(task.unmask)
        elif kind == "round_result":
            r = task.round_result
            self._accepted.pop((r.ref.run_id, r.ref.round), None)
            self._secure.pop((r.ref.run_id, r.ref.round), None)
            if self.config.state_dir is not None and self._ledger_db is not None:
                if r.aborted:  # nothing was released: the pending charge is withdrawn
                    changed = self._ledger_db.cancel(r.ref.run_id, r.ref.round)
                else:
                    changed = self._ledger_db.commit(r.ref.run_id, r.ref.round)
                for charge in changed:
                    self._log_charge("cancel" if r.aborted else "commit",
                                     "aborted" if r.aborted else "released", charge)
            log_event(log, "round_result", run=r.ref.run_id, round=r.ref.round,
                      site=self.config.site_id, aborted=r.aborted, reason=r.abort_reason,
                      contributors=list(r.contributors),
                      eval_accuracy=round(r.metrics.eval_accuracy, 4))
        elif kind == "finished":
            self.outcome.finished = True
            self.outcome.failed = task.finished.failed
            self.outcome.failure = task.finished.reason
            self.outcome.final_metrics = task.finished.final_metrics
            log_event(log, "run_finished", run=task.finished.run_id, site=self.config.site_id,
                      rounds=task.finished.rounds_completed,
                      eval_accuracy=round(task.finished.final_metrics.eval_accuracy, 4))
            return True
        return False

    # ------------------------------------------------------------------ offer

    def _site_data(self, model: ModelConfig, job: JobConfig) -> tuple[SiteData, SiteData]:
        key = (model, job.training.eval_fraction, job.training.seed)
        if key not in self._data_cache:
            data = load_site_data(self.config.data_path, model)
            self._data_cache[key] = train_eval_split(data, job.training.eval_fraction,
                                                     job.training.seed)
        return self._data_cache[key]

    def _on_offer(self, offer: pb.Offer) -> None:
        ref = offer.ref
        job = job_from_proto(offer.job)
        reason = None
        if job_digest(offer.job) != offer.job_digest:
            reason = "the job digest does not match the job"
        elif ref.run_id != self._run_id:
            reason = f"offer for run {ref.run_id!r}, this session is for run {self._run_id!r}"
        else:
            reason = offered_job_problem(job) or refusal_reason(job, self.config.policy)
        if reason is None and job.secure_aggregation.enabled and self.config.peers is None:
            reason = ("the job uses secure aggregation and this site has no peer identity keys "
                      "(start it with --peers)")
        if reason is None:
            try:
                models.validate_spec(job.model)
                expected = self._parameter_count(job.model)
                spec = offer.parameters
                if spec.dtype != "<f4" or list(spec.shape) != [expected]:
                    reason = (f"the offered parameters ({spec.dtype} {list(spec.shape)}) do not "
                              f"match model {job.model.id!r} ({expected} float32 parameters)")
            except models.ModelError as exc:
                # e.g. the job's base-weights sha256 differs from this site's installed weights
                reason = f"the job's model does not fit this site: {exc}"
        if reason is None:
            try:
                self._site_data(job.model, job)
            except (DataError, models.ModelError) as exc:
                # the detail can quote cell values: it stays in this site's log only
                log_event(log, "data_does_not_fit", logging.WARNING, run=ref.run_id,
                          round=ref.round, site=self.config.site_id, detail=str(exc))
                reason = "local data does not fit the job (details in the site's log)"
        if reason is None:
            reason = self._privacy_refusal(job, offer)
        accept = reason is None
        assert self._stub is not None
        response = pb.OfferResponse(ref=ref, accept=accept,
                                    refusal_reason=(reason or "")[:MAX_REASON])
        # a secure site advertises its keys next: only that call may wait for the next task
        await_next = not (accept and job.secure_aggregation.enabled)
        self._keep_next(self._send("RespondOffer", ref, lambda: self._stub.RespondOffer(
            response, metadata=self._metadata(await_next),
            timeout=self._timeout(CALL_TIMEOUT_S, await_next)), response,
            job_digest=offer.job_digest.hex(), accept=accept))
        if accept:
            accepted = _Accepted(offer, job)
            self._accepted[(ref.run_id, ref.round)] = accepted
            if job.secure_aggregation.enabled:
                self._advertise(accepted)
        else:
            self.outcome.refusals.append(reason or "")
        log_event(log, "offer_answered", run=ref.run_id, round=ref.round, site=self.config.site_id,
                  phase="offer", accepted=accept, reason=reason or "")

    def _parameter_count(self, model: ModelConfig) -> int:
        if model not in self._param_counts:
            self._param_counts[model] = models.num_trainable(models.build_model(model))
        return self._param_counts[model]

    def _privacy_refusal(self, job: JobConfig, offer: pb.Offer) -> str | None:
        """Refuse a round that would take this site over its own privacy budgets.

        The site recomputes every ε from the job's announced mechanism parameters with its own
        accountant; it never takes the coordinator's figures.
        """
        policy = self.config.policy
        if job.site_dp.mode != "none" and policy.site_max_epsilon < float("inf"):
            dimension = int(np.prod(offer.parameters.shape))
            release = site_level_release(job, dimension)
            total = epsilon([release] * job.rounds, job.site_dp.delta)
            if total > policy.site_max_epsilon:
                return (f"the job's site-level DP reaches ε = {total:.3f} over {job.rounds} "
                        f"rounds, the site policy allows {policy.site_max_epsilon:g}")
        if not job.record_dp.enabled or offer.evaluate_only:
            return None
        if self.config.state_dir is None:
            return "the job uses DP-SGD and this site has no privacy ledger (start it with --state-dir)"
        release = record_level_release(job)
        ledger = self._ledger()
        after = ledger.would_spend(self._dataset_id(), release, policy.record_delta)
        if after > policy.record_max_epsilon:
            spent = ledger.spent(self._dataset_id(), policy.record_delta)
            return (f"this round would bring the dataset's record-level ε from {spent:.3f} to "
                    f"{after:.3f}, over the site policy's {policy.record_max_epsilon:g} "
                    f"(δ = {policy.record_delta:g})")
        return None

    def _ledger(self) -> Ledger:
        if self._ledger_db is None:
            assert self.config.state_dir is not None
            self._ledger_db = Ledger(self.config.state_dir / "ledger.sqlite")
        return self._ledger_db

    def _dataset_id(self) -> str:
        if self._dataset_digest is None:
            self._dataset_digest = dataset_id(self.config.data_path)
        return self._dataset_digest

    def _charge(self, accepted: _Accepted, secure: bool) -> None:
        """Write the record-level charge before the update leaves the site.

        Plain mode releases the update itself: the charge is committed at once. Secure mode
        releases only the aggregate: the charge stays pending until the round's result says
        whether anything was released (and counts as spent until then).
        """
        job, ref = accepted.job, accepted.offer.ref
        if not job.record_dp.enabled or accepted.offer.evaluate_only:
            return
        ledger = self._ledger()
        release = record_level_release(job)
        if ledger.reserve(self._dataset_id(), ref.run_id, ref.round, job.job_id, release):
            self._log_charge("reserve", "send", Charge(self._dataset_id(), ref.run_id, ref.round,
                                                       job.job_id, release, "pending",
                                                       time.time()))
        if not secure:
            for charge in ledger.commit(ref.run_id, ref.round):
                self._log_charge("commit", "plain", charge)
        log_event(log, "privacy_charged", run=ref.run_id, round=ref.round,
                  site=self.config.site_id, pending=secure,
                  dataset_epsilon=round(ledger.spent(self._dataset_id(),
                                                     self.config.policy.record_delta), 4))

    def _log_charge(self, action: str, reason: str, charge: Charge) -> None:
        """Put a change of the privacy ledger on the egress log (after the ledger has it)."""
        if self._egress is None:
            return
        delta = self.config.policy.record_delta
        self._egress.ledger(action, reason, charge, delta,
                            self._ledger().spent(charge.dataset, delta))

    # ------------------------------------------------------------------ input

    def _on_submit_input(self, task: pb.SubmitInputTask) -> None:
        ref = task.ref
        accepted = self._accepted.get((ref.run_id, ref.round))
        if accepted is None:
            log_event(log, "unexpected_task", logging.WARNING, run=ref.run_id, round=ref.round,
                      site=self.config.site_id, task="submit_input")
            self._abandoned.add((ref.run_id, ref.round))
            return
        offer, job = accepted.offer, accepted.job
        global_params = self._download(offer)
        if global_params is None:
            return
        vector, metrics = self.compute_input(job, global_params, offer.evaluate_only, ref.round)
        self._maybe_drop("input", ref)
        if list(vector.shape) != list(task.expected.shape):
            log_event(log, "input_shape_mismatch", logging.ERROR, run=ref.run_id, round=ref.round,
                      site=self.config.site_id)
            return
        self._charge(accepted, secure=False)
        self._submit(ref, vector, metrics, offer.parameters.sha256)
        self.outcome.rounds_contributed += 0 if offer.evaluate_only else 1
        log_event(log, "input_sent", run=ref.run_id, round=ref.round, site=self.config.site_id,
                  phase="masked_input", bytes=int(vector.nbytes),
                  eval_accuracy=round(metrics.eval_correct / max(metrics.eval_count, 1), 4))

    def _maybe_drop(self, phase: str, ref: pb.RoundRef) -> None:
        if self.config.drop_at == (phase, ref.round):
            raise SimulatedDropout(f"dropped at phase {phase} of round {ref.round}")

    def _call(self, method: str, request) -> pb.Ack:
        """Send the last message of a phase; the Ack brings the next task (:meth:`_keep_next`)."""
        assert self._stub is not None
        ref = request.advertisement.ref if method == "AdvertiseKeys" else request.ref
        return self._keep_next(self._send(method, ref, lambda: getattr(self._stub, method)(
            request, metadata=self._metadata(await_next=True),
            timeout=self._timeout(CALL_TIMEOUT_S, True)), request))

    def _download(self, offer: pb.Offer) -> np.ndarray | None:
        """The round's global parameters, checked against the offered spec."""
        ref = offer.ref
        assert self._stub is not None
        request = pb.ParametersRequest(ref=ref, chunk_bytes=CHUNK_BYTES)
        self._log_sent("GetParameters", ref.run_id, ref.round, request)
        chunks = self._stub.GetParameters(request, metadata=self._metadata(),
                                          timeout=CALL_TIMEOUT_S + offer.parameters.nbytes / 5e6)
        try:
            return assemble(chunks, expected=offer.parameters)
        except TensorError as exc:
            log_event(log, "bad_parameters", logging.ERROR, run=ref.run_id, round=ref.round,
                      site=self.config.site_id, reason=str(exc))
            return None

    def _submit(self, ref: pb.RoundRef, vector: np.ndarray, metrics: pb.PlainMetrics | None,
                params_sha256: bytes) -> None:
        assert self._stub is not None
        extra = {"params_sha256": params_sha256.hex()}
        if metrics is not None:
            extra["metrics_sha256"] = hashlib.sha256(
                metrics.SerializeToString(deterministic=True)).hexdigest()
        spec = spec_for(vector)  # hashed once: for the egress record and the header
        self._keep_next(self._send("SubmitInput", ref, lambda: self._stub.SubmitInput(
            self._input_stream(ref, vector, metrics, spec), metadata=self._metadata(True),
            timeout=self._timeout(CALL_TIMEOUT_S + vector.nbytes / 5e6, True)),
            sha256=spec.sha256, size=vector.nbytes, **extra))

    def compute_input(self, job: JobConfig, global_params: np.ndarray, evaluate_only: bool,
                      round_id: int) -> tuple[np.ndarray, pb.PlainMetrics]:
        """Evaluate the global model, train locally, and return (w·Δ, metrics)."""
        train_data, eval_data = self._site_data(job.model, job)
        model = models.build_model(job.model)
        models.set_flat(model, global_params)
        evaluation = trainer.evaluate(model, eval_data)
        cap = job.training.max_examples
        if evaluate_only:
            return np.zeros(0, dtype=np.float32), pb.PlainMetrics(
                eval_loss_sum=evaluation.loss_sum, eval_correct=min(evaluation.correct, cap),
                eval_count=min(evaluation.count, cap))
        if job.record_dp.enabled:
            r = job.record_dp
            result = trainer.train_dp_sgd(model, train_data, job.training, r.noise_multiplier,
                                          r.max_grad_norm, r.sample_rate, clipping=r.clipping)
        else:
            seed = int.from_bytes(hashlib.sha256(
                f"{job.training.seed}/{round_id}/{self.config.site_id}".encode()).digest()[:8],
                "big")
            result = trainer.train(model, train_data, job.training, seed)
        delta = models.get_flat(model).astype(np.float64) - global_params.astype(np.float64)
        if job.site_dp.mode != "none":
            # DP-FedAvg: every site's contribution is bounded by the clip norm C
            delta, _ = clip_l2(delta, job.site_dp.clip_norm)
        weight = float(min(len(train_data), cap)) if job.training.weighting == "examples" else 1.0
        metrics = pb.PlainMetrics(
            train_loss_sum=result.loss_sum, eval_loss_sum=evaluation.loss_sum,
            eval_correct=min(evaluation.correct, cap), eval_count=min(evaluation.count, cap),
            train_count=min(result.count, cap), weight=weight)
        return (weight * delta).astype(np.float32), metrics

    @staticmethod
    def _input_stream(ref: pb.RoundRef, vector: np.ndarray, metrics: pb.PlainMetrics | None,
                      spec: pb.TensorSpec | None = None) -> Iterator[pb.InputChunk]:
        """The InputChunk stream of ``vector``: a header with its spec (``spec`` when the
        caller has already computed it), then the bytes."""
        header = pb.InputHeader(ref=ref, vector=spec if spec is not None else spec_for(vector))
        if metrics is not None:  # plain mode only; secure mode masks them into the vector
            header.metrics.CopyFrom(metrics)
        yield pb.InputChunk(header=header)
        data = to_bytes(vector)
        for start in range(0, len(data), CHUNK_BYTES):
            yield pb.InputChunk(data=data[start:start + CHUNK_BYTES])
