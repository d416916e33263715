"""The coordinator process of a scenario replay: the real coordinator with a recorder or an attack.

``fedtune replay`` runs this module as its own process instead of ``fedtune server`` when a
scenario declares an adversary, a reconstruction attack or an ``updates_visible``
expectation::

    python -m fedtune.scenarios.coordinator_variant --federation F --record OUT.json
        [--adversary KIND --victim SITE --rounds 1,2 --fooled SITE,SITE]

It starts the same server as ``fedtune server`` (:func:`fedtune.server.app.start`: gRPC,
health, reflection, run-directory lock, checkpoints, logs) with a
:class:`~fedtune.scenarios.adversaries.RecordingBehaviour` in place of the honest one, so the
sites talk to a real coordinator that keeps every payload it receives. When the run ends it
tries, for every site and every secure round, to rebuild that site's input from everything it
received (:func:`~fedtune.scenarios.adversaries.reconstruction_attempt`), and writes what it
found to ``OUT.json``. In plain mode every input was visible to it: that is recorded as such.
"""

from __future__ import annotations

import argparse
import json
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
    held = what_it_holds(behaviour, config.job.secure_aggregation.enabled)
    held["adversary"] = args.adversary
    args.record.write_text(json.dumps(held, indent=2))
    return 1 if c.failure else 0


if __name__ == "__main__":
    sys.exit(main())
