"""A site's text data for the pretrained models, tokenised locally.

Two kinds of file: labelled texts for the text classifier (``minilm-lora``), and
prompt/response pairs for the language model (``smollm2-lora``). A site hands its agent one
file; the suffix picks the format. Nothing in the file leaves the site. Every problem is a
:class:`~fedtune.client.data.DataError` whose message starts with the file's name (never its
directory) and says what is wrong, e.g. ``reviews.jsonl: line 3: 'label' is missing``.

Labelled texts (``minilm-lora``)
--------------------------------

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

Prompt/response pairs (``smollm2-lora``)
----------------------------------------
JSONL (``.jsonl``)
    One JSON object per line, e.g. ``{"prompt": "What is 17 + 25?", "response": "42"}``;
    blank lines are skipped; messages count lines from 1. Keys ``prompt`` and ``response``:
    non-empty strings. Other keys (a ``topic``) are ignored.

CSV (``.csv``, ``.csv.gz``)
    As for labelled texts, with columns ``prompt`` and ``response`` (non-empty strings) instead
    of ``text`` and ``label``. Messages count data rows from 1.

Neither field may contain one of the tokenizer's special tokens (``<|im_start|>``,
``<|im_end|>``, ``<|endoftext|>``): the tokenizer would read them as turn markers, so a
record could forge the structure of the conversation.

Each pair is written as the model's own chat template renders one user turn and the
assistant's answer (for SmolLM2: ChatML, with the template's default system prompt, since a
fine-tuned adapter is used through that same template)::

    <|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n
    <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>

The prompt part (everything up to and including ``<|im_start|>assistant\n``, i.e. what the
template's generation prompt gives) and the response part (the response and the
``<|im_end|>`` that ends the turn; the template's newline after it is dropped) are tokenised
separately and concatenated, which is exactly what the model sees when it answers the prompt.
Token ids ``(N, L)``, ``L`` as above (64 by default), **right**-padded with the pad id; a
response that does not fit is cut at ``L`` tokens, and a prompt that leaves no position for
the response is refused (naming its line). Labels ``(N, L)``: ``labels[i, t]`` is token
``t + 1`` of sample ``i`` where that token belongs to the response, and ``-100``
(:data:`~fedtune.client.data.IGNORE_INDEX`) everywhere else — prompt, padding, and the last
position — so the loss and the metrics only ever score the response
(:mod:`fedtune.client.trainer`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fedtune.client.data import IGNORE_INDEX, DataError, SiteData
from fedtune.job import ModelConfig
from fedtune.models import CAUSAL_LM_IDS, validate_spec

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
PROMPT_COLUMN = "prompt"
RESPONSE_COLUMN = "response"
TEXT_SUFFIXES = (".csv", ".csv.gz", ".jsonl")


def load_text_data(path: str | os.PathLike[str], model: ModelConfig) -> SiteData:
    """Load a site's text file and tokenise it for ``model``.

    Parameters
    ----------
    path:
        A ``.csv``, ``.csv.gz`` or ``.jsonl`` file in the formats of the module docstring:
        labelled texts for a classifier, prompt/response pairs for a language model.
    model:
        The job's model: fixes the tokenizer, the number of token positions and the classes.

    Returns
    -------
    SiteData
        int64 token ids ``(N, L)`` and int64 labels ``(N,)``, or, for a language model,
        int64 next-token targets ``(N, L)``.

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
    is_jsonl = suffix == ".jsonl"
    if not is_jsonl and suffix != ".csv" and "".join(path.suffixes[-2:]).lower() != ".csv.gz":
        raise DataError(f"{name}: unsupported format for text; expected .csv, .csv.gz or .jsonl")
    if model.id in CAUSAL_LM_IDS:
        pairs = _read_pairs_jsonl(path, name) if is_jsonl else _read_pairs_csv(path, name)
        return tokenize_pairs(pairs, model, name)
    if is_jsonl:
        texts, labels = _read_jsonl(path, name, model.num_classes)
    else:
        texts, labels = _read_csv(path, name, model.num_classes)
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


