"""Small bundles written with onnx.helper (no torch): ground truths for the server's tests.

LinearGaussian: a VAE with a closed-form log p(x).

Decoder: x | z ~ N(W z + b, s^2 I) with W = U diag(lam), U with orthonormal columns, so
p(x) = N(b, W W^T + s^2 I) and the exact posterior p(z|x) = N(A (x - b), s^2 / (lam^2 + s^2))
with A = diag(lam / (lam^2 + s^2)) U^T is diagonal. The encoder can be the exact posterior
or a deliberately worse one (its mean shrunk, its variance inflated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vaeserve.api.bundle import save_bundle, sha256_of, update_manifest
from vaeserve.api.manifest import MANIFEST_FILE
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import Engine, RuntimeConfig, load_bundle
from vaeserve.server.engine.bundle import Bundle


@dataclass(frozen=True)
class LinearGaussian:
    W: np.ndarray  # [D, L]
    b: np.ndarray  # [D]
    s2: float

    @staticmethod
    def random(dim: int = 6, latent: int = 2, s2: float = 0.25, seed: int = 0) -> LinearGaussian:
        rng = np.random.default_rng(seed)
        U, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
        lam = np.linspace(1.5, 0.8, latent)
        return LinearGaussian(W=U * lam, b=rng.standard_normal(dim) * 0.5, s2=s2)

    @property
    def posterior_var(self) -> np.ndarray:
        lam2 = (self.W**2).sum(axis=0)
        return self.s2 / (lam2 + self.s2)

    def posterior_mean(self, x: np.ndarray) -> np.ndarray:
        lam2 = (self.W**2).sum(axis=0)
        return ((x - self.b) @ self.W) / (lam2 + self.s2)

    def log_px(self, x: np.ndarray) -> np.ndarray:
        dim = len(self.b)
        cov = self.W @ self.W.T + self.s2 * np.eye(dim)
        _, logdet = np.linalg.slogdet(cov)
        diff = x - self.b
        quad = np.einsum("bd,bd->b", diff, np.linalg.solve(cov, diff.T).T)
        return -0.5 * (dim * np.log(2 * np.pi) + logdet + quad)  # type: ignore[no-any-return]

    def sample(self, n: int, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.W.shape[1]))
        return z @ self.W.T + self.b + np.sqrt(self.s2) * rng.standard_normal((n, len(self.b)))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Encoder:
    """q(z|x) = N(shrink * A (x - b), var_scale * exact posterior variance)."""

    shrink: float = 1.0
    var_scale: float = 1.0

    def params(self, model: LinearGaussian, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = self.shrink * model.posterior_mean(x)
        var = np.broadcast_to(self.var_scale * model.posterior_var, mean.shape)
        return mean, var

    def kl_to_posterior(self, model: LinearGaussian, x: np.ndarray) -> np.ndarray:
        mq, vq = self.params(model, x)
        mp, vp = model.posterior_mean(x), model.posterior_var
        return 0.5 * np.sum(vq / vp + (mq - mp) ** 2 / vp - 1.0 + np.log(vp / vq), axis=1)  # type: ignore[no-any-return]


def _affine_graph(
    name: str, inp: str, in_dim: int, outputs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> onnx.ModelProto:
    """Each output = inp @ M + c (float32), with a dynamic batch axis."""
    nodes, inits, outs = [], [], []
    for out, (M, c) in outputs.items():
        inits += [
            numpy_helper.from_array(M.astype(np.float32), f"{out}_M"),
            numpy_helper.from_array(c.astype(np.float32), f"{out}_c"),
        ]
        nodes += [
            helper.make_node("MatMul", [inp, f"{out}_M"], [f"{out}_mm"]),
            helper.make_node("Add", [f"{out}_mm", f"{out}_c"], [out]),
        ]
        outs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", M.shape[1]]))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", in_dim])], outs, initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_bundle(path: Path, model: LinearGaussian, encoder: Encoder = Encoder(), **fields: object) -> Bundle:
    dim, latent = model.W.shape
    lam2 = (model.W**2).sum(axis=0)
    A = (model.W / (lam2 + model.s2)).T * encoder.shrink  # [L, D]
    logvar = np.log(encoder.var_scale * model.posterior_var)
    enc = _affine_graph(
        "encoder", "x", dim, {"z_mean": (A.T, -A @ model.b), "z_logvar": (np.zeros((dim, latent)), logvar)}
    )
    dec = _affine_graph(
        "decoder",
        "z",
        latent,
        {"mean": (model.W.T, model.b), "logvar": (np.zeros((latent, dim)), np.full(dim, np.log(model.s2)))},
    )
    manifest = {
        "name": "linear-gaussian",
        "version": "1",
        "input_shape": [dim],
        "latent_dim": latent,
        "likelihood": "gaussian",
        "preprocessing": {"shift": [0.0], "scale": [1.0]},
        **fields,
    }
    return load_bundle(save_bundle(path, enc, dec, **manifest))


@dataclass(frozen=True)
class LinearBernoulli:
    """q(z|x) = N(A x + c, exp(logvar)), p(x|z) = Bernoulli(sigmoid(W z + b)): checked against numpy."""

    A: np.ndarray  # [L, D]
    c: np.ndarray  # [L]
    logvar: np.ndarray  # [L]
    W: np.ndarray  # [D, L]
    b: np.ndarray  # [D]

    @staticmethod
    def random(dim: int = 12, latent: int = 3, seed: int = 0) -> LinearBernoulli:
        rng = np.random.default_rng(seed)
        return LinearBernoulli(
            A=rng.normal(0, 0.3, (latent, dim)),
            c=rng.normal(0, 0.1, latent),
            logvar=rng.normal(-1.0, 0.2, latent),
            W=rng.normal(0, 1.0, (dim, latent)),
            b=rng.normal(0, 0.5, dim),
        )

    def write(self, path: Path, image: tuple[int, int, int] | None = None) -> Bundle:
        dim, latent = self.W.shape
        enc = _affine_graph(
            "encoder", "x", dim, {"z_mean": (self.A.T, self.c), "z_logvar": (np.zeros((dim, latent)), self.logvar)}
        )
        dec = _affine_graph("decoder", "z", latent, {"logits": (self.W.T, self.b)})
        return load_bundle(
            save_bundle(
                path,
                enc,
                dec,
                name="linear-bernoulli",
                version="1",
                input_shape=[dim],
                latent_dim=latent,
                likelihood="bernoulli",
                preprocessing={"shift": [0.0], "scale": [1.0]},
                **({"image": dict(zip(("channels", "height", "width"), image))} if image else {}),
            )
        )


def add_background(path: Path, model: LinearGaussian, encoder: Encoder = Encoder()) -> Bundle:
    """Writes `model` as the background bundle inside the bundle at `path` and names it in the manifest."""
    write_bundle(path / "background", model, encoder)
    hashes = {
        **load_bundle(path).manifest.sha256,
        f"background/{MANIFEST_FILE}": sha256_of(path / "background" / MANIFEST_FILE),
    }
    return load_bundle(update_manifest(path, background="background", sha256=hashes))


def add_calibration(
    path: Path, raw: np.ndarray, *, k: int = 100, seed: int = 0, standardize_on: np.ndarray | None = None
) -> Bundle:
    """Calibrates every score the bundle can serve on `raw` normal inputs, as vaeserve-train does (`combined`
    too, standardized on the other normal inputs `standardize_on`)."""
    bundle = load_bundle(path)
    cpu = RuntimeConfig(device="cpu")
    background = Engine(bundle.background, cpu) if bundle.background is not None else None
    scorer = AnomalyScorer(Engine(bundle, cpu), background)
    standardization = None
    if standardize_on is not None:
        standardization = scorer.standardize(scorer.engine.prepare(standardize_on), k=k, seed=seed, dataset="test")
    calibration = scorer.calibrate(
        scorer.engine.prepare(raw), k=k, seed=seed, dataset="test", standardization=standardization
    )
    return load_bundle(update_manifest(path, calibration=calibration.model_dump()))


@dataclass(frozen=True)
class LinearLogistic:
    """q(z|x) = N(A x + c, exp(logvar)), p(x|z) = discretized logistic(mean W z + b, scale exp(log_scale)) on
    levels 1/levels apart: checked against scipy's logistic CDF."""

    A: np.ndarray  # [L, D]
    c: np.ndarray
    logvar: np.ndarray
    W: np.ndarray  # [D, L]
    b: np.ndarray
    log_scale: np.ndarray  # [D]
    levels: int

    @staticmethod
    def random(dim: int = 12, latent: int = 3, levels: int = 255, seed: int = 0) -> LinearLogistic:
        rng = np.random.default_rng(seed)
        return LinearLogistic(
            A=rng.normal(0, 0.3, (latent, dim)),
            c=rng.normal(0, 0.1, latent),
            logvar=rng.normal(-1.0, 0.2, latent),
            W=rng.normal(0, 0.2, (dim, latent)),
            b=rng.uniform(0.2, 0.8, dim),
            log_scale=rng.uniform(-4.0, -1.5, dim),
            levels=levels,
        )

    def write(self, path: Path) -> Bundle:
        dim, latent = self.W.shape
        enc = _affine_graph(
            "encoder", "x", dim, {"z_mean": (self.A.T, self.c), "z_logvar": (np.zeros((dim, latent)), self.logvar)}
        )
        dec = _affine_graph(
            "decoder",
            "z",
            latent,
            {"mean": (self.W.T, self.b), "log_scale": (np.zeros((latent, dim)), self.log_scale)},
        )
        return load_bundle(
            save_bundle(
                path,
                enc,
                dec,
                name="linear-logistic",
                version="1",
                input_shape=[dim],
                latent_dim=latent,
                likelihood="logistic",
                preprocessing={"shift": [0.0], "scale": [1.0 / self.levels]},
            )
        )
