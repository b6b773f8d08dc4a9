"""The model bundle's manifest: the one schema, used by training and serving.

Format 1: a directory holding ``manifest.json``, ``encoder.onnx`` and ``decoder.onnx``.
Format 2 (a cross-fitted ensemble): ``manifest.json`` and one format-1 bundle per member in
``member-<f>/``; member f was trained without fold f of the normal rows and calibrates on it.
The README's "Bundle format" section documents every field below for people who write
bundles from other frameworks.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

__all__ = [
    "BOUNDED",
    "DECODER_FILE",
    "DECODER_INPUT",
    "DECODER_OUTPUTS",
    "ENCODER_FILE",
    "ENCODER_INPUT",
    "ENCODER_OUTPUTS",
    "ENSEMBLE_FORMAT_VERSION",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "Calibration",
    "CrossFit",
    "Estimate",
    "ImageLayout",
    "Manifest",
    "Preprocessing",
    "Standardization",
    "TrainingSummary",
    "check_alpha",
    "member_dir",
    "member_draws",
    "member_seed",
]

FORMAT_VERSION = 1  # one encoder and one decoder: what single models are written as, so older servers read them
ENSEMBLE_FORMAT_VERSION = 2  # members in member-<f>/ folders
READABLE_FORMATS = (FORMAT_VERSION, ENSEMBLE_FORMAT_VERSION)
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"

# The graphs' I/O names (the bundle contract): the encoder maps "x" to a diagonal Gaussian q(z|x),
# the decoder maps "z" to the parameters of p(x|z), which depend on the likelihood.
ENCODER_INPUT = "x"
ENCODER_OUTPUTS = ("z_mean", "z_logvar")
DECODER_INPUT = "z"
DECODER_OUTPUTS: dict[str, tuple[str, ...]] = {
    "bernoulli": ("logits",),
    "gaussian": ("mean", "logvar"),
    "logistic": ("mean", "log_scale"),
}
# Likelihoods of data in [0, 1] after preprocessing: Bernoulli of grey levels, and the discretized logistic
# of whole raw levels (each level one bin of width preprocessing.scale; the ends open to -inf and +inf).
BOUNDED = frozenset({"bernoulli", "logistic"})
_SCORE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DIR_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Member folders are never bare positive integers: a repository would take them for model versions.
_MEMBER_DIR = re.compile(r"^member-(0|[1-9][0-9]*)$")
_SEED_STEP = 0x9E3779B97F4A7C15  # a Weyl step: member seeds far apart in the 2**64 seed space


def member_dir(f: int) -> str:
    return f"member-{f}"


def member_draws(k: int, members: int, f: int) -> int:
    """Draws member f of an ensemble takes of a request's K: K split as evenly as possible (the first K mod F
    members take one more), and at least one each, so K below the member count costs one draw per member."""
    return max(1, k // members + (1 if f < k % members else 0))


def member_seed(seed: int, f: int) -> int:
    """The seed of member f's draws for a request with `seed` (member 0 draws the request's own)."""
    return (seed + f * _SEED_STEP) % 2**64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageLayout(_Strict):
    """How the flat input is laid out as an image (C, H, W), for pictures and conv models."""

    channels: PositiveInt
    height: PositiveInt
    width: PositiveInt


@dataclass(frozen=True, eq=False)  # compared by identity, so models holding one still compare by their fields
class _Affine:
    shift: np.ndarray
    scale: np.ndarray


class Preprocessing(_Strict):
    """Per-feature affine map from raw client units to model space: ``x = (raw - shift) * scale``.

    A list of length 1 applies to every feature. `identity()` (shift 0, scale 1) is what a bundle
    without a `preprocessing` field gets.
    """

    shift: list[float] = Field(min_length=1)
    scale: list[float] = Field(min_length=1)

    @field_validator("shift", "scale")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in values):
            raise ValueError("must hold finite numbers only")
        return values

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, values: list[float]) -> list[float]:
        if any(v == 0.0 for v in values):
            raise ValueError("a scale of 0 would erase a feature")
        return values

    @classmethod
    def identity(cls) -> Preprocessing:
        return cls(shift=[0.0], scale=[1.0])

    @functools.cached_property
    def _arrays(self) -> _Affine:  # cached once: `apply` runs on every request
        return _Affine(np.asarray(self.shift, dtype=np.float64), np.asarray(self.scale, dtype=np.float64))

    def apply(self, raw: npt.ArrayLike) -> np.ndarray:
        """Raw [B, D] -> model-space float32 [B, D] (the arithmetic in float64)."""
        x = np.subtract(raw, self._arrays.shift, dtype=np.float64)
        x *= self._arrays.scale
        return x.astype(np.float32)

    def invert(self, x: npt.ArrayLike) -> np.ndarray:
        """Model-space [B, D] -> raw units, float64."""
        return np.asarray(x, dtype=np.float64) / self._arrays.scale + self._arrays.shift

    def log_abs_det(self, dim: int) -> float:
        """log |d x / d raw|: add it to a Gaussian model's log p(x) to get the density of raw data."""
        scale = np.broadcast_to(np.asarray(self.scale, dtype=np.float64), (dim,))
        return float(np.sum(np.log(np.abs(scale))))


