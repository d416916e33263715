"""A message call can bring the site's next task back in its Ack (``fedtune-await-next-ms``).

The coordinator (in this process, over loopback gRPC) answers such a call with exactly the
task a poll would give, or a Wait when none comes in time; a malformed value is refused
before the message is read, so the message can be sent again. The site agent asks for it on
the last message of each phase and runs the task it gets without polling.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from helpers_inprocess import (
    CALL_TIMEOUT_S,
    HandSite,
    good_metrics,
    good_vector,
    input_stream,
    rpc_error,
)

from fedtune.client.agent import SiteAgent
from fedtune.proto import fedtune_pb2 as pb
from fedtune.transport import AWAIT_NEXT_METADATA

Code = grpc.StatusCode


def awaiting(site: HandSite, wait_ms: int | str) -> list[tuple[str, str]]:
    return [*site.metadata, (AWAIT_NEXT_METADATA, str(wait_ms))]


def answer(site: HandSite, ref: pb.RoundRef, wait_ms: int | str) -> pb.Ack:
    return site.stub.RespondOffer(pb.OfferResponse(ref=ref, accept=True),
                                  metadata=awaiting(site, wait_ms),
                                  timeout=CALL_TIMEOUT_S + 10)


def test_the_last_answer_of_the_offer_phase_brings_the_input_task(fed):
    site1, site2 = fed.site("site-1"), fed.site("site-2")
    offer = site1.next_task("offer")
    assert not site2.answer(offer.ref).HasField("next")  # no metadata: no task in the Ack
    ack = answer(site1, offer.ref, 5_000)
    assert ack.message == "accepted"
    assert ack.next.WhichOneof("kind") == "submit_input"
    assert ack.next.submit_input.ref == offer.ref
    # the very task a poll gives (it is delivered until the input comes)
    assert site1.next_task("submit_input") == ack.next.submit_input


def test_an_answer_that_waits_while_another_site_has_not_answered(fed):
    site1, site2 = fed.site("site-1"), fed.site("site-2")
    offer = site1.next_task("offer")
    result: dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: result.update(ack=answer(site1, offer.ref, 20_000)))
    waiting.start()
    try:
        # site-1's call holds until the phase moves on: site-2's answer moves it
        fed.wait_for(lambda s: s.phase == pb.PHASE_OFFER)
        site2.answer(offer.ref)
    finally:
        waiting.join(CALL_TIMEOUT_S + 20)
    assert result["ack"].next.WhichOneof("kind") == "submit_input"


def test_an_answer_with_nothing_to_come_in_time_brings_a_wait(fed):
    site1 = fed.site("site-1")
    offer = site1.next_task("offer")
    ack = answer(site1, offer.ref, 200)  # site-2 has not answered: no input task yet
    assert ack.next.WhichOneof("kind") == "wait"
    assert ack.next.wait.reason == "no task yet"


def test_the_last_input_brings_the_round_result(fed):
    site1, site2 = fed.site("site-1"), fed.site("site-2")
    offer = site1.next_task("offer")
    site1.answer(offer.ref)
    site2.answer(offer.ref)
    task1, task2 = site1.next_task("submit_input"), site2.next_task("submit_input")
    site2.submit_good(task2)
    vector = good_vector(task1.expected)
    ack = site1.stub.SubmitInput(iter(input_stream(task1.ref, vector, good_metrics())),
                                 metadata=awaiting(site1, 5_000), timeout=CALL_TIMEOUT_S + 10)
    assert ack.message == f"input of round {offer.ref.round} received"
    assert ack.next.WhichOneof("kind") == "round_result"
    assert ack.next.round_result.ref == offer.ref
    assert not ack.next.round_result.aborted


@pytest.mark.parametrize("value", ["soon", "0", "-5", "+5", "1.5", "1e3", "99999999999"])
def test_a_malformed_wait_is_refused_before_the_answer_is_read(fed, events, value):
    site1 = fed.site("site-1")
    offer = site1.next_task("offer")
    err = rpc_error(lambda: answer(site1, offer.ref, value))
    assert err.code() == Code.INVALID_ARGUMENT
    assert f"metadata {AWAIT_NEXT_METADATA}: expected an integer" in err.details()
    refusals = events.events("request_refused", method="RespondOffer", code="INVALID_ARGUMENT")
    assert refusals and refusals[-1]["site"] == "site-1"
    # the answer was not recorded: it can still be given, and the round completes
    assert site1.answer(offer.ref).message == "accepted"
    fed.site("site-2").answer(offer.ref)
    assert site1.next_task("submit_input").ref == offer.ref


# ---------------------------------------------------------------------------- the site agent


class _Stub:
    """Stands in for the coordinator's stub: records the metadata, answers with ``ack``."""

    def __init__(self, ack: pb.Ack) -> None:
        self.ack = ack
        self.metadata: list[tuple[str, str]] = []

    def ShareKeys(self, request: Any, metadata: list[tuple[str, str]], timeout: float) -> pb.Ack:
        self.metadata = metadata
        return self.ack