def tokenize_pairs(pairs: list[tuple[str, str, str]], model: ModelConfig,
                   name: str = "data") -> SiteData:
    """Chat-formatted token ids and next-token targets of ``(where, prompt, response)`` pairs.

    ``where`` (``"line 3"``, ``"row 3"``) names a pair in errors; the format is the module
    docstring's.

    Raises
    ------
    DataError
        If a field holds a special token, or a prompt leaves no token position for its response.
    """
    from fedtune.pretrained import load_tokenizer, max_tokens

    length = max_tokens(model)
    tokenizer = load_tokenizer(model.id)
    special = [t for t in tokenizer.all_special_tokens if t]
    for where, prompt, response in pairs:
        for field, text in ((PROMPT_COLUMN, prompt), (RESPONSE_COLUMN, response)):
            found = min((t for t in special if t in text), key=text.find, default=None)
            if found is not None:
                raise DataError(f"{name}: {where}: {field!r} contains the special token "
                                f"{found!r}, which would forge a turn of the conversation")
    prefixes, answers = [], []
    for _, prompt, response in pairs:
        user = [{"role": "user", "content": prompt}]
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prefix):  # a template this format does not describe
            raise DataError(f"{name}: the chat template of {model.id} does not put the answer "
                            f"after the generation prompt; this format cannot be used with it")
        prefixes.append(prefix)
        answers.append(full[len(prefix):])
    encode = functools.partial(tokenizer, add_special_tokens=False, return_attention_mask=False)
    prefix_ids = encode(prefixes)["input_ids"] if prefixes else []
    answer_ids = encode(answers)["input_ids"] if answers else []
    end = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    features = np.full((len(pairs), length), pad, dtype=np.int64)
    labels = np.full((len(pairs), length), IGNORE_INDEX, dtype=np.int64)
    for i, ((where, _, _), head, answer) in enumerate(zip(pairs, prefix_ids, answer_ids,
                                                          strict=True)):
        if end in answer:  # keep the turn's end, drop the template's text after it
            answer = answer[:len(answer) - answer[::-1].index(end)]
        if len(head) >= length:
            raise DataError(
                f"{name}: {where}: 'prompt' takes {len(head)} token positions with the chat "
                f"template, model.input_dim = {length} leaves none for the response")
        ids = (list(head) + list(answer))[:length]
        features[i, :len(ids)] = ids
        labels[i, len(head) - 1:len(ids) - 1] = ids[len(head):]
    return SiteData(features=features, labels=labels)


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


def _jsonl_records(path: Path, name: str) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (numbers from 1)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{name}: is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{name}: line {number} is not a JSON object")
        yield number, record


def _read_jsonl(path: Path, name: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    labels: list[int] = []
    for number, record in _jsonl_records(path, name):
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


def _read_pairs_csv(path: Path, name: str) -> list[tuple[str, str, str]]:
    columns = (PROMPT_COLUMN, RESPONSE_COLUMN)
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(columns, str), keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: file is empty") from None
    except UnicodeDecodeError:
        raise DataError(f"{name}: is not UTF-8 text") from None
    except (pd.errors.ParserError, OSError, EOFError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: is not a readable CSV file ({detail})") from None
    header = [str(c) for c in frame.columns]
    for column in columns:
        if column not in header:
            raise DataError(f"{name}: column {column!r} is missing (header: {header[:5]})")
    if len(frame) == 0:
        raise DataError(f"{name}: has a header but no data rows")
    pairs = []
    for i, (prompt, response) in enumerate(zip(frame[PROMPT_COLUMN].tolist(),
                                               frame[RESPONSE_COLUMN].tolist(), strict=True)):
        for column, value in ((PROMPT_COLUMN, prompt), (RESPONSE_COLUMN, response)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{name}: column {column!r} is empty in row {i + 1}")
        pairs.append((f"row {i + 1}", prompt, response))
    return pairs


def _read_pairs_jsonl(path: Path, name: str) -> list[tuple[str, str, str]]:
    pairs = []
    for number, record in _jsonl_records(path, name):
        for key in (PROMPT_COLUMN, RESPONSE_COLUMN):
            if key not in record:
                raise DataError(f"{name}: line {number}: {key!r} is missing")
            if not isinstance(record[key], str) or not record[key].strip():
                raise DataError(f"{name}: line {number}: {key!r} must be a non-empty string")
        pairs.append((f"line {number}", record[PROMPT_COLUMN], record[RESPONSE_COLUMN]))
    if not pairs:
        raise DataError(f"{name}: holds no records")
    return pairs


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
