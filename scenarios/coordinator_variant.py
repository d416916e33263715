"""The coordinator process of a scenario replay: the real coordinator with a recorder or an attack.

``fedtune replay`` runs this module as its own process instead of ``fedtune server`` when a
scenario declares an adversary, a reconstruction attack or an ``updates_visible``
expectation::

    python -m fedtune.scenarios.coordinator_variant --federation F --record OUT.json
        [--adversary KIND --victim SITE --rounds 1,2 --fooled SITE,SITE]

It starts the same server as ``fedtune server`` (:func:`fedtune.server.app.start`: gRPC,
health, reflection, run-directory lock, checkpoints, logs) with a
:class:`~fedtune.scenarios.adversaries.RecordingBehaviour` in place of the honest one, so the
sites talk to a real coordinator that keeps every payload it receives. For every site and every
secure round it tries to rebuild that site's input from everything it received
(:func:`~fedtune.scenarios.adversaries.reconstruction_attempt`), and writes what it found to
``OUT.json``: each time a round completes (:class:`HoldingsWriter`), and once more when the run
ends. In plain mode every input was visible to it: that is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from fedtune import logs
from fedtune.federation import load_federation
from fedtune.scenarios import adversaries as adv
from fedtune.server.app import start

LINGER_S = 5.0


def make_behaviour(kind: str, victim: str, rounds: tuple[int, ...],
                   fooled: tuple[str, ...]) -> adv.RecordingBehaviour:
    if kind == "honest":
        return adv.RecordingBehaviour()
    if kind == "both_lists":
        return adv.BothLists(victim, rounds)
    if kind == "substitute_key":
        return adv.SubstituteKey(victim, rounds)
    if kind == "inconsistent_lists":
        return adv.InconsistentLists(victim, fooled, rounds)
    if kind == "replay_advertisements":
        return adv.ReplayAdvertisements(rounds)
    raise ValueError(f"unknown adversary {kind!r}")


def what_it_holds(recorder: adv.RecordingBehaviour, secure: bool) -> dict:
    """Per round and site: what the coordinator could rebuild of that site's input."""
    rounds: dict[str, dict[str, dict]] = {}
    if not secure:  # plain inputs are visible as sent; the runner counts them from history
        return {"secure": False, "rounds": rounds}
    round_ids = sorted({int(r.payload.round_id) for r in recorder.received
                        if r.kind == "round_parameters"})
    for round_id in round_ids:
        sites = sorted({r.site for r in recorder.received if r.kind == "advertisement"
                        and int(r.payload.advertisement.ref.round) == round_id})
        for site in sites:
            attempt = adv.reconstruction_attempt(recorder, site, round_id)
            rounds.setdefault(str(round_id), {})[site] = {
                "self_mask_shares": attempt.self_mask_shares,
                "mask_key_shares": attempt.mask_key_shares,
                "threshold": attempt.threshold,
                "mask_key_recovered": attempt.mask_key_recovered,
                "input_recoverable": attempt.input_recoverable,
            }
    return {"secure": True, "rounds": rounds}


class HoldingsWriter(logging.Handler):
    """Rewrites the record file each time the coordinator completes a round.

    Installed on the ``fedtune.server`` logger, it runs in the coordinator's thread before
    the ``round_completed`` line reaches ``coordinator.log`` (a handler of the parent logger
    ``fedtune``), which is what the replay runner watches before a ``coordinator_restart``
    fault: a coordinator killed with SIGKILL leaves what it held up to its last completed
    round, not nothing. Each write replaces the file whole (``os.replace``).
    """

    def __init__(self, recorder: adv.RecordingBehaviour, secure: bool, adversary: str,
                 path: Path) -> None:
        super().__init__(logging.INFO)
        self.recorder, self.secure, self.adversary, self.path = recorder, secure, adversary, path

    def filter(self, record: logging.LogRecord) -> bool:
        # decided before Handler.handle takes the handler's lock: other events never wait
        return getattr(record, "event", None) == "round_completed"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write()
        except Exception:  # noqa: BLE001  (logging's contract: report, never raise)
            self.handleError(record)

    def write(self) -> None:
        held = what_it_holds(self.recorder, self.secure)
        held["adversary"] = self.adversary
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(held, indent=2))
        os.replace(partial, self.path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedtune.scenarios.coordinator_variant")
    p.add_argument("--federation", type=Path, required=True)
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--adversary", default="honest")
    p.add_argument("--victim", default="")
    p.add_argument("--rounds", default="1")
    p.add_argument("--fooled", default="")
    args = p.parse_args(argv)
    config = load_federation(args.federation)
    logs.configure(config.run_dir / "coordinator.log")
    behaviour = make_behaviour(args.adversary, args.victim,
                               tuple(int(x) for x in args.rounds.split(",") if x),
                               tuple(x for x in args.fooled.split(",") if x))
    writer = HoldingsWriter(behaviour, config.job.secure_aggregation.enabled, args.adversary,
                            args.record)
    logging.getLogger("fedtune.server").addHandler(writer)
    running = start(config, insecure=True, behaviour=behaviour)
    print(f"scenario coordinator ({args.adversary}): run {running.coordinator.run_id} on port "
          f"{running.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: running.coordinator.stop())
    while not running.wait(0.5):
        pass
    c = running.coordinator
    deadline = time.time() + LINGER_S
    while c.finished and time.time() < deadline and not set(c.connected_sites()) <= c.told_finished:
        time.sleep(0.2)
    running.stop()
    writer.write()
    return 1 if c.failure else 0


if __name__ == "__main__":
    sys.exit(main())
