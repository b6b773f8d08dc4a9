"""Writing bundles with vaeserve.api.bundle: files and hashes checked before anything is written or published,
and no onnx or torch imported by the package the client installs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundles import Encoder, LinearGaussian, write_bundle
from vaeserve.api.bundle import (
    BundleError,
    check_files,
    publish_bundle,
    read_manifest,
    sha256_of,
    staging_dir,
    update_manifest,
)
from vaeserve.api.manifest import MANIFEST_FILE
from vaeserve.server.engine.bundle import load_bundle


@pytest.fixture
def bundle(tmp_path: Path, lg: LinearGaussian) -> Path:
    return write_bundle(tmp_path / "b", lg, Encoder()).path


def test_the_written_manifest_lists_the_graphs_hashes(bundle: Path) -> None:
    manifest = check_files(bundle)
    assert manifest == read_manifest(bundle / MANIFEST_FILE) == load_bundle(bundle).manifest
    assert manifest.sha256 == {name: sha256_of(bundle / name) for name in ("encoder.onnx", "decoder.onnx")}


def test_update_manifest_keeps_the_graphs_and_the_other_fields(bundle: Path) -> None:
    before = {name: (bundle / name).read_bytes() for name in ("encoder.onnx", "decoder.onnx")}
    assert update_manifest(bundle, description="retitled") == bundle
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    assert data["description"] == "retitled" and data["name"] == "linear-gaussian"
    assert {name: (bundle / name).read_bytes() for name in before} == before
    assert not list(bundle.glob(".*"))  # the partial manifest was renamed into place


def test_update_manifest_refuses_a_listed_file_that_is_not_there(bundle: Path) -> None:
    text = (bundle / MANIFEST_FILE).read_text()
    sha256 = {**read_manifest(bundle / MANIFEST_FILE).sha256, "background/manifest.json": "0" * 64}
    with pytest.raises(BundleError, match=r"background/manifest\.json: missing; the manifest lists it"):
        update_manifest(bundle, background="background", sha256=sha256)
    assert (bundle / MANIFEST_FILE).read_text() == text  # nothing written


def test_a_bundle_with_a_changed_file_is_never_published(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "repo" / "m" / "1"
    staging = staging_dir(dest)
    write_bundle(staging, LinearGaussian.random(dim=10, latent=3, seed=1), Encoder())
    (staging / "decoder.onnx").write_bytes((bundle / "decoder.onnx").read_bytes())
    with pytest.raises(BundleError, match=r"decoder\.onnx: sha256 mismatch"):
        publish_bundle(staging, dest)
    assert not dest.exists() and staging.exists()


def test_the_api_package_imports_no_onnx_or_torch() -> None:
    """The client installs vaeserve.api: its writers import onnx only when they write a graph."""
    code = (
        "import sys, vaeserve.api, vaeserve.api.bundle, vaeserve.api.datafiles, vaeserve.api.tables\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'torch', 'PIL'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
