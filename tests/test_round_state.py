"""The rules of one round, without a network."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedtune.proto import fedtune_pb2 as pb
from fedtune.server.errors import ProtocolError
from fedtune.server.round_state import RoundState, SiteInput


def _round(**kw) -> RoundState:
    return RoundState("run-a", 3, False, frozenset({"a", "b", "c"}), deadline=10.0, **kw)


def _input() -> SiteInput:
    return SiteInput(np.zeros(2), pb.PlainMetrics(weight=1))


def test_a_message_for_another_run_or_round_is_refused():
    r = _round()
    with pytest.raises(ProtocolError) as exc:
        r.check_ref(pb.RoundRef(run_id="run-b", round=3))
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ProtocolError, match="round 2"):
        r.check_ref(pb.RoundRef(run_id="run-a", round=2))


def test_the_offer_is_complete_when_every_participant_answered():
    r = _round()
    r.respond_offer("a", True, "")
    r.respond_offer("b", False, "policy")
    assert not r.offer_complete()
    r.respond_offer("c", True, "")
    assert r.offer_complete() and r.accepted == {"a", "c"} and r.refused == {"b": "policy"}


def test_answering_twice_is_refused():
    r = _round()
    r.respond_offer("a", True, "")
    with pytest.raises(ProtocolError) as exc:
        r.respond_offer("a", False, "changed my mind")
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_a_non_participant_is_refused():
    with pytest.raises(ProtocolError) as exc:
        _round().respond_offer("z", True, "")
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_input_is_refused_during_the_offer_and_from_a_site_that_refused():
    r = _round()
    r.respond_offer("a", True, "")
    with pytest.raises(ProtocolError, match="phase offer"):
        r.submit("a", _input())
    r.respond_offer("b", False, "no")
    r.start_input(20.0)
    with pytest.raises(ProtocolError, match="did not accept"):
        r.submit("b", _input())


def test_a_second_input_from_the_same_site_is_refused():
    r = _round()
    r.respond_offer("a", True, "")
    r.start_input(20.0)
    r.submit("a", _input())
    with pytest.raises(ProtocolError) as exc:
        r.submit("a", _input())
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_sites_that_accepted_but_did_not_deliver_are_dropouts():
    r = _round()
    for s in "abc":
        r.respond_offer(s, True, "")
    r.start_input(20.0)
    r.submit("b", _input())
    assert r.dropouts() == ["a", "c"] and not r.inputs_complete()
