"""The model bundle's manifest: the one schema, used by training and serving.

Format 1: a directory holding ``manifest.json``, ``encoder.onnx`` and ``decoder.onnx``.
Format 2 (a cross-fitted ensemble): ``manifest.json`` and one format-1 bundle per member in
``member-<f>/``; member f was trained without fold f of the normal rows and calibrates on it.
docs/bundle-format.md documents every field below (a test checks it) for people who write
bundles from other frameworks.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from vaeserve.api.calibration import (
    Calibration,
    CrossFit,
    Standardization,
    check_alpha,
    member_draws,
    member_seed,
)

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
_DIR_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Member folders are never bare positive integers: a repository would take them for model versions.
_MEMBER_DIR = re.compile(r"^member-(0|[1-9][0-9]*)$")


def member_dir(f: int) -> str:
    return f"member-{f}"


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
    """A mean over a data set with its standard error (nats per input) and the K of its estimator: one stored
    figure of a training summary, not a per-input result."""

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
