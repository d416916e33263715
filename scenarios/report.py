"""A replayed scenario's report: ``report.json`` for machines, ``report.html`` for people.

DESIGN.md §5: ``fedtune replay SCENARIO`` ends by writing, into its run directory, what
happened and whether every declared expectation held. The scenario runner fills in a
:class:`ScenarioReport` (plain frozen dataclasses, no I/O) and calls :func:`write_report`.

``report.json``
    The document of :func:`report_document`, valid against ``report_schema.json`` beside
    this module (JSON Schema draft 2020-12; every field is described there). Numbers that
    may be infinite (an ε without differential privacy, a margin against it) are written as
    the strings ``"inf"`` / ``"-inf"``, as JSON has no infinity.
``report.html``
    One self-contained page (:func:`render_html`): no script, no external resource (a
    Content-Security-Policy forbids both, as a second line of defence), plots drawn as inline
    SVG by this module — accuracy per round (``#plot-accuracy``), ε per round
    (``#plot-epsilon``), the membership attacks' ROC curves (``#plot-roc``) — and tables of
    the expectations (met / FAILED, with the margin), rounds, attacks, injected faults and
    adversaries, the transcript's verdict and the timing. Every string that comes from the
    scenario is HTML-escaped. The page is a pure function of the report: the same report
    gives the same bytes.

The SVG is written here rather than by matplotlib so that the report needs no plotting
library at run time and its ids, titles and escaping are under this module's control.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtune.scenarios.attacks import AttackResult, chance_advantage

if TYPE_CHECKING:  # only for the annotation of ReconstructionRow.from_attempt
    from fedtune.scenarios.adversaries import ReconstructionAttempt

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report_schema.json")
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

PASS, FAIL, ERROR = "pass", "fail", "error"
VERDICTS: tuple[str, ...] = (PASS, FAIL, ERROR)
#: comparison operators of an expectation; ``==`` and ``!=`` also compare booleans and text
OPS: tuple[str, ...] = ("<=", "<", ">=", ">", "==", "!=")
INJECTION_KINDS: tuple[str, ...] = ("fault", "adversary")
SITE_DP_MODES: tuple[str, ...] = ("none", "central", "distributed")

Value = float | int | bool | str


class ReportError(ValueError):
    """A report whose contents are inconsistent; the message names the field."""


# -- the data the runner fills in --------------------------------------------------------------


@dataclass(frozen=True)
class PrivacySettings:
    """The privacy configuration the scenario ran with (from its job).

    Attributes
    ----------
    secure_aggregation:
        Whether updates were masked (SecAgg+); ``False`` is plain, development mode.
    record_level_dp:
        Whether sites trained with DP-SGD.
    record_delta:
        δ of the record-level ε figures, or ``None`` without record-level DP.
    site_level_mode:
        ``"none"``, ``"central"`` or ``"distributed"`` DP-FedAvg.
    site_delta:
        δ of the site-level ε figures, or ``None`` without site-level DP.
    accountant:
        The accountant that computed ε (``"rdp"`` or ``"pld"``).
    """

    secure_aggregation: bool
    record_level_dp: bool
    record_delta: float | None
    site_level_mode: str
    site_delta: float | None
    accountant: str = "rdp"


@dataclass(frozen=True)
class RoundRow:
    """One round as the coordinator recorded it.

    Attributes
    ----------
    round:
        Round number (from 1).
    participants:
        Sites sampled for the round (that accepted its offer).
    survivors:
        Participants whose input was aggregated; the rest dropped out.
    aborted:
        True when the round released nothing (fewer than ``t`` survivors, a refusal, …).
    abort_reason:
        Why it aborted; empty otherwise.
    evaluate_only:
        The final evaluation round: no training, no update, no privacy charge.
    accuracy, loss:
        The global model's aggregated accuracy and mean loss on the sites' held-out data,
        or ``None`` when the round released no metrics.
    epsilon_record:
        Cumulative record-level ε of each site after the round (site id → ε). Empty without
        record-level DP; ``math.inf`` for a site without a guarantee.
    epsilon_site:
        Cumulative site-level ε after the round, or ``None`` without site-level DP.
    """

    round: int
    participants: tuple[str, ...]
    survivors: tuple[str, ...]
    aborted: bool = False
    abort_reason: str = ""
    evaluate_only: bool = False
    accuracy: float | None = None
    loss: float | None = None
    epsilon_record: Mapping[str, float] = field(default_factory=dict)
    epsilon_site: float | None = None


@dataclass(frozen=True)
class Expectation:
    """A declared expectation and what the replay found; build it with :func:`check_expectation`.

    Attributes
    ----------
    name:
        What is measured, as the scenario names it (e.g. ``"epsilon_record"``).
    op:
        One of :data:`OPS`: the expectation is ``found op target``.
    target:
        The declared bound (a number; a boolean or text for ``==`` / ``!=``).
    found:
        The measured value, or ``None`` when it could not be measured (then not met).
    met:
        Whether ``found op target`` holds.
    margin:
        By how much, in the units of ``found``: ``target - found`` for ``<=`` / ``<``,
        ``found - target`` for ``>=`` / ``>``; positive (or zero) when met, negative when
        failed (the amount by which it failed). ``None`` for ``==`` / ``!=`` and when
        nothing was found.
    detail:
        Free text: how it was measured, or why not.
    """

    name: str
    op: str
    target: Value
    found: Value | None
    met: bool
    margin: float | None
    detail: str = ""


@dataclass(frozen=True)
class MembershipAttack:
    """A membership-inference attack on the final model, against one site's records.

    Attributes
    ----------
    site:
        Whose training records were the members (its held-out records the non-members).
    result:
        From :mod:`fedtune.scenarios.attacks`.
    advantage_bound:
        The largest advantage the site's record-level (ε, δ) allows
        (:func:`fedtune.scenarios.attacks.dp_advantage_bound`), or ``None`` without DP.
    label:
        The scenario's name for this attack (its expectations refer to it); empty to use
        the method's name, ``result.name``.
    """

    site: str
    result: AttackResult
    advantage_bound: float | None = None
    label: str = ""

    @property
    def title(self) -> str:
        """``label (method)``, or the method alone."""
        if self.label and self.label != self.result.name:
            return f"{self.label} ({self.result.name})"
        return self.result.name


@dataclass(frozen=True)
class ReconstructionRow:
    """The coordinator's attempt to reconstruct one site's input in one round.

    Fields as :class:`fedtune.scenarios.adversaries.ReconstructionAttempt`, with the victim
    and the round.
    """

    victim: str
    round: int
    self_mask_shares: int
    mask_key_shares: int
    threshold: int
    mask_key_recovered: bool
    input_recoverable: bool
    notes: tuple[str, ...] = ()

    @classmethod
    def from_attempt(cls, attempt: ReconstructionAttempt, victim: str,
                     round_id: int) -> ReconstructionRow:
        """The row of :func:`fedtune.scenarios.adversaries.reconstruction_attempt`'s result."""
        return cls(victim=victim, round=round_id, self_mask_shares=attempt.self_mask_shares,
                   mask_key_shares=attempt.mask_key_shares, threshold=attempt.threshold,
                   mask_key_recovered=attempt.mask_key_recovered,
                   input_recoverable=attempt.input_recoverable, notes=tuple(attempt.notes))


