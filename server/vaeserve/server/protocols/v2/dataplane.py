"""How a VAE appears in the Open Inference Protocol, shared by the gRPC servicer and the HTTP routes.

For each served model `<name>` there are four V2 models:

- `<name>`: scoring. Input `x` (FP32, FP64, UINT8, INT32 or INT64; [B, *input_shape] or [B, D], raw
  units); parameters `k`, `seed`, `alpha` (or the older `threshold_quantile`), `anomaly_scores`
  (comma-separated names), `typicality`, `target_se` and `max_k`; outputs the score columns of
  `vaeserve.api.scores` (FP64 [B]; bool columns BOOL, `k_used` INT64) and, for every anomaly score the
  model serves, `<score>_score`, `<score>_percentile`, `<score>_p_value` and `<score>_is_anomaly`.
  Without requested outputs the reply has every column computed; the naive prior estimate is
  computed only when one of its outputs is asked for, a named anomaly score when one of its
  outputs is asked for or it is named in `anomaly_scores`.
- `<name>.encode`: `x` -> `z_mean`, `z_logvar` (and `z_samples` with parameter `n_samples`).
- `<name>.decode`: `z` -> the parameters of p(x|z) (and `x_sample` with parameter `sample`).
- `<name>.sample`: parameter `n` -> `z`, the parameters of p(x|z) (and `x_sample` with `sample_x`).

Each call goes to the served model exactly as the VaeService call does, so the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from typing import Any

import numpy as np

from vaeserve.api.scores import ANOMALY_FIELDS, ANOMALY_SCORES, SCORE_COLUMNS, anomaly_column
from vaeserve.server.boundary.guard import RequestInfo
from vaeserve.server.errors import InvalidArgument, ModelNotFound, NotReady
from vaeserve.server.protocols.v2.tensors import datatype_of
from vaeserve.server.repository.registry import ModelRegistry, ModelState
from vaeserve.server.serving.calls import DecodeCall, Decoded, EncodeCall, SampleCall, ScoreCall
from vaeserve.server.serving.model import ServedModel

__all__ = ["DataPlane", "Inferred", "TensorSpec", "split_name"]

Param = bool | int | float | str
KINDS = ("encode", "decode", "sample")
INPUT_TYPES = ("FP32", "FP64", "UINT8", "INT32", "INT64")
LATENT_TYPES = ("FP32", "FP64")
# Request parameters that clients of the protocol send on their own (tritonclient: binary_data_output).
RESERVED = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})
_PARAMETERS: dict[str, dict[str, type]] = {
    "score": {
        "k": int,
        "seed": int,
        "threshold_quantile": float,
        "alpha": float,
        "anomaly_scores": str,
        "typicality": bool,
        "target_se": float,
        "max_k": int,
    },
    "encode": {"n_samples": int, "seed": int},
    "decode": {"sample": bool, "seed": int},
    "sample": {"n": int, "seed": int, "sample_x": bool},
}
_COLUMN_OF = {c.v2_name: c for c in SCORE_COLUMNS}
_V2_TYPE = {"float64": "FP64", "bool": "BOOL", "int64": "INT64"}
# `<score>_<field>` output name -> (score, field), for every declared anomaly score
_NAMED = {anomaly_column(s.name, f.name): (s.name, f) for s in ANOMALY_SCORES for f in ANOMALY_FIELDS}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


@dataclass
class Inferred:
    model: ServedModel
    outputs: list[tuple[str, np.ndarray]]
    parameters: dict[str, Param] = field(default_factory=dict)


def split_name(v2_name: str) -> tuple[str, str]:
    """`digits.encode` -> ("digits", "encode"); `digits` -> ("digits", "score")."""
    base, _, suffix = v2_name.rpartition(".")
    return (base, suffix) if base and suffix in KINDS else (v2_name, "score")


def _decoded_specs(model: ServedModel) -> list[TensorSpec]:
    shape = (-1, *model.manifest.input_shape)
    names = [*model.manifest.decoder_outputs] + (["probs"] if model.manifest.mean_output == "probs" else [])
    return [TensorSpec(n, "FP32", shape) for n in [*names, "x_sample"]]


def signature(model: ServedModel, kind: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs a V2 model declares (ModelMetadata)."""
    m = model.manifest
    x = TensorSpec("x", "FP32", (-1, *m.input_shape))
    z = TensorSpec("z", "FP32", (-1, m.latent_dim))
    if kind == "encode":
        latent = [TensorSpec(n, "FP32", (-1, m.latent_dim)) for n in ("z_mean", "z_logvar")]
        return [x], [*latent, TensorSpec("z_samples", "FP32", (-1, -1, m.latent_dim))]
    if kind == "decode":
        return [z], _decoded_specs(model)
    if kind == "sample":
        return [], [z, *_decoded_specs(model)]
    groups = {"estimate", "prior", "adaptive"} | ({"ensemble"} if m.ensemble else set())
    columns = [TensorSpec(c.v2_name, _V2_TYPE[c.dtype], (-1,)) for c in SCORE_COLUMNS if c.group in groups]
    served = model.scorer.served()
    if served:
        columns += [TensorSpec(c.v2_name, _V2_TYPE[c.dtype], (-1,)) for c in SCORE_COLUMNS if c.group == "anomaly"]
    columns += [TensorSpec(name, _V2_TYPE[f.dtype], (-1,)) for name, (score, f) in _NAMED.items() if score in served]
    return [x], columns


