"""The gRPC service end to end on a loopback port: every RPC, its numbers, and its answers to bad input."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.bundles import LinearGaussian
from tests.serving import RunningServer
from vaeserve.api import codec
from vaeserve.api.manifest import Manifest
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc

Stub = vae_pb2_grpc.VaeServiceStub


@pytest.fixture
def stub(worse_server: RunningServer, channel_to: Callable[[RunningServer], grpc.Channel]) -> Stub:
    return Stub(channel_to(worse_server))


@pytest.fixture
def digits_stub(digits_server: RunningServer, channel_to: Callable[[RunningServer], grpc.Channel]) -> Stub:
    return Stub(channel_to(digits_server))


def t(array: np.ndarray) -> pb.Tensor:
    return codec.to_proto(array)


def a(tensor: pb.Tensor) -> np.ndarray:
    return codec.from_proto(tensor)


def test_model_info(stub: Stub, worse_bundle: Path) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.header.model_name, info.header.model_version, info.header.replica_id) == (
        "linear-gaussian",
        "1",
        "test-replica",
    )
    assert list(info.input_shape) == [10] and info.latent_dim == 3
    assert info.likelihood == pb.LIKELIHOOD_GAUSSIAN
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.limits.max_k == 10_000 and info.limits.max_batch == 8192
    assert info.defaults.k == 1000 and info.defaults.seed == 0
    served = Manifest.model_validate_json(info.manifest_json)
    assert served == Manifest.model_validate_json((worse_bundle / "manifest.json").read_text())


def test_score_matches_closed_form_and_names_the_request(stub: Stub, lg: LinearGaussian) -> None:
    x = lg.sample(6, seed=21)
    reply, _call = stub.Score.with_call(
        pb.ScoreRequest(x=t(x), k=5000, seed=3, prior_estimate=True), metadata=[("x-request-id", "req-42")]
    )
    assert reply.header.request_id == "req-42" and reply.k == 5000 and reply.seed == 3
    log_px, se = a(reply.log_px), a(reply.log_px_se)
    assert log_px.dtype == np.float64 and log_px.shape == (6,)
    assert np.all(np.abs(log_px - lg.log_px(x)) < 3 * se)
    for name in (
        "elbo",
        "elbo_se",
        "reconstruction_term",
        "kl",
        "expected_log_joint",
        "entropy",
        "ess",
        "bits_per_dim",
        "gap",
        "gap_se",
        "prior_log_px",
        "prior_log_px_se",
        "prior_ess",
    ):
        assert a(getattr(reply, name)).shape == (6,), name
    np.testing.assert_allclose(a(reply.elbo), a(reply.reconstruction_term) - a(reply.kl))
    np.testing.assert_allclose(a(reply.bits_per_dim), -log_px / (10 * np.log(2)))
    assert not reply.HasField("anomaly")  # this bundle has no calibration


def test_default_seed_makes_scores_repeatable(stub: Stub, lg: LinearGaussian) -> None:
    x = t(lg.sample(3, seed=1))
    first, second = stub.Score(pb.ScoreRequest(x=x, k=100)), stub.Score(pb.ScoreRequest(x=x, k=100))
    assert first.seed == second.seed == 0
    np.testing.assert_array_equal(a(first.log_px), a(second.log_px))


def test_anomaly_fields_with_calibration(digits_stub: Stub) -> None:
    from sklearn.datasets import load_digits

    x = load_digits().data[:20]
    weird = np.full((1, 64), 16.0)  # an all-white square: nothing like a digit
    # K and seed left to the server are the calibration's: the anomaly score comes from the same pass.
    reply = digits_stub.Score(pb.ScoreRequest(x=t(np.concatenate([x, weird])), alpha=0.05))
    # The default set for an image model (chosen by the anomaly benchmark): combined first.
    assert [a.name for a in reply.anomalies] == ["combined", "reconstruction", "nll", "complexity"]
    assert reply.anomaly == reply.anomalies[0] and all(a(e.is_anomaly)[-1] for e in reply.anomalies)
    anomaly = reply.anomalies[2]
    assert anomaly.name == "nll" and anomaly.k == 1000 and anomaly.estimator == "iwae"
    assert anomaly.alpha == 0.05 and anomaly.threshold_quantile == pytest.approx(0.95)
    assert anomaly.n_calibration == 180 and anomaly.min_alpha == pytest.approx(1 / 181)
    score, percentile, p, flag = (a(getattr(anomaly, f)) for f in ("score", "percentile", "p_value", "is_anomaly"))
    np.testing.assert_allclose(score, -a(reply.log_px))
    assert flag.dtype == np.bool_ and flag[-1] and percentile[-1] == 100.0 and p[-1] == pytest.approx(1 / 181)
    np.testing.assert_array_equal(flag, p <= 0.05)
    np.testing.assert_array_equal(flag, score > anomaly.threshold)
    assert np.all((percentile >= 0) & (percentile <= 100)) and np.all((p > 0) & (p <= 1))
    # The white square is also where importance sampling fails: its k-hat says so.
    assert a(reply.unreliable).tolist() == [False] * 20 + [True] and a(reply.pareto_k)[-1] > 0.7
    assert list(reply.warnings) == [
        "1 of 21 inputs have pareto_k > 0.7: their log_px and log_px_se are not reliable (raise k, or read the ELBO)"
    ]
    # Another K: no hidden second pass; the reply says why the anomaly fields are missing.
    other = digits_stub.Score(pb.ScoreRequest(x=t(x), k=10))
    assert not other.HasField("anomaly") and "no anomaly scores" in other.warnings[0] and "K=10" in other.warnings[0]
    # Named, they are computed in a second pass with the calibration's K and seed: the same numbers.
    named = digits_stub.Score(pb.ScoreRequest(x=t(x), k=10, seed=3, anomaly_scores=["nll"]))
    np.testing.assert_allclose(a(named.anomaly.score), score[:-1], rtol=1e-9)
    assert named.k == 10 and named.anomaly.k == 1000


def test_score_options_per_dim_and_reconstruction(digits_stub: Stub) -> None:
    from sklearn.datasets import load_digits

    x = load_digits().data[:4].reshape(4, 8, 8)  # (B, H, W) is accepted for one-channel images
    reply = digits_stub.Score(
        pb.ScoreRequest(x=t(x.astype(np.uint8)), k=50, per_dim=True, reconstruction=True, skip_anomaly=True)
    )
    per_dim, recon = a(reply.per_dim), a(reply.reconstruction)
    assert per_dim.shape == (4, 1, 8, 8) and recon.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(per_dim.reshape(4, -1).sum(axis=1), a(reply.reconstruction_term), rtol=1e-5)
    assert np.all((recon >= 0) & (recon <= 1))
    assert not reply.HasField("anomaly")


def test_encode_decode_sample(stub: Stub, lg: LinearGaussian) -> None:
    x = lg.sample(5, seed=2)
    enc = stub.Encode(pb.EncodeRequest(x=t(x), n_samples=4, seed=1))
    mean, logvar, samples = a(enc.z_mean), a(enc.z_logvar), a(enc.z_samples)
    np.testing.assert_allclose(mean, 0.7 * lg.posterior_mean(x), atol=1e-5)
    np.testing.assert_allclose(np.exp(logvar), np.broadcast_to(2.0 * lg.posterior_var, (5, 3)), rtol=1e-5)
    eps = np.random.default_rng(1).standard_normal((4, 3), dtype=np.float32)
    np.testing.assert_allclose(samples, mean[:, None] + np.exp(0.5 * logvar)[:, None] * eps, atol=1e-5)
    assert not enc.HasField("ess")

    dec = stub.Decode(pb.DecodeRequest(z=t(mean), sample=True, seed=5))
    np.testing.assert_allclose(a(dec.decoded.params["mean"]), mean @ lg.W.T + lg.b, atol=1e-5)
    np.testing.assert_allclose(a(dec.decoded.params["logvar"]), np.log(lg.s2), atol=1e-6)
    assert a(dec.decoded.x_sample).shape == (5, 10)

    sample = stub.Sample(pb.SampleRequest(n=7, seed=9, sample_x=True))
    z = a(sample.z)
    np.testing.assert_array_equal(z, np.random.default_rng(9).standard_normal((7, 3), dtype=np.float32))
    np.testing.assert_allclose(a(sample.decoded.params["mean"]), z @ lg.W.T + lg.b, atol=1e-5)


def test_importance_resampled_encode(stub: Stub, lg: LinearGaussian) -> None:
    x = lg.sample(3, seed=8)
    reply = stub.Encode(
        pb.EncodeRequest(
            x=t(x), n_samples=2000, seed=2, proposals=5000, sampler=pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED
        )
    )
    samples, ess = a(reply.z_samples), a(reply.ess)
    assert samples.shape == (3, 2000, 3) and ess.shape == (3,) and np.all(ess < 5000)
    exact = lg.posterior_mean(x)
    assert np.all(
        np.linalg.norm(samples.mean(axis=1) - exact, axis=1) < np.linalg.norm(a(reply.z_mean) - exact, axis=1)
    )


def test_score_stream_answers_in_order(stub: Stub, lg: LinearGaussian) -> None:
    chunks = [lg.sample(n, seed=s) for n, s in ((3, 1), (1, 2), (5, 3))]
    replies = list(stub.ScoreStream(iter(pb.ScoreRequest(x=t(c), k=200, seed=4) for c in chunks)))
    assert [len(a(r.log_px)) for r in replies] == [3, 1, 5]
    for chunk, reply in zip(chunks, replies):
        np.testing.assert_allclose(
            a(reply.log_px), a(stub.Score(pb.ScoreRequest(x=t(chunk), k=200, seed=4)).log_px), rtol=1e-6
        )


X = np.zeros((2, 10))
BAD = [
    ("Score", pb.ScoreRequest(), grpc.StatusCode.INVALID_ARGUMENT, "x is missing"),
    ("Score", pb.ScoreRequest(x=t(X), k=0), grpc.StatusCode.INVALID_ARGUMENT, "k must be at least 1"),
    ("Score", pb.ScoreRequest(x=t(X), k=10_001), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_k=10000"),
    ("Score", pb.ScoreRequest(x=t(np.zeros((2, 7)))), grpc.StatusCode.INVALID_ARGUMENT, "shape (2, 7)"),
    ("Score", pb.ScoreRequest(x=t(np.zeros((0, 10)))), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ("Score", pb.ScoreRequest(x=t(np.full((2, 10), np.nan))), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    ("Score", pb.ScoreRequest(x=t(np.full((2, 10), np.inf))), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    ("Score", pb.ScoreRequest(x=t(np.full((2, 10), 1e30))), grpc.StatusCode.INVALID_ARGUMENT, "magnitude"),
    (
        "Encode",
        pb.EncodeRequest(x=t(np.where(np.arange(20).reshape(2, 10) == 13, np.nan, 0.0))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "x holds 1 NaN or infinite value(s), first in row 1",
    ),
    (
        "Score",
        pb.ScoreRequest(x=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 10], data=b"\0" * 79)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 80 bytes, got 79",
    ),
    (
        "Score",
        pb.ScoreRequest(x=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, -10], data=b"")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "negative dimension",
    ),
    (
        "Score",
        pb.ScoreRequest(x=pb.Tensor(dtype=pb.DATA_TYPE_BOOL, shape=[2, 10], data=b"\0" * 20)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dtype bool is not accepted",
    ),
    (
        "Score",
        pb.ScoreRequest(x=pb.Tensor(dtype=42, shape=[2, 10], data=b"")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a valid tensor dtype",
    ),
    ("Score", pb.ScoreRequest(x=t(np.zeros((8193, 10)))), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_batch is 8192"),
    ("Score", pb.ScoreRequest(x=t(X), threshold_quantile=1.5), grpc.StatusCode.INVALID_ARGUMENT, "threshold_quantile"),
    (
        "Score",
        pb.ScoreRequest(x=t(X), model=pb.ModelSpec(name="other")),
        grpc.StatusCode.NOT_FOUND,
        "model 'other' is not served here; models served: linear-gaussian",
    ),
    ("Encode", pb.EncodeRequest(x=t(X), n_samples=60_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_samples"),
    (
        "Encode",
        pb.EncodeRequest(x=t(X), n_samples=0, sampler=pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "n_samples >= 1",
    ),
    (
        "Encode",
        pb.EncodeRequest(x=t(X), n_samples=1, proposals=0, sampler=pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "proposals must be at least 1",
    ),
    ("Encode", pb.EncodeRequest(x=t(np.zeros((2, 3, 4)))), grpc.StatusCode.INVALID_ARGUMENT, "shape (2, 3, 4)"),
    ("Decode", pb.DecodeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "z is missing"),
    (
        "Decode",
        pb.DecodeRequest(z=t(np.zeros((2, 4)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "z has shape (2, 4); this model takes (N, 3)",
    ),
    ("Decode", pb.DecodeRequest(z=t(np.full((2, 3), np.nan))), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    (
        "Decode",
        pb.DecodeRequest(z=t(np.zeros((2, 3), np.uint8))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dtype uint8 is not accepted",
    ),
    ("Sample", pb.SampleRequest(n=0), grpc.StatusCode.INVALID_ARGUMENT, "n must be at least 1"),
    ("Sample", pb.SampleRequest(n=100_001), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_samples"),
    (
        "GetModelInfo",
        pb.GetModelInfoRequest(model=pb.ModelSpec(version="7")),
        grpc.StatusCode.NOT_FOUND,
        "model linear-gaussian:7 is not served here; versions of linear-gaussian: 1",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "message"), BAD, ids=[f"{m}-{i}" for i, (m, *_) in enumerate(BAD)]
)
def test_bad_input_gets_a_clear_status(
    stub: Stub, lg: LinearGaussian, method: str, request_: object, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_)
    assert info.value.code() == code
    assert message in info.value.details(), info.value.details()
    # ... and the server still answers the next request.
    assert len(a(stub.Score(pb.ScoreRequest(x=t(lg.sample(2)), k=10)).log_px)) == 2


def test_bernoulli_range_is_checked(digits_stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        digits_stub.Score(pb.ScoreRequest(x=t(np.full((1, 64), 17.0))))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x[0] feature 0 is 17 in raw units" in info.value.details()
    assert "raw range 0 to 16" in info.value.details()
    for bad, message in ((-1.0, "is -1 in raw units"), (np.nan, "x holds 1 NaN")):
        x = np.full((2, 64), 8.0)
        x[1, 5] = bad
        with pytest.raises(grpc.RpcError) as info:
            digits_stub.Encode(pb.EncodeRequest(x=t(x)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
    # Float rounding just past the ends is clipped, not refused: 16.00001 / 16 is 1 + 6e-7.
    edge = digits_stub.Score(pb.ScoreRequest(x=t(np.full((1, 64), 16.00001)), k=5))
    full = digits_stub.Score(pb.ScoreRequest(x=t(np.full((1, 64), 16.0)), k=5))
    np.testing.assert_allclose(a(edge.log_px), a(full.log_px), rtol=1e-6)


def test_bad_message_in_a_stream_ends_it_with_a_status(stub: Stub, lg: LinearGaussian) -> None:
    good = pb.ScoreRequest(x=t(lg.sample(2)), k=10)
    truncated = pb.ScoreRequest(x=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT64, shape=[2, 10], data=b"\0" * 100))
    replies = stub.ScoreStream(iter([good, truncated, good]))
    assert len(a(next(replies).log_px)) == 2
    with pytest.raises(grpc.RpcError) as info:
        next(replies)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 160 bytes" in info.value.details()
    assert len(list(stub.ScoreStream(iter([good, good])))) == 2


def test_a_stream_cancelled_mid_way_leaves_the_server_fine(stub: Stub, lg: LinearGaussian) -> None:
    def requests():  # type: ignore[no-untyped-def]
        yield pb.ScoreRequest(x=t(lg.sample(2)), k=10)
        threading.Event().wait(0.2)
        yield pb.ScoreRequest(x=t(lg.sample(2)), k=10)

    call = stub.ScoreStream(requests())
    next(call)
    call.cancel()
    assert len(a(stub.Score(pb.ScoreRequest(x=t(lg.sample(2)), k=10)).log_px)) == 2


def test_deadline_stops_a_long_request(stub: Stub, lg: LinearGaussian) -> None:
    x = t(lg.sample(4000, seed=3))
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(pb.ScoreRequest(x=x, k=10_000), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(a(stub.Score(pb.ScoreRequest(x=t(lg.sample(2)), k=10)).log_px)) == 2


def test_requests_beyond_max_in_flight_are_refused_at_once(
    serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian
) -> None:
    server = serve(worse_bundle, max_in_flight=1, batching=False)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        slow = stub.Score.future(pb.ScoreRequest(x=t(lg.sample(3000)), k=10_000))
        threading.Event().wait(0.3)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(pb.ScoreRequest(x=t(lg.sample(1)), k=1), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_in_flight 1" in info.value.details()
        slow.cancel()


def test_message_size_limit(serve: Callable[..., RunningServer], worse_bundle: Path) -> None:
    server = serve(worse_bundle, max_message_mb=1)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        Stub(channel).Score(pb.ScoreRequest(x=t(np.zeros((20_000, 10)))))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_many_concurrent_clients_all_answered_correctly(stub: Stub, lg: LinearGaussian) -> None:
    inputs = [lg.sample(1 + i % 3, seed=i) for i in range(64)]
    expected = [a(stub.Score(pb.ScoreRequest(x=t(x), k=32, seed=i)).log_px) for i, x in enumerate(inputs)]

    def call(i: int) -> np.ndarray:
        return a(stub.Score(pb.ScoreRequest(x=t(inputs[i]), k=32, seed=i)).log_px)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(64)))
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dynamic_batching_merges_and_returns_what_the_plain_path_returns(
    serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian
) -> None:
    # inline_rows=0: every run goes to the thread pool, so requests that arrive meanwhile merge.
    batched = serve(worse_bundle, batching=True, executor_threads=1, inline_rows=0)
    plain = serve(worse_bundle, batching=False)
    inputs = [lg.sample(1 + i % 2, seed=i) for i in range(48)]
    with grpc.insecure_channel(batched.address) as c1, grpc.insecure_channel(plain.address) as c2:
        fast, slow = Stub(c1), Stub(c2)
        with ThreadPoolExecutor(16) as pool:
            merged = list(pool.map(lambda i: fast.Score(pb.ScoreRequest(x=t(inputs[i]), k=16, seed=i)), range(48)))
            encoded = list(pool.map(lambda i: fast.Encode(pb.EncodeRequest(x=t(inputs[i]))), range(48)))
        for i, reply in enumerate(merged):
            alone = slow.Score(pb.ScoreRequest(x=t(inputs[i]), k=16, seed=i))
            for name in ("log_px", "log_px_se", "ess", "elbo", "gap"):
                np.testing.assert_allclose(a(getattr(reply, name)), a(getattr(alone, name)), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(
                a(encoded[i].z_mean), a(slow.Encode(pb.EncodeRequest(x=t(inputs[i]))).z_mean), rtol=1e-6, atol=1e-6
            )
    model = batched.app.registry.resolve("", "")
    requests = sum(b.requests for b in model._batchers.values())
    runs = sum(b.runs for b in model._batchers.values())
    assert requests == 2 * 48 and runs < requests, "concurrent requests were never merged"


def test_health_is_not_serving_until_the_model_is_loaded(
    serve: Callable[..., RunningServer], worse_bundle: Path
) -> None:
    server = serve(worse_bundle, load=False)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vaeserve.api.v1.VaeService"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
        with pytest.raises(grpc.RpcError) as info:
            Stub(channel).GetModelInfo(pb.GetModelInfoRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
        server.run(server.app.load())
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert Stub(channel).GetModelInfo(pb.GetModelInfoRequest()).latent_dim == 3


def test_reflection_lists_the_services(stub: Stub, worse_server: RunningServer) -> None:
    with grpc.insecure_channel(worse_server.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(replies).list_services_response.service}
    assert {"vaeserve.api.v1.VaeService", "grpc.health.v1.Health"} <= names


def test_manifest_json_is_the_served_contract(stub: Stub) -> None:
    data = json.loads(stub.GetModelInfo(pb.GetModelInfoRequest()).manifest_json)
    assert data["format_version"] == 1 and set(data["sha256"]) == {"encoder.onnx", "decoder.onnx"}


def test_prometheus_metrics(serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve(worse_bundle, metrics_port=port)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        for _ in range(2):
            stub.Score(pb.ScoreRequest(x=t(lg.sample(3)), k=20))
        with pytest.raises(grpc.RpcError):
            stub.Score(pb.ScoreRequest(x=t(lg.sample(1)), k=0))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lg_1 = 'model="linear-gaussian",version="1"'
    v1_score = 'model="linear-gaussian",protocol="v1",version="1"'  # labels come out sorted by name
    expected = [
        f'vaeserve_requests_total{{code="OK",method="Score",{v1_score}}} 2.0',
        f'vaeserve_requests_total{{code="INVALID_ARGUMENT",method="Score",{v1_score}}} 1.0',
        f'vaeserve_inputs_total{{method="Score",{lg_1}}} 6.0',
        f"vaeserve_importance_samples_total{{{lg_1}}} 120.0",
        'vaeserve_model_info{name="linear-gaussian",provider="CPUExecutionProvider",version="1"} 1.0',
        "vaeserve_ready 1.0",
        "vaeserve_request_seconds_bucket",
        f'vaeserve_batch_inputs_count{{kind="score",{lg_1}}} 2.0',
        "vaeserve_requests_in_flight 0.0",  # read when scraped, after the requests ended
    ]
    ours = "\n".join(line for line in text.splitlines() if line.startswith("vaeserve_") and "bucket" not in line)
    for line in expected:
        assert line in text, f"missing {line!r}; the vaeserve lines:\n{ours}"


def test_merged_requests_keep_their_own_alpha(serve: Callable[..., RunningServer], digits_bundle: Path) -> None:
    from sklearn.datasets import load_digits

    server = serve(digits_bundle, inline_rows=0, executor_threads=1, batch_max_k=1000)  # digits calibrates at K=1000
    x = load_digits().data[:40]
    alphas = [0.5, 0.1, 0.01] * 10
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        with ThreadPoolExecutor(16) as pool:
            replies = list(
                pool.map(lambda i: stub.Score(pb.ScoreRequest(x=t(x[i : i + 1]), alpha=alphas[i])), range(len(alphas)))
            )
    model = server.app.registry.resolve("", "")
    assert len(model._batchers) == 1  # one kind of work, whatever the alpha
    calibration = model.manifest.calibration
    assert calibration is not None
    for alpha, reply in zip(alphas, replies):
        assert reply.anomaly.alpha == alpha
        assert reply.anomaly.threshold == pytest.approx(calibration.threshold(alpha, reply.anomaly.name))
        np.testing.assert_array_equal(a(reply.anomaly.is_anomaly), a(reply.anomaly.p_value) <= alpha)