@dataclass(frozen=True)
class Injection:
    """A fault or an adversary the replay injected, and what happened.

    Attributes
    ----------
    kind:
        ``"fault"`` (a site drops, the coordinator is killed) or ``"adversary"`` (a lying
        coordinator variant).
    name:
        As the scenario declares it, e.g. ``"drop"``, ``"kill-coordinator"``,
        ``"both-lists"``.
    target:
        The site id, or ``"coordinator"``.
    round:
        The round it was injected in, or ``None`` for every round.
    phase:
        The protocol phase, when the injection is tied to one.
    outcome:
        What the replay observed (e.g. ``"3 sites refused to unmask: inconsistent lists"``).
    as_expected:
        Whether the system reacted as it should, or ``None`` when not judged.
    """

    kind: str
    name: str
    target: str
    round: int | None = None
    phase: str = ""
    outcome: str = ""
    as_expected: bool | None = None


@dataclass(frozen=True)
class TranscriptVerdict:
    """What ``fedtune audit verify`` said about the run's transcript and site logs.

    Attributes
    ----------
    checked:
        Whether verification ran at all.
    ok:
        Whether it passed (``False`` when not checked).
    summary:
        Its one-line verdict.
    records:
        Records in the transcript.
    final_hash:
        The hash of the last record (hex), which the model's privacy card also carries.
    discrepancies:
        Each located discrepancy (record, field, expected, found), one line each.
    """

    checked: bool
    ok: bool
    summary: str
    records: int = 0
    final_hash: str = ""
    discrepancies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timing:
    """When the replay ran and how long its parts took.

    Attributes
    ----------
    started, finished:
        Timezone-aware times.
    phases:
        Seconds per part of the replay (e.g. ``{"federation": 41.2, "attacks": 6.3}``).
    """

    started: dt.datetime
    finished: dt.datetime
    phases: Mapping[str, float] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        return (self.finished - self.started).total_seconds()


@dataclass(frozen=True)
class ScenarioReport:
    """Everything :func:`write_report` writes.

    Attributes
    ----------
    name, file, description:
        The scenario's name, its file (as given on the command line) and its description.
    verdict:
        :func:`verdict_of` the expectations and the error: ``"pass"``, ``"fail"`` or
        ``"error"``.
    privacy:
        The job's privacy configuration.
    rounds:
        Every round, in order.
    expectations:
        Every declared expectation, in the scenario's order.
    membership_attacks, reconstruction_attempts:
        The attacks that ran.
    injections:
        The faults and adversaries injected.
    transcript:
        The audit verdict, or ``None`` when the replay did not get that far.
    timing:
        When and how long.
    error:
        Why the replay could not finish; empty when it did. A non-empty error makes the
        verdict ``"error"``.
    """

    name: str
    file: str
    verdict: str
    privacy: PrivacySettings
    rounds: Sequence[RoundRow]
    expectations: Sequence[Expectation]
    timing: Timing
    membership_attacks: Sequence[MembershipAttack] = ()
    reconstruction_attempts: Sequence[ReconstructionRow] = ()
    injections: Sequence[Injection] = ()
    transcript: TranscriptVerdict | None = None
    description: str = ""
    error: str = ""


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    html: Path


