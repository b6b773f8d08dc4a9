"""Export: bundles that match the contract, faithful to torch within 1e-4, and refused when they are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vaeserve.server.engine.bundle import load_bundle
from vaeserve.training.export import PARITY_TOLERANCE, ExportError, check_parity, export_bundle
from vaeserve.training.models import VAEConfig, build_model


def _manifest(config: VAEConfig) -> dict[str, object]:
    image = None
    if len(config.input_shape) == 3:
        image = dict(zip(("channels", "height", "width"), config.input_shape))
    return {
        "name": "t",
        "version": "1",
        "input_shape": list(config.input_shape),
        "latent_dim": config.latent_dim,
        "likelihood": config.likelihood,
        "preprocessing": {"shift": [0.0], "scale": [1.0]},
        "image": image,
    }


@pytest.mark.parametrize(
    "config",
    [
        VAEConfig(input_shape=(1, 8, 8), kind="mlp", latent_dim=4, hidden=(32, 16)),
        VAEConfig(input_shape=(1, 8, 8), kind="conv", latent_dim=4, channels=(8, 16)),
        VAEConfig(input_shape=(7,), likelihood="gaussian", kind="mlp", latent_dim=2, hidden=(16,), activation="relu"),
    ],
    ids=["mlp-bernoulli", "conv-bernoulli", "mlp-gaussian"],
)
def test_export_round_trip(tmp_path: Path, config: VAEConfig) -> None:
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = np.random.default_rng(0).random((16, int(np.prod(config.input_shape)))).astype(np.float32)
    bundle, parity = export_bundle(model, tmp_path / "b", x, **_manifest(config))
    assert parity <= PARITY_TOLERANCE
    loaded = load_bundle(tmp_path / "b")
    assert loaded.manifest == bundle.manifest
    session = ort.InferenceSession(str(tmp_path / "b" / "decoder.onnx"))
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert set(outputs) == set(loaded.manifest.decoder_outputs)
    for name, shape in outputs.items():
        assert not isinstance(shape[0], int) and list(shape[1:]) == list(config.input_shape), (name, shape)
    for batch in (1, 5):  # the batch axis is dynamic
        out = session.run(None, {"z": np.zeros((batch, config.latent_dim), np.float32)})
        assert out[0].shape == (batch, *config.input_shape)


def test_parity_failure_is_loud(tmp_path: Path) -> None:
    config = VAEConfig(input_shape=(6,), latent_dim=2, hidden=(8,))
    torch.manual_seed(0)
    exported = build_model(config)
    x = np.random.default_rng(1).random((8, 6)).astype(np.float32)
    bundle, _ = export_bundle(exported, tmp_path / "b", x, **_manifest(config))
    torch.manual_seed(1)
    other = build_model(config).eval()
    with pytest.raises(ExportError, match=r"differ by .* \(tolerance 0.0001\)"):
        check_parity(other, bundle, x)


def test_export_will_not_overwrite_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    config = VAEConfig(input_shape=(4,), latent_dim=2, hidden=(4,))
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(build_model(config), tmp_path / "precious", np.zeros((2, 4), np.float32), **_manifest(config))
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