class DataPlane:
    def __init__(self, registry: ModelRegistry, serving: Callable[[], bool]) -> None:
        self.registry = registry
        self._serving = serving

    # --- health and metadata --------------------------------------------------------------------

    def server_ready(self) -> bool:
        return self._serving()

    def model_ready(self, name: str, version: str) -> bool:
        """False for a model not ready or not served (gRPC answers ready=false; HTTP's route says 404)."""
        base, _ = split_name(name)
        try:
            self.registry.resolve(base, version)
        except (NotReady, ModelNotFound):
            return False
        return True

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return "vaeserve", package_version("vaeserve-server"), ["binary_tensor_data"]

    def model_metadata(self, name: str, version: str) -> tuple[str, list[str], list[TensorSpec], list[TensorSpec]]:
        base, kind = split_name(name)
        model = self.registry.resolve(base, version)
        versions = [e.version for e in self.registry.entries(base) if e.state is ModelState.READY and e.name == base]
        inputs, outputs = signature(model, kind)
        return name, versions, inputs, outputs

    # --- inference ------------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str,
        inputs: dict[str, np.ndarray],
        parameters: dict[str, Param],
        outputs: list[str] | None,
        info: RequestInfo,
        deadline: float | None = None,
    ) -> Inferred:
        base, kind = split_name(name)
        if not base:
            raise InvalidArgument("name the model (model_name is empty)")
        params = _parameters(name, kind, parameters)
        async with self.registry.lease(base, version, info) as model:
            declared_in, declared_out = signature(model, kind)
            expected = {s.name for s in declared_in}
            if set(inputs) != expected:
                raise InvalidArgument(
                    f"model {name} takes input(s) {sorted(expected) or 'none'}; the request has {sorted(inputs)}"
                )
            for spec in declared_in:
                accepted = INPUT_TYPES if spec.name == "x" else LATENT_TYPES
                if datatype_of(inputs[spec.name]) not in accepted:
                    raise InvalidArgument(f"input {spec.name} must be one of {', '.join(accepted)}")
            known = [s.name for s in declared_out]
            unknown = sorted(set(outputs or ()) - set(known))
            if unknown:
                raise InvalidArgument(f"model {name} has no output(s) {unknown}; its outputs are {known}")
            produced, extra = await _run(model, kind, inputs, params, outputs, deadline, info)
            chosen = outputs if outputs else [n for n in known if n in produced]
            for output in chosen:
                if output not in produced:
                    raise InvalidArgument(f"output {output} is not computed for this request ({_why(kind, output)})")
            return Inferred(model, [(n, produced[n]) for n in chosen], extra)


def _why(kind: str, output: str) -> str:
    return {
        "z_samples": "set parameter n_samples above 0",
        "x_sample": "set parameter sample (decode) or sample_x (sample) to true",
    }.get(output, f"not available from {kind}")