# -- expectations and verdict ------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_expectation(name: str, op: str, target: Value, found: Value | None, *,
                      detail: str = "") -> Expectation:
    """Evaluate ``found op target`` into an :class:`Expectation` with its margin.

    ``None`` or NaN found is never met (``detail`` defaults to ``"not measured"``). A
    boolean or text target allows only ``==`` / ``!=``.

    Raises
    ------
    ReportError
        For an unknown operator, an ordering operator on a non-number, or a NaN target.
    """
    if op not in OPS:
        raise ReportError(f"expectation {name!r}: operator {op!r} is not one of {OPS}")
    if not _is_number(target):
        if op not in ("==", "!="):
            raise ReportError(
                f"expectation {name!r}: {op} needs a number, the target is {target!r}"
            )
        if found is None:
            return Expectation(name, op, target, None, False, None, detail or "not measured")
        same = type(found) is type(target) and found == target
        return Expectation(name, op, target, found, same == (op == "=="), None, detail)
    if math.isnan(target):
        raise ReportError(f"expectation {name!r}: the target is NaN")
    if found is None:
        return Expectation(name, op, target, None, False, None, detail or "not measured")
    if not _is_number(found) or math.isnan(found):
        return Expectation(name, op, target, found, False, None,
                           detail or f"found {found!r}, not a number")
    value, bound = float(found), float(target)
    if op in ("==", "!="):
        return Expectation(name, op, target, found, (value == bound) == (op == "=="), None,
                           detail)
    margin = bound - value if op in ("<=", "<") else value - bound
    if math.isnan(margin):  # inf - inf: both unbounded
        margin = 0.0
    met = {"<=": value <= bound, "<": value < bound,
           ">=": value >= bound, ">": value > bound}[op]
    return Expectation(name, op, target, found, met, margin, detail)


def verdict_of(expectations: Sequence[Expectation], error: str = "") -> str:
    """``"error"`` when the replay failed, else ``"fail"`` when an expectation is not met,
    else ``"pass"``."""
    if error:
        return ERROR
    return PASS if all(e.met for e in expectations) else FAIL


# -- report.json -------------------------------------------------------------------------------


def _real(value: float) -> float | str:
    """A JSON value for a number that may be infinite (the schema's ``real``)."""
    value = float(value)
    if math.isnan(value):
        raise ReportError("NaN cannot be reported")  # callers name the field first
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _field_real(where: str, value: float) -> float | str:
    if not _is_number(value):
        raise ReportError(f"{where}: expected a number, got {value!r}")
    if math.isnan(value):
        raise ReportError(f"{where}: is NaN")
    return _real(value)


def _value(where: str, value: Value | None) -> Value | None:
    if value is None or isinstance(value, bool | str):
        return value
    return _field_real(where, value)


def _finite(where: str, value: float, low: float = -math.inf, high: float = math.inf) -> float:
    if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
        raise ReportError(f"{where}: expected a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def _optional(where: str, value: float | None, low: float = -math.inf,
              high: float = math.inf) -> float | None:
    return None if value is None else _finite(where, value, low, high)


def _time(where: str, value: dt.datetime) -> str:
    if not isinstance(value, dt.datetime) or value.utcoffset() is None:
        raise ReportError(f"{where}: expected a timezone-aware datetime, got {value!r}")
    return value.isoformat()


def report_document(report: ScenarioReport) -> dict[str, Any]:
    """``report.json``'s content: checked for consistency, with the schema's field names.

    Raises
    ------
    ReportError
        Naming the field, when the report is inconsistent: a verdict that is not
        :func:`verdict_of` its expectations and error, an expectation whose ``met`` or
        ``margin`` is not what :func:`check_expectation` gives, survivors that did not
        participate, an accuracy outside ``[0, 1]``, a NaN, an unknown enumeration value, …
    """
    if not report.name:
        raise ReportError("name: a scenario needs a name")
    expected_verdict = verdict_of(report.expectations, report.error)
    if report.verdict != expected_verdict:
        raise ReportError(
            f"verdict: {report.verdict!r}, but the expectations and error give "
            f"{expected_verdict!r}"
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": {"name": report.name, "file": report.file,
                     "description": report.description},
        "verdict": report.verdict,
        "error": report.error,
        "privacy": _privacy_document(report.privacy),
        "rounds": [_round_document(i, r) for i, r in enumerate(report.rounds)],
        "expectations": [_expectation_document(i, e) for i, e in enumerate(report.expectations)],
        "attacks": {
            "membership": [_membership_document(i, a)
                           for i, a in enumerate(report.membership_attacks)],
            "reconstruction": [_reconstruction_document(i, r)
                               for i, r in enumerate(report.reconstruction_attempts)],
        },
        "injections": [_injection_document(i, j) for i, j in enumerate(report.injections)],
        "transcript": _transcript_document(report.transcript),
        "timing": _timing_document(report.timing),
    }


def _privacy_document(p: PrivacySettings) -> dict[str, Any]:
    if p.site_level_mode not in SITE_DP_MODES:
        raise ReportError(
            f"privacy.site_level_mode: {p.site_level_mode!r} is not one of {SITE_DP_MODES}"
        )
    return {
        "secure_aggregation": bool(p.secure_aggregation),
        "record_level_dp": bool(p.record_level_dp),
        "record_delta": _optional("privacy.record_delta", p.record_delta, 0.0, 1.0),
        "site_level_mode": p.site_level_mode,
        "site_delta": _optional("privacy.site_delta", p.site_delta, 0.0, 1.0),
        "accountant": p.accountant,
    }


