"""Reading the structured logs of fedtune processes from a test."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def read_events(log_file: Path) -> list[dict]:
    if not log_file.exists():
        return []
    events = []
    for line in log_file.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return events


def wait_for_event(log_file: Path, match: Callable[[dict], bool], timeout: float,
                   procs: list[subprocess.Popen] | None = None, skip: int = 0) -> dict:
    """Wait until the JSON-lines log holds an event (after the first ``skip``) that matches."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for event in read_events(log_file)[skip:]:
            if match(event):
                return event
        for p in procs or []:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"process {p.args[:4]} exited with {p.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"no matching event in {log_file} after {timeout} s")
