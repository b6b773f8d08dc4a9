"""Export to a model bundle: two ONNX graphs checked by onnx.checker and against torch, plus the manifest."""

from __future__ import annotations

import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from vaeserve.api.bundle import save_bundle
from vaeserve.api.manifest import DECODER_INPUT, DECODER_OUTPUTS, ENCODER_INPUT, ENCODER_OUTPUTS, MANIFEST_FILE
from vaeserve.server.engine.bundle import Bundle, load_bundle
from vaeserve.training.models import VAE

__all__ = ["PARITY_TOLERANCE", "ExportError", "export_bundle", "to_onnx"]

PARITY_TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted on held-out data
OPSET = 17


class ExportError(RuntimeError):
    pass


class _Encoder(nn.Module):
    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


class _Decoder(nn.Module):
    def __init__(self, vae: VAE, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.vae, self.outputs = vae, outputs

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = self.vae.decode(z)
        return tuple(params[name] for name in self.outputs)


def to_onnx(
    module: nn.Module, example: torch.Tensor, input_name: str, output_names: tuple[str, ...]
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (input_name, *output_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    return model


def _graphs(vae: VAE) -> tuple[onnx.ModelProto, onnx.ModelProto, tuple[str, ...]]:
    vae = vae.cpu().eval()
    outputs = DECODER_OUTPUTS[vae.config.likelihood]
    x = torch.rand(2, *vae.config.input_shape)
    z = torch.randn(2, vae.config.latent_dim)
    encoder = to_onnx(_Encoder(vae), x, ENCODER_INPUT, ENCODER_OUTPUTS)
    decoder = to_onnx(_Decoder(vae, outputs), z, DECODER_INPUT, outputs)
    return encoder, decoder, outputs


def check_parity(vae: VAE, bundle: Bundle, x: np.ndarray) -> float:
    """Largest |onnxruntime - torch| over encoder and decoder outputs on model-space inputs x."""
    options = ort.SessionOptions()
    encoder = ort.InferenceSession(bundle.encoder.SerializeToString(), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(bundle.decoder.SerializeToString(), options, providers=["CPUExecutionProvider"])
    shaped = x.reshape(-1, *vae.config.input_shape).astype(np.float32)
    with torch.no_grad():
        mu, logvar = vae.encode(torch.from_numpy(shaped))
        params = vae.decode(mu)
    worst = 0.0
    for got, want in zip(encoder.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: shaped}), (mu, logvar)):
        worst = max(worst, float(np.max(np.abs(got - want.numpy()))))
    names = bundle.manifest.decoder_outputs
    for name, got in zip(names, decoder.run(list(names), {DECODER_INPUT: mu.numpy()})):
        worst = max(worst, float(np.max(np.abs(got - params[name].numpy()))))
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"onnxruntime and torch differ by {worst:.2e} on held-out data "
            f"(tolerance {PARITY_TOLERANCE:g}); the exported graph is not faithful"
        )
    return worst


def export_bundle(vae: VAE, out: Path, x_check: np.ndarray, **manifest: Any) -> tuple[Bundle, float]:
    """Writes the bundle to `out` (replacing a bundle already there) and returns it with the parity error."""
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ExportError(f"{out}: exists and is not a bundle; refusing to overwrite it")
    encoder, decoder, _ = _graphs(vae)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by other users (the server image)
    try:
        bundle = load_bundle(save_bundle(staging, encoder, decoder, **manifest))  # the server's full check
        parity = check_parity(vae, bundle, x_check)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle(out, bundle.manifest, bundle.encoder, bundle.decoder), parity