def _round_document(i: int, r: RoundRow) -> dict[str, Any]:
    where = f"rounds[{i}]"
    if isinstance(r.round, bool) or not isinstance(r.round, int) or r.round < 1:
        raise ReportError(f"{where}.round: expected an integer >= 1, got {r.round!r}")
    stray = sorted(set(r.survivors) - set(r.participants))
    if stray:
        raise ReportError(f"{where}.survivors: {stray} did not participate in the round")
    epsilon_record = {}
    for site, eps in r.epsilon_record.items():
        epsilon_record[str(site)] = _field_real(f"{where}.epsilon_record[{site!r}]", eps)
    return {
        "round": r.round,
        "participants": [str(s) for s in r.participants],
        "survivors": [str(s) for s in r.survivors],
        "dropouts": [str(s) for s in r.participants if s not in set(r.survivors)],
        "aborted": bool(r.aborted),
        "abort_reason": r.abort_reason,
        "evaluate_only": bool(r.evaluate_only),
        "accuracy": _optional(f"{where}.accuracy", r.accuracy, 0.0, 1.0),
        "loss": _optional(f"{where}.loss", r.loss, 0.0),
        "epsilon_record": epsilon_record,
        "epsilon_site": (None if r.epsilon_site is None
                         else _field_real(f"{where}.epsilon_site", r.epsilon_site)),
    }


def _expectation_document(i: int, e: Expectation) -> dict[str, Any]:
    where = f"expectations[{i}]"
    again = check_expectation(e.name, e.op, e.target, e.found, detail=e.detail)
    if e.met != again.met:
        raise ReportError(
            f"{where} ({e.name!r}): met={e.met}, but {e.found!r} {e.op} {e.target!r} is "
            f"{again.met}"
        )
    same_margin = (e.margin is None) == (again.margin is None) and (
        e.margin is None or again.margin is None or math.isclose(e.margin, again.margin)
        or e.margin == again.margin)
    if not same_margin:
        raise ReportError(
            f"{where} ({e.name!r}): margin {e.margin!r}, check_expectation gives {again.margin!r}"
        )
    return {
        "name": e.name,
        "op": e.op,
        "target": _value(f"{where}.target", e.target),
        "found": _value(f"{where}.found", e.found),
        "met": bool(e.met),
        "margin": None if e.margin is None else _real(e.margin),
        "detail": e.detail,
    }


def _membership_document(i: int, a: MembershipAttack) -> dict[str, Any]:
    where = f"attacks.membership[{i}]"
    r = a.result
    if len(r.roc_fpr) != len(r.roc_tpr) or len(r.roc_fpr) < 2:
        raise ReportError(f"{where}.roc: fpr and tpr must have the same length >= 2")
    return {
        "name": r.name,
        "label": a.label,
        "site": a.site,
        "auc": _finite(f"{where}.auc", r.auc, 0.0, 1.0),
        "advantage": _finite(f"{where}.advantage", r.advantage, 0.0, 1.0),
        "threshold": _finite(f"{where}.threshold", r.threshold),
        "p_value": _finite(f"{where}.p_value", r.p_value, 0.0, 1.0),
        "n_members": int(r.n_members),
        "n_non_members": int(r.n_non_members),
        "chance_advantage": chance_advantage(r.n_members) if r.n_members >= 1 else None,
        "advantage_bound": _optional(f"{where}.advantage_bound", a.advantage_bound, 0.0, 1.0),
        "roc": {"fpr": [_finite(f"{where}.roc.fpr", v, 0.0, 1.0) for v in r.roc_fpr],
                "tpr": [_finite(f"{where}.roc.tpr", v, 0.0, 1.0) for v in r.roc_tpr]},
    }


def _reconstruction_document(i: int, r: ReconstructionRow) -> dict[str, Any]:
    return {
        "victim": r.victim,
        "round": int(r.round),
        "self_mask_shares": int(r.self_mask_shares),
        "mask_key_shares": int(r.mask_key_shares),
        "threshold": int(r.threshold),
        "mask_key_recovered": bool(r.mask_key_recovered),
        "input_recoverable": bool(r.input_recoverable),
        "notes": list(r.notes),
    }


def _injection_document(i: int, j: Injection) -> dict[str, Any]:
    if j.kind not in INJECTION_KINDS:
        raise ReportError(f"injections[{i}].kind: {j.kind!r} is not one of {INJECTION_KINDS}")
    return {
        "kind": j.kind,
        "name": j.name,
        "target": j.target,
        "round": j.round,
        "phase": j.phase,
        "outcome": j.outcome,
        "as_expected": j.as_expected,
    }


def _transcript_document(t: TranscriptVerdict | None) -> dict[str, Any] | None:
    if t is None:
        return None
    if t.ok and not t.checked:
        raise ReportError("transcript.ok: a transcript that was not checked cannot be ok")
    return {
        "checked": bool(t.checked),
        "ok": bool(t.ok),
        "summary": t.summary,
        "records": int(t.records),
        "final_hash": t.final_hash,
        "discrepancies": list(t.discrepancies),
    }


