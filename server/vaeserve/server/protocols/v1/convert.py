"""Named conversions between VaeService messages and the served model's protocol-free calls and results.

`*_from_pb` decode a request's tensors (dtype, shape and byte checks of the codec) and fields into
a call in raw units, with unset fields left None for the model's defaults; `*_to_pb` build replies.
Pure functions: no limits, no defaults, no numbers computed here; a reply's header takes the request id
the servicer was given by the request guard.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np

from vaeserve.api import codec
from vaeserve.api.scores import ANOMALY_FIELDS, ANOMALY_SCORES, SCORE_COLUMNS
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.server.anomaly import AnomalyResult, TypicalityResult
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.repository.registry import Entry, ModelState
from vaeserve.server.serving.calls import (
    DecodeCall,
    Decoded,
    EncodeCall,
    Encoded,
    SampleCall,
    Sampled,
    ScoreCall,
    Scored,
)
from vaeserve.server.serving.model import ServedModel

__all__ = [
    "decode_from_pb",
    "decode_to_pb",
    "encode_from_pb",
    "encode_to_pb",
    "header",
    "model_info_to_pb",
    "model_statuses_to_pb",
    "sample_from_pb",
    "sample_to_pb",
    "score_from_pb",
    "score_to_pb",
]

INPUT_DTYPES = frozenset(np.dtype(d) for d in (np.float32, np.float64, np.uint8, np.int32, np.int64))
LATENT_DTYPES = frozenset(np.dtype(d) for d in (np.float32, np.float64))
_LIKELIHOOD = {
    "bernoulli": pb.LIKELIHOOD_BERNOULLI,
    "gaussian": pb.LIKELIHOOD_GAUSSIAN,
    "logistic": pb.LIKELIHOOD_LOGISTIC,
}
_STATE = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
SERVER_VERSION = version("vaeserve-server")


def header(model: ServedModel, request_id: str) -> pb.ReplyHeader:
    return pb.ReplyHeader(
        model_name=model.name, model_version=model.version, replica_id=model.replica_id, request_id=request_id
    )


def _inputs(request: pb.EncodeRequest | pb.ScoreRequest) -> np.ndarray:
    if not request.HasField("x"):
        raise InvalidArgument("x is missing: send a batch of inputs as a tensor")
    return codec.from_proto(request.x, name="x", dtypes=INPUT_DTYPES)


def _seed(request: pb.EncodeRequest | pb.DecodeRequest | pb.SampleRequest | pb.ScoreRequest) -> int | None:
    return int(request.seed) if request.HasField("seed") else None


def model_info_to_pb(model: ServedModel, request_id: str) -> pb.GetModelInfoResponse:
    m, limits, defaults = model.manifest, model.limits, model.defaults
    return pb.GetModelInfoResponse(
        header=header(model, request_id),
        input_shape=m.input_shape,
        latent_dim=m.latent_dim,
        likelihood=_LIKELIHOOD[m.likelihood],
        manifest_json=m.model_dump_json(exclude_none=True),
        execution_provider=model.engine.provider,
        limits=pb.Limits(
            max_batch=limits.max_batch,
            max_k=limits.max_k,
            max_samples=limits.max_samples,
            max_in_flight=limits.max_in_flight,
            max_message_bytes=limits.max_message_bytes,
        ),
        defaults=pb.Defaults(
            k=defaults.k,
            seed=defaults.seed,
            threshold_quantile=1.0 - defaults.alpha,
            alpha=defaults.alpha,
            anomaly_scores=defaults.anomaly_scores,
        ),
        server_version=SERVER_VERSION,
        warnings=model.warnings,
        anomaly_scores=[
            pb.AnomalyScoreInfo(
                name=spec.name,
                meaning=spec.meaning,
                available=reason is None,
                reason=reason or "",
                n_calibration=m.calibration.n if m.calibration and spec.name in m.calibration.scores else 0,
            )
            for spec in ANOMALY_SCORES
            for reason in [model.scorer.status()[spec.name]]
        ],
    )


def encode_from_pb(request: pb.EncodeRequest) -> EncodeCall:
    return EncodeCall(
        x=_inputs(request),
        n_samples=int(request.n_samples),
        seed=_seed(request),
        resample=request.sampler == pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED,
        proposals=int(request.proposals) if request.HasField("proposals") else None,
    )


def encode_to_pb(model: ServedModel, encoded: Encoded, request_id: str) -> pb.EncodeResponse:
    reply = pb.EncodeResponse(
        header=header(model, request_id),
        z_mean=codec.to_proto(encoded.z_mean),
        z_logvar=codec.to_proto(encoded.z_logvar),
        seed=encoded.seed,
    )
    if encoded.z_samples is not None:
        reply.z_samples.CopyFrom(codec.to_proto(encoded.z_samples))
    if encoded.ess is not None:
        reply.ess.CopyFrom(codec.to_proto(encoded.ess))
    return reply


def decode_from_pb(request: pb.DecodeRequest) -> DecodeCall:
    if not request.HasField("z"):
        raise InvalidArgument("z is missing: send a batch of latent vectors as a tensor")
    z = codec.from_proto(request.z, name="z", dtypes=LATENT_DTYPES)
    return DecodeCall(z=z, sample=request.sample, seed=_seed(request))


def _decoded_to_pb(decoded: Decoded) -> pb.Decoded:
    message = pb.Decoded()
    for name, value in decoded.params.items():
        message.params[name].CopyFrom(codec.to_proto(value))
    if decoded.x_sample is not None:
        message.x_sample.CopyFrom(codec.to_proto(decoded.x_sample))
    return message


def decode_to_pb(model: ServedModel, decoded: Decoded, request_id: str) -> pb.DecodeResponse:
    return pb.DecodeResponse(header=header(model, request_id), decoded=_decoded_to_pb(decoded), seed=decoded.seed)


def sample_from_pb(request: pb.SampleRequest) -> SampleCall:
    return SampleCall(n=int(request.n), seed=_seed(request), sample_x=request.sample_x)


def sample_to_pb(model: ServedModel, sampled: Sampled, request_id: str) -> pb.SampleResponse:
    return pb.SampleResponse(
        header=header(model, request_id),
        z=codec.to_proto(sampled.z),
        decoded=_decoded_to_pb(sampled.decoded),
        seed=sampled.decoded.seed,
    )


def score_from_pb(request: pb.ScoreRequest) -> ScoreCall:
    return ScoreCall(
        x=_inputs(request),
        k=int(request.k) if request.HasField("k") else None,
        seed=_seed(request),
        prior_estimate=request.prior_estimate,
        per_dim=request.per_dim,
        reconstruction=request.reconstruction,
        anomaly=not request.skip_anomaly,
        threshold_quantile=request.threshold_quantile if request.HasField("threshold_quantile") else None,
        alpha=request.alpha if request.HasField("alpha") else None,
        anomaly_scores=tuple(request.anomaly_scores),
        typicality=request.typicality,
        target_se=request.target_se if request.HasField("target_se") else None,
        max_k=int(request.max_k) if request.HasField("max_k") else None,
    )


def _anomaly_to_pb(a: AnomalyResult, message: pb.Anomaly) -> pb.Anomaly:
    for f in ANOMALY_FIELDS:
        getattr(message, f.name).CopyFrom(codec.to_proto(a.field(f.name)))
    message.name = a.name
    message.threshold = a.threshold
    message.threshold_quantile = 1.0 - a.alpha
    message.alpha = a.alpha
    message.min_alpha = a.min_alpha
    message.n_calibration = a.n_calibration
    message.k = a.k
    message.estimator = a.estimator
    return message


def _typicality_to_pb(t: TypicalityResult) -> pb.Typicality:
    return pb.Typicality(
        batch_size=t.batch_size,
        mean_score=t.mean_score,
        expected=t.expected,
        threshold=t.threshold,
        p_value=t.p_value,
        is_atypical=t.is_atypical,
        alpha=t.alpha,
        bootstraps=t.bootstraps,
    )


def score_to_pb(model: ServedModel, scored: Scored, request_id: str) -> pb.ScoreResponse:
    result = scored.result
    reply = pb.ScoreResponse(
        header=header(model, request_id), k=scored.options.k, seed=scored.seed, warnings=scored.warnings
    )
    columns = scored.columns()
    for column in SCORE_COLUMNS:
        value = columns.get(column.name)
        if value is not None and column.group != "anomaly":
            *parents, leaf = column.path
            message = reply
            for part in parents:
                message = getattr(message, part)
            getattr(message, leaf).CopyFrom(codec.to_proto(value))
    for i, anomaly in enumerate(scored.anomalies):
        _anomaly_to_pb(anomaly, reply.anomalies.add())
        if i == 0:
            _anomaly_to_pb(anomaly, reply.anomaly)
    if scored.typicality is not None:
        reply.typicality.CopyFrom(_typicality_to_pb(scored.typicality))
    if result.per_dim is not None:
        reply.per_dim.CopyFrom(codec.to_proto(result.per_dim))
    if result.reconstruction is not None:
        reply.reconstruction.CopyFrom(codec.to_proto(result.reconstruction))
    return reply


def model_statuses_to_pb(entries: list[Entry]) -> list[pb.ModelStatus]:
    return [
        pb.ModelStatus(
            name=e.name,
            version=e.version,
            state=_STATE[e.state],
            reason=e.reason,
            path=str(e.path),
            in_flight=e.in_flight,
        )
        for e in entries
    ]
