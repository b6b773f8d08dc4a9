"""Requests from Python arguments and typed results from replies, shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from vaeserve.api import codec
from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import ANOMALY_FIELDS, SCORE_COLUMNS, ScoreColumn
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.client._results import (
    AnomalyScores,
    Decoded,
    Encoded,
    ModelInfo,
    ModelStatus,
    Sampled,
    Scores,
    ServedBy,
    Typicality,
)

_LIKELIHOOD = {
    pb.LIKELIHOOD_BERNOULLI: "bernoulli",
    pb.LIKELIHOOD_GAUSSIAN: "gaussian",
    pb.LIKELIHOOD_LOGISTIC: "logistic",
}


def served_by(header: pb.ReplyHeader) -> ServedBy:
    return ServedBy(header.model_name, header.model_version, header.replica_id)


def _opt(tensor: pb.Tensor, present: bool) -> np.ndarray | None:
    return codec.from_proto(tensor) if present else None


def model_spec(model: str | None, version: str | None) -> pb.ModelSpec:
    return pb.ModelSpec(name=model or "", version=version or "")


def model_info(reply: pb.GetModelInfoResponse) -> ModelInfo:
    limits, defaults = reply.limits, reply.defaults
    return ModelInfo(
        name=reply.header.model_name,
        version=reply.header.model_version,
        input_shape=tuple(reply.input_shape),
        latent_dim=reply.latent_dim,
        likelihood=_LIKELIHOOD.get(reply.likelihood, "unknown"),
        manifest=Manifest.model_validate_json(reply.manifest_json),
        execution_provider=reply.execution_provider,
        limits={
            "max_batch": limits.max_batch,
            "max_k": limits.max_k,
            "max_samples": limits.max_samples,
            "max_in_flight": limits.max_in_flight,
            "max_message_bytes": limits.max_message_bytes,
        },
        defaults={"k": defaults.k, "seed": defaults.seed, "alpha": defaults.alpha},
        server_version=reply.server_version,
        served_by=served_by(reply.header),
        anomaly_scores={a.name: "" if a.available else a.reason for a in reply.anomaly_scores},
        default_anomaly_scores=tuple(defaults.anomaly_scores),
        warnings=tuple(reply.warnings),
    )


def encode_request(
    x: npt.ArrayLike, spec: pb.ModelSpec, *, n_samples: int, seed: int | None, resample: bool, proposals: int | None
) -> pb.EncodeRequest:
    request = pb.EncodeRequest(
        model=spec,
        x=codec.to_proto(np.asarray(x)),
        n_samples=n_samples,
        sampler=pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED if resample else pb.POSTERIOR_SAMPLER_UNSPECIFIED,
    )
    if seed is not None:
        request.seed = seed
    if proposals is not None:
        request.proposals = proposals
    return request


def encoded(reply: pb.EncodeResponse) -> Encoded:
    return Encoded(
        z_mean=codec.from_proto(reply.z_mean),
        z_logvar=codec.from_proto(reply.z_logvar),
        z_samples=_opt(reply.z_samples, reply.HasField("z_samples")),
        ess=_opt(reply.ess, reply.HasField("ess")),
        seed=reply.seed,
        served_by=served_by(reply.header),
    )


def decode_request(z: npt.ArrayLike, spec: pb.ModelSpec, *, sample: bool, seed: int | None) -> pb.DecodeRequest:
    request = pb.DecodeRequest(model=spec, z=codec.to_proto(np.asarray(z, dtype=np.float32)), sample=sample)
    if seed is not None:
        request.seed = seed
    return request


def _params(decoded: pb.Decoded) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    # A protobuf map has no order: sorted by name, so files and printed lines come in the same order every time.
    params = {name: codec.from_proto(decoded.params[name]) for name in sorted(decoded.params)}
    return params, _opt(decoded.x_sample, decoded.HasField("x_sample"))


def decoded(reply: pb.DecodeResponse) -> Decoded:
    params, x_sample = _params(reply.decoded)
    return Decoded(params=params, x_sample=x_sample, seed=reply.seed, served_by=served_by(reply.header))


def sample_request(n: int, spec: pb.ModelSpec, *, seed: int | None, sample_x: bool) -> pb.SampleRequest:
    request = pb.SampleRequest(model=spec, n=n, sample_x=sample_x)
    if seed is not None:
        request.seed = seed
    return request


def sampled(reply: pb.SampleResponse) -> Sampled:
    params, x_sample = _params(reply.decoded)
    return Sampled(
        z=codec.from_proto(reply.z),
        params=params,
        x_sample=x_sample,
        seed=reply.seed,
        served_by=served_by(reply.header),
    )


def score_request(
    x: npt.ArrayLike,
    spec: pb.ModelSpec,
    *,
    k: int | None,
    seed: int | None,
    prior_estimate: bool,
    per_dim: bool,
    reconstruction: bool,
    skip_anomaly: bool,
    alpha: float | None = None,
    anomaly_scores: Sequence[str] | None = None,
    typicality: bool = False,
    target_se: float | None = None,
    max_k: int | None = None,
    threshold_quantile: float | None = None,
) -> pb.ScoreRequest:
    request = pb.ScoreRequest(
        model=spec,
        x=codec.to_proto(np.asarray(x)),
        prior_estimate=prior_estimate,
        per_dim=per_dim,
        reconstruction=reconstruction,
        skip_anomaly=skip_anomaly,
        anomaly_scores=list(anomaly_scores or ()),
        typicality=typicality,
    )
    for name, value in (
        ("k", k),
        ("seed", seed),
        ("alpha", alpha),
        ("target_se", target_se),
        ("max_k", max_k),
        ("threshold_quantile", threshold_quantile),
    ):
        if value is not None:
            setattr(request, name, value)
    return request


def _column(reply: pb.ScoreResponse, column: ScoreColumn) -> np.ndarray | None:
    """A column's array, following its path into the reply; None where a message on the way is absent."""
    message: Message = reply
    for part in column.path:
        if not message.HasField(part):
            return None
        message = getattr(message, part)
    assert isinstance(message, pb.Tensor)
    return codec.from_proto(message, name=column.name)


