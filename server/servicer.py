"""The gRPC servicer: translates messages and status codes, nothing more.

Every method authenticates the session (metadata ``fedtune-session``), calls the
:class:`~fedtune.server.coordinator.Coordinator`, and turns a refusal into a gRPC status
with a message. A refused request is logged and changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator

import grpc

from fedtune.logs import log_event
from fedtune.proto import fedtune_pb2 as pb
from fedtune.proto import fedtune_pb2_grpc as pb_grpc
from fedtune.server.coordinator import Coordinator
from fedtune.server.errors import ProtocolError, invalid, unauthenticated
from fedtune.tensor_codec import CHUNK_BYTES, TensorAssembler, TensorError, iter_raw_chunks
from fedtune.transport import AWAIT_NEXT_METADATA, SESSION_METADATA

log = logging.getLogger("fedtune.server.rpc")

MAX_AWAIT_NEXT_MS = 2**32 - 1  # as PollRequest.wait_ms (uint32); the wait is capped at 60 s


def client_certificate(context: grpc.ServicerContext) -> bytes | None:
    """sha256 of the TLS client certificate of this call (mutual TLS), else None.

    Sessions are bound to it (:meth:`Coordinator.authenticate`): gRPC checked the chain
    during the handshake, so equal digests mean the same certificate, and the same key.
    """
    pem = context.auth_context().get("x509_pem_cert")
    return hashlib.sha256(pem[0]).digest() if pem else None


def _guarded(method):
    """Turn an unexpected exception into INTERNAL (logged with its traceback), not UNKNOWN."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception:
            if context.code() is not None:  # context.abort() already set the status
                raise
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"{method.__name__}: internal error in the coordinator (logged)")
            raise

    return wrapper


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    # -- helpers ---------------------------------------------------------------------------

    def _site(self, context: grpc.ServicerContext) -> str:
        for key, value in context.invocation_metadata():
            if key == SESSION_METADATA:
                try:
                    token = bytes.fromhex(value if isinstance(value, str) else value.decode())
                except ValueError:
                    raise unauthenticated("malformed session token") from None
                return self.c.site_for(token, client_certificate(context))
        raise unauthenticated(f"missing session token (metadata {SESSION_METADATA!r})")

    @staticmethod
    def _await_next_ms(context: grpc.ServicerContext) -> int | None:
        """The call's ``fedtune-await-next-ms`` (None without it), read before the message is
        handled so that a malformed value refuses the whole call and changes nothing."""
        for key, value in context.invocation_metadata():
            if key == AWAIT_NEXT_METADATA:
                text = value if isinstance(value, str) else value.decode(errors="replace")
                if not (text.isascii() and text.isdigit() and len(text) <= 10
                        and 1 <= int(text) <= MAX_AWAIT_NEXT_MS):
                    raise invalid(f"metadata {AWAIT_NEXT_METADATA}: expected an integer in "
                                  f"1..{MAX_AWAIT_NEXT_MS} (milliseconds), got {text[:20]!r}")
                return int(text)
        return None

    def _acknowledge(self, site: str, context: grpc.ServicerContext, message: str,
                     await_next_ms: int | None) -> pb.Ack:
        """The Ack of an accepted message, with the site's next task when the call asked
        for it: the same wait, and the same task, as :meth:`PollTask` would give."""
        if await_next_ms is None:
            return pb.Ack(message=message)
        self.c.call_started(site)
        try:
            task = self.c.poll(site, await_next_ms / 1000.0, context.is_active)
        finally:
            self.c.call_ended(site)
        return pb.Ack(message=message, next=task)

    def _refuse(self, context: grpc.ServicerContext, method: str, exc: ProtocolError,
                site: str = "") -> None:
        log_event(log, "request_refused", logging.WARNING, run=self.c.run_id, site=site,
                  method=method, code=exc.code.name, reason=exc.message)
        context.abort(exc.code, exc.message)

    # -- authentication --------------------------------------------------------------------

    @_guarded
    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.Challenge:
        try:
            return self.c.hello(request.site_id)
        except ProtocolError as exc:
            self._refuse(context, "Hello", exc, request.site_id)
            raise  # unreachable: abort raises

    @_guarded
    def Authenticate(self, request: pb.AuthenticateRequest,
                     context: grpc.ServicerContext) -> pb.Session:
        try:
            return self.c.authenticate(request.site_id, request.nonce, request.signature,
                                       client_certificate(context))
        except ProtocolError as exc:
            self._refuse(context, "Authenticate", exc, request.site_id)
            raise

    # -- tasks -----------------------------------------------------------------------------

    @_guarded
    def PollTask(self, request: pb.PollRequest, context: grpc.ServicerContext) -> pb.Task:
        site = ""
        try:
            site = self._site(context)
            self.c.call_started(site)
            try:
                return self.c.poll(site, request.wait_ms / 1000.0, context.is_active)
            finally:
                self.c.call_ended(site)
        except ProtocolError as exc:
            self._refuse(context, "PollTask", exc, site)
            raise

    @_guarded
    def RespondOffer(self, request: pb.OfferResponse, context: grpc.ServicerContext) -> pb.Ack:
        site = ""
        try:
            site = self._site(context)
            await_next = self._await_next_ms(context)
            self.c.respond_offer(site, request)
            return self._acknowledge(site, context,
                                     "accepted" if request.accept else "refusal recorded",
                                     await_next)
        except ProtocolError as exc:
            self._refuse(context, "RespondOffer", exc, site)
            raise

    def GetParameters(self, request: pb.ParametersRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.TensorChunk]:
        site = ""
        try:
            site = self._site(context)
            spec, raw = self.c.parameters_for(site, request.ref)
        except ProtocolError as exc:
            self._refuse(context, "GetParameters", exc, site)
            raise
        chunk = request.chunk_bytes or CHUNK_BYTES
        chunk = max(4096, min(chunk, 4 * CHUNK_BYTES))
        yield from iter_raw_chunks(spec, raw, chunk)

    @_guarded
    def SubmitInput(self, request_iterator: Iterator[pb.InputChunk],
                    context: grpc.ServicerContext) -> pb.Ack:
        site = ""
        try:
            site = self._site(context)
            await_next = self._await_next_ms(context)
            self.c.begin_upload(site)
            self.c.call_started(site)
            try:
                ref, vector, digest, metrics = self._receive_input(site, request_iterator)
                if metrics is None:
                    self.c.submit_masked(site, ref, vector, digest)
                else:
                    self.c.submit_input(site, ref, vector, digest, metrics)
            finally:
                self.c.call_ended(site)
                self.c.end_upload(site)
            return self._acknowledge(site, context, f"input of round {ref.round} received",
                                     await_next)
        except ProtocolError as exc:
            self._refuse(context, "SubmitInput", exc, site)
            raise

    def _receive_input(self, site: str, chunks: Iterator[pb.InputChunk]):
        first = next(chunks, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("the first message of SubmitInput must be the header")
        header = first.header
        expected, secure = self.c.input_spec_for(site, header.ref)
        if secure and header.HasField("metrics"):
            raise invalid("secure mode: metrics travel inside the masked vector, never in the "
                          "clear")
        if not secure and not header.HasField("metrics"):
            raise invalid("plain mode: the header must carry metrics")
        try:
            assembler = TensorAssembler(header.vector, expected)
            for chunk in chunks:
                if chunk.WhichOneof("part") != "data":
                    raise invalid("a second header in one SubmitInput stream")
                assembler.add(chunk.data)
            vector = assembler.finish()  # checks the bytes against header.vector.sha256
        except TensorError as exc:
            raise invalid(f"input vector: {exc}") from None
        return header.ref, vector, header.vector.sha256, (None if secure else header.metrics)

    # -- secure aggregation ----------------------------------------------------------------

    def _call(self, context: grpc.ServicerContext, method: str, handler) -> pb.Ack:
        site = ""
        try:
            site = self._site(context)
            await_next = self._await_next_ms(context)
            self.c.call_started(site)
            try:
                handler(site)
            finally:
                self.c.call_ended(site)
            return self._acknowledge(site, context, "received", await_next)
        except ProtocolError as exc:
            self._refuse(context, method, exc, site)
            raise

    @_guarded
    def AdvertiseKeys(self, request: pb.SignedKeyAdvertisement,
                      context: grpc.ServicerContext) -> pb.Ack:
        return self._call(context, "AdvertiseKeys", lambda s: self.c.advertise_keys(s, request))

    @_guarded
    def ShareKeys(self, request: pb.EncryptedShares, context: grpc.ServicerContext) -> pb.Ack:
        return self._call(context, "ShareKeys", lambda s: self.c.share_keys(s, request))

    @_guarded
    def ConfirmSurvivors(self, request: pb.SurvivorConfirmation,
                         context: grpc.ServicerContext) -> pb.Ack:
        return self._call(context, "ConfirmSurvivors",
                          lambda s: self.c.confirm_survivors(s, request))

    @_guarded
    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        return self._call(context, "Unmask", lambda s: self.c.unmask(s, request))

    # -- operators ---------------------------------------------------------------------------

    @_guarded
    def GetStatus(self, request: pb.StatusRequest,
                  context: grpc.ServicerContext) -> pb.FederationStatus:
        return self.c.status()