class Estimate(_Strict):
    """A mean over a data set with its standard error (nats per input)."""

    value: float
    se: float
    k: PositiveInt = 1


class TrainingSummary(_Strict):
    dataset: str
    classes: list[int] | None = None
    labels: str | None = None  # where class labels came from: a labels file, or
    label_column: str | None = None  # the CSV column that held them
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    best_epoch: int
    seed: int
    objective: Literal["elbo", "iwae"]
    objective_k: PositiveInt = 1
    architecture: dict[str, Any] = Field(default_factory=dict)
    test_elbo: Estimate
    test_iwae: Estimate
    active_units: int | None = None
    duration_s: float | None = None
    framework: str | None = None
    n_calib: int | None = None
    # Every choice training made for the user (likelihood, scaling, preset, split, ...) and why, by name.
    choices: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class Standardization(_Strict):
    """How the `combined` score puts its components on one scale: (score - center) / scale for each, then
    the largest. Centers (medians) and scales (interquartile ranges) come from normal rows apart from the
    calibration rows (the validation split), so `combined` is a fixed function of an input and its
    conformal p-values keep their guarantee exactly."""

    components: dict[str, tuple[float, float]] = Field(min_length=1)  # name -> (center, scale > 0)
    dataset: str

    @field_validator("components")
    @classmethod
    def _positive_scales(cls, components: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (center, scale) in components.items():
            if not (math.isfinite(center) and math.isfinite(scale) and scale > 0):
                raise ValueError(f"{name}: center must be finite and scale finite and > 0, got ({center}, {scale})")
        return components

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """max over components of (score - center) / scale, float64 [B]."""
        columns = [(np.asarray(scores[name], np.float64) - c) / s for name, (c, s) in self.components.items()]
        return np.max(np.stack(columns), axis=0)  # type: ignore[no-any-return]


class Calibration(_Strict):
    """Anomaly scores of held-out normal data: one sorted list per named score, all of the same n inputs.

    Flags are conformal: for a new input's score s, p = (1 + #{calibration scores >= s}) / (n + 1), and
    a flag at level alpha (p <= alpha) has a false-positive rate of at most alpha on normal data
    exchangeable with the calibration inputs. So alpha can be no smaller than 1 / (n + 1).
    Manifests written before the named scores held one list, the `nll`; they read as {"nll": [...]}.
    """

    estimator: Literal["iwae"] = "iwae"
    k: PositiveInt  # K of the importance-sampled estimates behind the scores
    seed: int = Field(ge=0, lt=2**64)
    dataset: str
    scores: dict[str, list[float]] = Field(min_length=1)
    standardization: Standardization | None = None  # of the `combined` score's components
    # Cross-fitted ensembles (format 2): each score's list is F sorted segments, segment f holding member f's
    # scores of its own calibration rows (its fold, which it never trained on), of these sizes; `k` is the
    # request K the members split (member_draws) and member f draws with member_seed(seed, f). Each member has
    # its own standardization, fitted on its own validation rows.
    fold_sizes: list[PositiveInt] | None = Field(None, min_length=2)
    standardizations: list[Standardization] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_list_is_the_nll(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("scores"), list):
            return {**data, "scores": {"nll": data["scores"]}}
        return data

    @field_validator("scores")
    @classmethod
    def _sorted_finite(cls, scores: dict[str, list[float]]) -> dict[str, list[float]]:
        lengths = {len(values) for values in scores.values()}
        if len(lengths) > 1:
            raise ValueError(f"every score needs one value per calibration input; lengths are {sorted(lengths)}")
        for name, values in scores.items():
            if not _SCORE_NAME.match(name):
                raise ValueError(f"score name {name!r} must match {_SCORE_NAME.pattern}")
            if not values:
                raise ValueError(f"{name}: no calibration scores")
            if not all(math.isfinite(s) for s in values):
                raise ValueError(f"{name}: calibration scores must be finite")
        return scores

    @model_validator(mode="after")
    def _sorted_and_standardized(self) -> Calibration:
        for name, values in self.scores.items():
            for f, (start, stop) in enumerate(self._spans()):
                if any(b < a for a, b in itertools.pairwise(values[start:stop])):
                    where = "" if self.fold_sizes is None else f" within fold {f}"
                    raise ValueError(f"{name}: calibration scores must be sorted in ascending order{where}")
        if self.fold_sizes is not None:
            if sum(self.fold_sizes) != self.n:
                raise ValueError(f"fold_sizes add up to {sum(self.fold_sizes)}; there are {self.n} calibration scores")
            if self.standardization is not None:
                raise ValueError("a cross-fitted calibration has one standardization per member (standardizations)")
            if self.standardizations is not None and len(self.standardizations) != len(self.fold_sizes):
                raise ValueError(f"{len(self.standardizations)} standardizations for {len(self.fold_sizes)} members")
        elif self.standardizations is not None:
            raise ValueError("standardizations (one per member) go with fold_sizes; a single model has standardization")
        own = self.standardization or (self.standardizations[0] if self.standardizations else None)
        if "combined" in self.scores and own is None:
            raise ValueError("the combined score's calibration needs its standardization")
        for standardization in [self.standardization, *(self.standardizations or [])]:
            if standardization is not None:
                missing = set(standardization.components) - set(self.scores)
                if missing:
                    raise ValueError(f"standardization components {sorted(missing)} are not calibrated scores")
        return self

    def _spans(self) -> list[tuple[int, int]]:
        sizes = self.fold_sizes or [self.n]
        ends = list(itertools.accumulate(sizes))
        return [(end - size, end) for size, end in zip(sizes, ends)]

    @property
    def members(self) -> int:
        """1, or the number of cross-fitted members whose scores this calibration holds."""
        return len(self.fold_sizes) if self.fold_sizes else 1

    def member(self, f: int) -> Calibration:
        """Member f's own calibration: its fold's scores, its share of K, its seed and its standardization."""
        if self.fold_sizes is None:
            return self
        start, stop = self._spans()[f]
        return Calibration(
            estimator=self.estimator,
            k=member_draws(self.k, self.members, f),
            seed=member_seed(self.seed, f),
            dataset=self.dataset,
            scores={name: values[start:stop] for name, values in self.scores.items()},
            standardization=self.standardizations[f] if self.standardizations else None,
        )

    @functools.cached_property
    def _arrays(self) -> dict[str, np.ndarray]:  # cached once: read on every request
        return {name: np.asarray(values, dtype=np.float64) for name, values in self.scores.items()}

    @property
    def n(self) -> int:
        """The number of calibration inputs."""
        return len(next(iter(self.scores.values())))

    @property
    def min_alpha(self) -> float:
        """The smallest level a flag can have with n calibration inputs: 1 / (n + 1)."""
        return 1.0 / (self.n + 1)

    def sorted_scores(self, name: str) -> np.ndarray:
        if self.fold_sizes is not None:
            raise ValueError("a cross-fitted calibration holds one sorted list per member, not one for the model")
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"no calibration for score {name!r}; calibrated: {', '.join(self.scores)}") from None

    def _ranks(self, scores: npt.ArrayLike, name: str, side: Literal["left", "right"]) -> np.ndarray:
        """Calibration scores below (left) or at or below (right) each score, summed over the folds: scores is
        [B], or [B, F] for a cross-fitted calibration (column f: member f's score, ranked in fold f)."""
        values = np.asarray(scores, dtype=np.float64)
        if name not in self.scores:
            raise KeyError(f"no calibration for score {name!r}; calibrated: {', '.join(self.scores)}")
        if self.fold_sizes is None:
            return np.searchsorted(self._arrays[name], values, side=side)
        if values.ndim != 2 or values.shape[1] != self.members:
            raise ValueError(f"a cross-fitted calibration ranks [B, {self.members}] member scores, got {values.shape}")
        column = self._arrays[name]
        return sum(  # type: ignore[return-value]
            np.searchsorted(column[start:stop], values[:, f], side=side)
            for f, (start, stop) in enumerate(self._spans())
        )

    def percentile(self, scores: npt.ArrayLike, name: str = "nll") -> np.ndarray:
        """Percent of calibration scores at or below each score (descriptive); for a cross-fitted calibration,
        each member's score against its own fold's, pooled."""
        return 100.0 * self._ranks(scores, name, "right") / self.n

    def p_value(self, scores: npt.ArrayLike, name: str = "nll") -> np.ndarray:
        """Conformal p-values (1 + #{calibration scores >= s}) / (n + 1); higher scores are more anomalous.
        Cross-fitted (cross-conformal, Vovk 2015; Barber et al. 2021): member f's score of the input against
        the scores member f gave its own fold, pooled over the folds."""
        return (1.0 + (self.n - self._ranks(scores, name, "left"))) / (self.n + 1.0)

    def threshold(self, alpha: float, name: str = "nll") -> float:
        """The score above which p <= alpha: +inf when alpha < min_alpha (nothing can be flagged). NaN for a
        cross-fitted calibration: its p-value ranks each member's own score, so no one score separates the flags."""
        check_alpha(alpha)
        if self.fold_sizes is not None:
            return math.nan
        allowed = math.floor(alpha * (self.n + 1) + 1e-9) - 1  # most calibration scores >= a flagged score
        if allowed < 0:
            return math.inf
        if allowed >= self.n:
            return -math.inf
        return float(self.sorted_scores(name)[self.n - 1 - allowed])

    def quantile(self, q: float, name: str = "nll") -> float:
        """The calibration scores' q-quantile, linearly interpolated (descriptive; flags use p-values). A
        cross-fitted calibration pools its members' scores here."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {q}")
        if name not in self._arrays:
            raise KeyError(f"no calibration for score {name!r}; calibrated: {', '.join(self.scores)}")
        return float(np.quantile(self._arrays[name], q))

    def too_small_for(self, alpha: float) -> str | None:
        """Why flags at alpha cannot keep their promise with these n inputs, or None when they can."""
        if alpha >= self.min_alpha - 1e-12:
            return None
        return (
            f"the anomaly calibration has {self.n} inputs: flags at alpha = {alpha:g} need at least "
            f"{math.ceil(1 / alpha - 1 - 1e-9)}, so nothing can be flagged; the smallest attainable alpha is "
            f"{self.min_alpha:.4g}: set alpha (--alpha) to {_round_up(self.min_alpha)} or more, or add normal "
            f"rows (vaeserve-train calibrate BUNDLE DATA --add)"
        )


def _round_up(alpha: float) -> str:
    """The smallest of 2 significant digits at or above alpha, as text (0.0233 -> 0.024)."""
    digits = 1 - math.floor(math.log10(alpha))
    return f"{math.ceil(alpha * 10**digits - 1e-9) / 10**digits:.{digits}f}"


class CrossFit(_Strict):
    """How a cross-fitted ensemble used the normal rows: every row trained the members of the other folds and
    joined the calibration of exactly one member (its fold's), unless it was held out as a test row."""

    folds: int = Field(ge=2)
    n_train: list[int]  # rows each member trained on (its validation rows not counted)
    n_val: list[int]  # rows each member held out of its training for early stopping and standardization
    # The member whose calibration holds each row of the data (after --classes), in the data's order;
    # -1: a test row, seen by no member and not calibrated on.
    fold_of_row: list[int]
    # Rows of the data (indices in its order) that calibrate a member but trained none (the --split CALIB rows).
    added_rows: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _per_member(self) -> CrossFit:
        for field in ("n_train", "n_val"):
            if len(getattr(self, field)) != self.folds:
                raise ValueError(f"{field} needs one count per member ({self.folds})")
        if any(not 0 <= i < len(self.fold_of_row) for i in self.added_rows):
            raise ValueError(f"added_rows must index the {len(self.fold_of_row)} rows of fold_of_row")
        if any(not -1 <= f < self.folds for f in self.fold_of_row):
            raise ValueError(f"fold_of_row values must lie in [-1, {self.folds})")
        return self


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")


class Manifest(_Strict):
    format_version: int
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=64)
    description: str = ""
    created: datetime | None = None
    input_shape: list[PositiveInt] = Field(min_length=1)
    latent_dim: PositiveInt
    likelihood: Literal["bernoulli", "gaussian", "logistic"]
    sha256: dict[str, str]
    preprocessing: Preprocessing = Field(default_factory=Preprocessing.identity)
    image: ImageLayout | None = None
    training: TrainingSummary | None = None
    calibration: Calibration | None = None
    # A second bundle in this directory, trained on perturbed normal data: the background model of the
    # likelihood_ratio score (Ren et al. 2019). Its hashes are in its own manifest, whose hash is here.
    background: str | None = Field(None, pattern=_DIR_NAME)
    # Format 2: the members' folders (member-0, member-1, ...), each a format-1 bundle whose manifest's hash is
    # in `sha256`; this manifest's shapes, likelihood and preprocessing are member 0's (Encode, Decode and
    # Sample use member 0), its calibration the cross-fitted one of all members.
    members: list[str] | None = Field(None, min_length=2)
    cross_fit: CrossFit | None = None

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version not in READABLE_FORMATS:
            raise ValueError(
                f"unsupported bundle format_version {version}; this release reads "
                f"{' and '.join(map(str, READABLE_FORMATS))} (a newer vaeserve wrote it: upgrade the server)"
            )
        return version

    @field_validator("sha256")
    @classmethod
    def _hashes(cls, hashes: dict[str, str]) -> dict[str, str]:
        for file, digest in hashes.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"sha256 of {file} must be 64 lowercase hex digits")
        return hashes

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        self._check_format()
        dim = self.dim
        for field in ("shift", "scale"):
            n = len(getattr(self.preprocessing, field))
            if n not in (1, dim):
                raise ValueError(f"preprocessing.{field} has {n} values; needs 1 or {dim} (one per input feature)")
        if self.likelihood == "logistic" and (len(self.preprocessing.scale) != 1 or len(self.preprocessing.shift) != 1):
            raise ValueError("a logistic model needs one preprocessing shift and scale: the width of a raw level")
        if self.background is not None and self.background_manifest not in self.sha256:
            raise ValueError(f"background {self.background!r} needs the sha256 of {self.background_manifest}")
        if self.image is not None:
            pixels = self.image.channels * self.image.height * self.image.width
            if pixels != dim:
                raise ValueError(
                    f"image layout {self.image.channels}x{self.image.height}x{self.image.width} "
                    f"does not hold the {dim} input features"
                )
        return self

    def _check_format(self) -> None:
        if self.format_version == FORMAT_VERSION:
            missing = {ENCODER_FILE, DECODER_FILE} - self.sha256.keys()
            if missing:
                raise ValueError(f"sha256: needs the sha256 of {', '.join(sorted(missing))}")
            if self.members is not None or self.cross_fit is not None:
                raise ValueError(f"members and cross_fit need format_version {ENSEMBLE_FORMAT_VERSION}")
            if self.calibration is not None and self.calibration.fold_sizes is not None:
                raise ValueError("a single model's calibration has no fold_sizes")
            return
        if self.members is None:
            raise ValueError(f"format_version {ENSEMBLE_FORMAT_VERSION} needs members (two or more)")
        for f, folder in enumerate(self.members):
            if folder != member_dir(f) or not _MEMBER_DIR.match(folder):
                raise ValueError(f"members[{f}] must be {member_dir(f)!r}, got {folder!r}")
        missing = {f"{m}/{MANIFEST_FILE}" for m in self.members} - self.sha256.keys()
        if missing:
            raise ValueError(f"sha256: needs the sha256 of {', '.join(sorted(missing))}")
        if self.background is not None:
            raise ValueError("an ensemble has no background model (likelihood_ratio is served by single models)")
        if self.cross_fit is not None and self.cross_fit.folds != len(self.members):
            raise ValueError(f"cross_fit.folds is {self.cross_fit.folds}; there are {len(self.members)} members")
        calibration = self.calibration
        if calibration is not None and (calibration.fold_sizes is None or calibration.members != len(self.members)):
            raise ValueError(f"an ensemble's calibration needs fold_sizes, one per member ({len(self.members)})")

    @property
    def ensemble(self) -> bool:
        return self.members is not None

    def member_manifest(self, f: int) -> str:
        """Member f's manifest path, relative to this bundle (a key of `sha256`)."""
        assert self.members is not None
        return f"{self.members[f]}/{MANIFEST_FILE}"

    @property
    def dim(self) -> int:
        """Number of input features D = prod(input_shape)."""
        return math.prod(self.input_shape)

    @property
    def decoder_outputs(self) -> tuple[str, ...]:
        return DECODER_OUTPUTS[self.likelihood]

    @property
    def bounded(self) -> bool:
        """Model-space data lie in [0, 1] (Bernoulli, discretized logistic)."""
        return self.likelihood in BOUNDED

    @property
    def mean_output(self) -> str:
        """The decoded parameter that is E[x|z] (after the engine adds `probs` for Bernoulli models)."""
        return "probs" if self.likelihood == "bernoulli" else "mean"

    @property
    def level_width(self) -> float:
        """A discretized logistic model's bin: one raw level, in model space."""
        return abs(self.preprocessing.scale[0])

    @property
    def background_manifest(self) -> str | None:
        """The background bundle's manifest path, relative to this bundle (a key of `sha256`)."""
        return None if self.background is None else f"{self.background}/{MANIFEST_FILE}"
