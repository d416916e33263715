"""A site's text data for the pretrained text classifiers (``minilm-lora``), tokenised locally.

A site hands its agent one file; the suffix picks the format. Nothing in the file leaves the
site. Every problem is a :class:`~fedtune.client.data.DataError` whose message starts with the
file's name (never its directory) and says what is wrong, e.g.
``reviews.jsonl: line 3: 'label' is missing``.

CSV (``.csv``, or gzip-compressed ``.csv.gz``)
    * UTF-8, comma-separated, RFC 4180 quoting (a text with commas, quotes or line breaks is
      enclosed in double quotes, a quote inside doubled); the first line is a header.
    * Column ``text``: the sample, a non-empty string.
    * Column ``label``: the class, an integer ``0 .. num_classes-1`` (``1.0`` reads as ``1``).
    * Other columns (an id, a ``movie_name``) are ignored. Messages count data rows from 1,
      the header excluded.

JSONL (``.jsonl``)
    * UTF-8, one JSON object per line, e.g. ``{"text": "A gem.", "label": 1}``; blank lines
      are skipped. Messages count lines from 1, blank lines included.
    * Key ``text``: a non-empty string; key ``label``: an integer ``0 .. num_classes-1``
      (``true``/``false`` are refused). Other keys are ignored.

The texts are tokenised at load time with the base model's own tokenizer, loaded offline from
the installed package (:func:`fedtune.pretrained.load_tokenizer`): lower-cased WordPiece,
``[CLS] … [SEP]``, truncated to ``L`` positions (``ModelConfig.input_dim``, 64 by default)
and padded with the pad id. The result is a :class:`~fedtune.client.data.SiteData` whose
``features`` are int64 token ids ``(N, L)``, which the registry model takes as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fedtune.client.data import DataError, SiteData
from fedtune.job import ModelConfig
from fedtune.models import validate_spec

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
TEXT_SUFFIXES = (".csv", ".csv.gz", ".jsonl")


def load_text_data(path: str | os.PathLike[str], model: ModelConfig) -> SiteData:
    """Load a site's text file and tokenise it for ``model``.

    Parameters
    ----------
    path:
        A ``.csv``, ``.csv.gz`` or ``.jsonl`` file in the formats of the module docstring.
    model:
        The job's model: fixes the tokenizer, the number of token positions and the classes.

    Returns
    -------
    SiteData
        int64 token ids ``(N, L)`` and int64 labels ``(N,)``.

    Raises
    ------
    DataError
        If the file is missing, unreadable or does not fit ``model``.
    fedtune.models.ModelError
        If ``model`` is invalid or its base is not installed.
    """
    validate_spec(model)
    path = Path(path)
    name = path.name
    if not path.exists():
        raise DataError(f"{name}: file not found")
    if not path.is_file():
        raise DataError(f"{name}: is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts, labels = _read_jsonl(path, name, model.num_classes)
    elif suffix == ".csv" or "".join(path.suffixes[-2:]).lower() == ".csv.gz":
        texts, labels = _read_csv(path, name, model.num_classes)
    else:
        raise DataError(f"{name}: unsupported format for text; expected .csv, .csv.gz or .jsonl")
    return SiteData(features=tokenize(texts, model), labels=labels)


def tokenize(texts: list[str], model: ModelConfig) -> np.ndarray:
    """Token ids of ``texts`` for ``model``: int64 ``(len(texts), L)``, padded and truncated."""
    from fedtune.pretrained import load_tokenizer, max_tokens

    length = max_tokens(model)
    if not texts:
        return np.zeros((0, length), dtype=np.int64)
    tokenizer = load_tokenizer(model.id)
    encoded = tokenizer(texts, max_length=length, truncation=True, padding="max_length",
                        return_attention_mask=False, return_token_type_ids=False)
    return np.asarray(encoded["input_ids"], dtype=np.int64).reshape(len(texts), length)


def _read_csv(path: Path, name: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    try:
        frame = pd.read_csv(path, dtype={TEXT_COLUMN: str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: file is empty") from None
    except UnicodeDecodeError:
        raise DataError(f"{name}: is not UTF-8 text") from None
    except (pd.errors.ParserError, OSError, EOFError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: is not a readable CSV file ({detail})") from None
    header = [str(c) for c in frame.columns]
    for column in (TEXT_COLUMN, LABEL_COLUMN):
        if column not in header:
            raise DataError(f"{name}: column {column!r} is missing (header: {header[:5]})")
    if len(frame) == 0:
        raise DataError(f"{name}: has a header but no data rows")
    texts = frame[TEXT_COLUMN].tolist()
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{name}: column 'text' is empty in row {i + 1}")
    labels = [_label(value, num_classes) for value in frame[LABEL_COLUMN].tolist()]
    for i, (value, problem) in enumerate(labels):
        if problem:
            raise DataError(f"{name}: label {value!r} in row {i + 1} {problem}")
    return texts, np.array([v for v, _ in labels], dtype=np.int64)


def _read_jsonl(path: Path, name: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{name}: is not UTF-8 text") from None
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{name}: line {number} is not a JSON object")
        for key in (TEXT_COLUMN, LABEL_COLUMN):
            if key not in record:
                raise DataError(f"{name}: line {number}: {key!r} is missing")
        text = record[TEXT_COLUMN]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{name}: line {number}: 'text' must be a non-empty string")
        value, problem = _label(record[LABEL_COLUMN], num_classes)
        if problem:
            raise DataError(f"{name}: line {number}: label {value!r} {problem}")
        texts.append(text)
        labels.append(value)
    if not texts:
        raise DataError(f"{name}: holds no records")
    return texts, np.array(labels, dtype=np.int64)


def _label(value: object, num_classes: int) -> tuple[object, str]:
    """``(class, "")`` for a valid label, else ``(value, problem)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, str):
            try:
                value = float(value) if value.strip() else value
            except ValueError:
                return value, "is not an integer"
        if not isinstance(value, float):
            return value, "is not an integer"
    number = float(value)
    if not np.isfinite(number) or number != round(number):
        return value, "is not an integer"
    if not 0 <= number < num_classes:
        return int(number), f"is out of range for num_classes={num_classes}"
    return int(number), ""
