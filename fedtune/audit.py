"""Signed hash chains — the coordinator's transcript and the sites' egress logs — and their
audit, ``fedtune audit verify`` (DESIGN.md §1.5, §5).

Record format
=============

A log is a file of JSON lines, one record per line, every line ending in ``\\n``. The
coordinator writes ``RUN_DIR/transcript.jsonl`` (events: :mod:`fedtune.server.transcript`);
each site writes ``STATE_DIR/egress.jsonl`` (events: :mod:`fedtune.client.egress_log`).
Every record is a JSON object with at least these fields:

``seq``
    integer: 0 for the first record of the file, then one more per record.
``prev``
    the ``hash`` of the previous record; for ``seq`` 0 the genesis value :data:`GENESIS`
    (64 zeros).
``ts``
    float: seconds since the Unix epoch when the record was written (informational).
``event``
    string: what the record says.
``hash``
    64 lowercase hex digits: SHA-256 of the *canonical encoding* (below) of the record
    without its ``hash`` and ``signature`` fields.
``signature``
    128 lowercase hex digits: Ed25519 signature over the statement
    ``S = u16be(len(D)) ‖ D ‖ u32be(32) ‖ H``, where ``H`` is the 32 raw bytes of ``hash``
    and ``D`` the ASCII domain tag :data:`TRANSCRIPT_DOMAIN` (``fedtune/v1/transcript-record``)
    or :data:`EGRESS_DOMAIN` (``fedtune/v1/egress-record``) — the length-prefixed encoding of
    :func:`fedtune.privacy.signatures.statement`, so a record signature can never be replayed
    as any other fedtune statement, nor a transcript record as an egress record.

A record that carries ``public_key`` (base64 of the raw 32-byte Ed25519 public key)
*declares* the key that signs it and every record after it, up to the next declaration. The
first record of a file always declares one: ``job_accepted`` and ``restart`` in a transcript,
``log_opened`` in an egress log. A declaration is the writer's claim; an auditor pins the
coordinator's key with ``--coordinator-key`` (or lets the sites' egress logs confirm it: each
site logs the coordinator key of its own, out-of-band peers file), and a site's key is the one
enrolled in the transcript's ``job_accepted`` record.

Canonical encoding
------------------

JSON text with object keys sorted by code point, no whitespace (separators ``,`` and ``:``),
strings escaped with ``\\"``, ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f``, every other
control character and every non-ASCII character as ``\\uXXXX`` (lowercase hex, UTF-16
surrogate pairs above U+FFFF), ``/`` not escaped; integers in decimal; floats as Python's
``repr(float)`` — the shortest decimal that round-trips, always with a ``.`` or an exponent
(``8.0``, ``0.05``), in exponent form when the decimal exponent is below -4 or at least 16
(``1e-05``, ``1.5e+16``); no NaN or infinities; ``true``, ``false``, ``null``. In Python this
is exactly ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)``.

Each line of a log is itself the canonical encoding of the whole record (``hash`` and
``signature`` included), and a verifier rejects a line that is not: no byte of the file can
change without being detected, also not one that leaves the parsed values equal (``1E-05``
for ``1e-05``).

Writing and crashes
-------------------

A record is written with one ``write`` of the whole line and ``fsync``'d before the action
it describes is acknowledged. A crash can therefore leave at most one *torn* last line — a
prefix of a record with no final newline. On reopening, the writer verifies the whole chain
(hash links, canonical form, signatures), moves a torn tail aside to ``FILE.torn-OFFSET``,
truncates the file to the last complete record and reports the torn tail to its owner, which
records it (offset, length, SHA-256) in its next record (``restart`` / ``log_opened``). A torn
line was never acknowledged, so discarding it loses no acknowledged event; keeping its bytes
aside and its digest in the chain keeps the repair itself on the record. Any other damage —
a complete line that does not verify — makes the writer refuse to open the log
(:class:`ChainError`): a log that was tampered with is never silently continued.

The audit
=========

:func:`verify` checks a run directory's transcript and any site egress logs:

* every chain: canonical form, ``seq``, ``prev``, ``hash`` and signature of every record;
* the coordinator's key: pinned by the auditor, or confirmed by the sites' peers files;
* the job: its digest, and every logged mechanism and secure-aggregation parameter against
  what the job implies (re-derived with :mod:`fedtune.privacy_plan`);
* every round: ids never reused; each round starts from the model the last release produced;
  the sites of each phase follow from the previous phase (accepted → advertised → shared →
  delivered / dropouts → survivors → confirmed → revealed) and match the messages recorded;
  threshold and neighbour graph re-derived from the round seed and the advertised keys'
  digests; every survivor list signed by the coordinator's key and the same for every site;
  a release has at least ``t`` (and ``min_sites``) contributors, and under distributed DP at
  least the number of noise adders the accounting assumed;
* ε at every level, recomputed with fedtune's RDP accountant from the logged mechanism
  parameters — independently of the ε the coordinator logged and wrote to ``privacy.json`` —
  and checked against the job's target;
* each site log against the transcript, both ways: each site message the transcript relies on
  is in that site's log with the same SHA-256, and each message of the run the site logged as
  sent (and not refused) is in the transcript; the job digest the site accepted, the model it
  trained on, its ledger charges (committed only for released rounds, cancelled only for
  aborted ones, at the job's parameters) and its dataset's ε, recomputed from its own log.

Each discrepancy is located: file, record ``seq`` (and line), field, expected, found.
What a transcript alone cannot show — what the sites were really offered, whether records
were cut from its end — the site logs and ``final_hash`` (a privacy card's) can.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from fedtune.privacy.signatures import (
    SignatureError,
    public_key_from_raw,
    sign,
    statement,
    survivors_statement,
)
from fedtune.privacy.signatures import (
    verify as verify_signature,
)

#: ``prev`` of the first record of every log.
GENESIS = "0" * 64
TRANSCRIPT_DOMAIN = b"fedtune/v1/transcript-record"
EGRESS_DOMAIN = b"fedtune/v1/egress-record"
TRANSCRIPT_FILE = "transcript.jsonl"
EGRESS_FILE = "egress.jsonl"
#: Fields every record carries; the writer sets them, callers may not.
RESERVED = ("seq", "prev", "ts", "event", "hash", "signature")
#: Site messages the transcript relies on, by the RPC that carries them.
RELIED_ON = ("RespondOffer", "AdvertiseKeys", "ShareKeys", "SubmitInput", "ConfirmSurvivors",
             "Unmask")
#: Relative tolerance when comparing recomputed and logged floating-point figures.
REL_TOL = 1e-9
#: What a malformed (hostile) record can raise while it is read: reported, never a traceback.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, DecodeError)


class ChainError(ValueError):
    """A log that does not verify (the message names the file, the record and the field)."""


# ============================================================================ the format


def canonical(value: Any) -> bytes:
    """The canonical encoding of a JSON value (module docstring)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of ``record`` without hash and signature."""
    body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
    return hashlib.sha256(canonical(body)).hexdigest()


def signed_statement(domain: bytes, hash_hex: str) -> bytes:
    """What a record's signature is over: the domain tag and the 32 bytes of its hash."""
    return statement(domain, bytes.fromhex(hash_hex))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def seal(body: dict[str, Any], key: Ed25519PrivateKey, domain: bytes) -> dict[str, Any]:
    """``body`` (seq, prev, ts, event and the event's fields) with its hash and signature."""
    digest = record_hash(body)
    return {**body, "hash": digest, "signature": sign(key, signed_statement(domain, digest)).hex()}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TornTail:
    """The incomplete last line a crash left behind, moved aside when the log was reopened."""

    offset: int
    length: int
    sha256: str
    saved_as: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Line:
    """One line of a log as read: its number, raw bytes and the record (None: not JSON)."""

    number: int
    raw: bytes
    record: dict[str, Any] | None


