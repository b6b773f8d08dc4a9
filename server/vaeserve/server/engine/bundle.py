"""Loading a model bundle and checking it fully against its format's contract (1: one model; 2: an ensemble).

Everything a bundle can get wrong is reported as a ``BundleError`` that names the file
and the problem, before any session is created.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from pydantic import ValidationError

from vaeserve.api.manifest import (
    DECODER_FILE,
    DECODER_INPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    ENSEMBLE_FORMAT_VERSION,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
)

__all__ = [
    "Bundle",
    "BundleError",
    "load_bundle",
    "publish_bundle",
    "save_bundle",
    "save_ensemble",
    "sha256_of",
    "staging_dir",
    "update_manifest",
]


class BundleError(Exception):
    """A bundle that cannot be served."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    encoder: onnx.ModelProto
    decoder: onnx.ModelProto
    background: Bundle | None = None  # the likelihood_ratio score's background model, when there is one
    # A cross-fitted ensemble's members (format 2); encoder and decoder are then member 0's.
    members: tuple[Bundle, ...] = ()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: str | Path) -> Bundle:
    root = Path(path)
    if not root.is_dir():
        raise BundleError(
            f"{root}: not a directory; a bundle is a directory holding {MANIFEST_FILE}, "
            f"{ENCODER_FILE} and {DECODER_FILE}"
        )
    manifest = _read_manifest(root / MANIFEST_FILE)
    if manifest.ensemble:
        return _read_ensemble(root, manifest)
    encoder = _read_model(root / ENCODER_FILE, manifest.sha256[ENCODER_FILE])
    decoder = _read_model(root / DECODER_FILE, manifest.sha256[DECODER_FILE])
    lead = (None,)
    _check_io(root / ENCODER_FILE, encoder, "input", {ENCODER_INPUT: lead + tuple(manifest.input_shape)})
    _check_io(root / ENCODER_FILE, encoder, "output", {name: (*lead, manifest.latent_dim) for name in ENCODER_OUTPUTS})
    _check_io(root / DECODER_FILE, decoder, "input", {DECODER_INPUT: (*lead, manifest.latent_dim)})
    _check_io(
        root / DECODER_FILE,
        decoder,
        "output",
        {name: lead + tuple(manifest.input_shape) for name in manifest.decoder_outputs},
    )
    return Bundle(root, manifest, encoder, decoder, _read_background(root, manifest))


def _read_background(root: Path, manifest: Manifest) -> Bundle | None:
    """The background bundle inside this one: hash-checked, a bundle of the same inputs, without its own."""
    if manifest.background is None or manifest.background_manifest is None:
        return None
    relative = manifest.background_manifest
    _check_hash(root / relative, manifest.sha256[relative])
    background = load_bundle(root / manifest.background)
    b = background.manifest
    if b.background is not None:
        raise BundleError(f"{root / relative}: a background model cannot have a background of its own")
    if b.input_shape != manifest.input_shape or b.preprocessing != manifest.preprocessing:
        raise BundleError(
            f"{root / relative}: the background model must take the same inputs as the model "
            f"(input_shape {b.input_shape} vs {manifest.input_shape}, and the same preprocessing)"
        )
    return background


def _read_ensemble(root: Path, manifest: Manifest) -> Bundle:
    """The members, hash-checked: format-1 bundles of the same inputs, latents and likelihood as member 0,
    whose shapes and preprocessing the ensemble's manifest repeats."""
    assert manifest.members is not None
    members = []
    for f, folder in enumerate(manifest.members):
        relative = manifest.member_manifest(f)
        _check_hash(root / relative, manifest.sha256[relative])
        member = load_bundle(root / folder)
        m = member.manifest
        if m.ensemble or m.background is not None or m.calibration is not None:
            raise BundleError(f"{root / relative}: a member is a plain model (no members, background or calibration)")
        members.append(member)
    first = members[0].manifest
    for f, member in enumerate(members):
        m = member.manifest
        same = (m.input_shape, m.latent_dim, m.likelihood, m.image) == (
            manifest.input_shape,
            manifest.latent_dim,
            manifest.likelihood,
            manifest.image,
        )
        if not same:
            raise BundleError(
                f"{root / manifest.members[f]}: every member takes the ensemble's inputs and latents "
                f"(input_shape {m.input_shape} vs {manifest.input_shape}, latent_dim {m.latent_dim} vs "
                f"{manifest.latent_dim}, likelihood {m.likelihood} vs {manifest.likelihood}, and the image layout)"
            )
    if first.preprocessing != manifest.preprocessing:
        raise BundleError(f"{root / MANIFEST_FILE}: the ensemble's preprocessing must be member 0's")
    return Bundle(root, manifest, members[0].encoder, members[0].decoder, None, tuple(members))


