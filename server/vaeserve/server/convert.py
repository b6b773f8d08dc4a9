"""Named conversions between protobuf messages and the engine's numpy world.

`*_from_pb` functions decode and check a request (dtype, shape, values, limits) and raise
InvalidArgument / LimitExceeded with a message that says what was wrong; `*_to_pb`
functions build replies. No numbers are computed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.model import ServedModel
from vaeserve.server.results import ScoreOptions, ScoreResult
from vaeserve.server.status import request_id

__all__ = [
    "DecodeCall",
    "EncodeCall",
    "SampleCall",
    "ScoreCall",
    "decode_from_pb",
    "decoded_to_pb",
    "encode_from_pb",
    "encode_to_pb",
    "header",
    "model_info_to_pb",
    "sample_from_pb",
    "score_from_pb",
    "score_to_pb",
]

INPUT_DTYPES = frozenset(np.dtype(d) for d in (np.float32, np.float64, np.uint8, np.int32, np.int64))
LATENT_DTYPES = frozenset(np.dtype(d) for d in (np.float32, np.float64))
_LIKELIHOOD = {"bernoulli": pb.LIKELIHOOD_BERNOULLI, "gaussian": pb.LIKELIHOOD_GAUSSIAN}
SERVER_VERSION = version("vaeserve-server")


def header(model: ServedModel) -> pb.ReplyHeader:
    return pb.ReplyHeader(
        model_name=model.manifest.name,
        model_version=model.manifest.version,
        replica_id=model.replica_id,
        request_id=request_id(),
    )


def _inputs(tensor: pb.Tensor, has: bool, model: ServedModel) -> np.ndarray:
    if not has:
        raise InvalidArgument("x is missing: send a batch of inputs as a tensor")
    raw = codec.from_proto(tensor, name="x", dtypes=INPUT_DTYPES)
    if raw.ndim >= 1:
        model.check_batch(raw.shape[0])
    return model.engine.prepare(raw)


def _seed(request: pb.EncodeRequest | pb.DecodeRequest | pb.SampleRequest | pb.ScoreRequest, model: ServedModel) -> int:
    return int(request.seed) if request.HasField("seed") else model.defaults.seed


def model_info_to_pb(model: ServedModel, provider: str) -> pb.GetModelInfoResponse:
    m, limits, defaults = model.manifest, model.limits, model.defaults
    return pb.GetModelInfoResponse(
        header=header(model),
        input_shape=m.input_shape,
        latent_dim=m.latent_dim,
        likelihood=_LIKELIHOOD[m.likelihood],
        manifest_json=m.model_dump_json(exclude_none=True),
        execution_provider=provider,
        limits=pb.Limits(
            max_batch=limits.max_batch,
            max_k=limits.max_k,
            max_samples=limits.max_samples,
            max_in_flight=limits.max_in_flight,
            max_message_bytes=limits.max_message_bytes,
        ),
        defaults=pb.Defaults(k=defaults.k, seed=defaults.seed, threshold_quantile=defaults.threshold_quantile),
        server_version=SERVER_VERSION,
    )


@dataclass(frozen=True)
class EncodeCall:
    x: np.ndarray
    n_samples: int
    seed: int
    resample: bool
    proposals: int


def encode_from_pb(request: pb.EncodeRequest, model: ServedModel) -> EncodeCall:
    x = _inputs(request.x, request.HasField("x"), model)
    n = int(request.n_samples)
    model.check_samples(n * len(x), f"{len(x)} inputs x n_samples={n}")
    resample = request.sampler == pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED
    proposals = int(request.proposals) if request.HasField("proposals") else model.defaults.k
    if resample:
        if n < 1:
            raise InvalidArgument("importance resampling needs n_samples >= 1")
        model.check_k(proposals, "proposals")
        model.check_samples(proposals * len(x) // 10, f"{len(x)} inputs x proposals={proposals} / 10")
    model.check_reply(4 * len(x) * model.manifest.latent_dim * (2 + n), f"{len(x)} inputs x n_samples={n}")
    return EncodeCall(x, n, _seed(request, model), resample, proposals)


def encode_to_pb(
    model: ServedModel,
    call: EncodeCall,
    mean: np.ndarray,
    logvar: np.ndarray,
    samples: np.ndarray | None,
    ess: np.ndarray | None,
) -> pb.EncodeResponse:
    reply = pb.EncodeResponse(
        header=header(model), z_mean=codec.to_proto(mean), z_logvar=codec.to_proto(logvar), seed=call.seed
    )
    if samples is not None:
        reply.z_samples.CopyFrom(codec.to_proto(samples))
    if ess is not None:
        reply.ess.CopyFrom(codec.to_proto(ess))
    return reply


@dataclass(frozen=True)
class DecodeCall:
    z: np.ndarray
    sample: bool
    seed: int


def decode_from_pb(request: pb.DecodeRequest, model: ServedModel) -> DecodeCall:
    if not request.HasField("z"):
        raise InvalidArgument("z is missing: send a batch of latent vectors as a tensor")
    z = codec.from_proto(request.z, name="z", dtypes=LATENT_DTYPES, shapes=[(None, model.manifest.latent_dim)])
    model.check_batch(len(z), "z")
    model.check_reply(_decoded_bytes(model, len(z), request.sample), f"decoding {len(z)} latents")
    return DecodeCall(np.asarray(z, dtype=np.float32), request.sample, _seed(request, model))


def _decoded_bytes(model: ServedModel, n: int, sample: bool) -> int:
    """Bytes of a Decoded reply: two float32 parameter tensors (and a sample) per row, and some framing."""
    return 4 * n * model.manifest.dim * (2 + int(sample)) + 4096


def decoded_to_pb(params: dict[str, np.ndarray], x_sample: np.ndarray | None) -> pb.Decoded:
    decoded = pb.Decoded()
    for name, value in params.items():
        decoded.params[name].CopyFrom(codec.to_proto(value))
    if x_sample is not None:
        decoded.x_sample.CopyFrom(codec.to_proto(x_sample))
    return decoded


@dataclass(frozen=True)
class SampleCall:
    n: int
    seed: int
    sample_x: bool


def sample_from_pb(request: pb.SampleRequest, model: ServedModel) -> SampleCall:
    if request.n < 1:
        raise InvalidArgument("n must be at least 1")
    model.check_samples(int(request.n), f"n={request.n}")
    z_bytes = 4 * int(request.n) * model.manifest.latent_dim
    model.check_reply(_decoded_bytes(model, int(request.n), request.sample_x) + z_bytes, f"n={request.n} samples")
    return SampleCall(int(request.n), _seed(request, model), request.sample_x)


@dataclass(frozen=True)
class ScoreCall:
    x: np.ndarray
    options: ScoreOptions
    seed: int


def score_from_pb(request: pb.ScoreRequest, model: ServedModel) -> ScoreCall:
    k = int(request.k) if request.HasField("k") else model.defaults.k
    model.check_k(k)
    quantile = (
        request.threshold_quantile if request.HasField("threshold_quantile") else model.defaults.threshold_quantile
    )
    if not 0.0 <= quantile <= 1.0:
        raise InvalidArgument(f"threshold_quantile must lie in [0, 1], got {quantile}")
    x = _inputs(request.x, request.HasField("x"), model)
    options = ScoreOptions(
        k=k,
        prior_estimate=request.prior_estimate,
        per_dim=request.per_dim,
        reconstruction=request.reconstruction,
        anomaly=not request.skip_anomaly,
        threshold_quantile=quantile,
    )
    per_input = 8 * 20 + model.manifest.dim * (8 * request.per_dim + 4 * request.reconstruction)
    model.check_reply(len(x) * per_input, f"scoring {len(x)} inputs")
    return ScoreCall(x, options, _seed(request, model))


def score_to_pb(model: ServedModel, call: ScoreCall, result: ScoreResult) -> pb.ScoreResponse:
    t = codec.to_proto
    reply = pb.ScoreResponse(
        header=header(model),
        k=call.options.k,
        seed=call.seed,
        elbo=t(result.elbo),
        elbo_se=t(result.elbo_se),
        reconstruction_term=t(result.reconstruction_term),
        kl=t(result.kl),
        expected_log_joint=t(result.expected_log_joint),
        entropy=t(result.entropy),
        log_px=t(result.log_px),
        log_px_se=t(result.log_px_se),
        ess=t(result.ess),
        bits_per_dim=t(result.bits_per_dim),
        gap=t(result.gap),
        gap_se=t(result.gap_se),
    )
    if result.prior is not None:
        reply.prior_log_px.CopyFrom(t(result.prior.log_px))
        reply.prior_log_px_se.CopyFrom(t(result.prior.se))
        reply.prior_ess.CopyFrom(t(result.prior.ess))
    if result.anomaly is not None:
        a = result.anomaly
        reply.anomaly.CopyFrom(
            pb.Anomaly(
                score=t(a.score),
                percentile=t(a.percentile),
                is_anomaly=t(a.is_anomaly),
                threshold=a.threshold,
                threshold_quantile=a.threshold_quantile,
                k=a.k,
                estimator=a.estimator,
            )
        )
    if result.per_dim is not None:
        reply.per_dim.CopyFrom(t(result.per_dim))
    if result.reconstruction is not None:
        reply.reconstruction.CopyFrom(t(result.reconstruction))
    return reply
