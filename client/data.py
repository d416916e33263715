"""A site's local data: the file formats a site plugs in, loaded and checked against the job.

A site points its agent at one file; the suffix picks the format. Nothing in the file leaves
the site. The file is checked against the job's :class:`~fedtune.job.ModelConfig` before any
training, and every problem is reported as a :class:`DataError` whose message starts with the
file's name (never its directory) and says what is wrong, e.g.
``site-1.csv: column 'label' is missing``.

CSV (``.csv``, or gzip-compressed ``.csv.gz``)
    * UTF-8 text, comma-separated, the first line a header naming every column; names are
      unique.
    * One column is named ``label`` and holds the class as an integer ``0 .. num_classes-1``
      (``1.0`` is read as ``1``; ``1.5`` is refused).
    * Every other column is a feature, taken **in file order**. The column names are not
      checked; the federation agrees on the order of the features, and every site writes its
      columns in that order.
    * ``tabular-mlp``: exactly ``input_dim`` feature columns.
    * ``image-cnn`` or ``image-linear`` with ``image_shape = (C, H, W)``: exactly ``C*H*W``
      pixel columns, reshaped in row-major (C) order: pixel column ``k`` (counting from 0, ``label``
      excluded) is channel ``k // (H*W)``, image row ``(k // W) % H``, image column ``k % W``.
    * Every value is a finite number (decimal or scientific notation). Empty cells, ``NA``,
      ``NaN`` and ``inf`` are refused; impute or drop them before handing the file over.
    * Blank lines are skipped. Messages count data rows from 1, the header excluded.

NPZ (``.npz``, as written by :func:`numpy.savez` or :func:`numpy.savez_compressed`)
    * Array ``x``: ``tabular-mlp``: shape ``(N, input_dim)``; image models: shape
      ``(N, C, H, W)`` equal to ``image_shape``, or ``(N, H, W)`` when ``C == 1``. Any integer
      or floating dtype; values must be finite; they are converted to float32.
    * Array ``y``: shape ``(N,)``, integer classes ``0 .. num_classes-1`` (an integer dtype,
      or floats that are whole numbers).
    * The archive is opened with ``allow_pickle=False``: object arrays are refused. Other
      arrays in the archive are ignored. Messages index samples from 0, as numpy does.

Text (``minilm-lora``)
    A text model's job reads ``.csv``, ``.csv.gz`` or ``.jsonl`` with a ``text`` and a
    ``label`` column, tokenised at load time: see :mod:`fedtune.client.text_data`. Its
    features are int64 token ids ``(N, L)``.

Prompt/response pairs (``smollm2-lora``)
    A language model's job reads ``.jsonl``, ``.csv`` or ``.csv.gz`` with a ``prompt`` and a
    ``response`` column, formatted with the model's chat template and tokenised at load time
    (:mod:`fedtune.client.text_data`). Its features are int64 token ids ``(N, L)`` and its
    labels int64 next-token targets ``(N, L)``, -100 where nothing is predicted.

Values are used as they are: nothing is scaled or standardised here. A site prepares its
features the way the federation agreed; the bundled splits written by ``fedtune data split``
(:mod:`fedtune.datasets`) hold z-scored tabular features and images scaled to ``[0, 1]``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedtune.job import ModelConfig
from fedtune.models import PRETRAINED_IDS, input_shape

LABEL_COLUMN = "label"
#: a next-token target that is not predicted (PyTorch's ``cross_entropy`` default ignore_index)
IGNORE_INDEX = -100


class DataError(ValueError):
    """A site's data file that cannot be used for the job; the message names file and problem."""


@dataclass(frozen=True)
class SiteData:
    """A site's samples, ready for the model.

    Attributes
    ----------
    features:
        float32, shape ``(N, D)`` for ``tabular-mlp`` or ``(N, C, H, W)`` for the image models;
        int64 token ids ``(N, L)`` for the pretrained models.
    labels:
        int64, shape ``(N,)``, classes ``0 .. num_classes-1``; for a causal language model,
        int64 next-token targets of the same shape ``(N, L)`` as the token ids:
        ``labels[i, t]`` is the token that must follow position ``t`` of sample ``i``, or
        :data:`IGNORE_INDEX` where nothing is predicted (prompt, last token, padding).
    """

    features: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim < 2:
            raise ValueError(
                f"features must have a sample axis and a feature axis, "
                f"got shape {self.features.shape}"
            )
        per_token = self.labels.ndim == 2 and self.labels.shape == self.features.shape
        if not per_token and (self.labels.ndim != 1 or len(self.labels) != len(self.features)):
            raise ValueError(
                f"labels must have shape ({len(self.features)},), or {self.features.shape} "
                f"for next-token targets, got {self.labels.shape}"
            )

    @property
    def next_token_targets(self) -> bool:
        """Whether the labels are per-position next-token targets (a causal language model)."""
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.labels)