def _anomaly(a: pb.Anomaly) -> AnomalyScores:
    arrays = {f.name: codec.from_proto(getattr(a, f.name), name=f"{a.name}.{f.name}") for f in ANOMALY_FIELDS}
    return AnomalyScores(
        name=a.name,
        **arrays,
        threshold=a.threshold,
        alpha=a.alpha,
        min_alpha=a.min_alpha,
        n_calibration=a.n_calibration,
        k=a.k,
    )


def _typicality(t: pb.Typicality) -> Typicality:
    return Typicality(
        batch_size=t.batch_size,
        mean_score=t.mean_score,
        expected=t.expected,
        threshold=t.threshold,
        p_value=t.p_value,
        is_atypical=t.is_atypical,
        alpha=t.alpha,
    )


def scores(reply: pb.ScoreResponse) -> Scores:
    columns: dict[str, Any] = {c.name: _column(reply, c) for c in SCORE_COLUMNS}
    has_anomaly = reply.HasField("anomaly")
    a = reply.anomaly
    return Scores(
        k=reply.k,
        seed=reply.seed,
        **columns,
        threshold=a.threshold if has_anomaly else None,
        anomaly_k=a.k if has_anomaly else None,
        per_dim=_opt(reply.per_dim, reply.HasField("per_dim")),
        reconstruction=_opt(reply.reconstruction, reply.HasField("reconstruction")),
        served_by=served_by(reply.header),
        anomalies={entry.name: _anomaly(entry) for entry in reply.anomalies},
        typicality=_typicality(reply.typicality) if reply.HasField("typicality") else None,
        warnings=tuple(reply.warnings),
    )


# By name rather than ModelState.Name(): a state added to a newer server is shown, not raised.
_STATE = {
    pb.MODEL_STATE_LOADING: "LOADING",
    pb.MODEL_STATE_READY: "READY",
    pb.MODEL_STATE_UNLOADING: "UNLOADING",
    pb.MODEL_STATE_FAILED: "FAILED",
}


def model_statuses(models: Iterable[pb.ModelStatus]) -> list[ModelStatus]:
    return [
        ModelStatus(
            name=m.name,
            version=m.version,
            state=_STATE.get(m.state, f"UNKNOWN ({m.state})"),
            reason=m.reason,
            path=m.path,
            in_flight=m.in_flight,
        )
        for m in models
    ]