def _agent(stub: _Stub) -> SiteAgent:
    agent = SiteAgent.__new__(SiteAgent)  # only what _call touches
    agent.config = type("Config", (), {"poll_wait_ms": 1_500})()
    agent._stub = stub
    agent._token = b"\x01" * 16
    agent._egress = None
    agent._next = None
    return agent


def test_the_agent_asks_for_the_next_task_and_keeps_it():
    task = pb.Task(unmask=pb.UnmaskTask(ref=pb.RoundRef(run_id="r", round=3)))
    stub = _Stub(pb.Ack(message="received", next=task))
    agent = _agent(stub)
    agent._call("ShareKeys", pb.EncryptedShares(ref=pb.RoundRef(run_id="r", round=3)))
    assert (AWAIT_NEXT_METADATA, "1500") in stub.metadata
    assert agent._next == task


@pytest.mark.parametrize("ack", [pb.Ack(message="received"),
                                 pb.Ack(next=pb.Task(wait=pb.Wait(reason="no task yet")))],
                         ids=["no-task", "wait"])
def test_the_agent_polls_when_the_ack_brings_no_task(ack):
    agent = _agent(_Stub(ack))
    agent._call("ShareKeys", pb.EncryptedShares(ref=pb.RoundRef(run_id="r", round=3)))
    assert agent._next is None


def test_a_newer_poll_ends_the_waiting_one_of_the_same_site_at_once(fed):
    """The coordinator wakes waiting polls only when there is an older one to end (not on
    every call); the older poll must still end as soon as the newer one starts, not at its
    next one-second wait tick."""
    coordinator = fed.coordinator.coordinator
    site1 = fed.site("site-1")
    offer = site1.next_task("offer")
    site1.answer(offer.ref)  # site-2 has not answered: site-1 has no task now
    ended: dict[str, Any] = {}

    def first_poll() -> None:
        task = coordinator.poll("site-1", 30.0)
        ended.update(at=time.monotonic(), task=task)

    waiting = threading.Thread(target=first_poll)
    waiting.start()
    try:
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while coordinator._polls_waiting.get("site-1") != 1:  # the first poll is waiting
            assert time.monotonic() < deadline, "the first poll never started waiting"
            time.sleep(0.01)
        started = time.monotonic()
        newer = coordinator.poll("site-1", 0.05)
        assert newer.wait.reason == "no task yet"
        waiting.join(timeout=CALL_TIMEOUT_S)
        assert ended["task"].wait.reason == "superseded"
        # woken by the newer poll, not by the wait's one-second tick
        assert ended["at"] - started < 0.9
        assert coordinator._polls_waiting["site-1"] == 0
    finally:
        waiting.join(timeout=CALL_TIMEOUT_S)
