"""Loading a model bundle and checking it fully against its format's contract (1: one model; 2: an ensemble).

Everything a bundle can get wrong is reported as a ``BundleError`` that names the file
and the problem, before any session is created. Bundles are written by ``vaeserve.api.bundle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from vaeserve.api.bundle import BundleError, check_hash, read_manifest
from vaeserve.api.manifest import (
    DECODER_FILE,
    DECODER_INPUT,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    MANIFEST_FILE,
    Manifest,
)

__all__ = ["Bundle", "BundleError", "load_bundle"]  # BundleError: what load_bundle raises


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    encoder: onnx.ModelProto
    decoder: onnx.ModelProto
    background: Bundle | None = None  # the likelihood_ratio score's background model, when there is one
    # A cross-fitted ensemble's members (format 2); encoder and decoder are then member 0's.
    members: tuple[Bundle, ...] = ()


def load_bundle(path: str | Path) -> Bundle:
    root = Path(path)
    if not root.is_dir():
        raise BundleError(
            f"{root}: not a directory; a bundle is a directory holding {MANIFEST_FILE}, "
            f"{ENCODER_FILE} and {DECODER_FILE}"
        )
    manifest = read_manifest(root / MANIFEST_FILE)
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
    check_hash(root / relative, manifest.sha256[relative])
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
        check_hash(root / relative, manifest.sha256[relative])
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


def _read_model(path: Path, expected_sha256: str) -> onnx.ModelProto:
    check_hash(path, expected_sha256)
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
