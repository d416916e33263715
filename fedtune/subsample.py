"""Shrink the site files of a split to at most ``n`` examples each, reproducibly.

Demos and scenario replays of the pretrained models need a *short* run on two cores: a few
hundred examples per site instead of thousands. The split itself (which movie or institution
goes to which site) is kept; each site keeps a uniformly drawn subset of its own rows, in
their original order, and ``manifest.json`` records the new row counts and the cap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def subsample_split(split_dir: Path, max_examples: int, seed: int = 0) -> dict:
    """Cap every site file listed in ``split_dir/manifest.json`` at ``max_examples`` rows.

    Returns the updated manifest. CSV files (``.csv``) and image files (``.npz`` with ``x``
    and ``y``) are supported — the formats :func:`fedtune.datasets.write_split` writes.
    """
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    manifest_path = split_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for i, site in enumerate(manifest["sites"]):
        path = split_dir / site["file"]
        rng = np.random.default_rng([seed, i])
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                x, y = data["x"], data["y"]
            keep = _keep(len(y), max_examples, rng)
            np.savez(path, x=x[keep], y=y[keep])
            labels = y[keep]
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, keep_default_na=False, dtype=str)
            keep = _keep(len(frame), max_examples, rng)
            frame = frame.iloc[keep]
            frame.to_csv(path, index=False)
            labels = frame["label"].astype(float).astype(np.int64).to_numpy()
        else:
            raise ValueError(f"{path.name}: cannot subsample a {path.suffix} site file")
        site["rows"] = len(keep)
        site["label_counts"] = np.bincount(
            labels, minlength=int(manifest["model"]["num_classes"])).tolist()
    manifest["max_examples_per_site"] = max_examples
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def _keep(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


__all__ = ["subsample_split"]
