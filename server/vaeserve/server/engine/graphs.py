"""Fused scoring graphs, composed at load time from a bundle's encoder and decoder.

One onnxruntime run maps model-space inputs x [B, D] and standard normal noise
eps [E, C, L] (E = 1: the same draws for every input; or E = B) to, per input and draw,
log p(x|z_k) and |z_k|^2. Encoder, reparameterization, decoder and likelihood all run
inside onnxruntime, so the K-fold decoder output never reaches Python: Python only merges
[B, C] numbers across chunks of K.

The "prior" variant skips the encoder (z = eps ~ p(z)): the naive Monte Carlo estimate.
The Gaussian likelihood leaves out its constant -log(2 pi) / 2 per dimension, which the
engine adds in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper, version_converter

from vaeserve.api.manifest import DECODER_INPUT, ENCODER_INPUT, ENCODER_OUTPUTS
from vaeserve.server.engine.bundle import Bundle

__all__ = [
    "LOG_LIK",
    "MIN_OPSET",
    "PER_DIM",
    "SQ_ERR",
    "Z_LOGVAR",
    "Z_MEAN",
    "Z_SQ",
    "Variant",
    "build_score_graph",
]

MIN_OPSET = 18  # Reduce* ops take their axes as an input
LOG_LIK = "log_px_given_z"  # [B, C]
Z_SQ = "z_sq"  # [B, C], posterior variant only
Z_MEAN = "z_mean"  # [B, L], posterior variant only
Z_LOGVAR = "z_logvar"  # [B, L], posterior variant only
PER_DIM = "per_dim_sum"  # [B, D]: log p(x_d|z_k) summed over the chunk's draws
SQ_ERR = "sq_err"  # [B, C]: ||x - E[x|z_k]||^2, the reconstruction anomaly score's draws


@dataclass(frozen=True)
class Variant:
    proposal: Literal["posterior", "prior"]
    per_dim: bool = False
    sq_err: bool = False

    @property
    def outputs(self) -> list[str]:
        names = [LOG_LIK] + ([Z_SQ, Z_MEAN, Z_LOGVAR] if self.proposal == "posterior" else [])
        return names + ([PER_DIM] if self.per_dim else []) + ([SQ_ERR] if self.sq_err else [])


class _Builder:
    """Accumulates glue nodes and constants with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"glue/{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self._name(hint)
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        output = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output


