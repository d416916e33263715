"""The coordinator: authenticates sites, runs rounds, aggregates, checkpoints.

This is the logic behind the gRPC servicer (:mod:`fedtune.server.servicer`), callable without
a network. One thread runs :meth:`Coordinator.run`, moving each round through its phases;
the servicer's threads call the request methods (``hello``, ``poll``, ``submit_input``, ...),
which validate everything and raise :class:`ProtocolError` on anything they refuse. Shared
state is guarded by one condition variable; the run loop sleeps on it until the phase is
complete or its deadline passes.

Nothing a peer sends can corrupt the state: a message is fully validated before it touches
the round, and only the run loop changes the global model and writes the checkpoint.

Every event of the run goes on the signed transcript (:mod:`fedtune.server.transcript`)
before it is acknowledged: the offer before it is visible, the survivor lists before they are
sent, a release before the checkpoint that makes it durable and before any site hears of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from fedtune import models
from fedtune.audit import mechanisms, round_release, secure_aggregation_dict
from fedtune.federation import FederationConfig
from fedtune.identity import load_identity
from fedtune.job import job_digest, job_to_proto
from fedtune.logs import log_event
from fedtune.privacy.distributed_dp import gaussian_noise
from fedtune.privacy.secagg import SecAggError
from fedtune.privacy.signatures import SignatureError, auth_statement, public_key_from_raw, verify
from fedtune.privacy_plan import finalize_job
from fedtune.proto import fedtune_pb2 as pb
from fedtune.server import checkpoint as ckpt
from fedtune.server.aggregation import WeightedSum
from fedtune.server.behaviour import HonestBehaviour
from fedtune.server.errors import ProtocolError, invalid, precondition, unauthenticated
from fedtune.server.optimisers import ServerOptimizer
from fedtune.server.privacy_budget import PrivacyBudget
from fedtune.server.round_state import RoundState, SiteInput
from fedtune.server.secure_phases import SecurePhasesMixin, SecureSum
from fedtune.server.transcript import Transcript, TranscriptError, message_entry, run_key
from fedtune.tensor_codec import spec_for, to_bytes

log = logging.getLogger("fedtune.server")

CHALLENGE_TTL_S = 60
MAX_CHALLENGES_PER_SITE = 4
SESSION_TTL_S = 24 * 3600
#: A site with no call in flight and none for this long is not "connected" (sites poll back
#: to back, so a gap this long means the site is gone or cut off).
LIVENESS_S = 3.0
#: The run stops (failed) after this many rounds in a row released nothing.
MAX_CONSECUTIVE_ABORTS = 5


@dataclass
class _SiteSession:
    site_id: str
    expires: float
    #: sha256 of the client certificate the session was opened over (mutual TLS), else None
    client_cert: bytes | None = None


@dataclass
class _SiteLiveness:
    in_flight: int = 0
    last_seen: float = 0.0
    last_refusal: str = ""


class Coordinator(SecurePhasesMixin):
    """Round state machine and request handling for one run (one job)."""

    def __init__(self, config: FederationConfig, run_dir: Path | None = None,
                 clock: Callable[[], float] = time.time,
                 behaviour: HonestBehaviour | None = None) -> None:
        self.config = config
        self.behaviour = behaviour or HonestBehaviour()
        self._identity = load_identity(config.identity) if config.identity else None
        self.job = config.job
        self.run_dir = run_dir or config.run_dir
        self.clock = clock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._keys = {s.id: public_key_from_raw(s.public_key) for s in config.sites}
        self._challenges: dict[bytes, tuple[str, float]] = {}
        self._sessions: dict[bytes, _SiteSession] = {}
        self._liveness: dict[str, _SiteLiveness] = {s.id: _SiteLiveness() for s in config.sites}
        self._pending_results: dict[str, pb.RoundResult] = {}
        self._poll_generation: dict[str, int] = {}
        self._polls_waiting: dict[str, int] = {}  # polls of each site now in poll()
        self._uploading: set[str] = set()
        self._round: RoundState | None = None
        self._round_seed = b""
        #: sites told that the run is finished (the CLI lingers until all have heard it).
        self.told_finished: set[str] = set()
        self.finished = False
        self.failure = ""
        self.history: list[pb.RoundSummary] = []
        self.final_metrics: pb.AggregateMetrics | None = None

        self._set_params(models.initial_parameters(self.job.model, seed=self.job.training.seed))
        # fill in max_sites and calibrate σ from the target ε: the job as offered
        self.job = finalize_job(self.job, len(config.sites), self.params.size)
        self.job_proto = job_to_proto(self.job)
        self.job_digest = job_digest(self.job_proto)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self._load_run_id()
        self.budget = PrivacyBudget(self.job, self.params.size)
        #: why training stopped before job.rounds (a privacy budget), or ""
        self.budget_stop = ""
        self.optimiser = ServerOptimizer(self.job.server_optimizer, self.params.size)
        self.completed_rounds = 0
        self.next_round_id = 1
        self._resumed = False
        self._resume()
        #: digests of the site messages of the current round not yet on the transcript
        self._messages: list[dict[str, object]] = []
        self._round_release = round_release(self.job, self.params.size)
        self.transcript = self._open_transcript()

    # ------------------------------------------------------------------ persistence

    def _load_run_id(self) -> str:
        run_file = self.run_dir / "run.json"
        if run_file.exists():
            try:
                stored = json.loads(run_file.read_text())
                stored["run_id"], stored["job_digest"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ckpt.CheckpointError(f"{run_file}: unreadable run record ({exc!r}); "
                                           "restore it or use a new run directory") from None
            if self.config.run_id and stored["run_id"] != self.config.run_id:
                raise ValueError(
                    f"{run_file}: run directory belongs to run {stored['run_id']!r}, "
                    f"the federation file names {self.config.run_id!r}")
            if stored["job_digest"] != self.job_digest.hex():
                raise ValueError(
                    f"{run_file}: run directory holds a different job (digest "
                    f"{stored['job_digest'][:16]}…); use a new run directory for a new job")
            return str(stored["run_id"])
        run_id = self.config.run_id or f"run-{secrets.token_hex(6)}"
        ckpt.atomic_write(run_file, json.dumps(
            {"run_id": run_id, "job_id": self.job.job_id, "job_digest": self.job_digest.hex()},
            indent=2).encode())
        return run_id

    def _resume(self) -> None:
        counter = self.run_dir / "round_counter.json"
        if counter.exists():
            try:
                self.next_round_id = int(json.loads(counter.read_text())["next_round_id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ckpt.CheckpointError(f"{counter}: unreadable round counter ({exc!r})") \
                    from None
        state = ckpt.load(self.run_dir)
        if state is None:
            return
        if state.params.shape != self.params.shape:
            raise ValueError(f"{self.run_dir / ckpt.CHECKPOINT}: parameter shape "
                             f"{state.params.shape} does not match the job's model {self.params.shape}")
        self._set_params(state.params.astype(np.float32))
        self.optimiser.load_state(state.optimiser_state)
        self.completed_rounds = int(state.meta["completed_rounds"])
        self.budget.load_state(state.meta.get("privacy", {}))
        self.budget_stop = str(state.meta.get("budget_stop", ""))
        self.history, self.final_metrics = ckpt.history_of(state.meta)
        self.finished = self.final_metrics is not None
        self._resumed = True
        log_event(log, "resumed", run=self.run_id, round=self.next_round_id,
                  completed_rounds=self.completed_rounds)

    def _checkpoint(self, history: list[pb.RoundSummary]) -> None:
        meta = {
            "run_id": self.run_id,
            "job_digest": self.job_digest.hex(),
            "completed_rounds": self.completed_rounds,
            "history": [h.SerializeToString(deterministic=True).hex() for h in history],
            "privacy": self.budget.state(),
            "budget_stop": self.budget_stop,
            "final_metrics": (self.final_metrics.SerializeToString(deterministic=True).hex()
                              if self.final_metrics is not None else ""),
        }
        ckpt.save(self.run_dir, ckpt.Checkpoint(self.params, self.optimiser.state, meta))

    def _set_params(self, params: np.ndarray) -> None:
        """New global parameters: their wire form is made once, not once per site."""
        self.params = params
        self.params_spec = spec_for(params)
        self.params_bytes = to_bytes(params)

    def _claim_round_id(self) -> int:
        """A round id is never used twice, also not across a crash: persist before use."""
        round_id = self.next_round_id
        self.next_round_id += 1
        ckpt.atomic_write(self.run_dir / "round_counter.json",
                          json.dumps({"next_round_id": self.next_round_id}).encode())
        return round_id

    # ------------------------------------------------------------------ transcript

    def _open_transcript(self) -> Transcript:
        """Open (or begin) the transcript; on a restart check it is this run's, recover any
        charge it holds that the checkpoint lost, and record the restart."""
        transcript = Transcript(self.run_dir, self._identity or run_key(self.run_dir),
                                self.clock)
        state = transcript.state
        torn = state.torn.as_record() if state.torn else None
        if not state.existed:
            transcript.record(
                "job_accepted", run=self.run_id, job_id=self.job.job_id,
                job_digest=self.job_digest.hex(),
                job_proto=self.job_proto.SerializeToString(deterministic=True).hex(),
                job=MessageToDict(self.job_proto, preserving_proto_field_name=True),
                dimension=int(self.params.size), params_sha256=self.params_spec.sha256.hex(),
                sites={s.id: _b64(s.public_key) for s in self.config.sites},
                public_key=transcript.public_key,
                key_source="identity" if self._identity else "run-key", accountant="rdp",
                secure_aggregation=secure_aggregation_dict(self.job),
                mechanisms=mechanisms(self.job, self.params.size),
                completed_rounds=self.completed_rounds, torn_tail=torn)
            return transcript
        if state.run_id != self.run_id or state.job_digest != self.job_digest.hex():
            transcript.close()
            raise TranscriptError(
                f"{transcript.path}: the transcript belongs to run {state.run_id!r} (job "
                f"{state.job_digest[:16]}…), not to this run and job; restore the run "
                "directory or use a new one")
        recovered = self._recover_charges(state.releases)
        transcript.record(
            "restart", run=self.run_id, job_digest=self.job_digest.hex(),
            public_key=transcript.public_key, completed_rounds=self.completed_rounds,
            next_round_id=self.next_round_id, params_sha256=self.params_spec.sha256.hex(),
            accountant=self._accountant_state(), recovered_charges=recovered, torn_tail=torn)
        return transcript

    def _recover_charges(self, releases) -> list[int]:
        """A crash after a release record and before its checkpoint: the coordinator may have
        seen that aggregate, so its charge stands (the model update itself is lost)."""
        known = {int(h["round"]) for h in self.budget.history}
        lost = [p for p in releases if p.round_id not in known]
        if not lost:
            return []
        self.budget.site_releases += sum(1 for p in lost if p.site_level)
        self.budget.record_releases += sum(1 for p in lost if p.record_level)
        for p in lost:
            levels = p.accountant
            self.budget.history.append({
                "round": float(p.round_id),
                "site_epsilon": float(levels.get("site_level", {}).get("epsilon", 0.0)),
                "record_epsilon": float(levels.get("record_level", {}).get("epsilon", 0.0))})
        rounds = [p.round_id for p in lost]
        log_event(log, "charges_recovered", logging.WARNING, run=self.run_id, rounds=rounds,
                  site_epsilon=round(self.budget.site_epsilon(), 4),
                  record_epsilon=round(self.budget.record_epsilon(), 4))
        return rounds

    def _accountant_state(self) -> dict[str, dict[str, float]]:
        """Charged rounds and ε per enabled level, as the transcript logs them.

        The ε figures are those the budget computed when it last charged a round (its
        history), so a record costs no second pass of the accountant over every round.
        """
        last = self.budget.history[-1] if self.budget.history else {}
        state: dict[str, dict[str, float]] = {}
        if self.budget.site_level:
            state["site_level"] = {"releases": self.budget.site_releases,
                                   "epsilon": float(last.get("site_epsilon", 0.0)),
                                   "delta": self.job.site_dp.delta}
        if self.job.record_dp.enabled:
            state["record_level"] = {"releases": self.budget.record_releases,
                                     "epsilon": float(last.get("record_epsilon", 0.0)),
                                     "delta": self.job.record_dp.delta}
        return state

    def _note_message(self, site: str, kind: str, message, **extra) -> None:
        """Remember an accepted site message for the transcript (call with the lock held)."""
        data = message.SerializeToString(deterministic=True)
        self._messages.append(message_entry(site, kind, hashlib.sha256(data).digest(),
                                            len(data), **extra))

    def _note_input(self, site: str, sha256: bytes, size: int, **extra) -> None:
        self._messages.append(message_entry(site, "SubmitInput", sha256, size, **extra))

    def _take_messages(self, *kinds: str) -> list[dict[str, object]]:
        """The noted messages of these kinds (all when none given), now to be recorded."""
        taken = [m for m in self._messages if not kinds or m["type"] in kinds]
        self._messages = [m for m in self._messages if m not in taken]
        return sorted(taken, key=lambda m: (str(m["site"]), str(m["type"])))

    def close(self) -> None:
        """Close the transcript (after the run loop has stopped)."""
        self.transcript.close()

    # ------------------------------------------------------------------ authentication

    def hello(self, site_id: str) -> pb.Challenge:
        if site_id not in self._keys:
            log_event(log, "unknown_site", logging.WARNING, run=self.run_id, site=site_id)
            raise unauthenticated(f"site {site_id!r} is not enrolled in this federation")
        nonce = secrets.token_bytes(32)
        now = self.clock()
        with self._cond:
            # at most a few outstanding challenges per site: Hello cannot grow memory
            mine = sorted((v[1], n) for n, v in self._challenges.items() if v[0] == site_id)
            for _, old in mine[:-(MAX_CHALLENGES_PER_SITE - 1)]:
                del self._challenges[old]
            for n in [n for n, v in self._challenges.items() if v[1] <= now]:
                del self._challenges[n]
            self._challenges[nonce] = (site_id, now + CHALLENGE_TTL_S)
        return pb.Challenge(run_id=self.run_id, nonce=nonce, ttl_s=CHALLENGE_TTL_S)

    def authenticate(self, site_id: str, nonce: bytes, signature: bytes,
                     client_cert: bytes | None = None) -> pb.Session:
        """Open a session for a site that signed a fresh challenge.

        ``client_cert`` (the sha256 of the TLS client certificate, under mutual TLS) binds
        the session: its token is refused over any other certificate, so a token that leaks
        from one connection cannot be spent by another enrolled client.
        """
        with self._cond:
            entry = self._challenges.pop(nonce, None)  # one use only
        if entry is None or entry[0] != site_id or entry[1] < self.clock():
            raise unauthenticated("unknown or expired challenge; call Hello again")
        try:
            verify(self._keys[site_id], signature, auth_statement(self.run_id, site_id, nonce))
        except SignatureError as exc:
            log_event(log, "bad_signature", logging.WARNING, run=self.run_id, site=site_id)
            raise unauthenticated(f"site {site_id!r}: {exc}") from None
        token = secrets.token_bytes(32)
        with self._cond:
            # a new session replaces the site's earlier ones; expired sessions are dropped
            now = self.clock()
            self._sessions = {t: s for t, s in self._sessions.items()
                              if s.site_id != site_id and s.expires > now}
            self._sessions[token] = _SiteSession(site_id, now + SESSION_TTL_S, client_cert)
            self._liveness[site_id].last_seen = self.clock()
            self._cond.notify_all()
        log_event(log, "site_authenticated", run=self.run_id, site=site_id)
        return pb.Session(token=token, run_id=self.run_id, session_ttl_s=SESSION_TTL_S)

    def site_for(self, token: bytes, client_cert: bytes | None = None) -> str:
        session = self._sessions.get(token)
        if session is None or session.expires < self.clock():
            raise unauthenticated("no valid session; authenticate first")
        if session.client_cert != client_cert:
            log_event(log, "session_certificate_mismatch", logging.WARNING, run=self.run_id,
                      site=session.site_id)
            raise unauthenticated("this session was opened over another TLS client "
                                  "certificate; authenticate again")
        return session.site_id

    # ------------------------------------------------------------------ liveness

    def call_started(self, site: str) -> None:
        with self._cond:
            was_connected = self._connected(site)
            live = self._liveness[site]
            live.in_flight += 1
            live.last_seen = self.clock()
            if not was_connected:  # a site (re)joins: the wait for sites may be over
                self._cond.notify_all()

    def call_ended(self, site: str) -> None:
        # no notify: the site stays connected (last_seen is now), so no waiter's condition
        # changes, and waking every waiting poll on every call cost CPU at each phase
        with self._cond:
            live = self._liveness[site]
            live.in_flight = max(0, live.in_flight - 1)
            live.last_seen = self.clock()

    def _connected(self, site: str) -> bool:
        live = self._liveness[site]
        if live.in_flight > 0 or self.clock() - live.last_seen < LIVENESS_S:
            return True
        # a site training for the current round holds no call open, and is still with us
        return self._round is not None and self._round.awaiting_input(site)

    def connected_sites(self) -> list[str]:
        with self._cond:
            return sorted(s for s in self._liveness if self._connected(s))

    # ------------------------------------------------------------------ requests

    def poll(self, site: str, wait_s: float,
             still_connected: Callable[[], bool] = lambda: True) -> pb.Task:
        """Return the site's next task, waiting up to ``wait_s`` for one.

        ``still_connected`` is polled while waiting, so a site whose process died mid-poll
        stops counting as connected within a second instead of at the end of the poll.
        """
        deadline = self.clock() + max(0.0, min(wait_s, 60.0))
        with self._cond:
            # one poll per site: a newer poll ends the older ones (no thread-pool starvation);
            # the other waiting polls are woken only when there is an older one to end
            generation = self._poll_generation[site] = self._poll_generation.get(site, 0) + 1
            if self._polls_waiting.get(site):
                self._cond.notify_all()
            self._polls_waiting[site] = self._polls_waiting.get(site, 0) + 1
            try:
                while True:
                    if self._poll_generation[site] != generation:
                        return pb.Task(wait=pb.Wait(retry_after_ms=0, reason="superseded"))
                    task = self._task_for(site)
                    if task is not None:
                        return task
                    remaining = deadline - self.clock()
                    if remaining <= 0 or self._stop.is_set() or not still_connected():
                        return pb.Task(wait=pb.Wait(retry_after_ms=0, reason="no task yet"))
                    self._cond.wait(min(remaining, 1.0))
            finally:
                self._polls_waiting[site] -= 1

    def begin_upload(self, site: str) -> None:
        """One upload per site at a time: a second stream is refused before it is read."""
        with self._cond:
            if site in self._uploading:
                raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"site {site!r} already has an upload in progress")
            self._uploading.add(site)

    def end_upload(self, site: str) -> None:
        with self._cond:
            self._uploading.discard(site)

    def _task_for(self, site: str) -> pb.Task | None:
        result = self._pending_results.pop(site, None)
        if result is not None:
            return pb.Task(round_result=result)
        if self.finished:
            self.told_finished.add(site)
            return pb.Task(finished=pb.Finished(
                run_id=self.run_id, rounds_completed=self.completed_rounds,
                final_metrics=self.final_metrics or pb.AggregateMetrics(),
                failed=bool(self.failure), reason=self.failure))
        r = self._round
        if r is None:
            return None
        if r.awaiting_offer_response(site):
            return pb.Task(offer=pb.Offer(
                ref=r.ref, job=self.job_proto, job_digest=self.job_digest,
                parameters=self.params_spec, evaluate_only=r.evaluate_only,
                round_seed=self._round_seed, deadline=r.deadline))
        if r.secure:
            return self._secure_task_for(site, r)
        if r.awaiting_input(site):
            return pb.Task(submit_input=pb.SubmitInputTask(
                ref=r.ref, expected=self._expected_input(r), deadline=r.deadline))
        return None

    def _expected_input(self, r: RoundState) -> pb.TensorSpec:
        if r.secure:
            return self._secure_expected_input(r)
        size = 0 if r.evaluate_only else self.params.size
        return pb.TensorSpec(dtype="<f4", shape=[size], nbytes=4 * size)

    def respond_offer(self, site: str, response: pb.OfferResponse) -> None:
        with self._cond:
            r = self._current_round()
            r.check_ref(response.ref)
            reason = response.refusal_reason[:300]  # a short policy statement, never data
            r.respond_offer(site, response.accept, reason)
            self._note_message(site, "RespondOffer", response)
            if not response.accept:
                self._liveness[site].last_refusal = reason
                log_event(log, "offer_refused", logging.WARNING, run=self.run_id,
                          round=r.round_id, site=site, phase="offer", reason=reason)
            else:
                log_event(log, "offer_accepted", run=self.run_id, round=r.round_id, site=site,
                          phase="offer")
            self._cond.notify_all()

    def parameters_for(self, site: str, ref: pb.RoundRef) -> tuple[pb.TensorSpec, bytes]:
        """The round's global parameters as (spec, raw little-endian bytes)."""
        with self._cond:
            r = self._current_round()
            r.check_ref(ref)
            r.may_download(site)
            return self.params_spec, self.params_bytes

    def input_spec_for(self, site: str, ref: pb.RoundRef) -> tuple[pb.TensorSpec, bool]:
        """Check, before a byte of the vector is read, that this site may submit now.

        Returns the expected layout and whether the round is secure (masked input).
        """
        with self._cond:
            r = self._current_round()
            r.check_ref(ref)
            r.check_input_allowed(site)
            return self._expected_input(r), r.secure

    def submit_input(self, site: str, ref: pb.RoundRef, vector: np.ndarray, digest: bytes,
                     metrics: pb.PlainMetrics) -> None:
        """Take a site's plain input; ``digest`` is the sha256 of its little-endian bytes,
        already checked by the servicer's TensorAssembler (hashed once, not twice)."""
        _check_metrics(metrics, self.job.training.max_examples)
        as_float64 = vector.astype(np.float64)  # before taking the lock
        metrics_digest = hashlib.sha256(metrics.SerializeToString(deterministic=True)).hexdigest()
        with self._cond:
            r = self._current_round()
            r.check_ref(ref)
            if r.secure:
                raise invalid("this round uses secure aggregation: send a masked vector "
                              "without plaintext metrics")
            if r.evaluate_only and metrics.weight != 0:
                raise invalid("an evaluation-only round carries no update weight")
            if not r.evaluate_only and metrics.weight <= 0:
                raise invalid("metrics.weight must be positive in a training round")
            r.submit(site, SiteInput(as_float64, metrics))
            self._note_input(site, digest, vector.nbytes, metrics_sha256=metrics_digest)
            log_event(log, "input_received", run=self.run_id, round=r.round_id, site=site,
                      phase="masked_input", bytes=int(vector.nbytes))
            self._cond.notify_all()

    def _current_round(self) -> RoundState:
        if self._round is None:
            if self.finished:
                raise precondition("the run is finished")
            raise precondition("no round is in progress")
        return self._round

    # ------------------------------------------------------------------ status

    def status(self) -> pb.FederationStatus:
        with self._cond:
            r = self._round
            return pb.FederationStatus(
                run_id=self.run_id,
                job_id=self.job.job_id,
                round=r.round_id if r else 0,
                phase=r.phase if r else pb.PHASE_UNSPECIFIED,
                rounds_total=self.job.rounds,
                rounds_completed=self.completed_rounds,
                finished=self.finished,
                sites=[pb.SiteStatus(site_id=s, connected=self._connected(s),
                                     last_seen=live.last_seen, last_refusal=live.last_refusal)
                       for s, live in sorted(self._liveness.items())],
                history=list(self.history),
                epsilon_spent=self.budget.site_epsilon(),
            )

    # ------------------------------------------------------------------ run loop

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        """Run rounds until the job is done (then one evaluation round) or :meth:`stop`."""
        aborts_in_a_row = 0
        while not self._stop.is_set() and not self.finished:
            evaluate_only = self.completed_rounds >= self.job.rounds or bool(self.budget_stop)
            if not evaluate_only:
                refusal = self.budget.refusal()
                if refusal:
                    self.transcript.record("budget_exhausted", reason=refusal,
                                           completed_rounds=self.completed_rounds,
                                           accountant=self._accountant_state())
                    self.budget_stop = refusal
                    evaluate_only = True
                    log_event(log, "budget_exhausted", logging.WARNING, run=self.run_id,
                              completed_rounds=self.completed_rounds, reason=refusal)
            participants = self._gather_sites()
            if participants is None:
                break
            released = self._run_round(participants, evaluate_only)
            aborts_in_a_row = 0 if released else aborts_in_a_row + 1
            if aborts_in_a_row and aborts_in_a_row < MAX_CONSECUTIVE_ABORTS:
                # back off before retrying: sites that refused or vanished get time to return
                self._stop.wait(min(2.0 ** (aborts_in_a_row - 1), 10.0))
            if aborts_in_a_row >= MAX_CONSECUTIVE_ABORTS:
                self.failure = f"{aborts_in_a_row} rounds in a row released nothing"
                log_event(log, "run_failed", logging.ERROR, run=self.run_id, reason=self.failure)
                self.transcript.record("run_finished", completed_rounds=self.completed_rounds,
                                       failed=True, reason=self.failure)
                with self._cond:
                    self.finished = True
                    self._cond.notify_all()
        if self._stop.is_set() and not self.finished:
            self.transcript.record("coordinator_stopped", completed_rounds=self.completed_rounds,
                                   next_round_id=self.next_round_id)
        with self._cond:
            self._cond.notify_all()

    def _gather_sites(self) -> frozenset[str] | None:
        """Wait for ``min_sites`` connected sites, then up to ``gather`` s for the rest."""
        enough_since: float | None = None
        logged = False
        with self._cond:
            while not self._stop.is_set():
                connected = [s for s in self._liveness if self._connected(s)]
                now = self.clock()
                if len(connected) >= self.job.min_sites:
                    enough_since = enough_since if enough_since is not None else now
                    if (len(connected) == len(self._liveness)
                            or now - enough_since >= self.job.deadlines.gather):
                        return frozenset(connected)
                else:
                    enough_since = None
                    if not logged:
                        log_event(log, "waiting_for_sites", run=self.run_id,
                                  connected=len(connected), needed=self.job.min_sites)
                        logged = True
                self._cond.wait(0.2)
        return None

    def _wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        while not done() and self.clock() < deadline and not self._stop.is_set():
            self._cond.wait(min(0.5, max(0.01, deadline - self.clock())))

    def _run_round(self, participants: frozenset[str], evaluate_only: bool) -> bool:
        """One round; returns True when it released an aggregate."""
        round_id = self._claim_round_id()
        self._round_seed = secrets.token_bytes(32)
        d = self.job.deadlines
        secure = self.job.secure_aggregation.enabled
        training_round = self.completed_rounds + (0 if evaluate_only else 1)
        # on the record before any site can see the offer
        self.transcript.record(
            "round_started", round=round_id, training_round=training_round,
            evaluate_only=evaluate_only, secure=secure, participants=sorted(participants),
            params_sha256=self.params_spec.sha256.hex(), round_seed=self._round_seed.hex())
        with self._cond:
            r = RoundState(self.run_id, round_id, evaluate_only, participants,
                           deadline=self.clock() + d.offer, secure=secure)
            self._messages = []
            self._round = r
            log_event(log, "round_started", run=self.run_id, round=round_id, phase="offer",
                      participants=sorted(participants), evaluate_only=evaluate_only,
                      params_sha256=self.params_spec.sha256.hex(), secure=secure,
                      training_round=training_round)
            self._cond.notify_all()
            self._wait_until(r.offer_complete, r.deadline)
            if self._stop.is_set():
                return self._interrupted(r)
            self.transcript.record(
                "offer_responses", round=round_id, accepted=sorted(r.accepted),
                refused=dict(sorted(r.refused.items())),
                silent=sorted(participants - r.accepted - set(r.refused)),
                messages=self._take_messages("RespondOffer"))
            if len(r.accepted) < self.job.min_sites:
                return self._abort(r, f"{len(r.accepted)} of {len(participants)} sites accepted "
                                      f"(minimum {self.job.min_sites})")
            if secure:
                outcome = self._run_secure_phases(r)
                if self._stop.is_set():
                    return self._interrupted(r)
                if isinstance(outcome, str):
                    return self._abort(r, outcome)
            else:
                outcome = self._run_plain_input_phase(r)
                if self._stop.is_set():
                    return self._interrupted(r)
                if isinstance(outcome, str):
                    return self._abort(r, outcome)
        # Aggregate and checkpoint outside the lock: status and polls keep being answered.
        if isinstance(outcome, SecureSum):
            try:
                update_sum, metric_sums = outcome.unmask()
            except SecAggError as exc:
                return self._abort(r, f"unmasking failed: {exc}")
            contributors, dropouts = outcome.survivors, outcome.dropouts
        else:
            update_sum, metric_sums, contributors, dropouts = outcome
        metrics = _aggregate_metrics(metric_sums)
        summary = pb.RoundSummary(round=round_id, contributors=len(contributors), metrics=metrics,
                                  evaluate_only=evaluate_only)
        if evaluate_only:
            self.final_metrics = metrics
        else:
            if metric_sums.weight <= 0:
                return self._abort(r, "the aggregate carries no weight")
            if self.job.site_dp.mode == "central":
                # DP-FedAvg, central mode: N(0, (σC)²) on the sum of clipped updates
                update_sum = update_sum + gaussian_noise(
                    update_sum.shape, self.job.site_dp.noise_multiplier * self.job.site_dp.clip_norm,
                    np.random.default_rng(secrets.randbits(128)))
            if not np.isfinite(update_sum).all():  # checked before the optimiser's state moves
                return self._abort(r, "the aggregate update is not finite; the model is unchanged")
            self._set_params(self.optimiser.step(self.params, update_sum / metric_sums.weight))
            self.completed_rounds += 1
            self.budget.charge_round(round_id)
        # the release is on the transcript before the checkpoint makes it durable and before
        # anyone is told the round completed: a crash cannot leave an unrecorded release
        self._record_release(r, training_round, contributors, dropouts, update_sum,
                             metric_sums, metrics)
        self._checkpoint(self.history + [summary])
        ckpt.atomic_write(self.run_dir / "privacy.json",
                          json.dumps(self.budget.report(), indent=2).encode())
        if evaluate_only:
            self.transcript.record("run_finished", completed_rounds=self.completed_rounds,
                                   failed=False, reason=self.budget_stop)
        with self._cond:
            self.history.append(summary)
            if evaluate_only:
                self.finished = True
            result = pb.RoundResult(ref=r.ref, contributors=contributors, metrics=metrics)
            self._finish_round(r, result)
        log_event(log, "round_completed", run=self.run_id, round=round_id,
                  phase="aggregate", contributors=len(contributors), dropouts=dropouts,
                  completed_rounds=self.completed_rounds, evaluate_only=evaluate_only,
                  secure=secure, eval_accuracy=round(metrics.eval_accuracy, 4),
                  site_epsilon=round(self.budget.site_epsilon(), 4),
                  record_epsilon=round(self.budget.record_epsilon(), 4),
                  eval_loss=round(metrics.eval_loss, 4),
                  train_loss=round(metrics.train_loss, 4))
        return True

    def _record_release(self, r: RoundState, training_round: int, contributors: list[str],
                        dropouts: list[str], update_sum: np.ndarray,
                        metric_sums: pb.PlainMetrics, metrics: pb.AggregateMetrics) -> None:
        aggregate = hashlib.sha256(to_bytes(np.asarray(update_sum, dtype="<f8")))
        aggregate.update(metric_sums.SerializeToString(deterministic=True))
        charged = not r.evaluate_only
        with self._cond:
            leftover = self._take_messages()
        self.transcript.record(
            "round_released", round=r.round_id, training_round=training_round,
            evaluate_only=r.evaluate_only, contributors=sorted(contributors),
            dropouts=sorted(dropouts), aggregate_sha256=aggregate.hexdigest(),
            metrics=MessageToDict(metrics, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True),
            params_sha256=self.params_spec.sha256.hex(), completed_rounds=self.completed_rounds,
            charged=charged and any(v is not None for v in self._round_release.values()),
            site_level=self._round_release["site_level"] if charged else None,
            record_level=self._round_release["record_level"] if charged else None,
            accountant=self._accountant_state(), messages=leftover)

    def _interrupted(self, r: RoundState) -> bool:
        """The coordinator is stopping mid-round: record what the round had received."""
        with self._cond:
            leftover = self._take_messages()
        self.transcript.record("round_interrupted", round=r.round_id, phase=r.phase_name,
                               messages=leftover)
        return False

    def _run_plain_input_phase(self, r: RoundState):
        """Plain mode: collect the inputs; (Σ w·Δ, metric sums, contributors, dropouts)."""
        r.start_input(self.clock() + self.job.deadlines.input)
        log_event(log, "phase_started", run=self.run_id, round=r.round_id, phase="masked_input",
                  accepted=sorted(r.accepted))
        self._cond.notify_all()
        self._wait_until(r.inputs_complete, r.deadline)
        if self._stop.is_set():
            return "the coordinator is stopping"
        dropouts = r.dropouts()
        for site in dropouts:
            log_event(log, "site_dropped", logging.WARNING, run=self.run_id, round=r.round_id,
                      site=site, phase="masked_input")
        self.transcript.record("inputs_received", round=r.round_id, delivered=sorted(r.inputs),
                               dropouts=dropouts, messages=self._take_messages("SubmitInput"))
        if len(r.inputs) < self.job.min_sites:
            return f"{len(r.inputs)} sites delivered input (minimum {self.job.min_sites})"
        r.phase = pb.PHASE_AGGREGATE  # from here on no request can change the round
        summed = WeightedSum(0 if r.evaluate_only else self.params.size)
        for site_input in r.inputs.values():
            summed.add(site_input.vector, site_input.metrics)
        return summed.total, summed.metrics, sorted(r.inputs), dropouts

    def _abort(self, r: RoundState, reason: str) -> bool:
        """Release nothing: the global model, optimiser and checkpoint stay as they were."""
        with self._cond:
            self._abort_locked(r, reason)
        return False

    def _abort_locked(self, r: RoundState, reason: str) -> None:
        self.transcript.record("round_aborted", round=r.round_id, phase=r.phase_name,
                               reason=reason, messages=self._take_messages())
        self.history.append(pb.RoundSummary(round=r.round_id, aborted=True, abort_reason=reason,
                                            evaluate_only=r.evaluate_only))
        log_event(log, "round_aborted", logging.WARNING, run=self.run_id, round=r.round_id,
                  phase=r.phase_name, reason=reason)
        self._finish_round(r, pb.RoundResult(ref=r.ref, aborted=True, abort_reason=reason))

    def _finish_round(self, r: RoundState, result: pb.RoundResult) -> None:
        r.result = result
        for site in r.accepted:
            self._pending_results[site] = result
        self._round = None
        self._cond.notify_all()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _aggregate_metrics(m: pb.PlainMetrics) -> pb.AggregateMetrics:
    """Means from the metric sums (the only per-round metrics anyone sees)."""
    return pb.AggregateMetrics(
        train_loss=m.train_loss_sum / m.train_count if m.train_count else 0.0,
        eval_loss=m.eval_loss_sum / m.eval_count if m.eval_count else 0.0,
        eval_accuracy=min(1.0, m.eval_correct / m.eval_count) if m.eval_count else 0.0,
        eval_count=m.eval_count,
        train_count=m.train_count,
    )


def _check_metrics(m: pb.PlainMetrics, max_examples: int) -> None:
    values = {
        "train_loss_sum": m.train_loss_sum, "eval_loss_sum": m.eval_loss_sum,
        "eval_correct": m.eval_correct, "eval_count": m.eval_count,
        "train_count": m.train_count, "weight": m.weight,
    }
    for name, value in values.items():
        if not np.isfinite(value) or value < 0:
            raise invalid(f"metrics.{name} must be a finite non-negative number, got {value}")
    for name in ("eval_count", "train_count", "weight", "eval_correct"):
        if values[name] > max_examples:
            raise invalid(f"metrics.{name} = {values[name]} exceeds the declared bound {max_examples}")
    if m.eval_correct > m.eval_count:
        raise invalid("metrics.eval_correct exceeds metrics.eval_count")
