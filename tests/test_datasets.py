"""Bundled data sets, partitioners and written splits (fedtune.datasets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedtune.client.data import load_site_data
from fedtune.datasets import (
    DATASETS,
    DatasetError,
    load_bundled,
    partition_by_group,
    partition_dirichlet,
    partition_iid,
    write_split,
)
from fedtune.job import ModelConfig
from fedtune.models import build_model


@pytest.fixture(scope="module")
def lung():
    return load_bundled("lung")


@pytest.fixture(scope="module")
def digits():
    return load_bundled("digits")


def assert_partition_of(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


# -- data sets ---------------------------------------------------------------------------------


def test_lung_keeps_patients_with_a_known_one_year_outcome(lung):
    assert len(lung) == 185
    assert np.bincount(lung.labels).tolist() == [65, 120]


def test_lung_groups_are_the_18_institutions(lung):
    assert len(np.unique(lung.groups)) == 18


def test_lung_features_are_imputed_and_standardised(lung):
    assert lung.feature_names[0] == "age" and lung.features.shape == (185, 7)
    assert np.isfinite(lung.features).all()
    np.testing.assert_allclose(lung.features.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(lung.features.std(axis=0), 1, atol=1e-5)


def test_breast_cancer_is_569_standardised_rows_of_30_features():
    data = load_bundled("breast-cancer")
    assert data.features.shape == (569, 30) and data.groups is None
    np.testing.assert_allclose(data.features.mean(axis=0), 0, atol=1e-5)
    assert data.model == ModelConfig(id="tabular-mlp", input_dim=30, num_classes=2)


def test_digits_are_1x8x8_images_in_unit_range(digits):
    assert digits.features.shape == (1797, 1, 8, 8)
    assert digits.features.min() == 0.0 and digits.features.max() == 1.0
    assert digits.model.image_shape == (1, 8, 8) and digits.model.num_classes == 10


def test_mnist5k_is_5000_balanced_1x28x28_images_in_unit_range():
    data = load_bundled("mnist5k")
    assert data.features.shape == (5000, 1, 28, 28) and data.features.dtype == np.float32
    assert data.features.max() == 1.0
    assert np.bincount(data.labels).tolist() == [500] * 10


@pytest.mark.parametrize("name", ["lung", "digits"])
def test_suggested_model_accepts_the_data(name, lung, digits):
    import torch

    data = {"lung": lung, "digits": digits}[name]
    out = build_model(data.model)(torch.from_numpy(data.features[:4]))
    assert out.shape == (4, data.model.num_classes)


def test_unknown_data_set_is_refused():
    with pytest.raises(DatasetError, match="unknown data set 'cifar'"):
        load_bundled("cifar")


def test_data_set_names_are_listed():
    assert DATASETS == ("lung", "breast-cancer", "digits", "mnist5k", "rotten-tomatoes",
                        "instructions")


# -- partitioners ------------------------------------------------------------------------------


def test_iid_split_is_a_partition_into_near_equal_sites():
    parts = partition_iid(103, 4, seed=0)
    assert_partition_of(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]


def test_iid_split_is_deterministic_and_seeded():
    a, b, c = (partition_iid(100, 3, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_split_refuses_sites_below_min_size():
    with pytest.raises(DatasetError, match="fewer than min_size=10"):
        partition_iid(50, 6, seed=0)


def test_dirichlet_split_is_a_partition(digits):
    parts = partition_dirichlet(digits.labels, 5, alpha=0.5, seed=0)
    assert_partition_of(parts, len(digits))
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_split_is_deterministic(digits):
    a = partition_dirichlet(digits.labels, 5, alpha=0.3, seed=4)
    b = partition_dirichlet(digits.labels, 5, alpha=0.3, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def mean_label_distance(labels, parts):
    """Mean total-variation distance between each site's label mix and the global one."""
    k = labels.max() + 1
    overall = np.bincount(labels, minlength=k) / len(labels)
    return np.mean(
        [0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - overall).sum() for p in parts]
    )


def test_dirichlet_split_at_small_alpha_skews_labels(digits):
    skewed = partition_dirichlet(digits.labels, 5, alpha=0.1, seed=0)
    iid = partition_iid(len(digits), 5, seed=0)
    assert mean_label_distance(digits.labels, skewed) > 0.5
    assert mean_label_distance(digits.labels, iid) < 0.1


def test_dirichlet_split_at_large_alpha_is_near_iid(digits):
    parts = partition_dirichlet(digits.labels, 5, alpha=1000.0, seed=0)
    assert mean_label_distance(digits.labels, parts) < 0.1