def build_score_graph(bundle: Bundle, variant: Variant) -> onnx.ModelProto:
    manifest = bundle.manifest
    dim, latent = manifest.dim, manifest.latent_dim
    encoder, decoder, opsets = _aligned(bundle.encoder, bundle.decoder)
    encoder = compose.add_prefix(encoder, "encoder/")
    decoder = compose.add_prefix(decoder, "decoder/")

    g = _Builder()
    i64 = np.int64
    axis1, axis2 = g.const(np.array([1], i64), "axis1"), g.const(np.array([2], i64), "axis2")

    # z: [B, C, L] from q(z|x) = N(mu, exp(logvar)), or eps itself for the prior variant.
    parts: list[onnx.GraphProto] = []
    if variant.proposal == "posterior":
        g.op(
            "Reshape",
            "x",
            g.const(np.array([-1, *manifest.input_shape], i64), "input_shape"),
            out=f"encoder/{ENCODER_INPUT}",
        )
        parts.append(encoder.graph)
        z_mean, z_logvar = (f"encoder/{name}" for name in ENCODER_OUTPUTS)
        g.op("Identity", z_mean, out=Z_MEAN)
        g.op("Identity", z_logvar, out=Z_LOGVAR)
        std = g.op("Exp", g.op("Mul", Z_LOGVAR, g.const(np.array(0.5, np.float32), "half")))
        z = g.op("Add", g.op("Unsqueeze", Z_MEAN, axis1), g.op("Mul", g.op("Unsqueeze", std, axis1), "eps"))
        g.op("ReduceSum", g.op("Mul", z, z), axis2, out=Z_SQ, keepdims=0)
    else:
        z = "eps"
    g.op("Reshape", z, g.const(np.array([-1, latent], i64), "flat_latent"), out=f"decoder/{DECODER_INPUT}")
    parts.append(decoder.graph)

    # Decoder outputs [B*C, *input_shape] -> [B, C, D]; x [B, D] -> [B, 1, D].
    draws = g.op("Slice", g.op("Shape", "eps"), axis1, g.const(np.array([2], i64), "two"))
    to_bcd = g.op("Concat", g.const(np.array([-1], i64), "minus1"), draws, g.const(np.array([dim], i64), "dim"), axis=0)
    x3 = g.op("Unsqueeze", "x", axis1)
    elementwise = None
    if manifest.likelihood == "bernoulli":
        (logits_name,) = manifest.decoder_outputs
        logits = g.op("Reshape", f"decoder/{logits_name}", to_bcd)
        if variant.per_dim:
            elementwise = _bernoulli_elementwise(g, x3, logits)
        else:
            _bernoulli_sum(g, "x", logits, dim, out=LOG_LIK)
        if variant.sq_err:
            miss = g.op("Sub", x3, g.op("Sigmoid", logits))
            g.op("ReduceSum", g.op("Mul", miss, miss), axis2, out=SQ_ERR, keepdims=0)
    elif manifest.likelihood == "logistic":
        mean_name, log_scale_name = manifest.decoder_outputs
        mean = g.op("Reshape", f"decoder/{mean_name}", to_bcd)
        log_scale = g.op("Reshape", f"decoder/{log_scale_name}", to_bcd)
        diff = g.op("Sub", x3, mean)
        elementwise = _logistic_elementwise(g, x3, diff, log_scale, manifest.level_width)
        if variant.sq_err:  # E[x|z] lies in [0, 1]: an end level's mean may run far past it (its bin is open)
            miss = g.op(
                "Sub",
                x3,
                g.op(
                    "Clip", mean, g.const(np.array(0.0, np.float32), "zero"), g.const(np.array(1.0, np.float32), "one")
                ),
            )
            g.op("ReduceSum", g.op("Mul", miss, miss), axis2, out=SQ_ERR, keepdims=0)
    else:
        mean_name, logvar_name = manifest.decoder_outputs
        mean = g.op("Reshape", f"decoder/{mean_name}", to_bcd)
        logvar = g.op("Reshape", f"decoder/{logvar_name}", to_bcd)
        diff = g.op("Sub", x3, mean)
        if variant.sq_err:
            g.op("ReduceSum", g.op("Mul", diff, diff), axis2, out=SQ_ERR, keepdims=0)
        quad = g.op("Mul", g.op("Mul", diff, diff), g.op("Exp", g.op("Neg", logvar)))
        elementwise = g.op("Mul", g.op("Add", logvar, quad), g.const(np.array(-0.5, np.float32), "minus_half"))
    if elementwise is not None:
        g.op("ReduceSum", elementwise, axis2, out=LOG_LIK, keepdims=0)
        if variant.per_dim:
            g.op("ReduceSum", elementwise, axis1, out=PER_DIM, keepdims=0)

    float_in = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", float_in, ["batch", dim]),
        helper.make_tensor_value_info("eps", float_in, ["noise_rows", "draws", latent]),
    ]
    shapes: dict[str, list[str | int]] = {
        LOG_LIK: ["batch", "draws"],
        Z_SQ: ["batch", "draws"],
        Z_MEAN: ["batch", latent],
        Z_LOGVAR: ["batch", latent],
        PER_DIM: ["batch", dim],
        SQ_ERR: ["batch", "draws"],
    }
    outputs = [helper.make_tensor_value_info(name, float_in, shapes[name]) for name in variant.outputs]
    nodes = [n for part in parts for n in part.node]
    used = {i for n in g.nodes for i in n.input}
    initializers = [t for part in parts for t in part.initializer] + [c for c in g.constants if c.name in used]
    # The checker wants every input produced before use; glue sits before and after the sub-graphs.
    graph = helper.make_graph(
        _topological(g.nodes + nodes, inputs=["x", "eps"], initializers={t.name for t in initializers}),
        f"{bundle.manifest.name}-score-{variant.proposal}{'-per-dim' if variant.per_dim else ''}"
        f"{'-sq-err' if variant.sq_err else ''}",
        inputs,
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=opsets, producer_name="vaeserve")
    model.ir_version = max(bundle.encoder.ir_version, bundle.decoder.ir_version, 8)
    functions = [f for part in (encoder, decoder) for f in part.functions]
    model.functions.extend(functions)
    onnx.checker.check_model(model)
    return model


def _bernoulli_elementwise(g: _Builder, x: str, logits: str) -> str:
    """log p(x_d|z) = x l - softplus(l) = min(x l, x l - l) + log sigmoid(|l|), for x in [0, 1].

    onnxruntime's Softplus is scalar code; Sigmoid is vectorised and, on |l|, never far from 1
    (where it saturates the error is below exp(-17) per dimension).
    """
    xl = g.op("Mul", x, logits)
    return g.op("Add", g.op("Min", xl, g.op("Sub", xl, logits)), g.op("Log", g.op("Sigmoid", g.op("Abs", logits))))


def _softplus(g: _Builder, t: str) -> str:
    """log(1 + e^t) = relu(t) + log(1 + e^-|t|), in vectorised ops (onnxruntime's Softplus is scalar code)."""
    one = g.const(np.array(1.0, np.float32), "one")
    return g.op("Add", g.op("Relu", t), g.op("Log", g.op("Add", one, g.op("Exp", g.op("Neg", g.op("Abs", t))))))


