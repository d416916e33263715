"""The site's privacy ledger: every privacy-consuming release of every dataset, persisted.

One SQLite file in the site's state directory. A dataset is identified by the sha256 of its
file, so the budget follows the data, not a path or a job: across rounds *and* jobs, the ε of
a dataset composes every release ever made from it (RDP composition,
:func:`fedtune.privacy.accountants.epsilon`).

A charge is written *before* the release it pays for leaves the site:

* ``reserve`` records it as *pending* before the site sends its (masked) update;
* ``commit`` marks it spent once the round released an aggregate;
* ``cancel`` removes it when the round aborted and released nothing (DESIGN.md §3: nothing is
  charged for a round that released nothing).

A pending charge counts as spent, so a crash between sending and hearing the outcome can
never make the site forget a charge; charges are unique per (dataset, run, round), so a
restart or a repeated message can never charge twice.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from fedtune.privacy.accountants import Release, epsilon

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    dataset TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'committed')),
    created REAL NOT NULL,
    PRIMARY KEY (dataset, run_id, round)
)
"""


def dataset_id(path: Path) -> str:
    """sha256 of the data file: the identity of a dataset in the ledger."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Charge:
    dataset: str
    run_id: str
    round: int
    job_id: str
    release: Release
    status: str
    created: float


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a charge survives a power cut
        self._db.execute(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def charges(self, dataset: str | None = None) -> list[Charge]:
        rows = (self._db.execute(_SELECT + " WHERE dataset = ? ORDER BY created", (dataset,))
                if dataset else self._db.execute(_SELECT + " ORDER BY created"))
        return [_charge(row) for row in rows]

    def _pending(self, run_id: str, round_id: int) -> list[Charge]:
        rows = self._db.execute(_SELECT + " WHERE run_id = ? AND round = ? AND "
                                "status = 'pending' ORDER BY created", (run_id, round_id))
        return [_charge(row) for row in rows]

    def spent(self, dataset: str, delta: float) -> float:
        """ε of everything charged to ``dataset`` (pending charges included)."""
        releases = [c.release for c in self.charges(dataset)]
        return epsilon(releases, delta) if releases else 0.0

    def would_spend(self, dataset: str, release: Release, delta: float) -> float:
        """ε of ``dataset`` if ``release`` were added."""
        return epsilon([c.release for c in self.charges(dataset)] + [release], delta)

    def reserve(self, dataset: str, run_id: str, round_id: int, job_id: str,
                release: Release) -> bool:
        """Record a pending charge; False (and nothing written) if this round is charged."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO charges VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (dataset, run_id, round_id, job_id, release.mechanism, release.noise_multiplier,
             release.sample_rate, release.steps, time.time()))
        return cursor.rowcount == 1

    def commit(self, run_id: str, round_id: int) -> list[Charge]:
        """The round released an aggregate: its pending charges are spent; returns them."""
        pending = self._pending(run_id, round_id)
        self._db.execute("UPDATE charges SET status = 'committed' WHERE run_id = ? AND round = ?",
                         (run_id, round_id))
        return pending

    def cancel(self, run_id: str, round_id: int) -> list[Charge]:
        """The round released nothing: its pending charges are withdrawn (never a committed
        one); returns them."""
        pending = self._pending(run_id, round_id)
        self._db.execute("DELETE FROM charges WHERE run_id = ? AND round = ? AND status = 'pending'",
                         (run_id, round_id))
        return pending


_SELECT = ("SELECT dataset, run_id, round, job_id, mechanism, noise_multiplier, sample_rate, "
           "steps, status, created FROM charges")


def _charge(row: tuple) -> Charge:
    d, r, n, j, m, z, q, s, st, c = row
    return Charge(d, r, int(n), j, Release(mechanism=m, noise_multiplier=z, sample_rate=q,
                                           steps=int(s)), st, c)
