"""The Python client against a real server: every method, its numbers, batching, the async twin and its errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

import vaeserve.client as public
from tests.bundles import LinearGaussian
from tests.serving import RunningServer
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    Scores,
    UnavailableError,
    VaeServeError,
)


@pytest.fixture
def client(worse_server: RunningServer) -> Client:
    with Client(worse_server.address, batch_size=4) as c:
        yield c  # type: ignore[misc]


def test_info(client: Client) -> None:
    info = client.info()
    assert (info.name, info.version, info.input_shape, info.latent_dim) == ("linear-gaussian", "1", (10,), 3)
    assert info.likelihood == "gaussian" and info.manifest.dim == 10
    assert info.limits["max_k"] == 10_000 and info.defaults["k"] == 1000
    assert info.served_by.replica == "test-replica"
    assert client.health() == "SERVING"


def test_score_matches_the_server_and_the_closed_form(
    client: Client, worse_server: RunningServer, lg: LinearGaussian
) -> None:
    x = lg.sample(10, seed=5)  # three requests of at most 4 inputs, joined in order
    seen: list[tuple[int, int]] = []
    scores = client.score(x, k=5000, seed=7, prior_estimate=True, progress=lambda d, n: seen.append((d, n)))
    assert isinstance(scores, Scores) and len(scores) == 10 and scores.k == 5000 and scores.seed == 7
    assert seen[-1] == (10, 10) and len(seen) == 3
    with grpc.insecure_channel(worse_server.address) as channel:
        raw = vae_pb2_grpc.VaeServiceStub(channel).Score(pb.ScoreRequest(x=codec.to_proto(x), k=5000, seed=7))
    np.testing.assert_allclose(scores.log_px, codec.from_proto(raw.log_px), rtol=1e-6)
    np.testing.assert_allclose(scores.elbo_se, codec.from_proto(raw.elbo_se), rtol=1e-6)
    assert np.all(np.abs(scores.log_px - lg.log_px(x)) < 3 * scores.log_px_se)
    one = scores[3]
    assert one.log_px == scores.log_px[3] and one.anomaly_score is None and one.is_anomaly is None
    assert [s.ess for s in scores] == list(scores.ess)
    assert scores.prior_log_px is not None and "prior_log_px" in scores.columns()


def test_stream_gives_what_score_gives(client: Client, lg: LinearGaussian) -> None:
    x = lg.sample(11, seed=2)
    parts = list(client.score_stream(x, k=100, seed=1))
    assert [len(p) for p in parts] == [4, 4, 3]
    joined = public._results.concat(parts)  # type: ignore[attr-defined]
    np.testing.assert_allclose(joined.log_px, client.score(x, k=100, seed=1).log_px, rtol=1e-6)
    generated = list(client.score_stream((x[i : i + 5] for i in range(0, 11, 5)), k=100, seed=1))
    assert [len(p) for p in generated] == [5, 5, 1]


def test_encode_decode_sample(client: Client, lg: LinearGaussian) -> None:
    x = lg.sample(9, seed=3)
    enc = client.encode(x, n_samples=2, seed=4)
    np.testing.assert_allclose(enc.z_mean, 0.7 * lg.posterior_mean(x), atol=1e-5)
    assert enc.z_samples is not None and enc.z_samples.shape == (9, 2, 3)
    resampled = client.encode(x[:2], n_samples=10, resample=True, proposals=200, seed=1)
    assert resampled.ess is not None and resampled.ess.shape == (2,)
    dec = client.decode(enc.z_mean, sample=True, seed=2)
    np.testing.assert_allclose(dec.params["mean"], enc.z_mean @ lg.W.T + lg.b, atol=1e-5)
    assert list(dec.params) == sorted(dec.params) == ["logvar", "mean"], "parameters in one order, by name"
    assert dec.x_sample is not None and dec.x_sample.shape == (9, 10)
    samples = client.sample(5, seed=3, sample_x=True)
    assert samples.z.shape == (5, 3) and samples.x_sample is not None and samples.seed == 3


def test_async_client_matches(worse_server: RunningServer, lg: LinearGaussian) -> None:
    x = lg.sample(7, seed=8)

    async def run() -> tuple[Scores, str, list[Scores]]:
        async with AsyncClient(worse_server.address, batch_size=3) as aclient:
            scores = await aclient.score(x, k=50, seed=2)
            info = await aclient.info()
            streamed = [s async for s in aclient.score_stream(x, k=50, seed=2)]
            await aclient.encode(x)
            await aclient.decode(np.zeros((2, 3)))
            await aclient.sample(2)
            return scores, info.name, streamed

    scores, name, streamed = asyncio.run(run())
    assert name == "linear-gaussian" and [len(s) for s in streamed] == [3, 3, 1]
    with Client(worse_server.address) as c:
        np.testing.assert_allclose(scores.log_px, c.score(x, k=50, seed=2).log_px, rtol=1e-6)


def test_server_errors_keep_code_and_message(client: Client, lg: LinearGaussian) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.score(np.zeros((2, 7)))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x has shape (2, 7); this model takes (B, 10)" in info.value.details
    with pytest.raises(ResourceExhaustedError, match="max_k=10000"):
        client.score(lg.sample(1), k=20_000)
    with pytest.raises(DeadlineExceededError):
        Client(client.config.target, timeout=0.1).score(lg.sample(2000), k=10_000)


def test_wrong_model_name(worse_server: RunningServer) -> None:
    with Client(worse_server.address, model="digits") as c, pytest.raises(NotFoundError, match="digits"):
        c.info()


def test_unreachable_server_is_a_clear_unavailable_error() -> None:
    with Client("127.0.0.1:1", retries=0, timeout=5) as c, pytest.raises(UnavailableError) as info:
        c.info()
    assert "127.0.0.1:1" in str(info.value) and isinstance(info.value, VaeServeError)


def test_retries_while_the_server_is_loading(serve: Callable[..., RunningServer], worse_bundle: Path) -> None:
    server = serve(worse_bundle, load=False)
    threading.Timer(0.1, lambda: server.run(server.app.load())).start()
    with Client(server.address, retries=4) as c:
        assert c.info().latent_dim == 3


def test_public_surface_is_complete() -> None:
    exported = {name for name in dir(public) if not name.startswith("_")}
    modules = {"cli", "files", "images", "tables"}
    assert set(public.__all__) == exported - modules
    for name in public.__all__:
        assert getattr(public, name).__module__.startswith("vaeserve.client")


def test_wait_until_serving(serve: Callable[..., RunningServer], worse_bundle: Path) -> None:
    server = serve(worse_bundle, load=False)
    with Client(server.address, retries=0) as c:
        with pytest.raises(UnavailableError, match=r"not SERVING after 0\.3 s"):
            c.wait_until_serving(timeout=0.3)
        server.run(server.app.load())
        c.wait_until_serving(timeout=10)
        assert c.health() == "SERVING"


def test_stream_reports_local_errors_and_empty_input(client: Client, lg: LinearGaussian) -> None:
    from vaeserve.api import TensorError

    def chunks():  # type: ignore[no-untyped-def]
        yield lg.sample(2)
        yield np.zeros((2, 10), np.complex64)  # cannot be sent

    with pytest.raises(TensorError, match="cannot be sent"):
        list(client.score_stream(chunks(), k=10))
    with pytest.raises(InvalidArgumentError, match="empty batch"):
        client.score(np.zeros((0, 10)))


def test_large_requests_are_retried_too(
    serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian
) -> None:
    """gRPC stops retrying calls above its retry buffer (256 KiB by default): the client raises it."""
    server = serve(worse_bundle, load=False)
    threading.Timer(0.1, lambda: server.run(server.app.load())).start()
    x = lg.sample(8000)  # 640 KB of float64
    with Client(server.address, retries=4, batch_size=8000) as c:
        assert len(c.score(x, k=1, skip_anomaly=True)) == 8000


def test_async_wait_and_iterable_stream(worse_server: RunningServer, lg: LinearGaussian) -> None:
    async def run() -> list[int]:
        async with AsyncClient(worse_server.address) as aclient:
            await aclient.wait_until_serving(timeout=10)
            return [len(s) async for s in aclient.score_stream((lg.sample(n) for n in (3, 1)), k=5)]

    assert asyncio.run(run()) == [3, 1]