def _timing_document(t: Timing) -> dict[str, Any]:
    started = _time("timing.started", t.started)
    finished = _time("timing.finished", t.finished)
    if t.wall_seconds < 0:
        raise ReportError("timing.finished: is before timing.started")
    return {
        "started": started,
        "finished": finished,
        "wall_seconds": t.wall_seconds,
        "phases": {str(k): _finite(f"timing.phases[{k!r}]", v, 0.0)
                   for k, v in t.phases.items()},
    }


def load_schema() -> dict[str, Any]:
    """``report_schema.json``, the JSON Schema (draft 2020-12) of ``report.json``."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


# -- writing -----------------------------------------------------------------------------------


def write_report(report: ScenarioReport, run_dir: str | os.PathLike[str]) -> ReportPaths:
    """Write ``report.json`` and ``report.html`` into ``run_dir`` (created if missing).

    Both are checked and rendered before either is written, and each file is replaced
    atomically, so a reader never sees half a report.

    Raises
    ------
    ReportError
        If the report is inconsistent (see :func:`report_document`).
    """
    document = report_document(report)
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    page = render_html(report)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(json=out / REPORT_JSON, html=out / REPORT_HTML)
    _atomic_write(paths.json, text)
    _atomic_write(paths.html, page)
    return paths


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- report.html -------------------------------------------------------------------------------


def _e(value: object) -> str:
    """HTML-escape anything that came from the scenario (text and attribute values)."""
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    """A number for people: ``digits`` decimals without trailing zeros, or ``digits``
    significant figures when very large or small; ``—`` for nothing, ``∞`` for infinity."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.{digits}g}"
    text = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _value_text(value: Value | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return _num(value, 4)


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;
max-width:76em;padding:0 1em;color:#1b1b1b}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;margin:.2em 0}
.verdict{display:inline-block;padding:.35em .9em;border-radius:.3em;font-weight:700;
letter-spacing:.05em;color:#fff}
.verdict-pass{background:#1a7f37}.verdict-fail{background:#c62828}.verdict-error{background:#8a5300}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr.met td.result{color:#1a7f37;font-weight:700}
tr.failed{background:#fdecea}tr.failed td.result{color:#c62828;font-weight:700}
tr.aborted{color:#8a5300}
.plots{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;border:1px solid #ddd;padding:.4em}
figcaption{color:#555;font-size:.9em;max-width:540px}
.error{background:#fff4e5;border-left:4px solid #8a5300;padding:.5em 1em;white-space:pre-wrap}
code{font-size:.9em}
"""


def render_html(report: ScenarioReport) -> str:
    """``report.html``: one self-contained page (see the module docstring)."""
    verdict = report.verdict if report.verdict in VERDICTS else ERROR
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # no script, no fetch: the page shows what is written in it, nothing else
        ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">"),
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>fedtune scenario report: {_e(report.name)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        '<header id="summary">',
        f'<h1 id="scenario-name">{_e(report.name)}</h1>',
        f'<p class="meta">scenario file <code id="scenario-file">{_e(report.file)}</code></p>',
    ]
    if report.description:
        parts.append(f'<p class="meta" id="scenario-description">{_e(report.description)}</p>')
    met = sum(1 for e in report.expectations if e.met)
    parts.append(
        f'<p><span id="verdict" class="verdict verdict-{verdict}" data-verdict="{verdict}">'
        f"{verdict.upper()}</span> {met} of {len(report.expectations)} expectations met</p>"
    )
    if report.error:
        parts.append(f'<p class="error" id="error">{_e(report.error)}</p>')
    parts.append("</header>")
    parts += _expectations_html(report.expectations)
    parts += [
        '<section id="plots"><h2>Plots</h2><div class="plots">',
        _figure(_accuracy_svg(report.rounds), "Accuracy of the global model on the sites' "
                "held-out data, per round (aborted rounds shaded)."),
        _figure(_epsilon_svg(report.rounds, report.privacy), "Cumulative ε per round: "
                "record level per site (DP-SGD) and site level (DP-FedAvg)."),
        _figure(_roc_svg(report.membership_attacks), "ROC curves of the membership-inference "
                "attacks on the final model; the diagonal is chance."),
        "</div></section>",
    ]
    parts += _rounds_html(report.rounds)
    parts += _attacks_html(report.membership_attacks, report.reconstruction_attempts)
    parts += _injections_html(report.injections)
    parts += _privacy_html(report.privacy)
    parts += _transcript_html(report.transcript)
    parts += _timing_html(report.timing)
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _table(table_id: str, headers: Sequence[str], rows: Sequence[str], empty: str) -> list[str]:
    if not rows:
        return [f'<p id="{table_id}" class="empty">{_e(empty)}</p>']
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return [f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>', *rows,
            "</tbody></table>"]


def _cells(*values: str) -> str:
    return "".join(f"<td>{v}</td>" for v in values)


def _margin_text(e: Expectation) -> str:
    if e.margin is None:
        return "—"
    if e.met:
        return f"met by {_num(e.margin, 4)}"
    return f"failed by {_num(-e.margin, 4)}"


def _expectations_html(expectations: Sequence[Expectation]) -> list[str]:
    rows = []
    for e in expectations:
        status = "met" if e.met else "failed"
        rows.append(
            f'<tr class="expectation {status}" data-met="{str(e.met).lower()}">'
            f"<td>{_e(e.name)}</td><td><code>{_e(e.op)} {_e(_value_text(e.target))}</code></td>"
            f"<td>{_e(_value_text(e.found))}</td>"
            f'<td class="result">{"✓ met" if e.met else "✗ FAILED"}</td>'
            f'<td class="margin">{_e(_margin_text(e))}</td><td>{_e(e.detail)}</td></tr>'
        )
    return ['<section id="expectations-section"><h2>Expectations</h2>',
            *_table("expectations", ("expectation", "condition", "found", "result", "margin",
                                     "detail"), rows, "The scenario declares no expectation."),
            "</section>"]


def _rounds_html(rounds: Sequence[RoundRow]) -> list[str]:
    rows = []
    for r in rounds:
        eps = ", ".join(f"{_e(s)}: {_num(v)}" for s, v in r.epsilon_record.items()) or "—"
        dropped = [s for s in r.participants if s not in set(r.survivors)]
        status = ("aborted: " + r.abort_reason if r.aborted
                  else "evaluation only" if r.evaluate_only else "released")
        rows.append(
            f'<tr class="{"aborted" if r.aborted else "released"}">' + _cells(
                str(r.round), _e(status), _num(r.accuracy), _num(r.loss), eps,
                _num(r.epsilon_site), _e(", ".join(r.participants)),
                _e(", ".join(r.survivors)), _e(", ".join(dropped)) or "—") + "</tr>")
    return ['<section id="rounds-section"><h2>Rounds</h2>',
            *_table("rounds", ("round", "status", "accuracy", "loss", "ε record level",
                               "ε site level", "participants", "survivors", "dropouts"),
                    rows, "No round ran."),
            "</section>"]


def _attacks_html(membership: Sequence[MembershipAttack],
                  reconstruction: Sequence[ReconstructionRow]) -> list[str]:
    rows = []
    for a in membership:
        r = a.result
        rows.append("<tr>" + _cells(
            _e(a.title), _e(a.site), _num(r.auc), _num(r.advantage),
            _num(chance_advantage(r.n_members)) if r.n_members >= 1 else "—",
            _num(a.advantage_bound), _num(r.p_value), f"{r.n_members} / {r.n_non_members}")
            + "</tr>")
    recon = []
    for c in reconstruction:
        recon.append(
            f'<tr class="{"failed" if c.input_recoverable else "met"}">' + _cells(
                _e(c.victim), str(c.round), str(c.self_mask_shares), str(c.mask_key_shares),
                str(c.threshold), "yes" if c.mask_key_recovered else "no",
                "<strong>yes</strong>" if c.input_recoverable else "no",
                _e("; ".join(c.notes)) or "—") + "</tr>")
    return ['<section id="attacks-section"><h2>Attacks</h2>',
            "<h3>Membership inference on the final model</h3>",
            *_table("membership-attacks", (
                "attack", "site", "AUC", "advantage", "chance advantage",
                "DP bound on advantage", "p-value", "members / non-members"),
                rows, "No membership-inference attack ran."),
            "<h3>Reconstruction from what the coordinator received</h3>",
            *_table("reconstruction-attempts", (
                "victim", "round", "self-mask shares", "mask-key shares", "threshold t",
                "mask key recovered", "input recoverable", "notes"),
                recon, "No reconstruction was attempted."),
            "</section>"]


def _injections_html(injections: Sequence[Injection]) -> list[str]:
    rows = []
    for j in injections:
        judged = {True: "yes", False: "<strong>no</strong>", None: "—"}[j.as_expected]
        rows.append(
            f'<tr class="{"failed" if j.as_expected is False else "injection"}">' + _cells(
                _e(j.kind), _e(j.name), _e(j.target),
                "every round" if j.round is None else str(j.round), _e(j.phase) or "—",
                _e(j.outcome) or "—", judged) + "</tr>")
    return ['<section id="injections-section"><h2>Faults and adversaries</h2>',
            *_table("injections", ("kind", "name", "target", "round", "phase", "what happened",
                                   "as expected"), rows, "Nothing was injected."),
            "</section>"]


def _privacy_html(p: PrivacySettings) -> list[str]:
    record = f"DP-SGD, δ = {_num(p.record_delta)}" if p.record_level_dp else "off"
    site = ("off" if p.site_level_mode == "none"
            else f"{_e(p.site_level_mode)} DP-FedAvg, δ = {_num(p.site_delta)}")
    return ['<section id="privacy-section"><h2>Privacy settings</h2><ul>',
            f"<li>secure aggregation: {'on' if p.secure_aggregation else 'off (plain mode)'}</li>",
            f"<li>record-level DP: {record}</li>", f"<li>site-level DP: {site}</li>",
            f"<li>accountant: {_e(p.accountant)}</li>", "</ul></section>"]


def _transcript_html(t: TranscriptVerdict | None) -> list[str]:
    if t is None:
        body = ['<p id="transcript">The transcript was not verified: the replay ended first.</p>']
    else:
        state = "verified" if t.ok else ("FAILED verification" if t.checked else "not checked")
        body = [f'<p id="transcript" data-ok="{str(t.ok).lower()}"><strong>{state}</strong>: '
                f"{_e(t.summary)} ({t.records} records"
                + (f", final hash <code>{_e(t.final_hash)}</code>" if t.final_hash else "")
                + ")</p>"]
        if t.discrepancies:
            body += ["<ul>", *(f"<li>{_e(d)}</li>" for d in t.discrepancies), "</ul>"]
    return ['<section id="transcript-section"><h2>Transcript</h2>', *body, "</section>"]


def _timing_html(t: Timing) -> list[str]:
    phases = "".join(f"<li>{_e(k)}: {_num(v)} s</li>" for k, v in t.phases.items())
    return ['<section id="timing-section"><h2>Timing</h2>',
            (f'<p id="timing">started {_e(_time("timing.started", t.started))}, finished '
            f'{_e(_time("timing.finished", t.finished))}: {_num(t.wall_seconds)} s</p>'),
            f"<ul>{phases}</ul>" if phases else "", "</section>"]


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


# -- inline SVG plots --------------------------------------------------------------------------

# Okabe & Ito's palette: distinguishable with the common colour-vision deficiencies
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
            "#F0E442")
_W, _H = 540, 330
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 16, 34, 48


@dataclass(frozen=True)
class _Series:
    key: str  # the polyline's data-series: what the series is, for machines
    label: str  # its legend entry, for people
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    markers: bool = True
    dashed: bool = False
    width: float = 2.0


def _nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]`` (steps 1, 2, 2.5, 5 × 10^k)."""
    span = high - low
    raw = span / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= high + 1e-9 * step:
        ticks.append(round(first + k * step, 10))
        k += 1
    return ticks


def _tick_text(value: float) -> str:
    return f"{value:g}"


def _chart(svg_id: str, title: str, series: Sequence[_Series], *, x_label: str, y_label: str,
           x_range: tuple[float, float], y_range: tuple[float, float], integer_x: bool = False,
           diagonal: bool = False, bands: Sequence[float] = (), message: str = "",
           legend_bottom_right: bool = False) -> str:
    """A line chart as an inline ``<svg>`` with ``id``, a ``<title>`` and one
    ``<polyline class="series" data-series=LABEL>`` per series."""
    x0, x1 = x_range
    y0, y1 = y_range
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x0 + 0.5
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y0 + 0.5
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _TOP + ph - (y - y0) / (y1 - y0) * ph

    out = [
        (f'<svg id="{svg_id}" class="plot" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" aria-labelledby="{svg_id}-title" '
        'font-family="system-ui,sans-serif" font-size="12">'),
        f'<title id="{svg_id}-title">{_e(title)}</title>',
        (f'<text x="{_W / 2:.1f}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="600">{_e(title)}</text>'),
    ]
    for x in bands:  # aborted rounds
        half = 0.5 if integer_x else (x1 - x0) / 100
        a, b = max(px(x - half), _LEFT), min(px(x + half), _LEFT + pw)
        out.append(f'<rect class="aborted-round" data-round="{_tick_text(x)}" x="{a:.1f}" '
                   f'y="{_TOP}" width="{max(b - a, 1):.1f}" height="{ph}" fill="#fdecea"/>')
    for x in _nice_ticks(x0, x1, 6, integer_x):
        out.append(f'<line x1="{px(x):.1f}" y1="{_TOP}" x2="{px(x):.1f}" y2="{_TOP + ph}" '
                   f'stroke="#eee"/><text x="{px(x):.1f}" y="{_TOP + ph + 16}" '
                   f'text-anchor="middle">{_tick_text(x)}</text>')
    for y in _nice_ticks(y0, y1, 5):
        out.append(f'<line x1="{_LEFT}" y1="{py(y):.1f}" x2="{_LEFT + pw}" y2="{py(y):.1f}" '
                   f'stroke="#eee"/><text x="{_LEFT - 6}" y="{py(y) + 4:.1f}" '
                   f'text-anchor="end">{_tick_text(y)}</text>')
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#888"/>')
    out.append(f'<text x="{_LEFT + pw / 2:.1f}" y="{_H - 10}" text-anchor="middle">'
               f"{_e(x_label)}</text>")
    out.append(f'<text transform="translate(16 {_TOP + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{_e(y_label)}</text>')
    if diagonal:
        out.append(f'<line class="chance" x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(1):.1f}" '
                   f'y2="{py(1):.1f}" stroke="#999" stroke-dasharray="4 4"/>')
    for k, s in enumerate(series):
        colour = _PALETTE[k % len(_PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.xs, s.ys, strict=True))
        dash = ' stroke-dasharray="6 3"' if s.dashed else ""
        out.append(f'<polyline class="series" data-series="{_e(s.key)}" '
                   f'data-points="{len(s.xs)}" points="{points}" fill="none" '
                   f'stroke="{colour}" stroke-width="{s.width}"{dash}/>')
        if s.markers:
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>'
                    for x, y in zip(s.xs, s.ys, strict=True)]
    if message:
        out.append(f'<text class="message" x="{_LEFT + pw / 2:.1f}" y="{_TOP + ph / 2:.1f}" '
                   f'text-anchor="middle" fill="#555">{_e(message)}</text>')
    if series:  # the legend, inside the plot, in the corner the data leave free
        longest = max(len(s.label) for s in series)
        box_w, box_h = min(pw - 8, 36 + 6.6 * longest), 8 + 16 * len(series)
        bx = _LEFT + pw - 4 - box_w if legend_bottom_right else _LEFT + 4
        by = _TOP + ph - 4 - box_h if legend_bottom_right else _TOP + 4
        out.append(f'<g class="legend"><rect x="{bx:.1f}" y="{by:.1f}" width="{box_w:.1f}" '
                   f'height="{box_h}" fill="#fff" fill-opacity="0.85" stroke="#ccc"/>')
        for k, s in enumerate(series):
            y = by + 16 + 16 * k
            colour = _PALETTE[k % len(_PALETTE)]
            dash = ' stroke-dasharray="6 3"' if s.dashed else ""
            out.append(f'<line x1="{bx + 6:.1f}" y1="{y - 4:.1f}" x2="{bx + 26:.1f}" '
                       f'y2="{y - 4:.1f}" stroke="{colour}" stroke-width="2"{dash}/>'
                       f'<text x="{bx + 30:.1f}" y="{y:.1f}">{_e(s.label)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _round_range(rounds: Sequence[RoundRow]) -> tuple[float, float]:
    numbers = [r.round for r in rounds]
    # half a round of room on each side, so that the first and last rounds' bands show whole
    return (min(numbers, default=1) - 0.5, max(numbers, default=1) + 0.5)


def _accuracy_svg(rounds: Sequence[RoundRow]) -> str:
    points = [(r.round, r.accuracy) for r in rounds
              if r.accuracy is not None and math.isfinite(r.accuracy)]
    series = [_Series("accuracy", "accuracy", tuple(float(x) for x, _ in points),
                      tuple(float(y) for _, y in points))] if points else []
    return _chart("plot-accuracy", "Accuracy per round", series, x_label="round",
                  y_label="accuracy", x_range=_round_range(rounds), y_range=(0.0, 1.0),
                  integer_x=True, bands=[float(r.round) for r in rounds if r.aborted],
                  message="" if points else "no round released metrics",
                  legend_bottom_right=True)


def _epsilon_svg(rounds: Sequence[RoundRow], privacy: PrivacySettings) -> str:
    series = []
    sites: list[str] = []
    for r in rounds:
        sites += [s for s in r.epsilon_record if s not in sites]
    for site in sites:
        points = [(r.round, r.epsilon_record[site]) for r in rounds
                  if site in r.epsilon_record and math.isfinite(r.epsilon_record[site])]
        if points:
            label = f"record-level ε, {site}"
            series.append(_Series(label, label, tuple(float(x) for x, _ in points),
                                  tuple(float(y) for _, y in points)))
    site_points = [(r.round, r.epsilon_site) for r in rounds
                   if r.epsilon_site is not None and math.isfinite(r.epsilon_site)]
    if site_points:
        series.append(_Series("site-level ε", "site-level ε",
                              tuple(float(x) for x, _ in site_points),
                              tuple(float(y) for _, y in site_points), dashed=True, width=3.0))
    top = max((max(s.ys) for s in series), default=1.0)
    message = ""
    if not series:
        message = ("no differential privacy: ε is unbounded"
                   if not privacy.record_level_dp and privacy.site_level_mode == "none"
                   else "no finite ε was recorded")
    deltas = []
    if privacy.record_delta is not None:
        deltas.append(f"record δ = {_num(privacy.record_delta)}")
    if privacy.site_delta is not None:
        deltas.append(f"site δ = {_num(privacy.site_delta)}")
    title = "ε per round" + (f" ({', '.join(deltas)})" if deltas else "")
    return _chart("plot-epsilon", title, series, x_label="round", y_label="cumulative ε",
                  x_range=_round_range(rounds), y_range=(0.0, top * 1.1 if top > 0 else 1.0),
                  integer_x=True, message=message)


def _roc_svg(attacks: Sequence[MembershipAttack]) -> str:
    series = [_Series(f"{a.title}, {a.site}",
                      f"{a.title}, {a.site} (AUC {_num(a.result.auc, 2)}, advantage "
                      f"{_num(a.result.advantage, 2)})", tuple(a.result.roc_fpr),
                      tuple(a.result.roc_tpr), markers=False) for a in attacks]
    return _chart("plot-roc", "Membership inference ROC", series,
                  x_label="false-positive rate", y_label="true-positive rate",
                  x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True,
                  message="" if series else "no membership-inference attack ran",
                  legend_bottom_right=True)


__all__ = [
    "ERROR",
    "FAIL",
    "INJECTION_KINDS",
    "OPS",
    "PASS",
    "REPORT_HTML",
    "REPORT_JSON",
    "SCHEMA_FILE",
    "SCHEMA_VERSION",
    "SITE_DP_MODES",
    "VERDICTS",
    "Expectation",
    "Injection",
    "MembershipAttack",
    "PrivacySettings",
    "ReconstructionRow",
    "ReportError",
    "ReportPaths",
    "RoundRow",
    "ScenarioReport",
    "Timing",
    "TranscriptVerdict",
    "check_expectation",
    "load_schema",
    "render_html",
    "report_document",
    "verdict_of",
    "write_report",
]
