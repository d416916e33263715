"""Bad input gets a precise gRPC status, is logged, and loses nothing.

Every test puts one bad message in front of a real coordinator (in this process, over
loopback gRPC) at the moment it matters, checks the status code and its message, checks that
the refusal is in the structured log, and then shows that nothing was lost: the round is
where it was, ``checkpoint.npz`` is byte for byte the same, and the well-behaved sites can
still complete the round.

The fixture completes round 1 (so a checkpoint exists) and leaves round 2 in its offer phase
with two authenticated hand-driven sites, ``site-1`` and ``site-2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_inprocess import (
    CALL_TIMEOUT_S,
    EventLog,
    Federation,
    HandSite,
    fast_job,
    good_metrics,
    good_vector,
    input_stream,
    rpc_error,
    spec_of,
    started_federation,
)

from fedtune.privacy.signatures import auth_statement, sign
from fedtune.proto import fedtune_pb2 as pb
from fedtune.tensor_codec import MAX_TENSOR_BYTES, spec_for, to_bytes
from fedtune.transport import MAX_MESSAGE_BYTES

Code = grpc.StatusCode


@pytest.fixture
def site1(fed: Federation) -> HandSite:
    return fed.site("site-1")


@pytest.fixture
def site2(fed: Federation) -> HandSite:
    return fed.site("site-2")


@pytest.fixture
def offer(site1: HandSite) -> pb.Offer:
    """Round 2's offer, as site-1 received it."""
    return site1.next_task("offer")


@pytest.fixture
def input_task(site1: HandSite, site2: HandSite, offer: pb.Offer) -> pb.SubmitInputTask:
    """Both sites accepted round 2; site-1's request for its input."""
    site1.answer(offer.ref)
    site2.answer(offer.ref)
    return site1.next_task("submit_input")


# ---------------------------------------------------------------------------- assertions


@dataclass(frozen=True)
class Snapshot:
    round: int
    phase: int
    rounds_completed: int
    checkpoint: bytes


def snapshot(fed: Federation) -> Snapshot:
    status = fed.status()
    return Snapshot(status.round, status.phase, status.rounds_completed, fed.checkpoint_bytes())


def assert_lost_nothing(fed: Federation, before: Snapshot) -> None:
    """Still serving, same round and phase, same checkpoint; and the round can complete."""
    status = fed.status()
    assert (status.round, status.phase, status.rounds_completed) == (
        before.round, before.phase, before.rounds_completed)
    assert before.checkpoint, "the fixture should have written a checkpoint"
    assert fed.checkpoint_bytes() == before.checkpoint
    assert fed.coordinator.thread.is_alive()
    done = fed.finish_round()
    assert done.rounds_completed == before.rounds_completed + 1
    assert not done.history[-1].aborted
    assert fed.checkpoint_bytes() != before.checkpoint


def assert_logged(events: EventLog, method: str, code: grpc.StatusCode, site: str = "") -> None:
    refusals = events.events("request_refused", method=method, code=code.name)
    assert refusals, f"no request_refused event for {method} {code.name}"
    assert refusals[-1]["level"] == "WARNING"
    assert refusals[-1]["reason"]
    if site:
        assert refusals[-1]["site"] == site


# ---------------------------------------------------------------------------- authentication