def load_site_data(path: str | os.PathLike[str], model: ModelConfig) -> SiteData:
    """Load a site's data file and check it against the job's model.

    Parameters
    ----------
    path:
        A ``.csv``, ``.csv.gz`` or ``.npz`` file in the formats of the module docstring (for a
        pretrained model: ``.csv``, ``.csv.gz`` or ``.jsonl``, see
        :mod:`fedtune.client.text_data`).
    model:
        The job's model description; fixes the feature count or image shape and the number of
        classes.

    Returns
    -------
    SiteData
        float32 features shaped for the model (int64 token ids for a pretrained model), int64
        labels.

    Raises
    ------
    DataError
        If the file is missing, unreadable or does not fit ``model``.
    fedtune.models.ModelError
        If ``model`` itself is invalid.
    """
    if model.id in PRETRAINED_IDS:
        from fedtune.client.text_data import load_text_data

        return load_text_data(path, model)
    path = Path(path)
    shape = input_shape(model)
    name = path.name
    if not path.exists():
        raise DataError(f"{name}: file not found")
    if not path.is_file():
        raise DataError(f"{name}: is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: file is empty")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".csv" or suffixes == ".csv.gz":
        return _load_csv(path, name, model, shape)
    if path.suffix.lower() == ".npz":
        return _load_npz(path, name, model, shape)
    raise DataError(f"{name}: unsupported format; expected .csv, .csv.gz or .npz")


