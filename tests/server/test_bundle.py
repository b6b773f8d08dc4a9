"""Loading bundles: a valid one loads; every way of being broken is refused with a message naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.bundles import Encoder, LinearGaussian, write_bundle
from vaeserve.api.bundle import publish_bundle, sha256_of, staging_dir
from vaeserve.api.manifest import MANIFEST_FILE
from vaeserve.server.engine.bundle import BundleError, load_bundle
from vaeserve.server.engine.engine import Engine
from vaeserve.server.engine.graphs import MIN_OPSET, Variant, build_score_graph
from vaeserve.server.engine.results import ScoreOptions
from vaeserve.server.engine.runtime import RuntimeConfig
from vaeserve.server.repository.model_settings import VersionPolicy


@pytest.fixture
def bundle(tmp_path: Path, lg: LinearGaussian) -> Path:
    return write_bundle(tmp_path / "b", lg, Encoder()).path


def _edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _refused(bundle: Path, *needles: str) -> None:
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_valid_bundle_loads_with_contract_io(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    assert [i.name for i in loaded.encoder.graph.input] == ["x"]
    assert {o.name for o in loaded.encoder.graph.output} == {"z_mean", "z_logvar"}
    assert [i.name for i in loaded.decoder.graph.input] == ["z"]
    assert {o.name for o in loaded.decoder.graph.output} == {"mean", "logvar"}
    assert loaded.manifest.sha256["encoder.onnx"] == sha256_of(bundle / "encoder.onnx")


def test_the_bundled_models_load(digits_bundle: Path) -> None:
    for name in ("digits", "mnist5k", "breast-cancer"):
        manifest = load_bundle(digits_bundle.parent / name).manifest
        assert manifest.training is not None and manifest.calibration is not None


def test_missing_directory(tmp_path: Path) -> None:
    _refused(tmp_path / "nowhere", "nowhere", "not a directory")


@pytest.mark.parametrize("file", ["manifest.json", "encoder.onnx", "decoder.onnx"])
def test_missing_file(bundle: Path, file: str) -> None:
    (bundle / file).unlink()
    _refused(bundle, file, "missing")


def test_hash_mismatch(bundle: Path, tmp_path: Path) -> None:
    other = write_bundle(tmp_path / "other", LinearGaussian.random(seed=5, dim=10, latent=3), Encoder()).path
    shutil.copy(other / "decoder.onnx", bundle / "decoder.onnx")
    _refused(bundle, "decoder.onnx", "sha256 mismatch")


def test_unknown_format_version(bundle: Path) -> None:
    _edit_manifest(bundle, format_version=2)
    _refused(bundle, "format_version", "2")


def test_unreadable_manifest(bundle: Path) -> None:
    (bundle / MANIFEST_FILE).write_text("{not json")
    _refused(bundle, "manifest.json", "JSON")


def test_manifest_field_errors_are_named(bundle: Path) -> None:
    _edit_manifest(bundle, latent_dim=0, likelihood="poisson")
    _refused(bundle, "latent_dim", "likelihood")


def _rewrite_model(bundle: Path, file: str, edit: object) -> None:
    model = onnx.load(str(bundle / file))
    edit(model)  # type: ignore[operator]
    onnx.save(model, str(bundle / file))
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["sha256"][file] = sha256_of(bundle / file)
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))


def test_wrong_output_name(bundle: Path) -> None:
    def rename(model: onnx.ModelProto) -> None:
        for node in model.graph.node:
            node.output[:] = ["z_mu" if o == "z_mean" else o for o in node.output]
        model.graph.output[0].name = "z_mu"

    _rewrite_model(bundle, "encoder.onnx", rename)
    _refused(bundle, "encoder.onnx", "z_mu", "z_mean")


def test_fixed_batch_axis_is_refused(bundle: Path) -> None:
    def fix_batch(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    _rewrite_model(bundle, "decoder.onnx", fix_batch)
    _refused(bundle, "decoder.onnx", "fixed batch size")


def test_shape_disagreeing_with_manifest(bundle: Path) -> None:
    _edit_manifest(bundle, input_shape=[11])
    _refused(bundle, "encoder.onnx", "axis 1")


def test_not_onnx(bundle: Path) -> None:
    (bundle / "encoder.onnx").write_bytes(b"not a model")
    _edit_manifest(
        bundle,
        sha256={"encoder.onnx": sha256_of(bundle / "encoder.onnx"), "decoder.onnx": sha256_of(bundle / "decoder.onnx")},
    )
    _refused(bundle, "encoder.onnx", "not a valid ONNX model")


def test_older_opset_graphs_are_composed(tmp_path: Path, lg: LinearGaussian) -> None:
    """A bundle from another exporter at opset 13 is converted for the fused graph, and scores as before."""
    bundle = write_bundle(tmp_path / "b", lg, Encoder())
    for model in (bundle.encoder, bundle.decoder):
        del model.opset_import[:]
        model.opset_import.append(onnx.helper.make_opsetid("", 13))
    fused = build_score_graph(bundle, Variant("posterior"))
    assert [(o.domain, o.version) for o in fused.opset_import] == [("", MIN_OPSET)]
    onnx.checker.check_model(fused)
    engine = Engine(bundle, RuntimeConfig(device="cpu"))
    engine.warm_up()
    x = lg.sample(6, seed=2)
    result = engine.score(engine.prepare(x), ScoreOptions(k=50), seed=0)
    # The exact posterior as proposal: every importance weight is p(x), so IWAE is log p(x) for any K.
    np.testing.assert_allclose(result["log_px"], lg.log_px(x), atol=1e-4)


def test_publishing_replaces_a_bundle_whole(bundle: Path, tmp_path: Path, lg: LinearGaussian) -> None:
    dest = tmp_path / "repo" / "m" / "1"
    staging = staging_dir(dest)
    assert staging.parent == dest.parent and staging.name.startswith(".1.staging-")
    write_bundle(staging, lg, Encoder(shrink=0.5))
    first = publish_bundle(staging, dest)
    assert first == dest and not staging.exists()
    again = staging_dir(dest)
    write_bundle(again, lg, Encoder())
    publish_bundle(again, dest)
    assert load_bundle(dest).manifest.sha256 == load_bundle(bundle).manifest.sha256  # the second one, whole
    assert sorted(p.name for p in dest.parent.iterdir()) == ["1"]  # nothing left aside
    broken = staging_dir(dest)
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        publish_bundle(broken, dest)  # an incomplete bundle is never published
    assert load_bundle(dest).manifest.sha256 == load_bundle(bundle).manifest.sha256


@pytest.mark.parametrize(
    ("policy", "selected"),
    [({}, [5]), ({"latest": 2}, [5, 3]), ({"all": True}, [5, 3, 1]), ({"specific": [1, 4]}, [1])],
)
def test_version_policies(policy: dict[str, object], selected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([1, 5, 3]) == selected


def test_a_version_policy_is_one_of_three() -> None:
    with pytest.raises(ValueError, match="give one of latest, all or specific"):
        VersionPolicy.model_validate({"latest": 1, "all": True})