def test_dirichlet_split_refuses_non_positive_alpha(digits):
    with pytest.raises(DatasetError, match="alpha must be > 0"):
        partition_dirichlet(digits.labels, 5, alpha=0.0, seed=0)


def test_dirichlet_split_refuses_when_no_draw_fills_every_site():
    labels = np.repeat([0, 1], 30)
    with pytest.raises(DatasetError, match="raise alpha or use fewer sites"):
        partition_dirichlet(labels, 5, alpha=0.01, seed=0, max_attempts=20)


def test_group_split_keeps_institutions_whole(lung):
    parts = partition_by_group(lung.groups, 4)
    assert_partition_of(parts, len(lung))
    site_of = {}
    for site, idx in enumerate(parts):
        for g in np.unique(lung.groups[idx]):
            assert site_of.setdefault(int(g), site) == site


def test_group_split_balances_site_sizes(lung):
    sizes = [len(p) for p in partition_by_group(lung.groups, 3)]
    assert max(sizes) - min(sizes) <= 2


def test_group_split_with_one_site_per_group_is_the_institution_split(lung):
    parts = partition_by_group(lung.groups, 18, min_size=1)
    assert sorted(len(np.unique(lung.groups[p])) for p in parts) == [1] * 18


def test_group_split_refuses_more_sites_than_groups():
    with pytest.raises(DatasetError, match="exceeds the 3 groups"):
        partition_by_group(np.array([1, 1, 2, 3]), 4, min_size=1)


# -- written splits ----------------------------------------------------------------------------


def test_tabular_split_round_trips_through_load_site_data(tmp_path, lung):
    manifest = write_split("lung", 3, "institution", alpha=0.5, seed=0, out_dir=tmp_path)
    model = ModelConfig(
        **{**manifest["model"], "image_shape": tuple(manifest["model"]["image_shape"])}
    )
    loaded = [load_site_data(tmp_path / site["file"], model) for site in manifest["sites"]]
    assert [len(d) for d in loaded] == [site["rows"] for site in manifest["sites"]]
    parts = partition_by_group(lung.groups, 3)
    for data, idx in zip(loaded, parts, strict=True):
        np.testing.assert_array_equal(data.features, lung.features[idx])
        np.testing.assert_array_equal(data.labels, lung.labels[idx])


def test_image_split_round_trips_through_load_site_data(tmp_path, digits):
    manifest = write_split("digits", 3, "dirichlet", alpha=0.5, seed=1, out_dir=tmp_path)
    parts = partition_dirichlet(digits.labels, 3, 0.5, seed=1)
    for site, idx in zip(manifest["sites"], parts, strict=True):
        assert site["file"].endswith(".npz")
        data = load_site_data(tmp_path / site["file"], digits.model)
        np.testing.assert_array_equal(data.features, digits.features[idx])
        assert site["label_counts"] == np.bincount(data.labels, minlength=10).tolist()


def test_manifest_on_disk_records_the_split(tmp_path):
    returned = write_split("breast-cancer", 2, "iid", alpha=0.5, seed=9, out_dir=tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == returned
    assert manifest["dataset"] == "breast-cancer" and manifest["partition"] == "iid"
    assert manifest["seed"] == 9 and manifest["n_sites"] == 2 and manifest["alpha"] is None
    assert set(manifest["model"]) == set(ModelConfig.__dataclass_fields__)
    assert sum(site["rows"] for site in manifest["sites"]) == 569


def test_institution_split_records_each_sites_institutions(tmp_path):
    manifest = write_split("lung", 2, "institution", alpha=0.5, seed=0, out_dir=tmp_path)
    groups = [g for site in manifest["sites"] for g in site["groups"]]
    assert len(groups) == len(set(groups)) == 18


def test_institution_split_needs_a_data_set_with_groups(tmp_path):
    with pytest.raises(DatasetError, match="'digits' has no institutions"):
        write_split("digits", 2, "institution", alpha=0.5, seed=0, out_dir=tmp_path)


def test_existing_split_is_not_overwritten_by_default(tmp_path):
    write_split("lung", 2, "iid", alpha=0.5, seed=0, out_dir=tmp_path)
    with pytest.raises(DatasetError, match="already holds a split"):
        write_split("lung", 2, "iid", alpha=0.5, seed=1, out_dir=tmp_path)


def test_overwrite_replaces_a_split_and_its_stale_site_files(tmp_path):
    write_split("lung", 3, "iid", alpha=0.5, seed=0, out_dir=tmp_path)
    write_split("lung", 2, "iid", alpha=0.5, seed=0, out_dir=tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "site-1.csv",
        "site-2.csv",
    ]


def test_unknown_partition_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="unknown partition 'quantity'"):
        write_split("lung", 2, "quantity", alpha=0.5, seed=0, out_dir=tmp_path)
