"""A site's data files: formats, checks and the train/eval split (fedtune.client.data)."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from fedtune.client.data import DataError, SiteData, load_site_data, train_eval_split
from fedtune.job import ModelConfig

TABULAR = ModelConfig(id="tabular-mlp", input_dim=2, num_classes=2)
DIGITS = ModelConfig(id="image-cnn", num_classes=10, image_shape=(1, 8, 8))
RGB = ModelConfig(id="image-cnn", num_classes=3, image_shape=(3, 4, 4))

GOOD_CSV = "age,wt,label\n60,1.5,0\n70,-2e-1,1\n55,0,1\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, model=TABULAR) -> str:
    with pytest.raises(DataError) as info:
        load_site_data(path, model)
    return str(info.value)


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_features_are_float32_in_file_order_and_labels_int64(tmp_path):
    data = load_site_data(write(tmp_path, "site-1.csv", GOOD_CSV), TABULAR)
    assert data.features.dtype == np.float32 and data.labels.dtype == np.int64
    np.testing.assert_array_equal(
        data.features, np.array([[60, 1.5], [70, -0.2], [55, 0]], np.float32)
    )
    np.testing.assert_array_equal(data.labels, [0, 1, 1])
    assert len(data) == 3


def test_csv_label_column_may_stand_anywhere(tmp_path):
    data = load_site_data(write(tmp_path, "s.csv", "label,a,b\n1,2,3\n"), TABULAR)
    np.testing.assert_array_equal(data.features, [[2, 3]])


def test_gzipped_csv_is_read(tmp_path):
    path = tmp_path / "site-1.csv.gz"
    path.write_bytes(gzip.compress(GOOD_CSV.encode()))
    assert len(load_site_data(path, TABULAR)) == 3


def test_csv_pixels_are_reshaped_row_major_to_image_shape(tmp_path):
    pixels = np.arange(48)
    header = ",".join(f"p{k}" for k in range(48)) + ",label"
    path = write(tmp_path, "img.csv", header + "\n" + ",".join(map(str, pixels)) + ",2\n")
    data = load_site_data(path, RGB)
    assert data.features.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(data.features[0], pixels.reshape(3, 4, 4))


def test_missing_label_column_is_named(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b\n1,2\n"))
    assert message.startswith("site-1.csv: column 'label' is missing")


def test_non_numeric_value_names_column_value_and_row(tmp_path):
    rows = "".join(f"{i},1,0\n" for i in range(6)) + "x,1,0\n"
    message = error_of(write(tmp_path, "site-1.csv", "age,wt,label\n" + rows))
    assert message == "site-1.csv: column 'age' has non-numeric value 'x' in row 7"


def test_rows_with_nan_or_empty_cells_are_counted(tmp_path):
    text = "a,b,label\n1,,0\n2,NaN,1\n3,4,0\n,5,1\n"
    message = error_of(write(tmp_path, "site-1.csv", text))
    assert message.startswith("site-1.csv: 3 rows contain NaN")
    assert "row 1" in message


def test_infinite_value_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n1,inf,0\n"))
    assert message.startswith("site-1.csv: 1 row contains infinite values")


def test_label_out_of_range_names_label_and_num_classes(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n1,2,0\n1,2,5\n"))
    assert message == "site-1.csv: label 5 out of range for num_classes=2 in row 2"


def test_negative_label_is_out_of_range(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n1,2,-1\n"))
    assert "label -1 out of range" in message


def test_fractional_label_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n1,2,0.5\n"))
    assert message == "site-1.csv: label 0.5 in row 1 is not an integer"


def test_missing_label_value_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n1,2,0\n1,2,\n"))
    assert message == "site-1.csv: label is missing in row 2"


def test_wrong_feature_count_names_expected_and_found(tmp_path):
    spec = ModelConfig(id="tabular-mlp", input_dim=30)
    header = ",".join(f"f{k}" for k in range(29)) + ",label"
    path = write(tmp_path, "site-1.csv", header + "\n" + ",".join(["0"] * 30) + "\n")
    assert error_of(path, spec) == (
        "site-1.csv: expected 30 feature columns for input_dim=30, found 29"
    )


def test_wrong_pixel_count_names_image_shape(tmp_path):
    header = ",".join(f"p{k}" for k in range(63)) + ",label"
    path = write(tmp_path, "img.csv", header + "\n" + ",".join(["0"] * 64) + "\n")
    assert error_of(path, DIGITS) == (
        "img.csv: expected 64 pixel columns for image_shape=(1, 8, 8), found 63"
    )


def test_duplicate_column_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,a,label\n1,2,0\n"))
    assert message == "site-1.csv: column 'a' appears 2 times in the header"


def test_rows_longer_than_header_are_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,label\n1,2,0\n3,4,1\n"))
    assert message.startswith("site-1.csv: data rows have more fields than the header")


def test_ragged_row_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n1,2,0\n1,2,0,9\n"))
    assert message.startswith("site-1.csv: is not a readable CSV file")


def test_empty_file_is_refused(tmp_path):
    assert error_of(write(tmp_path, "site-1.csv", "")) == "site-1.csv: file is empty"


def test_header_only_file_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.csv", "a,b,label\n"))
    assert message == "site-1.csv: has a header but no data rows"


def test_missing_file_is_named_without_its_directory(tmp_path):
    message = error_of(tmp_path / "secret" / "site-9.csv")
    assert message == "site-9.csv: file not found"


def test_unsupported_suffix_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.parquet", "x"))
    assert message.startswith("site-1.parquet: unsupported format")


# -- NPZ ---------------------------------------------------------------------------------------


def save_npz(tmp_path, name="site-1.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_images_are_loaded_as_float32_nchw(tmp_path):
    x = np.random.default_rng(0).random((4, 1, 8, 8))
    path = save_npz(tmp_path, x=x, y=np.array([0, 9, 3, 3]))
    data = load_site_data(path, DIGITS)
    assert data.features.dtype == np.float32 and data.features.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(data.labels, [0, 9, 3, 3])


def test_npz_single_channel_images_may_omit_the_channel_axis(tmp_path):
    path = save_npz(tmp_path, x=np.zeros((2, 8, 8), np.uint8), y=np.array([1, 2]))
    assert load_site_data(path, DIGITS).features.shape == (2, 1, 8, 8)


def test_npz_tabular_rows_are_loaded(tmp_path):
    path = save_npz(tmp_path, x=np.ones((3, 2)), y=np.array([0.0, 1.0, 1.0]))
    data = load_site_data(path, TABULAR)
    assert data.features.shape == (3, 2) and data.labels.dtype == np.int64


def test_npz_missing_array_is_named(tmp_path):
    message = error_of(save_npz(tmp_path, x=np.ones((3, 2))))
    assert message.startswith("site-1.npz: array 'y' is missing")


def test_npz_wrong_image_shape_names_expected_shape(tmp_path):
    path = save_npz(tmp_path, x=np.zeros((2, 1, 7, 8)), y=np.array([0, 1]))
    message = error_of(path, DIGITS)
    assert message.startswith("site-1.npz: array 'x' has shape (2, 1, 7, 8), expected")
    assert "(N, 1, 8, 8)" in message


def test_npz_label_count_must_match_samples(tmp_path):
    message = error_of(save_npz(tmp_path, x=np.ones((3, 2)), y=np.array([0, 1])))
    assert message == "site-1.npz: array 'y' has shape (2,), expected (3,) to match array 'x'"


def test_npz_nan_samples_are_counted(tmp_path):
    x = np.ones((4, 2))
    x[1, 0] = x[3, 1] = np.nan
    message = error_of(save_npz(tmp_path, x=x, y=np.zeros(4, np.int64)))
    assert message.startswith("site-1.npz: 2 samples contain NaN")


def test_npz_label_out_of_range_is_named(tmp_path):
    message = error_of(save_npz(tmp_path, x=np.ones((2, 2)), y=np.array([0, 2])))
    assert message == "site-1.npz: label 2 out of range for num_classes=2 in sample 1"


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    x = np.array([[1, 2], [3, "a"]], dtype=object)
    message = error_of(save_npz(tmp_path, x=x, y=np.array([0, 1])))
    assert message.startswith("site-1.npz: array 'x' holds Python objects")


def test_npz_empty_arrays_are_refused(tmp_path):
    message = error_of(save_npz(tmp_path, x=np.zeros((0, 2)), y=np.zeros(0, np.int64)))
    assert message.startswith("site-1.npz: array 'x' contains no samples")


def test_corrupt_npz_is_refused(tmp_path):
    message = error_of(write(tmp_path, "site-1.npz", "not a zip archive"))
    assert message.startswith("site-1.npz: is not a readable .npz archive")


def test_every_data_error_starts_with_the_file_name(tmp_path):
    paths = [
        write(tmp_path, "a.csv", ""),
        write(tmp_path, "b.csv", "a,b\n1,2\n"),
        save_npz(tmp_path, "c.npz", x=np.ones((1, 3)), y=np.array([0])),
    ]
    for path in paths:
        assert re.match(rf"{re.escape(path.name)}: \S", error_of(path))


# -- train/eval split --------------------------------------------------------------------------


def make_data(n: int) -> SiteData:
    return SiteData(
        features=np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        labels=np.arange(n, dtype=np.int64) % 2,
    )


def test_split_is_deterministic_for_a_seed():
    a_train, a_eval = train_eval_split(make_data(50), 0.2, seed=3)
    b_train, b_eval = train_eval_split(make_data(50), 0.2, seed=3)
    np.testing.assert_array_equal(a_eval.features, b_eval.features)
    np.testing.assert_array_equal(a_train.labels, b_train.labels)


def test_split_depends_on_the_seed():
    _, a_eval = train_eval_split(make_data(50), 0.2, seed=1)
    _, b_eval = train_eval_split(make_data(50), 0.2, seed=2)
    assert not np.array_equal(a_eval.features, b_eval.features)


def test_split_parts_are_disjoint_and_cover_the_data():
    train, evaluation = train_eval_split(make_data(50), 0.2, seed=0)
    ids = np.concatenate([train.features[:, 0], evaluation.features[:, 0]])
    assert len(evaluation) == 10 and len(train) == 40
    np.testing.assert_array_equal(np.sort(ids), make_data(50).features[:, 0])


def test_split_keeps_at_least_one_eval_sample():
    train, evaluation = train_eval_split(make_data(3), 0.01, seed=0)
    assert (len(train), len(evaluation)) == (2, 1)


def test_split_keeps_at_least_one_train_sample():
    train, evaluation = train_eval_split(make_data(2), 0.9, seed=0)
    assert (len(train), len(evaluation)) == (1, 1)


def test_zero_eval_fraction_gives_an_empty_eval_part():
    train, evaluation = train_eval_split(make_data(5), 0.0, seed=0)
    assert len(train) == 5 and len(evaluation) == 0
    assert evaluation.features.shape == (0, 2)


def test_eval_fraction_of_one_is_refused():
    with pytest.raises(ValueError, match="eval_fraction"):
        train_eval_split(make_data(5), 1.0, seed=0)
