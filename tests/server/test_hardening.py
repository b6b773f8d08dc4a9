"""Production hardening on real servers: bearer tokens, a drain that balancers follow, connection hygiene."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bundles import LinearGaussian
from tests.serving import RunningServer, server_settings
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.client import AsyncClient, AuthenticationError, Client
from vaeserve.client.cli import main as cli_main
from vaeserve.server.settings import Settings

TOKENS = ("t0k3n-alpha", "t0k3n-beta")
ADMIN = "t0k3n-root"


@pytest.fixture
def token_files(tmp_path: Path) -> tuple[Path, Path]:
    plain, admin = tmp_path / "tokens", tmp_path / "admin"
    plain.write_text("# one per line\n" + "\n".join(TOKENS) + "\n\n")
    admin.write_text(ADMIN + "\n")
    return plain, admin


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    return error.code(), error.details(), dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]


def test_bearer_tokens_guard_every_call_but_probes(
    serve: Callable[..., RunningServer],
    worse_bundle: Path,
    lg: LinearGaussian,
    token_files: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain, admin = token_files
    server = serve(worse_bundle, auth_tokens=plain, admin_tokens=admin, log_requests=True)
    request = pb.ScoreRequest(x=codec.to_proto(lg.sample(2)), k=8)
    with grpc.insecure_channel(server.address) as channel, caplog.at_level(logging.INFO):
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        code, message, trailing = _code(lambda: stub.Score(request))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "needs a bearer token" in message
        assert trailing.get("x-request-id")  # errors carry the request id too
        code, message, _ = _code(lambda: stub.Score(request, metadata=_bearer("wrong")))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not one this server accepts" in message
        for token in (*TOKENS, ADMIN):
            assert len(codec.from_proto(stub.Score(request, metadata=_bearer(token)).log_px)) == 2
        load = pb.LoadModelRequest(name="linear-gaussian")
        code, message, _ = _code(lambda: stub.LoadModel(load, metadata=_bearer(TOKENS[0])))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "LoadModel needs an admin token" in message
        assert stub.LoadModel(load, metadata=_bearer(ADMIN)).models[0].name == "linear-gaussian"
        # Probes stay open: the health check and reflection need no token.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "status=UNAUTHENTICATED" in logged and not any(t in logged for t in (*TOKENS, ADMIN, "wrong"))


def test_the_clients_and_the_cli_send_their_token(
    serve: Callable[..., RunningServer],
    worse_bundle: Path,
    lg: LinearGaussian,
    token_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain, _ = token_files
    server = serve(worse_bundle, auth_tokens=plain)
    x = lg.sample(3)
    with Client(server.address, token=TOKENS[1]) as client:
        assert len(client.score(x, k=4)) == 3 and client.health() == "SERVING"
    with Client(server.address) as client, pytest.raises(AuthenticationError) as info:
        client.score(x, k=4)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

    async def scored() -> int:
        async with AsyncClient(server.address, token=TOKENS[0]) as client:
            return len(await client.score(x, k=4))

    assert asyncio.run(scored()) == 3
    np.save(tmp_path / "x.npy", x)
    # The connection options go before or after the command; the token also comes from VAESERVE_TOKEN.
    assert (
        cli_main(["score", str(tmp_path / "x.npy"), "--k", "4", "--target", server.address, "--token", TOKENS[0]]) == 0
    )
    assert cli_main(["--target", server.address, "score", str(tmp_path / "x.npy"), "--k", "4"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("VAESERVE_TOKEN", TOKENS[1])
    assert cli_main(["--target", server.address, "score", str(tmp_path / "x.npy"), "--k", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == 3


def test_guarded_probes_and_http(
    serve: Callable[..., RunningServer], worse_bundle: Path, token_files: tuple[Path, Path]
) -> None:
    plain, _ = token_files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    server = serve(worse_bundle, auth_tokens=plain, auth_health=True, http_port=http_port)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        code, _, _ = _code(lambda: health.Check(health_pb2.HealthCheckRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        reply = health.Check(health_pb2.HealthCheckRequest(), metadata=_bearer(TOKENS[0]))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def get(path: str, token: str | None = None) -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, body = get("/v2/models/linear-gaussian")
    assert status == 401 and "bearer token" in str(body["error"])
    assert get("/v2/models/linear-gaussian", TOKENS[0])[0] == 200
    assert get("/v2/health/live")[0] == 401 and get("/v2/health/live", TOKENS[1]) == (200, {"live": True})


def test_a_tokens_file_must_hold_tokens(worse_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no tokens"):
        Settings(bundle=worse_bundle, auth_tokens=tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot read tokens"):
        Settings(bundle=worse_bundle, admin_tokens=tmp_path / "missing")


def test_drain_delay_keeps_serving_while_health_says_not_serving(worse_bundle: Path, lg: LinearGaussian) -> None:
    server = RunningServer(server_settings(worse_bundle))
    request = pb.ScoreRequest(x=codec.to_proto(lg.sample(1)), k=4)
    with grpc.insecure_channel(server.address) as channel:
        stub, health = vae_pb2_grpc.VaeServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        stopping = asyncio.run_coroutine_threadsafe(server.app.stop(5.0, drain_delay_s=1.5), server._loop)
        # The watcher hears NOT_SERVING and its stream ends at once, cleanly (no waiting for the grace).
        assert [r.status for r in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert time.monotonic() - started < 1.0
        reply = health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert len(codec.from_proto(stub.Score(request).log_px)) == 1  # still answered during the delay
        stopping.result(10)
        assert 1.5 <= time.monotonic() - started < 2.5  # the delay, then an idle server stops at once
        code, _, _ = _code(lambda: stub.Score(request, timeout=2))
        assert code == grpc.StatusCode.UNAVAILABLE
    server.close_loop()  # the app stopped above: only its event loop is left


def test_silent_and_idle_connections_are_closed(serve: Callable[..., RunningServer], worse_bundle: Path) -> None:
    server = serve(worse_bundle, handshake_timeout_s=0.5, max_connection_idle_s=0.5)
    host, port = server.address.split(":")
    # A raw connection that never sends the HTTP/2 preface is closed after the handshake timeout.
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        started = time.monotonic()
        while raw.recv(1024):  # whatever the server says first, then the end of the stream
            pass
        assert time.monotonic() - started < 3.0
    # A client connection with no call for max_connection_idle_s is sent away (GOAWAY): the channel goes idle.
    states: list[grpc.ChannelConnectivity] = []
    idle = threading.Event()
    with grpc.insecure_channel(server.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

        def seen(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state == grpc.ChannelConnectivity.IDLE:
                idle.set()

        channel.subscribe(seen)
        assert idle.wait(5.0), f"the channel stayed {states}"


def test_a_light_request_completes_while_heavy_ones_are_queued(
    serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian
) -> None:
    """One engine thread, three heavy Scores in flight (two of them queued), then a light one: the light
    one overtakes the queued heavy ones and finishes first; the heavy ones all finish."""
    from concurrent.futures import ThreadPoolExecutor

    server = serve(worse_bundle, executor_threads=1, inline_rows=0, batching=False, max_k=20_000)
    heavy = pb.ScoreRequest(x=codec.to_proto(lg.sample(400)), k=8_000, skip_anomaly=True)
    light = pb.ScoreRequest(x=codec.to_proto(lg.sample(1)), k=10, skip_anomaly=True)
    done: dict[str, float] = {}
    with grpc.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        started = time.monotonic()

        def call(name: str, request: pb.ScoreRequest) -> None:
            stub.Score(request, timeout=120)
            done[name] = time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:
            heavies = [pool.submit(call, f"heavy{i}", heavy) for i in range(3)]
            time.sleep(0.3)  # the heavy ones are running and queued
            pool.submit(call, "light", light).result(60)
            for future in heavies:
                future.result(120)
    finished = sorted(done, key=done.__getitem__)
    assert finished.index("light") <= 1, done  # at most the heavy run in progress finished before it
    assert done["light"] < sorted(done[f"heavy{i}"] for i in range(3))[1], done


def test_request_bytes_in_progress_are_bounded(
    serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian
) -> None:
    """Beyond max_request_mb_in_flight a request is refused at once; one alone always goes through."""
    from concurrent.futures import ThreadPoolExecutor

    server = serve(
        worse_bundle, max_request_mb_in_flight=1, max_batch=20_000, executor_threads=1, inline_rows=0, batching=False
    )
    big = pb.ScoreRequest(x=codec.to_proto(lg.sample(16_000)), k=64, skip_anomaly=True)  # 1.3 MB of float64
    assert big.ByteSize() > 1 << 20
    with grpc.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        assert len(codec.from_proto(stub.Score(big, timeout=60).log_px)) == 16_000  # alone: served
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(stub.Score, big, timeout=60)
            time.sleep(0.2)  # the first is being worked on
            code, message, _ = _code(lambda: stub.Score(big, timeout=60))
            assert first.result(60).k == 64
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "MB of requests in progress" in message
