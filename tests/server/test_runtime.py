"""onnxruntime sessions: provider choice and the IO-binding path that CUDA uses, run here on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaeserve.server.engine.bundle import load_bundle
from vaeserve.server.engine.graphs import Variant, build_score_graph
from vaeserve.server.engine.runtime import CPU, ProviderUnavailable, Runner, RuntimeConfig, choose_providers


def test_providers_for_each_device() -> None:
    assert choose_providers(RuntimeConfig(device="cpu")) == [CPU]
    assert choose_providers(RuntimeConfig(device="auto"))[-1] == CPU
    if "CUDAExecutionProvider" not in choose_providers(RuntimeConfig(device="auto")):
        assert choose_providers(RuntimeConfig(device="cuda")) == [CPU]  # falls back, with a warning
        with pytest.raises(ProviderUnavailable, match="strict_device"):
            choose_providers(RuntimeConfig(device="cuda", strict_device=True))


def test_io_binding_returns_what_a_plain_run_returns(digits_bundle: Path) -> None:
    bundle = load_bundle(digits_bundle)
    rng = np.random.default_rng(0)
    cases = [
        # the encoder, with a strided (non-contiguous) input and its outputs asked for in reverse
        (bundle.encoder, ["z_logvar", "z_mean"], {"x": rng.random((5, 1, 8, 16), np.float32)[..., ::2]}),
        (bundle.decoder, ["logits"], {"z": rng.standard_normal((3, bundle.manifest.latent_dim), np.float32)}),
    ]
    config = RuntimeConfig(device="cpu")
    for model, outputs, feeds in cases:
        bound = Runner(model, config, [CPU], threads=1)
        bound.io_binding = True
        plain = Runner(model, config, [CPU], threads=1)
        for got, want in zip(bound.run(outputs, feeds), plain.run(outputs, feeds), strict=True):
            np.testing.assert_array_equal(got, want)


def test_io_binding_on_a_fused_score_graph(digits_bundle: Path) -> None:
    bundle = load_bundle(digits_bundle)
    variant = Variant("posterior", per_dim=True)
    bound, plain = (Runner(build_score_graph(bundle, variant), RuntimeConfig(device="cpu"), [CPU]) for _ in range(2))
    bound.io_binding = True
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.random((3, bundle.manifest.dim), np.float32),
        "eps": rng.standard_normal((3, 7, bundle.manifest.latent_dim), np.float32),
    }
    for got, want in zip(bound.run(variant.outputs, feeds), plain.run(variant.outputs, feeds), strict=True):
        np.testing.assert_array_equal(got, want)
