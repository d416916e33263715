"""Every scenario of the library, replayed with real processes: each expectation holds.

These are the scenarios of DESIGN.md §5 an auditor would run first (scenarios/README.md).
Each replay starts a coordinator and the sites as separate processes over loopback gRPC.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from fedtune.scenarios.replay import replay
from fedtune.scenarios.report import load_schema
from fedtune.scenarios.report_writer import summary_lines, write_reports
from fedtune.scenarios.spec import load_scenario

pytestmark = pytest.mark.slow

LIBRARY = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.toml"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_library_scenario_meets_its_expectations(path, tmp_path):
    scenario = load_scenario(path)
    result = replay(scenario, tmp_path / "replay", progress=False)
    report_json, _ = write_reports(result)
    assert result.passed, "\n".join(summary_lines(result))
    document = json.loads(report_json.read_text())
    jsonschema.validate(document, load_schema())
    assert document["verdict"] == "pass"
