"""Where models come from: a Triton-style repository directory, or one bundle (a repository of one).

A scan only lists directories and stats files (no bundle is read), so polling is cheap; the
fingerprint of a version changes whenever a file in it (or the model's `model.toml`) does.
Hidden directories and names that are not positive integers are never versions, which is how a
bundle being written (`vaeserve-train` stages it in a hidden sibling, then renames it) stays unseen.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vaeserve.api.manifest import MANIFEST_FILE
from vaeserve.server.repository.model_settings import (
    MODEL_SETTINGS_FILE,
    ModelSettings,
    ModelSettingsError,
    read_model_settings,
)

__all__ = ["BundleSource", "ModelDir", "RepositorySource", "Source", "VersionDir", "is_version_name"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class VersionDir:
    version: str
    path: Path
    fingerprint: str


@dataclass(frozen=True)
class ModelDir:
    name: str
    path: Path
    settings: ModelSettings = field(default_factory=ModelSettings)
    settings_error: str | None = None  # a model.toml that cannot be used: no version of it loads
    versions: dict[str, VersionDir] = field(default_factory=dict)  # on disk
    selected: tuple[str, ...] = ()  # to serve, newest first

    @property
    def policy(self) -> str:
        return self.settings.version_policy.describe()


class Source(Protocol):
    def scan(self) -> dict[str, ModelDir]: ...

    def describe(self) -> str: ...


def is_version_name(name: str) -> bool:
    return name.isdigit() and str(int(name)) == name and int(name) > 0


def _fingerprint(version_dir: Path, settings_file: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted([*version_dir.iterdir(), settings_file]):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _settings(model_dir: Path) -> tuple[ModelSettings, str | None]:
    try:
        return read_model_settings(model_dir), None
    except ModelSettingsError as exc:
        return ModelSettings(), str(exc)


class RepositorySource:
    """`root/<name>/<version>/`: a bundle per version directory, versions positive integers; or a bundle
    directly in `root/<name>/`, served as version 1 (so a folder of bundles, like this project's `models/`,
    is a repository as it is)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"repository {self.root}"

    def scan(self) -> dict[str, ModelDir]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        models: dict[str, ModelDir] = {}
        for model_path in sorted(self.root.iterdir()):
            if not model_path.is_dir() or not _MODEL_NAME.match(model_path.name):
                continue
            settings, error = _settings(model_path)
            settings_file = model_path / MODEL_SETTINGS_FILE
            versions = {
                p.name: VersionDir(p.name, p, _fingerprint(p, settings_file))
                for p in model_path.iterdir()
                if p.is_dir() and is_version_name(p.name)
            }
            if (model_path / MANIFEST_FILE).is_file():  # a bundle right under <name>/: its version 1
                if versions:
                    error = error or (
                        f"{model_path} holds a bundle ({MANIFEST_FILE}) and numbered versions "
                        f"({', '.join(sorted(versions, key=int))}): keep one layout, a bundle directly under "
                        "<name>/ (served as version 1) or one bundle per <name>/<version>/"
                    )
                else:
                    versions = {"1": VersionDir("1", model_path, _fingerprint(model_path, settings_file))}
            selected = settings.version_policy.select([int(v) for v in versions])
            models[model_path.name] = ModelDir(
                model_path.name, model_path, settings, error, versions, tuple(str(v) for v in selected)
            )
        return models


class BundleSource:
    """One bundle directory, served under its manifest's name and version (`--bundle`)."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle

    def describe(self) -> str:
        return f"bundle {self.bundle}"

    def scan(self) -> dict[str, ModelDir]:
        name, version = self.bundle.name or "model", "1"
        try:
            manifest = json.loads((self.bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
            name, version = str(manifest.get("name") or name), str(manifest.get("version") or version)
        except (OSError, ValueError, AttributeError):
            pass  # loading the bundle reports what is wrong with it
        settings, error = _settings(self.bundle)
        fingerprint = _fingerprint(self.bundle, self.bundle / MODEL_SETTINGS_FILE) if self.bundle.is_dir() else ""
        versions = {version: VersionDir(version, self.bundle, fingerprint)}
        return {name: ModelDir(name, self.bundle, settings, error, versions, (version,))}