def _logistic_elementwise(g: _Builder, x: str, diff: str, log_scale: str, width: float) -> str:
    """log P(x | mean, scale) of the discretized logistic: the logistic's mass on [x - w/2, x + w/2], the
    lowest level's bin open to -inf and the highest's to +inf (x in [0, 1] on levels w apart).

    With a = (x - mean + w/2) / s and b = a - w/s: sigma(a) - sigma(b) = sigma(a) (1 - sigma(b)) (1 - e^(-w/s)),
    so log P = -softplus(-a) [not top] - softplus(b) [not bottom] + log(1 - e^(-w/s)) [neither]: no
    difference of two nearly equal numbers is ever taken.
    """
    f32 = np.float32
    inv_s = g.op("Exp", g.op("Neg", log_scale))
    a = g.op("Mul", g.op("Add", diff, g.const(np.array(width / 2, f32), "half_width")), inv_s)
    eps = g.op("Mul", g.const(np.array(width, f32), "width"), inv_s)  # w / s
    b = g.op("Sub", a, eps)
    one = g.const(np.array(1.0, f32), "one")
    # log(1 - e^-eps): for eps below 1e-3 use log(eps) - eps / 2 (1 - e^-eps rounds badly in float32).
    small = g.op("Less", eps, g.const(np.array(1e-3, f32), "small"))
    exact = g.op(
        "Log", g.op("Sub", one, g.op("Exp", g.op("Neg", g.op("Max", eps, g.const(np.array(1e-3, f32), "floor")))))
    )
    approx = g.op("Sub", g.op("Log", eps), g.op("Mul", eps, g.const(np.array(0.5, f32), "half")))
    log_mass = g.op("Where", small, approx, exact)
    not_bottom = g.op("Cast", g.op("Greater", x, g.const(np.array(width / 2, f32), "bottom")), to=TensorProto.FLOAT)
    not_top = g.op("Cast", g.op("Less", x, g.const(np.array(1 - width / 2, f32), "top")), to=TensorProto.FLOAT)
    upper = g.op("Mul", not_top, g.op("Neg", _softplus(g, g.op("Neg", a))))
    lower = g.op("Mul", not_bottom, g.op("Neg", _softplus(g, b)))
    inner = g.op("Mul", g.op("Mul", not_top, not_bottom), log_mass)
    return g.op("Add", g.op("Add", upper, lower), inner)


def _bernoulli_sum(g: _Builder, x: str, logits: str, dim: int, out: str) -> str:
    """sum_d log p(x_d|z) for logits [E, C, D] and x [B, D] -> [B, C], with few passes over the logits.

    sum_d x l  -  sum_d relu(l)  +  sum_d log sigmoid(|l|), where sum relu(l) = (sum l + sum |l|) / 2,
    the first sum is a batched matrix-vector product, and the logs are taken of products over groups
    of up to 64 dimensions (each factor lies in [0.5, 1], so no product underflows).
    """
    axis2, last = g.const(np.array([2], np.int64), "axis2"), g.const(np.array([-1], np.int64), "last")
    xl = g.op("Squeeze", g.op("MatMul", logits, g.op("Unsqueeze", x, last)), last)  # [B, C]
    magnitude = g.op("Abs", logits)
    relu_sum = g.op(
        "Mul",
        g.op("Add", g.op("ReduceSum", logits, axis2, keepdims=0), g.op("ReduceSum", magnitude, axis2, keepdims=0)),
        g.const(np.array(0.5, np.float32), "half"),
    )
    group = max(d for d in range(1, min(dim, 64) + 1) if dim % d == 0)
    grouped = g.op(
        "Reshape", g.op("Sigmoid", magnitude), g.const(np.array([0, 0, dim // group, group], np.int64), "groups")
    )
    log_sigmoid_sum = g.op(
        "ReduceSum",
        g.op("Log", g.op("ReduceProd", grouped, g.const(np.array([3], np.int64), "axis3"), keepdims=0)),
        axis2,
        keepdims=0,
    )
    return g.op("Add", g.op("Sub", xl, relu_sum), log_sigmoid_sum, out=out)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)


def _aligned(
    encoder: onnx.ModelProto, decoder: onnx.ModelProto
) -> tuple[onnx.ModelProto, onnx.ModelProto, list[onnx.OperatorSetIdProto]]:
    """Brings both graphs to one default-domain opset (at least MIN_OPSET, for the glue)."""
    target = max(MIN_OPSET, _default_opset(encoder), _default_opset(decoder))
    converted = [
        m if _default_opset(m) == target else version_converter.convert_version(m, target) for m in (encoder, decoder)
    ]
    versions: dict[str, int] = {"": target}
    for model in converted:
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    return converted[0], converted[1], [helper.make_opsetid(d, v) for d, v in versions.items()]


def _topological(nodes: list[onnx.NodeProto], inputs: list[str], initializers: set[str]) -> list[onnx.NodeProto]:
    """Orders nodes so every input is produced before use (the checker requires it)."""
    ready = set(inputs) | initializers | {""}
    pending, ordered = list(nodes), []
    while pending:
        still = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            missing = sorted({i for n in still for i in n.input if i not in ready})
            raise ValueError(f"fused graph has unresolved inputs: {missing[:5]}")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = still
    return ordered
