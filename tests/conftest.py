"""Shared fixtures: a federation on disk and real coordinator / site-agent processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers_inprocess import EventLog, Federation, recorded_events, started_federation

from fedtune import local_federation as lf


class Processes:
    """Starts fedtune processes and kills whatever is left at the end of the test."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.all.append(proc)
        return proc

    def cleanup(self) -> None:
        for p in self.all:
            if p.poll() is None:
                p.kill()
        for p in self.all:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.cleanup()


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    """A coordinator in this process (loopback gRPC) that has completed round 1 and waits in
    round 2's offer phase, with two enrolled sites (``helpers_inprocess.started_federation``)."""
    with started_federation(tmp_path) as federation:
        yield federation


@pytest.fixture
def events() -> Iterator[EventLog]:
    """The structured log events of the test (``helpers_inprocess.recorded_events``)."""
    with recorded_events() as log:
        yield log


@pytest.fixture
def fed_factory(tmp_path: Path) -> Callable[..., lf.LocalFederation]:
    def make(**kwargs) -> lf.LocalFederation:
        return lf.prepare(tmp_path / "fed", **kwargs)
    return make


@pytest.fixture(autouse=True)
def _restore_fedtune_logging():
    """CLI tests configure the ``fedtune`` logger (handlers, propagate=False): undo it."""
    from helpers_inprocess import preserved_logging

    with preserved_logging():
        yield