def train_eval_split(data: SiteData, eval_fraction: float, seed: int) -> tuple[SiteData, SiteData]:
    """Split a site's data into a training and an evaluation part, deterministically.

    The samples are permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(eval_fraction * N)`` of the permutation (at least 1 when ``eval_fraction > 0`` and
    ``N >= 2``, at most ``N - 1``) form the evaluation part. Both parts keep the file order.

    Parameters
    ----------
    data:
        The site's samples.
    eval_fraction:
        In ``[0, 1)``; 0 gives an empty evaluation part.
    seed:
        Seed of the permutation.

    Returns
    -------
    tuple[SiteData, SiteData]
        ``(train, eval)``; disjoint, together all of ``data``.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(data)
    n_eval = 0
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(1, round(eval_fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    eval_idx = np.sort(order[:n_eval])
    train_idx = np.sort(order[n_eval:])
    return _subset(data, train_idx), _subset(data, eval_idx)


def _subset(data: SiteData, idx: np.ndarray) -> SiteData:
    return SiteData(features=data.features[idx], labels=data.labels[idx])


# -- CSV ---------------------------------------------------------------------------------------


def _load_csv(path: Path, name: str, model: ModelConfig, shape: tuple[int, ...]) -> SiteData:
    try:
        # The header is read raw first: pandas silently renames duplicate names ("a" -> "a.1").
        header_row = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: file is empty") from None
    except UnicodeDecodeError:
        raise DataError(f"{name}: is not UTF-8 text") from None
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: is not a readable CSV file ({detail})") from None
    header = [str(c) for c in header_row.iloc[0].tolist()]
    if not isinstance(frame.index, pd.RangeIndex) or len(frame.columns) != len(header):
        # pandas turns a surplus leading field on every row into an index, silently.
        raise DataError(f"{name}: data rows have more fields than the header's {len(header)}")
    for column in header:
        if header.count(column) > 1:
            raise DataError(
                f"{name}: column {column!r} appears {header.count(column)} times in the header"
            )
    if LABEL_COLUMN not in header:
        raise DataError(f"{name}: column {LABEL_COLUMN!r} is missing (header: {_brief(header)})")
    if len(frame) == 0:
        raise DataError(f"{name}: has a header but no data rows")
    frame.columns = header
    feature_columns = [c for c in header if c != LABEL_COLUMN]
    expected = int(np.prod(shape))
    if len(feature_columns) != expected:
        if model.id == "tabular-mlp":
            wanted = f"{expected} feature columns for input_dim={model.input_dim}"
        else:
            wanted = f"{expected} pixel columns for image_shape={tuple(shape)}"
        raise DataError(f"{name}: expected {wanted}, found {len(feature_columns)}")
    for column in header:
        _check_numeric_column(name, column, frame[column])

    labels = _check_labels(
        name, frame[LABEL_COLUMN].to_numpy(np.float64), model.num_classes, _row, "label"
    )
    values = frame[feature_columns].to_numpy(np.float64)
    features = _finite_float32(name, values, feature_columns, _row, "rows")
    return SiteData(features=features.reshape((len(frame), *shape)), labels=labels)


def _row(i: int) -> str:
    return f"row {i + 1}"


def _brief(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} columns)" if len(names) > limit else "")


def _check_numeric_column(name: str, column: str, series: pd.Series) -> None:
    if pd.api.types.is_bool_dtype(series):
        raise DataError(
            f"{name}: column {column!r} has non-numeric value {str(series.iloc[0])!r} in row 1"
        )
    if pd.api.types.is_numeric_dtype(series):
        return
    coerced = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(series.notna().to_numpy() & coerced.isna().to_numpy())
    first = int(bad[0]) if len(bad) else 0
    raise DataError(
        f"{name}: column {column!r} has non-numeric value {str(series.iloc[first])!r} "
        f"in {_row(first)}"
    )


# -- NPZ ---------------------------------------------------------------------------------------


def _load_npz(path: Path, name: str, model: ModelConfig, shape: tuple[int, ...]) -> SiteData:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{name}: is not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{name}: is a single .npy array; expected an .npz archive with arrays 'x' and 'y'"
        )
    with archive:
        arrays = {}
        for key in ("x", "y"):
            if key not in archive.files:
                raise DataError(f"{name}: array {key!r} is missing (arrays: {archive.files})")
            try:
                arrays[key] = archive[key]
            except ValueError:
                raise DataError(
                    f"{name}: array {key!r} holds Python objects, which are refused "
                    f"(allow_pickle=False); store numbers"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{name}: array {key!r} cannot be read ({exc})") from None
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "iuf":
        raise DataError(f"{name}: array 'x' has dtype {x.dtype}; expected integers or floats")
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{name}: array 'x' contains no samples (shape {x.shape})")
    n = x.shape[0]
    if len(shape) == 3 and shape[0] == 1 and x.shape[1:] == shape[1:]:
        x = x.reshape((n, *shape))
    if x.shape[1:] != shape:
        if model.id == "tabular-mlp":
            wanted = f"(N, {shape[0]}) for input_dim={model.input_dim}"
        else:
            wanted = f"(N, {', '.join(map(str, shape))})"
            if shape[0] == 1:
                wanted += f" or (N, {shape[1]}, {shape[2]})"
            wanted += f" for image_shape={tuple(shape)}"
        raise DataError(f"{name}: array 'x' has shape {x.shape}, expected {wanted}")
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(
            f"{name}: array 'y' has shape {y.shape}, expected ({n},) to match array 'x'"
        )
    if y.dtype.kind not in "iuf":
        raise DataError(f"{name}: array 'y' has dtype {y.dtype}; expected integer class labels")
    labels = _check_labels(name, y.astype(np.float64), model.num_classes, _sample, "label")
    flat = x.reshape(n, -1).astype(np.float64)
    features = _finite_float32(name, flat, None, _sample, "samples").reshape(x.shape)
    return SiteData(features=features, labels=labels)


def _sample(i: int) -> str:
    return f"sample {i}"


# -- shared checks -----------------------------------------------------------------------------


def _check_labels(
    name: str,
    values: np.ndarray,
    num_classes: int,
    where: Callable[[int], str],
    what: str,
) -> np.ndarray:
    missing = np.flatnonzero(np.isnan(values))
    if len(missing):
        raise DataError(f"{name}: {what} is missing in {where(int(missing[0]))}")
    fractional = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if len(fractional):
        i = int(fractional[0])
        raise DataError(f"{name}: {what} {values[i]:g} in {where(i)} is not an integer")
    out_of_range = np.flatnonzero((values < 0) | (values >= num_classes))
    if len(out_of_range):
        i = int(out_of_range[0])
        raise DataError(
            f"{name}: {what} {int(values[i])} out of range for num_classes={num_classes} "
            f"in {where(i)}"
        )
    return values.astype(np.int64)


def _finite_float32(
    name: str,
    values: np.ndarray,
    columns: list[str] | None,
    where: Callable[[int], str],
    unit: str,
) -> np.ndarray:
    """``values`` as float32, refusing NaN, infinities and values beyond float32's range."""
    checks = (
        (np.isnan(values), "NaN or empty values"),
        (np.isinf(values), "infinite values"),
        (np.abs(values) > np.finfo(np.float32).max, "values beyond float32's range"),
    )
    for mask, problem in checks:
        bad_rows = np.flatnonzero(mask.any(axis=1))
        if len(bad_rows):
            i = int(bad_rows[0])
            column = int(np.flatnonzero(mask[i])[0])
            place = f"column {columns[column]!r}" if columns is not None else f"feature {column}"
            count = len(bad_rows)
            noun = unit if count > 1 else unit[:-1]
            verb = "contain" if count > 1 else "contains"
            raise DataError(f"{name}: {count} {noun} {verb} {problem} (first: {where(i)}, {place})")
    return values.astype(np.float32)