def test_hello_from_an_unknown_site_is_unauthenticated(fed, events):
    before = snapshot(fed)
    err = rpc_error(lambda: fed.stub.Hello(pb.HelloRequest(site_id="site-9"),
                                           timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "'site-9' is not enrolled" in err.details()
    assert_logged(events, "Hello", Code.UNAUTHENTICATED, site="site-9")
    assert events.events("unknown_site", site="site-9")
    assert_lost_nothing(fed, before)


def test_signature_by_another_key_is_unauthenticated(fed, events, site1):
    before = snapshot(fed)
    challenge = site1.hello()
    forged = sign(Ed25519PrivateKey.generate(),
                  auth_statement(challenge.run_id, "site-1", challenge.nonce))
    err = rpc_error(lambda: site1.stub.Authenticate(
        pb.AuthenticateRequest(site_id="site-1", nonce=challenge.nonce, signature=forged),
        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "signature does not verify" in err.details()
    assert_logged(events, "Authenticate", Code.UNAUTHENTICATED, site="site-1")
    assert events.events("bad_signature", site="site-1")
    assert_lost_nothing(fed, before)


def test_garbage_signature_is_unauthenticated(fed, events, site1):
    before = snapshot(fed)
    challenge = site1.hello()
    err = rpc_error(lambda: site1.stub.Authenticate(
        pb.AuthenticateRequest(site_id="site-1", nonce=challenge.nonce, signature=b"\x5a" * 64),
        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "signature does not verify" in err.details()
    assert_logged(events, "Authenticate", Code.UNAUTHENTICATED, site="site-1")
    assert_lost_nothing(fed, before)


def test_signature_of_the_wrong_length_is_unauthenticated(fed, events, site1):
    before = snapshot(fed)
    challenge = site1.hello()
    err = rpc_error(lambda: site1.stub.Authenticate(
        pb.AuthenticateRequest(site_id="site-1", nonce=challenge.nonce, signature=b"short"),
        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "64 bytes, got 5" in err.details()
    assert_logged(events, "Authenticate", Code.UNAUTHENTICATED, site="site-1")
    assert_lost_nothing(fed, before)


def test_signature_made_for_another_run_is_unauthenticated(fed, events, site1):
    before = snapshot(fed)
    challenge = site1.hello()
    other_run = sign(site1.key, auth_statement("another-run", "site-1", challenge.nonce))
    err = rpc_error(lambda: site1.stub.Authenticate(
        pb.AuthenticateRequest(site_id="site-1", nonce=challenge.nonce, signature=other_run),
        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "signature does not verify" in err.details()
    assert_lost_nothing(fed, before)


def test_reused_challenge_is_unauthenticated(fed, events, site1):
    challenge = site1.hello()
    site1.authenticate(challenge)
    before = snapshot(fed)
    err = rpc_error(lambda: site1.authenticate(challenge))
    assert err.code() == Code.UNAUTHENTICATED
    assert "unknown or expired challenge" in err.details()
    assert_logged(events, "Authenticate", Code.UNAUTHENTICATED, site="site-1")
    assert_lost_nothing(fed, before)


def test_failed_attempt_uses_up_the_challenge(fed, events, site1):
    challenge = site1.hello()
    rpc_error(lambda: site1.stub.Authenticate(
        pb.AuthenticateRequest(site_id="site-1", nonce=challenge.nonce, signature=b"\0" * 64),
        timeout=CALL_TIMEOUT_S))
    before = snapshot(fed)
    err = rpc_error(lambda: site1.authenticate(challenge))  # now correctly signed
    assert err.code() == Code.UNAUTHENTICATED
    assert "unknown or expired challenge" in err.details()
    assert_lost_nothing(fed, before)


def test_challenge_issued_to_another_site_is_unauthenticated(fed, events, site1, site2):
    before = snapshot(fed)
    challenge = site1.hello()
    err = rpc_error(lambda: site2.authenticate(challenge))  # site-2 signs site-1's nonce
    assert err.code() == Code.UNAUTHENTICATED
    assert "unknown or expired challenge" in err.details()
    assert_logged(events, "Authenticate", Code.UNAUTHENTICATED, site="site-2")
    assert_lost_nothing(fed, before)


def test_call_without_a_session_token_is_unauthenticated(fed, events):
    before = snapshot(fed)
    err = rpc_error(lambda: fed.stub.PollTask(pb.PollRequest(wait_ms=0), timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "missing session token" in err.details()
    assert_logged(events, "PollTask", Code.UNAUTHENTICATED)
    assert_lost_nothing(fed, before)


def test_malformed_session_token_is_unauthenticated(fed, events):
    before = snapshot(fed)
    err = rpc_error(lambda: fed.stub.PollTask(
        pb.PollRequest(wait_ms=0), metadata=[("fedtune-session", "not hex at all")],
        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "malformed session token" in err.details()
    assert_logged(events, "PollTask", Code.UNAUTHENTICATED)
    assert_lost_nothing(fed, before)


def test_unknown_session_token_is_unauthenticated(fed, events):
    before = snapshot(fed)
    err = rpc_error(lambda: fed.stub.PollTask(
        pb.PollRequest(wait_ms=0), metadata=[("fedtune-session", "ab" * 32)],
        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "no valid session" in err.details()
    assert_logged(events, "PollTask", Code.UNAUTHENTICATED)
    assert_lost_nothing(fed, before)


@pytest.mark.parametrize("method", ["RespondOffer", "GetParameters", "SubmitInput",
                                    "AdvertiseKeys", "ShareKeys", "Unmask"])
def test_every_site_call_without_a_session_is_unauthenticated(fed, events, offer, method):
    before = snapshot(fed)
    requests = {
        "RespondOffer": pb.OfferResponse(ref=offer.ref, accept=True),
        "GetParameters": pb.ParametersRequest(ref=offer.ref),
        "SubmitInput": iter(input_stream(offer.ref, np.zeros(50, "<f4"))),
        "AdvertiseKeys": pb.SignedKeyAdvertisement(),
        "ShareKeys": pb.EncryptedShares(ref=offer.ref),
        "Unmask": pb.UnmaskShares(ref=offer.ref),
    }
    call = getattr(fed.stub, method)
    if method == "GetParameters":
        err = rpc_error(lambda: list(call(requests[method], timeout=CALL_TIMEOUT_S)))
    else:
        err = rpc_error(lambda: call(requests[method], timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.UNAUTHENTICATED
    assert "missing session token" in err.details()
    assert_logged(events, method, Code.UNAUTHENTICATED)
    assert_lost_nothing(fed, before)


# ---------------------------------------------------------------------------- wrong run, round, phase


def test_offer_answer_for_another_run_is_failed_precondition(fed, events, site1, offer):
    before = snapshot(fed)
    err = rpc_error(lambda: site1.answer(pb.RoundRef(run_id="another-run", round=offer.ref.round)))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "message for run 'another-run'" in err.details()
    assert_logged(events, "RespondOffer", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


@pytest.mark.parametrize("delta", [-1, 1], ids=["replayed-from-last-round", "next-round"])
def test_offer_answer_for_another_round_is_failed_precondition(fed, events, site1, offer, delta):
    before = snapshot(fed)
    ref = pb.RoundRef(run_id=offer.ref.run_id, round=offer.ref.round + delta)
    err = rpc_error(lambda: site1.answer(ref))
    assert err.code() == Code.FAILED_PRECONDITION
    assert f"message for round {ref.round}, the current round is {offer.ref.round}" in err.details()
    assert_logged(events, "RespondOffer", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


def test_offer_answer_after_the_offer_phase_is_failed_precondition(fed, events, site1, input_task):
    before = snapshot(fed)
    err = rpc_error(lambda: site1.answer(input_task.ref, accept=False, reason="changed my mind"))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "not accepted in phase masked_input" in err.details()
    assert_logged(events, "RespondOffer", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


@pytest.mark.parametrize("second", [True, False], ids=["accept-twice", "accept-then-refuse"])
def test_second_offer_answer_is_already_exists(fed, events, site1, offer, second):
    site1.answer(offer.ref)
    before = snapshot(fed)
    err = rpc_error(lambda: site1.answer(offer.ref, accept=second, reason="second thoughts"))
    assert err.code() == Code.ALREADY_EXISTS
    assert "already answered the offer of round 2" in err.details()
    assert_logged(events, "RespondOffer", Code.ALREADY_EXISTS, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_for_another_run_is_failed_precondition(fed, events, site1, input_task):
    before = snapshot(fed)
    ref = pb.RoundRef(run_id="another-run", round=input_task.ref.round)
    err = rpc_error(lambda: site1.submit(input_stream(ref, good_vector(input_task.expected))))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "message for run 'another-run'" in err.details()
    assert_logged(events, "SubmitInput", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_replayed_from_the_last_round_is_failed_precondition(fed, events, site1, input_task):
    before = snapshot(fed)
    ref = pb.RoundRef(run_id=input_task.ref.run_id, round=input_task.ref.round - 1)
    err = rpc_error(lambda: site1.submit(input_stream(ref, good_vector(input_task.expected))))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "message for round 1, the current round is 2" in err.details()
    assert_logged(events, "SubmitInput", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_during_the_offer_phase_is_failed_precondition(fed, events, site1, offer):
    site1.answer(offer.ref)  # site-2 has not answered: the round stays in its offer phase
    before = snapshot(fed)
    assert before.phase == pb.PHASE_OFFER
    vector = np.zeros(int(offer.parameters.shape[0]), "<f4")
    err = rpc_error(lambda: site1.submit(input_stream(offer.ref, vector)))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "input is not accepted in phase offer" in err.details()
    assert_logged(events, "SubmitInput", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_from_a_site_that_refused_the_offer_is_failed_precondition(fed, events, site1,
                                                                          site2, offer):
    site1.answer(offer.ref)
    site2.answer(offer.ref, accept=False, reason="policy says no")
    task = site1.next_task("submit_input")
    before = snapshot(fed)
    err = rpc_error(lambda: site2.submit(input_stream(task.ref, good_vector(task.expected))))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "'site-2' did not accept round 2" in err.details()
    assert_logged(events, "SubmitInput", Code.FAILED_PRECONDITION, site="site-2")
    assert_lost_nothing(fed, before)


def test_second_input_of_a_site_is_already_exists(fed, events, site1, input_task):
    site1.submit_good(input_task)  # site-2 has not sent its input: the phase stays open
    before = snapshot(fed)
    err = rpc_error(lambda: site1.submit_good(input_task, value=0.5))
    assert err.code() == Code.ALREADY_EXISTS
    assert "'site-1' already submitted its input for round 2" in err.details()
    assert_logged(events, "SubmitInput", Code.ALREADY_EXISTS, site="site-1")
    assert_lost_nothing(fed, before)


def test_parameters_before_the_input_phase_are_failed_precondition(fed, events, site1, offer):
    site1.answer(offer.ref)
    before = snapshot(fed)
    err = rpc_error(lambda: list(site1.stub.GetParameters(
        pb.ParametersRequest(ref=offer.ref), metadata=site1.metadata, timeout=CALL_TIMEOUT_S)))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "not accepted in phase offer" in err.details()
    assert_logged(events, "GetParameters", Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


def test_site_that_joined_after_the_round_started_is_permission_denied(tmp_path, events):
    with started_federation(tmp_path, n_sites=3, job=fast_job(gather=0.3),
                            join=("site-1", "site-2")) as fed:
        offer = fed.site("site-1").next_task("offer")
        late = fed.site("site-3")
        late.authenticate()
        before = snapshot(fed)
        err = rpc_error(lambda: late.answer(offer.ref))
        assert err.code() == Code.PERMISSION_DENIED
        assert "'site-3' is not a participant of round 2" in err.details()
        assert_logged(events, "RespondOffer", Code.PERMISSION_DENIED, site="site-3")
        assert_lost_nothing(fed, before)


@pytest.mark.parametrize("method", ["AdvertiseKeys", "ShareKeys", "Unmask"])
def test_secure_aggregation_call_in_a_plain_run_is_failed_precondition(fed, events, site1,
                                                                        offer, method):
    before = snapshot(fed)
    request = {
        "AdvertiseKeys": pb.SignedKeyAdvertisement(
            advertisement=pb.KeyAdvertisement(ref=offer.ref, site_id="site-1",
                                              encryption_public_key=b"\1" * 32,
                                              mask_public_key=b"\2" * 32),
            signature=b"\3" * 64),
        "ShareKeys": pb.EncryptedShares(ref=offer.ref),
        "Unmask": pb.UnmaskShares(ref=offer.ref),
    }[method]
    err = rpc_error(lambda: getattr(site1.stub, method)(request, metadata=site1.metadata,
                                                        timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.FAILED_PRECONDITION
    assert "does not use secure aggregation" in err.details()
    assert_logged(events, method, Code.FAILED_PRECONDITION, site="site-1")
    assert_lost_nothing(fed, before)


# ---------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("shape", [[51], [49], [5, 10], []], ids=["longer", "shorter", "2-d",
                                                                   "scalar"])
def test_input_of_the_wrong_shape_is_invalid_argument(fed, events, site1, input_task, shape):
    assert list(input_task.expected.shape) == [50]
    before = snapshot(fed)
    data = np.zeros(shape, "<f4").tobytes()
    spec = spec_of("<f4", shape, data)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec, data=data)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert f"shape {shape} does not match the expected [50]" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_of_an_allowed_but_unexpected_dtype_is_invalid_argument(fed, events, site1,
                                                                      input_task):
    before = snapshot(fed)
    vector = np.zeros(50, "<f8")
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "dtype <f8 does not match the expected <f4" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


@pytest.mark.parametrize("dtype", [">f4", "|O", "<U1", "<f2", "float32", ""])
def test_input_of_a_dtype_off_the_allow_list_is_invalid_argument(fed, events, site1, input_task,
                                                                 dtype):
    before = snapshot(fed)
    data = np.zeros(50, ">f4").tobytes()  # 200 bytes, whatever the claimed dtype
    spec = spec_of(dtype, [50], data)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec, data=data)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert f"dtype {dtype!r} is not allowed" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_spec_whose_length_contradicts_its_shape_is_invalid_argument(fed, events, site1,
                                                                     input_task):
    before = snapshot(fed)
    data = to_bytes(good_vector(input_task.expected))
    spec = spec_of("<f4", [50], data[:100])
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec, data=data[:100])))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "needs 200 bytes, spec says 100" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_shape_whose_size_overflows_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    spec = spec_of("<f4", [2**62, 4], b"")  # 2**64 elements: 0 if counted in uint64
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec, data=b"")))
    assert err.code() == Code.INVALID_ARGUMENT
    assert f"needs {2**64 * 4} bytes, spec says 0" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_announced_tensor_beyond_the_size_limit_is_refused_before_allocation(fed, events, site1,
                                                                             input_task):
    before = snapshot(fed)
    count = MAX_TENSOR_BYTES // 4 + 1
    spec = spec_of("<f4", [count], b"", nbytes=4 * count)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec, data=b"")))
    assert err.code() == Code.INVALID_ARGUMENT
    assert f"exceeds the limit of {MAX_TENSOR_BYTES} bytes" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_input_with_non_finite_values_is_invalid_argument(fed, events, site1, input_task, bad):
    before = snapshot(fed)
    vector = good_vector(input_task.expected)
    vector[7] = bad
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "1 values are NaN or Inf" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_truncated_input_stream_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    vector = good_vector(input_task.expected)
    data = to_bytes(vector)[:-4]
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec_for(vector),
                                                      data=data)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "truncated: received 196 of 200 bytes" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_stream_longer_than_declared_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    vector = good_vector(input_task.expected)
    data = to_bytes(vector) + b"\0\0\0\0"
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec_for(vector),
                                                      data=data, chunk_bytes=64)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "received more than the declared 200 bytes" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_whose_sha256_does_not_match_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    vector = good_vector(input_task.expected)
    altered = bytearray(to_bytes(vector))
    altered[0] ^= 1
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, spec=spec_for(vector),
                                                      data=bytes(altered))))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "sha256 of the received bytes does not match" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


@pytest.mark.parametrize("first", ["data", "nothing"])
def test_input_stream_without_a_leading_header_is_invalid_argument(fed, events, site1,
                                                                   input_task, first):
    before = snapshot(fed)
    stream = input_stream(input_task.ref, good_vector(input_task.expected))
    err = rpc_error(lambda: site1.submit(stream[1:] if first == "data" else []))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "the first message of SubmitInput must be the header" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_stream_with_a_second_header_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    stream = input_stream(input_task.ref, good_vector(input_task.expected))
    err = rpc_error(lambda: site1.submit([stream[0], stream[0], *stream[1:]]))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "a second header" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_plain_input_without_metrics_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    stream = input_stream(input_task.ref, good_vector(input_task.expected))
    stream[0].header.ClearField("metrics")
    err = rpc_error(lambda: site1.submit(stream))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "the header must carry metrics" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_input_chunk_over_the_message_limit_is_resource_exhausted(fed, site1, input_task):
    before = snapshot(fed)
    header = input_stream(input_task.ref, good_vector(input_task.expected))[0]
    oversized = pb.InputChunk(data=b"\0" * (MAX_MESSAGE_BYTES + 1))
    err = rpc_error(lambda: site1.submit([header, oversized]))
    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert "larger than max" in err.details()
    assert_lost_nothing(fed, before)


def test_unary_request_over_the_message_limit_is_resource_exhausted(fed):
    before = snapshot(fed)
    huge = pb.HelloRequest(site_id="x" * (MAX_MESSAGE_BYTES + 1))
    err = rpc_error(lambda: fed.stub.Hello(huge, timeout=CALL_TIMEOUT_S))
    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert "larger than max" in err.details()
    assert_lost_nothing(fed, before)


# ---------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(("name", "value"), [
    ("train_loss_sum", -1.0), ("eval_loss_sum", float("nan")), ("eval_count", float("inf")),
    ("weight", -2.0),
])
def test_metric_that_is_negative_or_not_finite_is_invalid_argument(fed, events, site1,
                                                                   input_task, name, value):
    before = snapshot(fed)
    metrics = good_metrics()
    setattr(metrics, name, value)
    vector = good_vector(input_task.expected)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector, metrics)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert f"metrics.{name} must be a finite non-negative number" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_more_correct_than_evaluated_examples_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    metrics = good_metrics()
    metrics.eval_correct, metrics.eval_count = 5.0, 4.0
    vector = good_vector(input_task.expected)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector, metrics)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "metrics.eval_correct exceeds metrics.eval_count" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_count_beyond_the_declared_bound_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    metrics = good_metrics()
    metrics.train_count = 1001.0  # fast_job declares max_examples = 1000
    vector = good_vector(input_task.expected)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector, metrics)))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "metrics.train_count = 1001.0 exceeds the declared bound 1000" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


def test_training_input_without_weight_is_invalid_argument(fed, events, site1, input_task):
    before = snapshot(fed)
    vector = good_vector(input_task.expected)
    err = rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector,
                                                      good_metrics(weight=0.0))))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "metrics.weight must be positive" in err.details()
    assert_logged(events, "SubmitInput", Code.INVALID_ARGUMENT, site="site-1")
    assert_lost_nothing(fed, before)


