"""Per-model settings: an optional `model.toml` in the model's directory, over the server's settings.

    models/                     # --model-repository models
      digits/
        model.toml              # optional: version_policy and serving settings for every version
        1/  manifest.json encoder.onnx decoder.onnx
        2/  ...

Every field is optional; a field left out takes the server's value. Unknown fields are refused,
so a typo is an error at load, not a silently ignored setting.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from vaeserve.api.scores import ANOMALY_SCORES
from vaeserve.server.settings import Settings

__all__ = ["MODEL_SETTINGS_FILE", "ModelSettings", "ModelSettingsError", "VersionPolicy", "read_model_settings"]

MODEL_SETTINGS_FILE = "model.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionPolicy(_Strict):
    """Which versions to serve (Triton's policies): the `latest` N, `all`, or a `specific` list."""

    latest: PositiveInt | None = None
    all: bool = False
    specific: list[PositiveInt] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = sum((self.latest is not None, self.all, self.specific is not None))
        if given > 1:
            raise ValueError("give one of latest, all or specific")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve out of those on disk, newest first."""
        newest_first = sorted(versions, reverse=True)
        if self.all:
            return newest_first
        if self.specific is not None:
            return [v for v in newest_first if v in self.specific]
        return newest_first[: self.latest or 1]

    def describe(self) -> str:
        if self.all:
            return "all"
        if self.specific is not None:
            return "specific " + ", ".join(map(str, self.specific))
        return f"latest {self.latest or 1}"


class ModelSettings(_Strict):
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    default_k: PositiveInt | None = None
    default_seed: int | None = Field(None, ge=0, lt=2**64)
    alpha: float | None = Field(None, gt=0.0, le=1.0)
    threshold_quantile: float | None = Field(None, ge=0.0, lt=1.0)
    anomaly_scores: tuple[str, ...] | None = None
    max_batch: PositiveInt | None = None
    max_k: PositiveInt | None = None
    max_samples: PositiveInt | None = None
    batching: bool | None = None
    batch_max_inputs: PositiveInt | None = None
    batch_max_delay_ms: float | None = Field(None, ge=0.0)
    batch_max_k: PositiveInt | None = None
    inline_rows: int | None = Field(None, ge=0)
    chunk_samples: PositiveInt | None = None

    def over(self, settings: Settings) -> Settings:
        """The server's settings with this model's own values in their place (each validated here)."""
        update = self.model_dump(exclude_none=True, exclude={"version_policy"})
        if self.threshold_quantile is not None and self.alpha is None:
            update["alpha"] = 1.0 - self.threshold_quantile  # the model's own quantile wins over the server's alpha
        return settings.model_copy(update=update)

    @field_validator("anomaly_scores")
    @classmethod
    def _known_scores(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        known = [s.name for s in ANOMALY_SCORES]
        if names is not None and (not names or any(n not in known for n in names)):
            raise ValueError(f"anomaly scores are {', '.join(known)}; got {', '.join(names) or 'none'}")
        return names


class ModelSettingsError(ValueError):
    pass


def read_model_settings(model_dir: Path) -> ModelSettings:
    """The model's `model.toml`, or the defaults when there is none; a bad file raises ModelSettingsError."""
    path = model_dir / MODEL_SETTINGS_FILE
    if not path.is_file():
        return ModelSettings()
    try:
        return ModelSettings.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelSettingsError(f"{path}: not readable TOML ({exc})") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ModelSettingsError(f"{path}: invalid model settings: {problems}") from exc