def save_ensemble(path: str | Path, **fields: Any) -> Bundle:
    """Writes the manifest of an ensemble whose members are already written as format-1 bundles in
    path/member-<f>/ (their hashes, shapes and preprocessing from member 0's manifest), then loads it back."""
    root = Path(path)
    folders = sorted((p for p in root.glob("member-*") if (p / MANIFEST_FILE).is_file()), key=lambda p: int(p.name[7:]))
    first = _read_manifest(folders[0] / MANIFEST_FILE)
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
    _write_manifest(root, manifest)
    return load_bundle(root)


def save_bundle(path: str | Path, encoder: onnx.ModelProto, decoder: onnx.ModelProto, **fields: Any) -> Bundle:
    """Writes a bundle (the two graphs, their hashes and the manifest fields), then loads it back to check it."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, model in ((ENCODER_FILE, encoder), (DECODER_FILE, decoder)):
        onnx.save(model, str(root / name))
        hashes[name] = sha256_of(root / name)
    _write_manifest(root, Manifest.model_validate({"format_version": FORMAT_VERSION, **fields, "sha256": hashes}))
    return load_bundle(root)


def update_manifest(path: str | Path, **changes: Any) -> Bundle:
    """Rewrites manifest fields (training summary, calibration) of a valid bundle; the graphs stay as they are."""
    bundle = load_bundle(path)
    _write_manifest(bundle.path, Manifest.model_validate({**bundle.manifest.model_dump(), **changes}))
    return load_bundle(bundle.path)


def staging_dir(dest: str | Path) -> Path:
    """A new hidden sibling of dest to write a bundle into; a repository never serves a hidden directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))


def publish_bundle(staging: str | Path, dest: str | Path) -> Bundle:
    """Moves a complete bundle from staging to dest by one rename, after checking that it loads.

    A bundle already at dest is first renamed aside (and removed after), so a reader sees the old
    bundle or the new one whole, never a mix.
    """
    load_bundle(staging)
    dest = Path(dest)
    aside = dest.with_name(f".{dest.name}.replaced-{uuid.uuid4().hex[:8]}") if dest.exists() else None
    if aside is not None:
        os.rename(dest, aside)
    os.rename(staging, dest)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return load_bundle(dest)


def _write_manifest(root: Path, manifest: Manifest) -> None:
    """Writes manifest.json by a rename, so a reader never sees half a file."""
    text = manifest.model_dump_json(indent=2, exclude_none=True) + "\n"
    partial = root / f".{MANIFEST_FILE}.partial"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, root / MANIFEST_FILE)


def _read_manifest(path: Path) -> Manifest:
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


def _check_hash(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing; the manifest lists it")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise BundleError(
            f"{path}: sha256 mismatch (manifest {expected_sha256[:12]}..., file {actual[:12]}...); "
            "the file was changed or corrupted after export"
        )


def _read_model(path: Path, expected_sha256: str) -> onnx.ModelProto:
    _check_hash(path, expected_sha256)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for bad files
        raise BundleError(f"{path}: not a valid ONNX model ({exc})") from exc
    return model


def _check_io(path: Path, model: onnx.ModelProto, kind: str, want: dict[str, tuple[int | None, ...]]) -> None:
    """Checks names, element type float32, rank, static sizes and a dynamic batch axis."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    values = [v for v in (graph.input if kind == "input" else graph.output) if v.name not in initializers]
    have = {v.name: v for v in values}
    if set(have) != set(want):
        raise BundleError(f"{path}: {kind}s are {sorted(have)}; the bundle contract needs {sorted(want)}")
    for name, shape in want.items():
        tensor_type = have[name].type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            got = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise BundleError(f"{path}: {kind} {name!r} is {got}; the contract needs FLOAT (float32)")
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if len(dims) != len(shape):
            raise BundleError(
                f"{path}: {kind} {name!r} has rank {len(dims)}; the contract needs {len(shape)} "
                f"(batch, {', '.join(str(s) for s in shape[1:])})"
            )
        if dims[0].HasField("dim_value") and dims[0].dim_value not in (0,):
            raise BundleError(
                f"{path}: {kind} {name!r} has a fixed batch size {dims[0].dim_value}; "
                "export it with a dynamic batch axis"
            )
        for axis, (dim, size) in enumerate(zip(dims[1:], shape[1:]), start=1):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise BundleError(
                    f"{path}: {kind} {name!r} axis {axis} is {dim.dim_value}; the manifest implies {size}"
                )
