"""Writing a model bundle: its ONNX files, their hashes and the manifest; publishing it by one rename.

Training and other exporters write bundles with these functions; the server only reads them
(``vaeserve.server.engine.bundle.load_bundle``, which checks the graphs against the contract).
Here a bundle is checked as far as files go: a manifest that validates and every file it lists
present with its sha256. onnx is imported only inside `save_bundle`: the client installs this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vaeserve.api.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    ENSEMBLE_FORMAT_VERSION,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
)

if TYPE_CHECKING:
    import onnx

__all__ = [
    "BundleError",
    "check_files",
    "check_hash",
    "publish_bundle",
    "read_manifest",
    "save_bundle",
    "save_ensemble",
    "sha256_of",
    "staging_dir",
    "update_manifest",
]


class BundleError(Exception):
    """A bundle that cannot be served."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> Manifest:
    """A manifest.json, validated; every problem a `BundleError` that names the file and the field."""
    if not path.is_file():
        raise BundleError(f"{path}: missing; every bundle needs a {MANIFEST_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"{path}: invalid manifest: {problems}") from exc


def check_hash(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing; the manifest lists it")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise BundleError(
            f"{path}: sha256 mismatch (manifest {expected_sha256[:12]}..., file {actual[:12]}...); "
            "the file was changed or corrupted after export"
        )


def check_files(root: Path, manifest: Manifest | None = None) -> Manifest:
    """The bundle's manifest (or `manifest`, about to be written there) with every file it lists present and
    matching its sha256, the members' and the background model's files too."""
    if manifest is None:
        manifest = read_manifest(root / MANIFEST_FILE)
    for relative, digest in manifest.sha256.items():
        check_hash(root / relative, digest)
    for folder in [*(manifest.members or []), *([manifest.background] if manifest.background else [])]:
        check_files(root / folder)
    return manifest


def save_bundle(path: str | Path, encoder: onnx.ModelProto, decoder: onnx.ModelProto, **fields: Any) -> Path:
    """Writes a format-1 bundle (the two graphs, their hashes and the manifest fields); returns its directory.

    The graphs' I/O against the contract is checked when the bundle is loaded (`load_bundle`)."""
    import onnx  # only exporters call this; the client, which installs this package, has no onnx

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, model in ((ENCODER_FILE, encoder), (DECODER_FILE, decoder)):
        onnx.save(model, str(root / name))
        hashes[name] = sha256_of(root / name)
    _write_manifest(root, Manifest.model_validate({"format_version": FORMAT_VERSION, **fields, "sha256": hashes}))
    return root


def save_ensemble(path: str | Path, **fields: Any) -> Path:
    """Writes the manifest of an ensemble whose members are already written as format-1 bundles in
    path/member-<f>/ (their hashes, shapes and preprocessing from member 0's manifest); returns its directory."""
    root = Path(path)
    folders = sorted((p for p in root.glob("member-*") if (p / MANIFEST_FILE).is_file()), key=lambda p: int(p.name[7:]))
    first = read_manifest(folders[0] / MANIFEST_FILE)
    inherited = {key: getattr(first, key) for key in ("input_shape", "latent_dim", "likelihood", "preprocessing")}
    manifest = Manifest.model_validate(
        {
            "format_version": ENSEMBLE_FORMAT_VERSION,
            **{k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in inherited.items()},
            "image": first.image.model_dump() if first.image else None,
            **fields,
            "members": [p.name for p in folders],
            "sha256": {f"{p.name}/{MANIFEST_FILE}": sha256_of(p / MANIFEST_FILE) for p in folders},
        }
    )
    _write_manifest(root, check_files(root, manifest))
    return root


def update_manifest(path: str | Path, **changes: Any) -> Path:
    """Rewrites manifest fields (training summary, calibration) of a bundle whose files are intact; the graphs
    stay as they are. Returns its directory."""
    root = Path(path)
    current = check_files(root)
    _write_manifest(root, check_files(root, Manifest.model_validate({**current.model_dump(), **changes})))
    return root


def staging_dir(dest: str | Path) -> Path:
    """A new hidden sibling of dest to write a bundle into; a repository never serves a hidden directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))


def publish_bundle(staging: str | Path, dest: str | Path) -> Path:
    """Moves a complete bundle from staging to dest by one rename, after checking its files; returns dest.

    A bundle already at dest is first renamed aside (and removed after), so a reader sees the old
    bundle or the new one whole, never a mix.
    """
    check_files(Path(staging))
    dest = Path(dest)
    aside = dest.with_name(f".{dest.name}.replaced-{uuid.uuid4().hex[:8]}") if dest.exists() else None
    if aside is not None:
        os.rename(dest, aside)
    os.rename(staging, dest)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return dest


def _write_manifest(root: Path, manifest: Manifest) -> None:
    """Writes manifest.json by a rename, so a reader never sees half a file."""
    text = manifest.model_dump_json(indent=2, exclude_none=True) + "\n"
    partial = root / f".{MANIFEST_FILE}.partial"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, root / MANIFEST_FILE)