def _parameters(name: str, kind: str, given: dict[str, Param]) -> dict[str, Param]:
    allowed = _PARAMETERS[kind]
    out: dict[str, Param] = {}
    for key, value in given.items():
        if key in RESERVED:
            continue
        want = allowed.get(key)
        if want is None:
            raise InvalidArgument(f"model {name} takes parameters {sorted(allowed)}; {key!r} is not one of them")
        ok = isinstance(value, bool) if want is bool else isinstance(value, want | int) and not isinstance(value, bool)
        if not ok:
            raise InvalidArgument(f"parameter {key} must be {want.__name__}, got {value!r}")
        if want is int and int(value) < 0:
            raise InvalidArgument(f"parameter {key} must be >= 0, got {value}")
        out[key] = want(value)
    return out


def _decoded(decoded: Decoded) -> dict[str, np.ndarray]:
    produced = dict(decoded.params)
    if decoded.x_sample is not None:
        produced["x_sample"] = decoded.x_sample
    return produced


async def _run(
    model: ServedModel,
    kind: str,
    inputs: dict[str, np.ndarray],
    params: dict[str, Param],
    outputs: list[str] | None,
    deadline: float | None,
    info: RequestInfo,
) -> tuple[dict[str, np.ndarray], dict[str, Param]]:
    seed = int(params["seed"]) if "seed" in params else None
    if kind == "encode":
        encoded = await model.encode(EncodeCall(inputs["x"], int(params.get("n_samples", 0)), seed), deadline)
        produced = {"z_mean": encoded.z_mean, "z_logvar": encoded.z_logvar}
        if encoded.z_samples is not None:
            produced["z_samples"] = encoded.z_samples
        return produced, {"seed": encoded.seed}
    if kind == "decode":
        decoded = await model.decode(DecodeCall(inputs["z"], bool(params.get("sample", False)), seed))
        return _decoded(decoded), {"seed": decoded.seed}
    if kind == "sample":
        if "n" not in params:
            raise InvalidArgument("sample takes parameter n: how many draws from the prior")
        sampled = await model.sample(SampleCall(int(params["n"]), seed, bool(params.get("sample_x", False))))
        return {"z": sampled.z, **_decoded(sampled.decoded)}, {"seed": sampled.decoded.seed}
    wanted = {_COLUMN_OF[o].group for o in outputs or () if o in _COLUMN_OF}
    # Scores named in the parameter, then the model's defaults where their columns are asked for by
    # name, then those whose own columns are asked for: all computed whatever K (a second pass).
    named = [v.strip() for v in str(params.get("anomaly_scores", "")).split(",") if v.strip()]
    if "anomaly" in wanted and not named:
        named = list(model.defaults.anomaly_scores)
    named += [_NAMED[o][0] for o in outputs or () if o in _NAMED and _NAMED[o][0] not in named]
    call = ScoreCall(
        inputs["x"],
        k=_opt(params, "k", int),
        seed=seed,
        prior_estimate="prior" in wanted,
        anomaly=not outputs or "anomaly" in wanted or bool(named),
        threshold_quantile=_opt(params, "threshold_quantile", float),
        alpha=_opt(params, "alpha", float),
        anomaly_scores=tuple(named),
        typicality=bool(params.get("typicality", False)),
        target_se=_opt(params, "target_se", float),
        max_k=_opt(params, "max_k", int),
    )
    scored = await model.score(call, deadline, info)
    columns = scored.columns()
    produced = {c.v2_name: columns[c.name] for c in SCORE_COLUMNS if c.name in columns}
    for anomaly in scored.anomalies:
        produced.update({anomaly_column(anomaly.name, f.name): anomaly.field(f.name) for f in ANOMALY_FIELDS})
    extra: dict[str, Param] = {"k": scored.options.k, "seed": scored.seed}
    if scored.anomalies:
        first = scored.anomalies[0]
        extra.update(anomaly_score=first.name, alpha=first.alpha, threshold=first.threshold)
    if scored.typicality is not None:
        t = scored.typicality
        extra.update(
            typicality_p_value=t.p_value,
            typicality_is_atypical=t.is_atypical,
            typicality_mean_score=t.mean_score,
            typicality_expected=t.expected,
        )
    if scored.warnings:
        extra["warnings"] = " | ".join(scored.warnings)
    return produced, extra


def _opt(params: dict[str, Param], key: str, kind: type[int] | type[float]) -> Any:
    return kind(params[key]) if key in params else None