def read_lines(path: Path) -> tuple[list[Line], bytes]:
    """The complete lines of a log and its torn tail (bytes after the last newline).

    Raises ``OSError`` when the file cannot be read.
    """
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    lines = []
    for number, raw in enumerate(data[:cut].split(b"\n")[:-1], start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        lines.append(Line(number, raw, record if isinstance(record, dict) else None))
    return lines, data[cut:]


class SignedLog:
    """Append-only writer of one signed hash chain (module docstring: format, crashes).

    Opening verifies the existing chain and repairs a torn tail; :attr:`records` holds the
    records already there and :attr:`torn` the tail that was moved aside, if any.

    Parameters
    ----------
    path:
        The log file (created if missing).
    key:
        The Ed25519 key that signs new records.
    domain:
        :data:`TRANSCRIPT_DOMAIN` or :data:`EGRESS_DOMAIN`.
    clock:
        Source of the ``ts`` field.
    """

    def __init__(self, path: Path, key: Ed25519PrivateKey, domain: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.key, self.domain, self.clock = path, key, domain, clock
        self.public_key = public_key_b64(key)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        self.records: list[dict[str, Any]] = []
        self.torn: TornTail | None = None
        if not created:
            self._load()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # a writer that is dropped without close() (a test's coordinator) still frees its fd
        self._release = weakref.finalize(self, os.close, self._fd)
        if created:
            _fsync_dir(path.parent)

    @property
    def next_seq(self) -> int:
        return len(self.records)

    @property
    def last_hash(self) -> str:
        return self.records[-1]["hash"] if self.records else GENESIS

    @property
    def declared_keys(self) -> list[str]:
        return [r["public_key"] for r in self.records if "public_key" in r]

    def _load(self) -> None:
        try:
            lines, tail = read_lines(self.path)
        except OSError as exc:
            raise ChainError(f"{self.path}: cannot read ({exc.strerror})") from None
        problems = check_chain(lines, self.domain, pinned_key=None, source=str(self.path))
        if problems:
            first = problems[0]
            raise ChainError(f"{first.describe()}; the log does not verify, so it is not "
                             "continued: restore it from a backup or move it away")
        self.records = [line.record for line in lines if line.record is not None]
        if tail:
            offset = self.path.stat().st_size - len(tail)
            aside = self.path.with_name(f"{self.path.name}.torn-{offset}")
            aside.write_bytes(tail)
            with open(self.path, "r+b") as handle:
                handle.truncate(offset)
                handle.flush()
                os.fsync(handle.fileno())
            self.torn = TornTail(offset, len(tail), sha256_hex(tail), aside.name)

    def append(self, event: str, fields: dict[str, Any], *, sync: bool = True) -> dict[str, Any]:
        """Write one record (and ``fsync`` it unless ``sync`` is False); return it."""
        clash = [k for k in fields if k in RESERVED]
        if clash:
            raise ValueError(f"reserved record fields {clash}")
        with self._lock:
            body = {"seq": self.next_seq, "prev": self.last_hash, "ts": round(self.clock(), 6),
                    "event": event, **fields}
            record = seal(body, self.key, self.domain)
            line = canonical(record) + b"\n"
            written = os.write(self._fd, line)
            if written != len(line):  # a short write to a regular file: disk full
                raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
            if sync:
                os.fsync(self._fd)
            self.records.append(record)
            return record

    def sync(self) -> None:
        with self._lock:
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                self._release()
                self._fd = -1


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ============================================================================ chain checks


@dataclass(frozen=True)
class Discrepancy:
    """One failed check, located: file, record seq (and line), field, expected, found."""

    source: str
    seq: int | None
    field: str
    expected: str
    found: str
    problem: str
    line: int | None = None

    def describe(self) -> str:
        where = self.source
        if self.seq is not None:
            where += f" seq {self.seq}"
        if self.line is not None:
            where += f" (line {self.line})"
        return (f"{where}: {self.field}: {self.problem} (expected {self.expected}, "
                f"found {self.found})")


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def check_chain(lines: Sequence[Line], domain: bytes, *, pinned_key: bytes | None,
                source: str) -> list[Discrepancy]:
    """Every structural check of one chain: JSON, canonical form, seq, prev, hash, key,
    signature. Problems are located and do not cascade (each record is checked against its
    predecessor as stored)."""
    problems: list[Discrepancy] = []

    def bad(line: Line, seq: int | None, name: str, expected: Any, found: Any,
            problem: str) -> None:
        problems.append(Discrepancy(source, seq, name, _short(expected), _short(found), problem,
                                    line.number))

    expected_seq, prev = 0, GENESIS
    first_key: bytes | None = None
    current_key: bytes | None = pinned_key
    for line in lines:
        rec = line.record
        if rec is None:
            bad(line, None, "line", "a JSON object", line.raw[:60].decode("ascii", "replace"),
                "not a record")
            expected_seq, prev = expected_seq + 1, ""
            continue
        seq = rec.get("seq")
        missing = [k for k in RESERVED if k not in rec]
        if missing:
            bad(line, seq if isinstance(seq, int) else None, missing[0], "present", "absent",
                "a required field is missing")
            expected_seq, prev = expected_seq + 1, ""
            continue
        if not isinstance(seq, int) or isinstance(seq, bool):
            bad(line, None, "seq", expected_seq, seq, "seq is not an integer")
            seq = expected_seq
        try:
            canonical_line = canonical(rec)
        except ValueError:
            canonical_line = b""
        if canonical_line != line.raw:
            bad(line, seq, "encoding", "the canonical encoding of the record",
                "different bytes", "the line was altered outside its parsed values")
        try:
            digest = record_hash(rec)
        except ValueError:  # NaN or infinity: no canonical encoding
            digest = "(none: the record holds a value JSON cannot encode canonically)"
        if digest != rec["hash"]:
            bad(line, seq, "hash", digest, rec["hash"],
                "the record's content does not match its hash: it was changed after signing")
        if seq != expected_seq:
            bad(line, seq, "seq", expected_seq, seq,
                "a record is missing, duplicated or out of order here")
        if prev and rec["prev"] != prev:
            bad(line, seq, "prev", prev, rec["prev"],
                "the chain is broken here: a record before it was deleted, inserted or moved")
        if "public_key" in rec:
            try:
                declared = base64.b64decode(str(rec["public_key"]), validate=True)
                public_key_from_raw(declared)
            except (ValueError, SignatureError):
                bad(line, seq, "public_key", "base64 of a 32-byte Ed25519 key",
                    rec["public_key"], "malformed key")
                declared = b""
            if declared:
                if pinned_key is not None and declared != pinned_key:
                    bad(line, seq, "public_key", base64.b64encode(pinned_key).decode(),
                        rec["public_key"], "the log declares another key than the pinned one")
                if first_key is None:
                    first_key = declared
                if pinned_key is None:
                    current_key = declared
        if current_key is None:
            bad(line, seq, "public_key", "a key declaration in the first record", "none",
                "no key to check the signature with")
        else:
            try:
                verify_signature(public_key_from_raw(current_key),
                                 bytes.fromhex(str(rec["signature"])),
                                 signed_statement(domain, str(rec["hash"])))
            except (SignatureError, ValueError):
                bad(line, seq, "signature", "a valid signature by "
                    + base64.b64encode(current_key).decode(), _short(rec["signature"], 24) ,
                    "the signature does not verify")
        expected_seq, prev = seq + 1, str(rec["hash"])
    return problems


# ============================================================================ the audit


@dataclass
class LevelEpsilon:
    """ε of one level, recomputed by the auditor from the logged mechanism parameters."""

    mechanism: str
    delta: float
    releases: int
    epsilon: float
    target_epsilon: float


@dataclass
class SiteSummary:
    path: str
    site: str
    records: int
    messages_checked: int
    ledger_epsilon: dict[str, float] = field(default_factory=dict)


@dataclass
class AuditReport:
    """What :func:`verify` found. ``ok`` is False on any discrepancy."""

    transcript: str
    records: int = 0
    run_id: str = ""
    job_id: str = ""
    last_hash: str = ""
    coordinator_key: str = ""
    key_source: str = ""
    rounds_released: int = 0
    rounds_aborted: int = 0
    restarts: int = 0
    epsilon: dict[str, LevelEpsilon] = field(default_factory=dict)
    sites: list[SiteSummary] = field(default_factory=list)
    not_cross_checked: list[str] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def verify(run_dir: Path, site_logs: Iterable[Path] = (), *,
           coordinator_key: bytes | None = None, final_hash: str | None = None) -> AuditReport:
    """Audit a run: its transcript and the given site egress logs (module docstring).

    Parameters
    ----------
    run_dir:
        The coordinator's run directory (or the transcript file itself).
    site_logs:
        Site egress logs (``STATE_DIR/egress.jsonl``, or the state directory).
    coordinator_key:
        The coordinator's raw 32-byte public key, from a source the auditor trusts. Without
        it the key the transcript declares is used and the report says so.
    final_hash:
        The hash the last record must have (e.g. from a privacy card): detects a truncated
        transcript.

    Raises ``OSError`` (with the file name) when a file cannot be read.
    """
    path = run_dir / TRANSCRIPT_FILE if run_dir.is_dir() else run_dir
    report = AuditReport(transcript=str(path))
    lines, tail = read_lines(path)
    source = path.name
    report.discrepancies += check_chain(lines, TRANSCRIPT_DOMAIN, pinned_key=coordinator_key,
                                        source=source)
    if tail:
        report.warnings.append(
            f"{source}: the last line is incomplete ({len(tail)} bytes, sha256 "
            f"{sha256_hex(tail)[:16]}…): a write interrupted by a crash; the event it began "
            "to record was never acknowledged and is ignored")
    records = [(line, line.record) for line in lines if line.record is not None]
    report.records = len(lines)
    if not records:
        report.discrepancies.append(Discrepancy(source, None, "records", "at least one record",
                                                "none", "the transcript is empty"))
        return report
    report.last_hash = str(records[-1][1].get("hash", ""))
    if final_hash is not None and report.last_hash != final_hash:
        report.discrepancies.append(Discrepancy(
            source, records[-1][1].get("seq"), "hash", final_hash, report.last_hash,
            "the last record is not the expected one: records were removed from the end "
            "or added after it"))
    audit = _TranscriptAudit(source, report, coordinator_key)
    for line, record in records:
        audit.visit(line, record)
    audit.finish(run_dir if run_dir.is_dir() else run_dir.parent)
    for log_path in site_logs:
        audit.cross_check(log_path / EGRESS_FILE if log_path.is_dir() else log_path)
    audit.report_unchecked_sites()
    return report


def decode_key_argument(text: str) -> bytes:
    """A public key given as base64, as the path of a file holding it (``NAME.pub``), or as a
    site's peers file (its ``[coordinator] public_key``)."""
    candidate = Path(text)
    if candidate.suffix == ".toml" and candidate.is_file():
        from fedtune.peers import load_peers

        return load_peers(candidate).coordinator_key  # ConfigError (a ValueError) if broken
    if candidate.is_file():
        text = candidate.read_text()
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError(f"{text.strip()[:40]!r}: neither a key file nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


def format_report(report: AuditReport) -> str:
    """The short human verdict (the CLI prints it)."""
    out = []
    if report.ok:
        out.append(f"fedtune audit: OK — {report.transcript}")
    else:
        n = len(report.discrepancies)
        out.append(f"fedtune audit: FAILED — {n} discrepanc{'y' if n == 1 else 'ies'} in "
                   f"{report.transcript}")
    out.append(f"  run {report.run_id or '?'} (job {report.job_id or '?'}): {report.records} "
               f"records, {report.rounds_released} rounds released, {report.rounds_aborted} "
               f"aborted, {report.restarts} restarts; last hash {report.last_hash or '-'}")
    out.append(f"  coordinator key {report.coordinator_key or '-'} ({report.key_source})")
    for level, e in report.epsilon.items():
        target = f", target {e.target_epsilon:g}" if e.target_epsilon > 0 else ""
        out.append(f"  ε recomputed, {level.replace('_', ' ')}: {e.epsilon:.4f} at δ = "
                   f"{e.delta:g} ({e.releases} {e.mechanism} releases{target})")
    for s in report.sites:
        ledger = "".join(f"; dataset {d[:12]}… ε {eps:.4f}" for d, eps in s.ledger_epsilon.items())
        out.append(f"  site {s.site}: {s.records} records, {s.messages_checked} messages of "
                   f"this run cross-checked{ledger} ({s.path})")
    if report.not_cross_checked:
        out.append(f"  not cross-checked (no egress log given): "
                   f"{', '.join(report.not_cross_checked)}")
    for d in report.discrepancies:
        out.append(f"  DISCREPANCY {d.describe()}")
    for w in report.warnings:
        out.append(f"  warning: {w}")
    return "\n".join(out)


# ---------------------------------------------------------------------------- transcript


@dataclass
class _Round:
    seq: int
    round_id: int
    evaluate_only: bool
    secure: bool
    participants: list[str]
    params_sha256: str
    round_seed: str = ""
    outcome: str = ""  # "released", "aborted", "interrupted"
    contributors: list[str] = field(default_factory=list)
    threshold: int = 0
    #: who took part in each phase so far: accepted, advertised, shared, delivered,
    #: dropouts, survivors, confirmed
    phase: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class _Message:
    seq: int
    site: str
    round_id: int
    type: str
    sha256: str
    size: int
    extra: dict[str, Any]


def _site_list(rec: dict[str, Any], name: str) -> list[str]:
    """A record's list of site ids; anything else raises (reported as malformed)."""
    value = rec[name]
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"{name}: expected a list of site ids, found {_short(value, 40)}")
    return value


def _flag(rec: dict[str, Any], name: str) -> bool:
    value = rec[name]
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected true or false, found {_short(value, 40)}")
    return value


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(
        c in "0123456789abcdef" for c in value)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-12)
    return bool(a == b)


class _TranscriptAudit:
    """The semantic checks, walking the transcript's records in order."""

    def __init__(self, source: str, report: AuditReport, pinned: bytes | None) -> None:
        self.source, self.report, self.pinned = source, report, pinned
        self.job: Any = None
        self.job_digest = ""
        self.confirmed_by: list[str] = []
        self.dimension = 0
        self.expected: dict[str, dict[str, Any] | None] = {}
        self.site_keys: dict[str, str] = {}
        self.coordinator_key = ""
        self.rounds: dict[int, _Round] = {}
        self.open_round: _Round | None = None
        self.messages: list[_Message] = []
        self.releases: dict[str, list[Any]] = {"site_level": [], "record_level": []}
        self.params_sha256 = self.initial_params = ""
        self.released_params: list[tuple[int, str]] = []  # (round, params after it)
        self.completed_before = 0
        self.training_released = 0
        self.recovered = 0
        self.logged_epsilon: dict[str, float] = {}
        self.sites_cross_checked: set[str] = set()
        self.composition = _Composition()

    # -- helpers ---------------------------------------------------------------------------

    def bad(self, record: dict[str, Any], name: str, expected: Any, found: Any,
            problem: str) -> None:
        self.report.discrepancies.append(Discrepancy(
            self.source, record.get("seq"), name, _short(expected), _short(found), problem))

    def warn(self, record: dict[str, Any] | None, text: str) -> None:
        where = f"{self.source} seq {record.get('seq')}: " if record else f"{self.source}: "
        self.report.warnings.append(where + text)

    def compare(self, record: dict[str, Any], prefix: str, expected: dict[str, Any] | None,
                found: Any, problem: str) -> None:
        """Field-by-field comparison of a logged parameter set with the re-derived one."""
        if expected is None or not isinstance(found, dict):
            if expected != found:
                self.bad(record, prefix, expected, found, problem)
            return
        for key, value in expected.items():
            if key not in found:
                self.bad(record, f"{prefix}.{key}", value, "absent", problem)
            elif isinstance(value, dict):
                self.compare(record, f"{prefix}.{key}", value, found[key], problem)
            elif not _close(value, found[key]):
                self.bad(record, f"{prefix}.{key}", value, found[key], problem)

    def note_messages(self, record: dict[str, Any], round_id: int) -> None:
        for m in record.get("messages", []) or []:
            if not isinstance(m, dict):
                self.bad(record, "messages", "objects", m, "malformed message entry")
                continue
            extra = {k: v for k, v in m.items() if k not in ("site", "type", "sha256", "size")}
            self.messages.append(_Message(int(record.get("seq", -1)), str(m.get("site")),
                                          round_id, str(m.get("type")), str(m.get("sha256")),
                                          int(m.get("size", -1)), extra))

    # -- records ---------------------------------------------------------------------------

    def visit(self, line: Line, record: dict[str, Any]) -> None:
        event = record.get("event")
        handler = getattr(self, f"_on_{event}", None)
        if self.job is None and event != "job_accepted":
            self.bad(record, "event", "job_accepted (the first record)", event,
                     "the transcript does not start with the job")
            return
        if handler is None:
            self.warn(record, f"unknown event {event!r} (not checked)")
            return
        try:
            handler(record)
        except MALFORMED as exc:
            self.bad(record, f"event {event}", "the documented fields", repr(exc),
                     "malformed record")

    def _on_job_accepted(self, rec: dict[str, Any]) -> None:
        from fedtune.job import job_digest, job_from_proto
        from fedtune.proto import fedtune_pb2 as pb

        if self.job is not None:
            self.bad(rec, "event", "one job_accepted record", "a second one",
                     "the run's job is declared twice")
            return
        self.report.run_id, self.report.job_id = str(rec["run"]), str(rec["job_id"])
        self.coordinator_key = str(rec["public_key"])
        self.report.coordinator_key = self.coordinator_key
        self.report.key_source = ("pinned (--coordinator-key)" if self.pinned is not None else
                                  "declared by the transcript itself, not pinned")
        message = pb.Job.FromString(bytes.fromhex(str(rec["job_proto"])))
        digest = self.job_digest = job_digest(message).hex()
        if digest != rec["job_digest"]:
            self.bad(rec, "job_digest", digest, rec["job_digest"],
                     "the job digest is not the sha256 of the logged job")
        self.job = job_from_proto(message)
        from google.protobuf.json_format import MessageToDict
        readable = MessageToDict(message, preserving_proto_field_name=True)
        if readable != rec.get("job"):
            self.bad(rec, "job", _short(readable), _short(rec.get("job")),
                     "the readable job differs from the signed job message")
        for name, expected in (("accountant", "rdp"), ("job_id", self.job.job_id)):
            if rec.get(name) != expected:
                self.bad(rec, name, expected, rec.get(name), "the record contradicts the job")
        if rec.get("key_source") not in ("identity", "run-key"):
            self.bad(rec, "key_source", "identity or run-key", rec.get("key_source"),
                     "unknown key source")
        self.dimension = int(rec["dimension"])
        self.site_keys = {str(k): str(v) for k, v in dict(rec["sites"]).items()}
        self.params_sha256 = self.initial_params = str(rec["params_sha256"])
        self.completed_before = int(rec.get("completed_rounds", 0))
        self.expected = _expected_mechanisms(self.job, self.dimension)
        self.compare(rec, "mechanisms", dict(self.expected), rec.get("mechanisms"),
                     "the logged mechanism differs from what the job implies")
        self.compare(rec, "secure_aggregation", _secagg_dict(self.job),
                     rec.get("secure_aggregation"),
                     "the logged secure-aggregation parameters differ from the job's")

    def _on_restart(self, rec: dict[str, Any]) -> None:
        self.report.restarts += 1
        if rec.get("job_digest") != _job_digest_hex(self):
            self.bad(rec, "job_digest", _job_digest_hex(self), rec.get("job_digest"),
                     "the restarted coordinator runs another job")
        if self.open_round is not None:
            self.open_round.outcome = "interrupted"
            self.warn(rec, f"round {self.open_round.round_id} was interrupted by a coordinator "
                           "restart")
            self.open_round = None
        recovered = {int(r) for r in rec.get("recovered_charges", [])}
        self.recovered += len(recovered)
        if rec.get("completed_rounds") != self.completed_rounds():
            self.bad(rec, "completed_rounds", self.completed_rounds(),
                     rec.get("completed_rounds"), "the restarted coordinator resumed at "
                     "another round than the transcript's releases imply")
        expected_params = self.initial_params
        for round_id, params in self.released_params:
            if round_id not in recovered:
                expected_params = params
        if recovered:
            self.warn(rec, f"charges of rounds {sorted(recovered)} were recovered from the "
                           "transcript (crash after the release record, before the checkpoint)")
        if rec.get("params_sha256") != expected_params:
            self.bad(rec, "params_sha256", expected_params, rec.get("params_sha256"),
                     "the restarted coordinator resumed from another model than the last "
                     "recorded release")
        self.params_sha256 = str(rec.get("params_sha256"))
        accountant = rec.get("accountant", {})
        for level in ("site_level", "record_level"):
            charged = len(self.releases[level])
            found = accountant.get(level, {}).get("releases", 0)
            if int(found) < charged:
                self.bad(rec, f"accountant.{level}.releases", charged, found,
                         "the restarted coordinator forgot privacy charges")
        if rec.get("torn_tail"):
            self.warn(rec, f"the restart discarded a torn last line: {rec['torn_tail']}")

    def _on_round_started(self, rec: dict[str, Any]) -> None:
        round_id = int(rec["round"])
        if self.open_round is not None:
            self.bad(rec, "round", f"an outcome of round {self.open_round.round_id} first",
                     round_id, "a round started before the previous one ended")
            self.open_round.outcome = "interrupted"
        if round_id in self.rounds or (self.rounds and round_id <= max(self.rounds)):
            self.bad(rec, "round", f"> {max(self.rounds)}", round_id,
                     "a round id was reused (decisions.md §4)")
        if rec.get("params_sha256") != self.params_sha256:
            self.bad(rec, "params_sha256", self.params_sha256, rec.get("params_sha256"),
                     "the round does not start from the model of the last release")
        r = _Round(int(rec["seq"]), round_id, _flag(rec, "evaluate_only"), _flag(rec, "secure"),
                   _site_list(rec, "participants"), str(rec["params_sha256"]),
                   str(rec["round_seed"]))
        unknown = [s for s in r.participants if s not in self.site_keys]
        if unknown:
            self.bad(rec, "participants", "enrolled sites", unknown, "unknown participants")
        if r.secure != bool(self.job.secure_aggregation.enabled):
            self.bad(rec, "secure", bool(self.job.secure_aggregation.enabled), r.secure,
                     "the round's mode is not the job's")
        training = self.completed_rounds() + (0 if r.evaluate_only else 1)
        if rec.get("training_round") != training:
            self.bad(rec, "training_round", training, rec.get("training_round"),
                     "the training-round number does not follow the released rounds")
        self.rounds[round_id] = self.open_round = r

    def completed_rounds(self) -> int:
        """Training rounds the coordinator's checkpoint holds by now."""
        return self.completed_before + self.training_released - self.recovered

    def _round_of(self, rec: dict[str, Any]) -> _Round | None:
        round_id = int(rec["round"])
        r = self.rounds.get(round_id)
        if r is None or r is not self.open_round:
            self.bad(rec, "round", "the round in progress",
                     round_id, "a record for a round that is not in progress")
            return None
        self.note_messages(rec, round_id)
        for m in rec.get("messages", []) or []:
            if isinstance(m, dict) and m.get("site") not in r.participants:
                self.bad(rec, "messages.site", r.participants, m.get("site"),
                         "a message from a site that was not offered the round")
        return r

    def same(self, rec: dict[str, Any], name: str, expected: Iterable[str],
             found: Iterable[str], problem: str) -> None:
        if sorted(set(expected)) != sorted(set(found)):
            self.bad(rec, name, sorted(set(expected)), sorted(set(found)), problem)

    def within(self, rec: dict[str, Any], name: str, found: Iterable[str],
               allowed: Iterable[str], problem: str) -> None:
        extra = sorted(set(found) - set(allowed))
        if extra:
            self.bad(rec, name, f"a subset of {sorted(set(allowed))}", extra, problem)

    def messages_match(self, rec: dict[str, Any], kind: str, sites: Iterable[str]) -> None:
        """The sites the record names are exactly those whose messages it relies on."""
        senders = [m.get("site") for m in rec.get("messages", []) or []
                   if isinstance(m, dict) and m.get("type") == kind]
        if len(senders) != len(set(senders)):
            self.bad(rec, "messages", f"one {kind} per site", senders, "duplicate messages")
        self.same(rec, "messages", sites, [str(x) for x in senders],
                  f"the {kind} messages recorded are not those of the sites named")

    def _on_offer_responses(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        accepted, silent = _site_list(rec, "accepted"), _site_list(rec, "silent")
        refused = [str(x) for x in dict(rec["refused"])]
        answered = accepted + refused
        if len(set(answered + silent)) != len(answered + silent):
            self.bad(rec, "accepted", "accepted, refused and silent disjoint",
                     {"accepted": accepted, "refused": refused, "silent": silent},
                     "a site is in two of the lists")
        self.same(rec, "silent", set(r.participants) - set(answered), silent,
                  "accepted, refused and silent are not the participants")
        self.messages_match(rec, "RespondOffer", answered)
        r.phase["accepted"] = set(accepted)

    def _on_keys_advertised(self, rec: dict[str, Any]) -> None:
        from fedtune.privacy.secagg import RoundParameters

        r = self._round_of(rec)
        if r is None:
            return
        sites = _site_list(rec, "sites")
        self.within(rec, "sites", sites, r.phase.get("accepted", ()),
                    "keys advertised by sites that did not accept the round")
        self.messages_match(rec, "AdvertiseKeys", sites)
        r.phase["advertised"] = set(sites)
        r.threshold = int(rec["threshold"])
        sa = self.job.secure_aggregation
        digests = [bytes.fromhex(m.sha256) for m in self.messages
                   if m.round_id == r.round_id and m.type == "AdvertiseKeys"]
        try:  # the graph is no choice of the coordinator's: every party derives it
            derived = RoundParameters.derive(self.report.run_id, r.round_id, sa.bits, sites,
                                             sa.threshold, sa.neighbours,
                                             bytes.fromhex(r.round_seed), digests)
        except ValueError as exc:
            self.bad(rec, "sites", "sites the secure-aggregation parameters admit", sites,
                     f"no valid round parameters ({exc})")
            return
        if r.threshold != derived.threshold:
            self.bad(rec, "threshold", derived.threshold, r.threshold,
                     "the threshold is not the one the job and the sites imply")
        if int(rec["bits"]) != sa.bits:
            self.bad(rec, "bits", sa.bits, rec["bits"], "another ring than the job's")
        graph = {str(k): sorted(v) for k, v in dict(rec["graph"]).items()}
        if graph != {k: sorted(v) for k, v in derived.graph.items()}:
            self.bad(rec, "graph", {k: list(v) for k, v in derived.graph.items()}, graph,
                     "the neighbour graph is not the one derived from the round seed and the "
                     "advertised keys")

    def _on_keys_shared(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        sites = _site_list(rec, "sites")
        self.within(rec, "sites", sites, r.phase.get("advertised", ()),
                    "keys shared by sites that did not advertise keys")
        self.messages_match(rec, "ShareKeys", sites)
        r.phase["shared"] = set(sites)

    def _on_inputs_received(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        due = r.phase.get("shared" if r.secure else "accepted", set())
        delivered, dropouts = _site_list(rec, "delivered"), _site_list(rec, "dropouts")
        self.within(rec, "delivered", delivered, due,
                    "inputs from sites that were not due to send one")
        self.same(rec, "dropouts", due - set(delivered), dropouts,
                  "the dropouts are not the sites that were due and did not deliver")
        self.messages_match(rec, "SubmitInput", delivered)
        r.phase["delivered"], r.phase["dropouts"] = set(delivered), set(dropouts)

    def _on_survivors_announced(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        survivors, dropouts = _site_list(rec, "survivors"), _site_list(rec, "dropouts")
        self.same(rec, "survivors", r.phase.get("delivered", ()), survivors,
                  "the survivors are not the sites that delivered a masked input")
        self.same(rec, "dropouts", r.phase.get("dropouts", ()), dropouts,
                  "the dropouts are not the sites that shared keys and sent no input")
        if set(survivors) & set(dropouts):
            self.bad(rec, "dropouts", "disjoint from the survivors",
                     sorted(set(survivors) & set(dropouts)), "a site is survivor and dropout")
        if int(rec["threshold"]) != r.threshold:
            self.bad(rec, "threshold", r.threshold, rec["threshold"],
                     "another threshold than the round's")
        if r.threshold and len(survivors) < r.threshold:
            self.bad(rec, "survivors", f">= {r.threshold}", len(survivors),
                     "fewer survivors than the threshold")
        r.phase["survivors"] = set(survivors)
        key = base64.b64decode(self.pinned_or_declared())
        shown: list[str] = []
        for i, lists in enumerate(rec["signed_lists"]):
            name = f"signed_lists[{i}]"
            shown += [str(x) for x in lists["sent_to"]]
            if sorted(lists["survivors"]) != sorted(survivors) or \
                    sorted(lists["dropouts"]) != sorted(dropouts):
                self.bad(rec, name, {"survivors": survivors, "dropouts": dropouts},
                         {"survivors": lists["survivors"], "dropouts": lists["dropouts"]},
                         f"sites {lists.get('sent_to')} were shown other lists than the rest")
            try:
                verify_signature(public_key_from_raw(key), bytes.fromhex(lists["signature"]),
                                 survivors_statement(self.report.run_id, r.round_id,
                                                     [str(x) for x in lists["survivors"]],
                                                     [str(x) for x in lists["dropouts"]]))
            except (SignatureError, ValueError):
                self.bad(rec, f"{name}.signature", "the coordinator's signature on the lists",
                         _short(lists.get("signature"), 24), "the signature does not verify")
        if sorted(shown) != sorted(survivors):
            self.bad(rec, "signed_lists", f"one list sent to each of {sorted(survivors)}",
                     sorted(shown), "the lists were not sent to exactly the survivors")

    def _on_survivors_confirmed(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        sites = _site_list(rec, "sites")
        self.within(rec, "sites", sites, r.phase.get("survivors", ()),
                    "confirmations from sites that are not survivors")
        self.messages_match(rec, "ConfirmSurvivors", sites)
        r.phase["confirmed"] = set(sites)

    def _on_unmask_responses(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        sites = _site_list(rec, "sites")
        self.within(rec, "sites", sites, r.phase.get("confirmed", ()),
                    "shares revealed by sites that did not confirm the lists")
        self.messages_match(rec, "Unmask", sites)

    def _on_round_aborted(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is not None:
            r.outcome = "aborted"
            self.report.rounds_aborted += 1
            self.open_round = None

    def _on_round_interrupted(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is not None:
            r.outcome = "interrupted"
            self.open_round = None

    def _on_round_released(self, rec: dict[str, Any]) -> None:
        r = self._round_of(rec)
        if r is None:
            return
        r.outcome, r.contributors = "released", _site_list(rec, "contributors")
        self.open_round = None
        self.report.rounds_released += 1
        self.same(rec, "contributors", r.phase.get("delivered", ()), r.contributors,
                  "the contributors are not the sites whose inputs were received")
        self.same(rec, "dropouts", r.phase.get("dropouts", ()), _site_list(rec, "dropouts"),
                  "the dropouts differ from those recorded with the inputs")
        charged = not r.evaluate_only and any(v is not None for v in self.expected.values())
        if rec.get("charged") != charged:
            self.bad(rec, "charged", charged, rec.get("charged"),
                     "the release is (not) charged against what the job says")
        if not _is_hex(rec.get("aggregate_sha256"), 64):
            self.bad(rec, "aggregate_sha256", "64 hex digits", rec.get("aggregate_sha256"),
                     "no digest of the released aggregate")
        outsiders = [s for s in r.contributors if s not in r.participants]
        if outsiders:
            self.bad(rec, "contributors", r.participants, outsiders,
                     "contributors that were not offered the round")
        if r.secure and r.threshold and len(r.contributors) < r.threshold:
            self.bad(rec, "contributors", f">= {r.threshold}", len(r.contributors),
                     "an aggregate of fewer sites than the threshold was released")
        if len(r.contributors) < self.job.min_sites:
            self.bad(rec, "contributors", f">= {self.job.min_sites} (min_sites)",
                     len(r.contributors), "an aggregate of fewer sites than the job's minimum")
        if rec.get("evaluate_only") != r.evaluate_only:
            self.bad(rec, "evaluate_only", r.evaluate_only, rec.get("evaluate_only"),
                     "the release contradicts its round_started record")
        if not r.evaluate_only:
            self.training_released += 1
            self.params_sha256 = str(rec["params_sha256"])
            self.released_params.append((r.round_id, self.params_sha256))
            self._charge(rec, r)
        for name, expected in (("training_round", self.completed_rounds()),
                               ("completed_rounds", self.completed_rounds())):
            if rec.get(name) != expected:
                self.bad(rec, name, expected, rec.get(name),
                         "the round count does not follow the released rounds")

    def _charge(self, rec: dict[str, Any], r: _Round) -> None:
        from fedtune.privacy.accountants import AccountingError

        accountant = rec.get("accountant", {})
        for level in ("site_level", "record_level"):
            expected = self.expected.get(level)
            logged = rec.get(level)
            if expected is None:
                if logged is not None:
                    self.bad(rec, level, None, logged, "a charge the job has no mechanism for")
                continue
            self.compare(rec, level, _release_part(expected), logged,
                         "the round used other DP parameters than the job's")
            if not isinstance(logged, dict):
                continue
            if level == "site_level" and expected["mode"] == "distributed":
                t = int(expected["distributed"]["min_sites"])
                if len(r.contributors) < t:
                    self.bad(rec, "contributors", f">= {t} (the noise is calibrated for {t} "
                             "survivors)", len(r.contributors),
                             "the released sum carries less noise than was accounted")
            try:
                release = _release_from(logged["release"])
                self.releases[level].append(release)
                recomputed = self.composition.epsilon(self.releases[level],
                                                      float(logged["delta"]))
            except (AccountingError, KeyError, TypeError, ValueError) as exc:
                self.bad(rec, f"{level}.release", "a release the accountant can compose",
                         logged.get("release"), f"cannot recompute ε ({exc})")
                continue
            state = accountant.get(level, {})
            if int(state.get("releases", -1)) != len(self.releases[level]):
                self.bad(rec, f"accountant.{level}.releases", len(self.releases[level]),
                         state.get("releases"), "the coordinator counted another number of "
                         "charged rounds")
            if not _close(recomputed, state.get("epsilon")):
                self.bad(rec, f"accountant.{level}.epsilon", recomputed, state.get("epsilon"),
                         "ε recomputed from the logged mechanism differs from the logged ε")
            self.logged_epsilon[level] = float(state.get("epsilon", math.nan))

    def _on_budget_exhausted(self, rec: dict[str, Any]) -> None:
        pass

    def _on_run_finished(self, rec: dict[str, Any]) -> None:
        if rec.get("completed_rounds") != self.completed_rounds():
            self.bad(rec, "completed_rounds", self.completed_rounds(),
                     rec.get("completed_rounds"), "the run's round count differs from its "
                     "released rounds")
        if self.open_round is not None:
            self.bad(rec, "event", f"an outcome of round {self.open_round.round_id}",
                     "run_finished", "the run finished in the middle of a round")

    def _on_coordinator_stopped(self, rec: dict[str, Any]) -> None:
        pass

    def pinned_or_declared(self) -> str:
        return (base64.b64encode(self.pinned).decode() if self.pinned is not None
                else self.coordinator_key)

    # -- end of the transcript -------------------------------------------------------------

    def finish(self, run_dir: Path) -> None:
        if self.job is None:
            return
        if self.open_round is not None:
            self.warn(None, f"round {self.open_round.round_id} has no outcome: the coordinator "
                            "stopped or crashed during it")
            self.open_round.outcome = "interrupted"
        levels = {"site_level": self.job.site_dp, "record_level": self.job.record_dp}
        for level, expected in self.expected.items():
            if expected is None:
                continue
            releases = self.releases[level]
            eps = self.composition.epsilon(releases, expected["delta"])
            target = float(levels[level].target_epsilon)
            self.report.epsilon[level] = LevelEpsilon(expected["release"]["mechanism"],
                                                      expected["delta"], len(releases), eps,
                                                      target)
            if target > 0 and eps > target * (1 + REL_TOL):
                self.report.discrepancies.append(Discrepancy(
                    self.source, None, f"{level}.epsilon", f"<= {target:g} (the job's target)",
                    f"{eps:.6g}", "the released rounds exceed the job's privacy budget"))
        self._check_privacy_json(run_dir)
        self._check_run_json(run_dir)

    def _check_run_json(self, run_dir: Path) -> None:
        path = run_dir / "run.json"
        if not path.exists():
            return
        try:
            written = json.loads(path.read_text())
            pairs = [("run_id", self.report.run_id, written["run_id"]),
                     ("job_digest", self.job_digest, written["job_digest"])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.report.warnings.append(f"run.json: unreadable ({exc!r}), not compared")
            return
        for name, expected, found in pairs:
            if expected != found:
                self.report.discrepancies.append(Discrepancy(
                    "run.json", None, name, expected, str(found),
                    "the run directory belongs to another run than the transcript"))

    def _check_privacy_json(self, run_dir: Path) -> None:
        path = run_dir / "privacy.json"
        if not path.exists():
            return
        try:
            written = json.loads(path.read_text())
            figures = {"site_level": written["site_level"]["epsilon"],
                       "record_level": written["record_level"]["epsilon_per_site_at_most"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.report.warnings.append(f"privacy.json: unreadable ({exc!r}), not compared")
            return
        for level, e in self.report.epsilon.items():
            if not _close(e.epsilon, figures[level]):
                self.report.discrepancies.append(Discrepancy(
                    "privacy.json", None, f"{level}.epsilon", f"{e.epsilon:.6g}",
                    f"{figures[level]}", "the coordinator's report differs from the ε the "
                    "auditor recomputed from the transcript"))

    # -- site egress logs --------------------------------------------------------------------

    def cross_check(self, path: Path) -> None:
        source = path.name if path.parent.name == "" else f"{path.parent.name}/{path.name}"
        try:
            self._cross_check(path, source)
        except MALFORMED as exc:
            self.report.discrepancies.append(Discrepancy(
                source, None, "records", "the documented fields", repr(exc),
                "malformed record: the log could not be cross-checked further"))

    def _cross_check(self, path: Path, source: str) -> None:
        lines, tail = read_lines(path)
        problems = check_chain(lines, EGRESS_DOMAIN, pinned_key=None, source=source)
        self.report.discrepancies += problems
        if tail:
            self.report.warnings.append(f"{source}: the last line is incomplete "
                                        f"({len(tail)} bytes): a write interrupted by a crash")
        records = [line.record for line in lines if line.record is not None]
        opened = [r for r in records if r.get("event") == "log_opened"]
        if not opened:
            self.report.discrepancies.append(Discrepancy(
                source, None, "event", "a log_opened record", "none", "not a site egress log"))
            return
        site = str(opened[0].get("site"))
        summary = SiteSummary(str(path), site, len(lines), 0)
        self.report.sites.append(summary)
        self.sites_cross_checked.add(site)

        def bad(rec: dict[str, Any] | None, name: str, expected: Any, found: Any,
                problem: str, where: str = source) -> None:
            seq = rec.get("seq") if rec else None
            self.report.discrepancies.append(Discrepancy(where, seq, name, _short(expected),
                                                         _short(found), problem))

        enrolled = self.site_keys.get(site)
        if enrolled is None:
            bad(opened[0], "site", sorted(self.site_keys), site,
                "the log belongs to a site that is not enrolled in this run")
            return
        run = self.report.run_id
        # the key that governs each record, and whether the log's key is the enrolled one
        governing = ""
        for rec in records:
            if rec.get("event") == "log_opened" and rec.get("site") != site:
                bad(rec, "site", site, rec.get("site"), "two sites write one egress log")
            if "public_key" in rec:
                governing = str(rec["public_key"])
            if rec.get("run") == run and governing != enrolled:
                bad(rec, "public_key", enrolled, governing,
                    "a record of this run is signed by another key than the site's enrolled key")
        for rec in opened:
            peers_key = rec.get("coordinator_key")
            if peers_key and peers_key != self.coordinator_key:
                bad(rec, "coordinator_key", self.coordinator_key, peers_key,
                    "the transcript is signed by another key than the coordinator key this "
                    "site trusts (its peers file)")
            elif peers_key and site not in self.confirmed_by:
                self.confirmed_by.append(site)
        failed = {int(r["of_seq"]) for r in records if r.get("event") == "send_failed"}
        sent = [r for r in records if r.get("event") == "sent" and r.get("run") == run
                and r.get("type") in RELIED_ON]
        by_key: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r in sent:
            by_key.setdefault((int(r["round"]), str(r["type"])), []).append(r)
        mine = [m for m in self.messages if m.site == site]
        summary.messages_checked = len(mine)
        matched: set[int] = set()
        for m in mine:
            candidates = by_key.get((m.round_id, m.type), [])
            same = [r for r in candidates if r.get("sha256") == m.sha256]
            if same:
                matched.add(int(same[0]["seq"]))
                continue
            self.report.discrepancies.append(Discrepancy(
                self.source, m.seq, f"messages[{site}].{m.type}.sha256",
                _short(candidates[0]["sha256"]) if candidates else
                f"a {m.type} of round {m.round_id} in {site}'s egress log",
                m.sha256, f"the transcript relies on a {m.type} of round {m.round_id} that "
                f"{site} did not send ({'another digest' if candidates else 'absent from its log'})"))
        for r in sent:
            seq = int(r["seq"])
            if seq in matched or seq in failed:
                continue
            rnd = self.rounds.get(int(r["round"]))
            if rnd is not None and rnd.outcome == "interrupted":
                self.report.warnings.append(
                    f"{source} seq {seq}: {r['type']} of round {r['round']} is not in the "
                    "transcript; the round was interrupted by a coordinator stop or crash")
                continue
            bad(r, "sha256", f"a {r['type']} of round {r['round']} in the transcript",
                r.get("sha256"), "the site sent a message (acknowledged) that the transcript "
                "does not record")
        self._check_site_fields(site, sent, bad)
        self._check_ledger(site, records, summary, bad)

    def _check_site_fields(self, site: str, sent: list[dict[str, Any]], bad: Any) -> None:
        for r in sent:
            if r["type"] == "RespondOffer" and r.get("job_digest") != _job_digest_hex(self):
                bad(r, "job_digest", _job_digest_hex(self), r.get("job_digest"),
                    "the site was offered another job than the transcript's")
            if r["type"] == "SubmitInput":
                rnd = self.rounds.get(int(r["round"]))
                if rnd is not None and r.get("params_sha256") != rnd.params_sha256:
                    bad(r, "params_sha256", rnd.params_sha256, r.get("params_sha256"),
                        "the site trained on another model than the one the round recorded")

    def _check_ledger(self, site: str, records: list[dict[str, Any]], summary: SiteSummary,
                      bad: Any) -> None:
        from fedtune.privacy.accountants import AccountingError

        run = self.report.run_id
        expected = self.expected.get("record_level")
        charged: dict[str, dict[tuple[str, int], Any]] = {}
        for rec in records:
            if rec.get("event") == "log_opened":
                for dataset, entries in (rec.get("ledger_baseline") or {}).items():
                    for entry in entries:
                        charged.setdefault(dataset, {})[(str(entry["run"]),
                                                         int(entry["round"]))] = entry["release"]
                continue
            if rec.get("event") != "ledger":
                continue
            dataset, key = str(rec["dataset"]), (str(rec["run"]), int(rec["round"]))
            action = rec.get("action")
            if action == "reserve":
                charged.setdefault(dataset, {})[key] = rec["release"]
            elif action == "cancel":
                charged.get(dataset, {}).pop(key, None)
            try:
                releases = [_release_from(x) for x in charged.get(dataset, {}).values()]
                eps = self.composition.epsilon(releases, float(rec["delta"]))
            except (AccountingError, KeyError, TypeError, ValueError) as exc:
                bad(rec, "release", "a release the accountant can compose", rec.get("release"),
                    f"cannot recompute the dataset's ε ({exc})")
                continue
            if not _close(eps, rec.get("dataset_epsilon")):
                bad(rec, "dataset_epsilon", eps, rec.get("dataset_epsilon"),
                    "the dataset's ε recomputed from the logged charges differs from the "
                    "logged one")
            summary.ledger_epsilon[dataset] = eps
            if rec.get("run") != run:
                continue
            if expected is not None and action == "reserve":
                self.compare(rec, "release", expected["release"], rec.get("release"),
                             "the site charged another release than the job's")
            rnd = self.rounds.get(key[1])
            if rnd is None:
                bad(rec, "round", "a round of the transcript", key[1],
                    "a ledger change for a round the transcript does not record")
                continue
            if not rnd.secure or rec.get("reason") not in ("released", "aborted"):
                continue  # plain mode commits as the update leaves, whatever the outcome
            if action == "commit" and rnd.outcome != "released":
                bad(rec, "action", "cancel (the transcript records the round as "
                    f"{rnd.outcome or 'unfinished'})", "commit",
                    "the site was told the round released an aggregate; the transcript says not")
            if action == "commit" and site not in rnd.contributors and rnd.outcome == "released":
                bad(rec, "round", f"a round with {site} among the contributors", key[1],
                    "the site was charged for a round the transcript says it did not "
                    "contribute to")
            if action == "cancel" and rnd.outcome == "released":
                bad(rec, "action", "commit (the transcript records the round as released)",
                    "cancel", "the site was told the round aborted, but it released an "
                    "aggregate: a charge was withdrawn for a release")

    def report_unchecked_sites(self) -> None:
        self.report.not_cross_checked = sorted(set(self.site_keys) - self.sites_cross_checked)
        if self.confirmed_by:
            self.report.key_source += ("; confirmed by the peers file of "
                                       + ", ".join(sorted(self.confirmed_by)))


@functools.lru_cache(maxsize=256)
def _rdp_curve(release: Any) -> tuple[tuple[float, ...], Any]:
    """(orders, RDP curve) of one release, from fedtune's RDP accountant (pure: cached)."""
    from fedtune.privacy.accountants import RDPAccountant

    one = RDPAccountant()
    one.add(release)  # the accountant's own checks (e.g. Skellam needs q = 1)
    return one.orders, one.get_rdp()


class _Composition:
    """ε of a multiset of releases with fedtune's RDP accountant, each distinct release's
    curve computed once: RDP curves of composed mechanisms add up (Mironov 2017,
    Proposition 1), so a run of many identical rounds costs one curve, not one per round."""

    def epsilon(self, releases: Sequence[Any], delta: float) -> float:
        from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

        if not releases:
            return 0.0
        orders: tuple[float, ...] = ()
        total: Any = 0.0
        for release, count in Counter(releases).items():
            orders, curve = _rdp_curve(release)
            total = total + count * curve
        # the conversion of RDPAccountant.get_privacy_spent (Balle et al. 2020, Thm 21)
        eps, _ = rdp_privacy_accountant.compute_epsilon(list(orders), list(total), delta)
        return float(eps)


def _job_digest_hex(audit: _TranscriptAudit) -> str:
    return audit.job_digest


# ---------------------------------------------------------------------------- mechanisms


def release_dict(release: Any) -> dict[str, Any]:
    """A :class:`~fedtune.privacy.accountants.Release` as logged."""
    return {"mechanism": release.mechanism, "noise_multiplier": float(release.noise_multiplier),
            "sample_rate": float(release.sample_rate), "steps": int(release.steps),
            "skellam_mu": float(release.skellam_mu),
            "l1_sensitivity": float(release.l1_sensitivity),
            "l2_sensitivity": float(release.l2_sensitivity)}


def _release_from(logged: dict[str, Any]) -> Any:
    from fedtune.privacy.accountants import Release

    return Release(mechanism=str(logged["mechanism"]),
                   noise_multiplier=float(logged["noise_multiplier"]),
                   sample_rate=float(logged["sample_rate"]), steps=int(logged["steps"]),
                   skellam_mu=float(logged.get("skellam_mu", 0.0)),
                   l1_sensitivity=float(logged.get("l1_sensitivity", 0.0)),
                   l2_sensitivity=float(logged.get("l2_sensitivity", 0.0)))


def mechanisms(job: Any, dimension: int) -> dict[str, dict[str, Any] | None]:
    """Every DP mechanism of a job, with the parameters of one round's release: what the
    coordinator logs in ``job_accepted`` and what an auditor re-derives from the job."""
    return _expected_mechanisms(job, dimension)


def _expected_mechanisms(job: Any, dimension: int) -> dict[str, dict[str, Any] | None]:
    from fedtune.privacy_plan import distributed_params, record_level_release, site_level_release

    s, r = job.site_dp, job.record_dp
    site: dict[str, Any] | None = None
    if s.mode != "none":
        site = {"mode": s.mode, "clip_norm": float(s.clip_norm), "delta": float(s.delta),
                "target_epsilon": float(s.target_epsilon),
                "release": release_dict(site_level_release(job, dimension))}
        if s.mode == "distributed":
            p = distributed_params(job, dimension)
            site["distributed"] = {
                "bits": p.bits, "clip_norm": p.clip_norm, "scale": p.scale,
                "noise_mu_per_site": p.noise_mu_per_site, "min_sites": p.min_sites,
                "dimension": p.dimension, "n_sites_max": p.n_sites_max,
                "rounding_beta": p.rounding_beta, "padded_dimension": p.padded_dimension}
    record: dict[str, Any] | None = None
    if r.enabled:
        record = {"delta": float(r.delta), "target_epsilon": float(r.target_epsilon),
                  "max_grad_norm": float(r.max_grad_norm),
                  "release": release_dict(record_level_release(job))}
    return {"site_level": site, "record_level": record}


def _release_part(mechanism: dict[str, Any]) -> dict[str, Any]:
    """What a release record logs of a mechanism: the release and δ."""
    return {"release": mechanism["release"], "delta": mechanism["delta"]}


def _secagg_dict(job: Any) -> dict[str, Any]:
    sa = job.secure_aggregation
    return {"enabled": bool(sa.enabled), "threshold": int(sa.threshold),
            "neighbours": int(sa.neighbours), "bits": int(sa.bits),
            "value_range": float(sa.value_range), "loss_bound": float(sa.loss_bound)}


def secure_aggregation_dict(job: Any) -> dict[str, Any]:
    """The job's secure-aggregation parameters as the transcript logs them."""
    return _secagg_dict(job)


def round_release(job: Any, dimension: int) -> dict[str, dict[str, Any] | None]:
    """The per-level ``{release, delta}`` a released training round logs."""
    return {level: (_release_part(m) if m is not None else None)
            for level, m in _expected_mechanisms(job, dimension).items()}