# ---------------------------------------------------------------------------- what survives


def test_refused_input_leaves_the_other_sites_input_in_the_round(fed, site1, site2, input_task):
    site2.submit_good(site2.next_task("submit_input"))
    vector = good_vector(input_task.expected)
    vector[0] = np.nan
    rpc_error(lambda: site1.submit(input_stream(input_task.ref, vector)))
    site1.submit_good(input_task)
    status = fed.wait_for(lambda s: s.rounds_completed == 2)
    assert status.history[-1].contributors == 2


def test_refusals_do_not_move_the_global_model(fed, site1, input_task):
    """A refused input never reaches the sum: the round's update is the good inputs' mean."""
    params_before = fed.coordinator.coordinator.params.copy()
    nan_vector = good_vector(input_task.expected, np.nan)
    rpc_error(lambda: site1.submit(input_stream(input_task.ref, nan_vector)))
    huge_vector = good_vector(input_task.expected, 1e30)
    rpc_error(lambda: site1.submit(input_stream(input_task.ref, huge_vector,
                                                good_metrics(weight=-1.0))))
    fed.finish_round()
    moved = fed.coordinator.coordinator.params - params_before
    # both sites sent w·Δ = 0.01 with weight 2: FedAvg moves every parameter by 0.02 / 4
    np.testing.assert_allclose(moved, 0.005, atol=1e-6)
