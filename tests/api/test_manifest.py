"""The manifest schema: what it accepts, what it refuses, and the calibration read-outs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from vaeserve.api.manifest import Calibration, Manifest, Preprocessing

HASH = "0" * 64


def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "format_version": 1,
        "name": "m",
        "version": "1",
        "input_shape": [1, 2, 2],
        "latent_dim": 2,
        "likelihood": "bernoulli",
        "sha256": {"encoder.onnx": HASH, "decoder.onnx": HASH},
        "preprocessing": {"shift": [0.0], "scale": [1 / 255]},
        "image": {"channels": 1, "height": 2, "width": 2},
    }
    return {**base, **changes}


def test_a_valid_manifest() -> None:
    m = Manifest.model_validate(manifest())
    assert m.dim == 4 and m.decoder_outputs == ("logits",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 3}, "unsupported bundle format_version 3; this release reads 1 and 2"),
        ({"format_version": 2}, "format_version 2 needs members"),
        ({"members": ["member-0", "member-1"]}, "members and cross_fit need format_version 2"),
        ({"sha256": {"encoder.onnx": HASH}}, "needs the sha256 of decoder.onnx"),
        ({"sha256": {"encoder.onnx": "xyz", "decoder.onnx": HASH}}, "64 lowercase hex digits"),
        ({"preprocessing": {"shift": [0.0, 1.0], "scale": [1.0]}}, "needs 1 or 4"),
        ({"preprocessing": {"shift": [0.0], "scale": [0.0]}}, "scale of 0"),
        ({"image": {"channels": 1, "height": 3, "width": 2}}, "does not hold the 4 input features"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"name": "has space"}, "name"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_refusals(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(manifest(**changes))


def test_preprocessing_is_affine_and_invertible() -> None:
    pre = Preprocessing(shift=[1.0, 2.0], scale=[0.5, 4.0])
    raw = np.array([[3.0, 2.5]])
    np.testing.assert_allclose(pre.apply(raw), [[1.0, 2.0]])
    np.testing.assert_allclose(pre.invert(pre.apply(raw)), raw)
    assert pre.log_abs_det(2) == pytest.approx(np.log(0.5) + np.log(4.0))
    # Arrays cached for speed must not change how manifests compare (by their fields).
    same, other = Preprocessing(shift=[1.0, 2.0], scale=[0.5, 4.0]), Preprocessing(shift=[1.0, 2.0], scale=[0.5, 3.0])
    other.apply(raw)
    assert pre == same and same == pre and pre != other
    assert pre.apply(np.array([[3, 2]], dtype=np.uint8)).dtype == np.float32


def test_calibration_percentiles_p_values_and_thresholds() -> None:
    cal = Calibration(k=10, seed=0, dataset="d", scores={"nll": [1.0, 2.0, 3.0, 4.0]})
    np.testing.assert_allclose(cal.percentile([0.5, 2.0, 2.5, 9.0]), [0.0, 50.0, 50.0, 100.0])
    # p = (1 + #{calibration scores >= s}) / (n + 1): ties count against the input (conservative).
    np.testing.assert_allclose(cal.p_value([0.5, 2.0, 2.5, 4.0, 9.0]), [1.0, 0.8, 0.6, 0.4, 0.2])
    assert cal.n == 4 and cal.min_alpha == pytest.approx(0.2)
    assert cal.threshold(0.2) == 4.0 and cal.threshold(0.4) == 3.0 and cal.threshold(0.59) == 3.0
    assert cal.threshold(0.1) == np.inf  # below 1 / (n + 1) nothing can be flagged
    assert cal.threshold(1.0) == -np.inf
    for alpha in (0.2, 0.4, 0.6, 0.8):  # flagged by threshold == flagged by p-value
        s = np.linspace(0, 5, 101)
        np.testing.assert_array_equal(s > cal.threshold(alpha), cal.p_value(s) <= alpha + 1e-12)
    assert cal.quantile(0.5) == pytest.approx(2.5)
    assert cal.too_small_for(0.2) is None
    assert "flags at alpha = 0.01 need at least 99" in (cal.too_small_for(0.01) or "")
    with pytest.raises(ValueError, match="alpha"):
        cal.threshold(1.5)
    with pytest.raises(ValidationError, match="sorted"):
        Calibration(k=10, seed=0, dataset="d", scores={"nll": [2.0, 1.0]})
    with pytest.raises(ValidationError, match="one value per calibration input"):
        Calibration(k=10, seed=0, dataset="d", scores={"nll": [1.0, 2.0], "reconstruction": [1.0]})
    with pytest.raises(KeyError, match="no calibration for score 'complexity'"):
        cal.p_value([1.0], "complexity")


def test_a_calibration_of_one_list_reads_as_the_nll() -> None:
    """Bundles written before the named scores keep working."""
    old = Calibration.model_validate({"k": 10, "seed": 0, "dataset": "d", "scores": [1.0, 2.0]})
    assert old.scores == {"nll": [1.0, 2.0]}
    m = Manifest.model_validate(manifest(calibration={"k": 10, "seed": 0, "dataset": "d", "scores": [1.0]}))
    assert m.calibration is not None and list(m.calibration.scores) == ["nll"]


def test_a_background_model_needs_its_manifest_hash() -> None:
    with pytest.raises(ValidationError, match=r"needs the sha256 of background/manifest\.json"):
        Manifest.model_validate(manifest(background="background"))
    hashes = {"encoder.onnx": HASH, "decoder.onnx": HASH, "background/manifest.json": HASH}
    assert Manifest.model_validate(manifest(background="background", sha256=hashes)).background == "background"
    with pytest.raises(ValidationError, match="background"):
        Manifest.model_validate(manifest(background="../elsewhere", sha256=hashes))


def test_a_bundle_without_preprocessing_gets_the_identity() -> None:
    """Bundles written by other frameworks may leave preprocessing out: raw inputs are model inputs."""
    data = manifest()
    del data["preprocessing"]
    m = Manifest.model_validate(data)
    assert m.preprocessing == Preprocessing.identity()
    np.testing.assert_array_equal(m.preprocessing.apply(np.array([[0.0, 0.5, 1.0, 0.25]])), [[0.0, 0.5, 1.0, 0.25]])


def test_a_logistic_model_has_one_level_width() -> None:
    m = Manifest.model_validate(manifest(likelihood="logistic"))
    assert m.decoder_outputs == ("mean", "log_scale") and m.bounded and m.level_width == pytest.approx(1 / 255)
    assert m.mean_output == "mean" and Manifest.model_validate(manifest()).mean_output == "probs"
    with pytest.raises(ValidationError, match="one preprocessing shift and scale"):
        Manifest.model_validate(manifest(likelihood="logistic", preprocessing={"shift": [0.0], "scale": [1, 1, 1, 1]}))
