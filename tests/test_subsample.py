"""Capping a split's site files keeps whole rows, their order, and records the cap."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedtune.datasets import write_split
from fedtune.subsample import subsample_split


def test_image_sites_keep_at_most_n_rows_in_order(tmp_path):
    write_split("digits", 2, "iid", 0.5, 0, tmp_path)
    with np.load(tmp_path / "site-1.npz") as before:
        x_all = before["x"].copy()
    manifest = subsample_split(tmp_path, 50, seed=3)
    with np.load(tmp_path / "site-1.npz") as after:
        x, y = after["x"], after["y"]
    assert len(x) == len(y) == 50
    # every kept row is a row of the original file, in the original order
    index = [next(i for i in range(len(x_all)) if np.array_equal(x_all[i], row)) for row in x]
    assert index == sorted(index)
    assert manifest["sites"][0]["rows"] == 50 and sum(manifest["sites"][0]["label_counts"]) == 50
    assert json.loads((tmp_path / "manifest.json").read_text())["max_examples_per_site"] == 50


def test_csv_sites_keep_their_text_exactly(tmp_path):
    write_split("lung", 2, "iid", 0.5, 0, tmp_path)
    before = pd.read_csv(tmp_path / "site-1.csv", dtype=str, keep_default_na=False)
    subsample_split(tmp_path, 10, seed=0)
    after = pd.read_csv(tmp_path / "site-1.csv", dtype=str, keep_default_na=False)
    assert len(after) == 10
    merged = after.merge(before, how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_a_site_smaller_than_the_cap_is_unchanged(tmp_path):
    write_split("lung", 2, "iid", 0.5, 0, tmp_path)
    rows = len(pd.read_csv(tmp_path / "site-2.csv"))
    subsample_split(tmp_path, rows + 5)
    assert len(pd.read_csv(tmp_path / "site-2.csv")) == rows


def test_the_cap_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_examples must be >= 1"):
        subsample_split(tmp_path, 0)
