"""The VaeService converters, without a server: requests to calls, results to replies, bad input refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import grpc
import numpy as np
import pytest

from vaeserve.api import codec
from vaeserve.api.codec import TensorError
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.server.anomaly import AnomalyResult
from vaeserve.server.boundary.status import refusal_of
from vaeserve.server.engine.results import ScoreOptions, ScoreResult
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.protocols.v1 import convert
from vaeserve.server.repository.registry import Entry, ModelState
from vaeserve.server.serving.calls import Decoded, Encoded, Sampled, Scored
from vaeserve.server.serving.model import ServedModel

MODEL = cast(ServedModel, SimpleNamespace(name="digits", version="3", replica_id="host-a"))
X = np.arange(12, dtype=np.float64).reshape(3, 4)


def test_encode_request_becomes_a_call_in_raw_units_with_unset_fields_left_to_the_model() -> None:
    call = convert.encode_from_pb(pb.EncodeRequest(x=codec.to_proto(X)))
    np.testing.assert_array_equal(call.x, X)
    assert call.x.dtype == np.float64  # raw units, as sent: no conversion here
    assert (call.n_samples, call.seed, call.resample, call.proposals) == (0, None, False, None)
    resampled = convert.encode_from_pb(
        pb.EncodeRequest(
            x=codec.to_proto(X.astype(np.uint8)),
            n_samples=4,
            seed=0,
            sampler=pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED,
            proposals=64,
        )
    )
    assert (resampled.n_samples, resampled.seed, resampled.resample, resampled.proposals) == (4, 0, True, 64)


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (pb.EncodeRequest(), InvalidArgument, "x is missing: send a batch of inputs as a tensor"),
        (pb.ScoreRequest(), InvalidArgument, "x is missing"),
        (pb.ScoreRequest(x=codec.to_proto(X > 3)), TensorError, "x: dtype bool is not accepted here"),
        (
            pb.EncodeRequest(x=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[3, 4], data=b"\0" * 47)),
            TensorError,
            r"x: shape \(3, 4\) of float32 needs 48 bytes, got 47",
        ),
    ],
)
def test_bad_inputs_are_refused_with_a_message_that_says_what_is_wrong(
    request_: pb.EncodeRequest | pb.ScoreRequest, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as refused:
        if isinstance(request_, pb.EncodeRequest):
            convert.encode_from_pb(request_)
        else:
            convert.score_from_pb(request_)
    assert refusal_of(refused.value).code is grpc.StatusCode.INVALID_ARGUMENT


def test_decode_takes_float_latents_only() -> None:
    z = np.ones((2, 5), np.float32)
    call = convert.decode_from_pb(pb.DecodeRequest(z=codec.to_proto(z), sample=True, seed=9))
    np.testing.assert_array_equal(call.z, z)
    assert (call.sample, call.seed) == (True, 9)
    with pytest.raises(InvalidArgument, match="z is missing"):
        convert.decode_from_pb(pb.DecodeRequest())
    with pytest.raises(TensorError, match="z: dtype int64 is not accepted here"):
        convert.decode_from_pb(pb.DecodeRequest(z=codec.to_proto(z.astype(np.int64))))


def test_score_request_fields_reach_the_call_and_unset_ones_stay_none() -> None:
    bare = convert.score_from_pb(pb.ScoreRequest(x=codec.to_proto(X)))
    unset = (bare.k, bare.seed, bare.threshold_quantile, bare.alpha, bare.target_se, bare.max_k)
    assert unset == (None,) * 6 and bare.anomaly and bare.anomaly_scores == ()
    full = convert.score_from_pb(
        pb.ScoreRequest(
            x=codec.to_proto(X),
            k=50,
            seed=0,
            prior_estimate=True,
            per_dim=True,
            reconstruction=True,
            skip_anomaly=True,
            threshold_quantile=0.99,
            alpha=0.05,
            anomaly_scores=["nll", "reconstruction"],
            typicality=True,
            target_se=0.1,
            max_k=4000,
        )
    )
    assert (full.k, full.seed, full.alpha, full.max_k) == (50, 0, 0.05, 4000)
    assert full.threshold_quantile == pytest.approx(0.99) and full.target_se == pytest.approx(0.1)
    assert full.prior_estimate and full.per_dim and full.reconstruction and full.typicality
    assert not full.anomaly and full.anomaly_scores == ("nll", "reconstruction")


def test_sample_request() -> None:
    call = convert.sample_from_pb(pb.SampleRequest(n=7, sample_x=True))
    assert (call.n, call.seed, call.sample_x) == (7, None, True)


def test_replies_carry_the_model_and_the_request_id_they_are_given() -> None:
    encoded = Encoded(z_mean=X[:, :2], z_logvar=-X[:, :2], z_samples=None, ess=None, seed=11)
    reply = convert.encode_to_pb(MODEL, encoded, "req-1")
    assert reply.header == pb.ReplyHeader(
        model_name="digits", model_version="3", replica_id="host-a", request_id="req-1"
    )
    np.testing.assert_array_equal(codec.from_proto(reply.z_mean), X[:, :2])
    np.testing.assert_array_equal(codec.from_proto(reply.z_logvar), -X[:, :2])
    assert reply.seed == 11 and not reply.HasField("z_samples") and not reply.HasField("ess")
    samples = np.zeros((3, 4, 2), np.float32)
    with_samples = convert.encode_to_pb(MODEL, Encoded(X, X, samples, np.ones(3), 1), "req-2")
    assert codec.from_proto(with_samples.z_samples).shape == (3, 4, 2) and with_samples.header.request_id == "req-2"


def test_decoded_and_sampled_replies() -> None:
    logits = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    decoded = Decoded(params={"logits": logits}, x_sample=None, seed=3)
    reply = convert.decode_to_pb(MODEL, decoded, "r")
    assert list(reply.decoded.params) == ["logits"] and reply.seed == 3
    np.testing.assert_array_equal(codec.from_proto(reply.decoded.params["logits"]), logits)
    assert not reply.decoded.HasField("x_sample")
    z = np.zeros((2, 5), np.float32)
    sampled = convert.sample_to_pb(MODEL, Sampled(z, Decoded({"logits": logits}, logits > 0, 4)), "r")
    np.testing.assert_array_equal(codec.from_proto(sampled.z), z)
    np.testing.assert_array_equal(codec.from_proto(sampled.decoded.x_sample), logits > 0)
    assert sampled.seed == 4


def test_score_reply_puts_each_column_in_its_field_and_the_first_anomaly_in_anomaly() -> None:
    n = 3
    log_px, elbo = np.array([-1.0, -2.0, -3.0]), np.array([-1.5, -2.5, -3.5])
    result = ScoreResult(columns={"log_px": log_px, "elbo": elbo, "unreliable": np.zeros(n, bool)})

    def anomaly(name: str, p: float) -> AnomalyResult:
        return AnomalyResult(
            name, -log_px, np.full(n, 50.0), np.full(n, p), np.full(n, p < 0.1), 4.0, 0.1, 0.01, 99, 10, "iwae"
        )

    scored = Scored(result, ScoreOptions(k=10), seed=7, anomalies=[anomaly("nll", 0.5), anomaly("combined", 0.05)])
    reply = convert.score_to_pb(MODEL, scored, "req-9")
    assert (reply.k, reply.seed, reply.header.request_id) == (10, 7, "req-9")
    np.testing.assert_array_equal(codec.from_proto(reply.log_px), log_px)
    np.testing.assert_array_equal(codec.from_proto(reply.elbo), elbo)
    assert codec.from_proto(reply.unreliable).dtype == np.bool_
    assert not reply.HasField("prior_log_px") and not reply.HasField("per_dim")
    assert [a.name for a in reply.anomalies] == ["nll", "combined"] and reply.anomaly.name == "nll"
    np.testing.assert_array_equal(codec.from_proto(reply.anomalies[1].p_value), np.full(n, 0.05))
    assert reply.anomaly.threshold_quantile == pytest.approx(0.9) and reply.anomaly.n_calibration == 99


def test_model_statuses() -> None:
    entries = [
        Entry("digits", "2", Path("/m/digits/2"), ModelState.READY, "f2"),
        Entry("digits", "1", Path("/m/digits/1"), ModelState.FAILED, "f1", reason="hash mismatch"),
    ]
    statuses = convert.model_statuses_to_pb(entries)
    assert [(s.version, s.state, s.reason, s.path) for s in statuses] == [
        ("2", pb.MODEL_STATE_READY, "", "/m/digits/2"),
        ("1", pb.MODEL_STATE_FAILED, "hash mismatch", "/m/digits/1"),
    ]
    assert all(s.in_flight == 0 for s in statuses)
