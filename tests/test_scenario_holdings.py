"""What a recording coordinator held survives a crash, and a round nobody examined never counts
as hidden.

Threat: a scenario that kills the coordinator (``coordinator_restart``) and asks what the
coordinator could rebuild (``updates_visible``, a reconstruction attack). If the killed life
left no record, its rounds would silently drop out of the count, and "0 updates visible"
would be reported for rounds nobody looked at.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers_inprocess import preserved_logging

from fedtune.logs import log_event
from fedtune.scenarios.adversaries import RecordingBehaviour
from fedtune.scenarios.coordinator_variant import HoldingsWriter
from fedtune.scenarios.outcome import Outcome, RoundRow
from fedtune.scenarios.replay import (
    AttackOutcome,
    _reconstruction,
    _updates_visible,
    unexamined_rounds,
)
from fedtune.scenarios.spec import AttackSpec, load_scenario

CRASH = Path(__file__).resolve().parents[1] / "scenarios" / "coordinator-crash.toml"


class FileSeenByTheLog(logging.Handler):
    """Stands in for coordinator.log's handler (on the parent logger ``fedtune``): notes
    whether the record file exists when the round_completed line arrives."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.seen: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "round_completed":
            self.seen.append(self.path.exists())


def test_holdings_are_written_before_round_completed_reaches_the_log(tmp_path):
    # the replay runner kills the coordinator once it reads round_completed in the log: the
    # round's record must already be on disk then
    record = tmp_path / "coordinator-holds-1.json"
    server = logging.getLogger("fedtune.server")
    writer = HoldingsWriter(RecordingBehaviour(), True, "honest", record)
    log_line = FileSeenByTheLog(record)
    with preserved_logging("fedtune"), preserved_logging("fedtune.server"):
        logging.getLogger("fedtune").setLevel(logging.INFO)
        logging.getLogger("fedtune").addHandler(log_line)
        server.addHandler(writer)
        log_event(server, "round_started", round=1)
        assert not record.exists()
        log_event(server, "round_completed", round=1)
    assert log_line.seen == [True]
    assert json.loads(record.read_text()) == {"secure": True, "rounds": {}, "adversary": "honest"}
    assert not list(tmp_path.glob("*.partial"))


def outcome_with(released: list[int], examined: list[int]) -> Outcome:
    holdings = [{"secure": True, "rounds": {str(r): {"site-1": {"input_recoverable": False}}
                                            for r in examined}}]
    return Outcome(run_id="r", rounds=[RoundRow(round=r, training_round=i + 1,
                                                evaluate_only=False, aborted=False,
                                                contributors=3)
                                       for i, r in enumerate(released)],
                   sites=[], privacy={}, final_accuracy=None, initial_accuracy=None,
                   holdings=holdings)


def test_a_released_round_without_holdings_leaves_updates_visible_unmeasured():
    scenario = load_scenario(CRASH)  # secure aggregation on
    assert unexamined_rounds(outcome_with([1, 2, 3], [2, 3])) == [1]
    assert _updates_visible(scenario, outcome_with([1, 2, 3], [2, 3])) is None
    assert _updates_visible(scenario, outcome_with([1, 2, 3], [1, 2, 3])) == 0.0


def test_a_round_only_the_checkpoint_records_as_released_needs_holdings_too():
    # killed after the checkpoint, before round_completed reached the log (and the writer)
    outcome = outcome_with([2], [2])
    outcome.checkpointed = (1, 2)
    assert unexamined_rounds(outcome) == [1]


def test_an_aborted_round_needs_no_holdings():
    outcome = outcome_with([1, 2], [2])
    outcome.rounds[0].aborted = True
    assert unexamined_rounds(outcome) == []


def test_reconstruction_refuses_to_judge_rounds_nobody_examined():
    attack = AttackSpec(name="rebuild", kind="reconstruction", site="site-1")
    result = AttackOutcome(name="rebuild", kind="reconstruction", site="site-1")
    with pytest.raises(ValueError, match=r"released round\(s\) 1 are in no coordinator-holds"):
        _reconstruction(outcome_with([1, 2], [2]), attack, result)
