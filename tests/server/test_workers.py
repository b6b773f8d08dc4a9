"""`--workers`: several server processes on one port under a supervisor (real processes, real sockets)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.bundles import LinearGaussian
from tests.serving import ServerProcess
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.client import AsyncClient, Client
from vaeserve.server.settings import Settings, load_settings, usable_cores
from vaeserve.server.workers import worker_settings


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _replicas(address: str, calls: int) -> dict[str, int]:
    """Replica ids over `calls` fresh connections (a connection stays with the worker that accepted it)."""
    seen: dict[str, int] = {}
    for _ in range(calls):
        with Client(address, retries=0) as client:
            replica = client.encode(np.zeros((1, 64), np.float32)).served_by.replica
        seen[replica] = seen.get(replica, 0) + 1
    return seen


def _worker_pids(server: ServerProcess, count: int, timeout: float = 60.0) -> dict[int, int]:
    """Worker index -> pid, from the workers' own log lines (newest wins: a restarted worker logs again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {
            int(m.group(1)): int(m.group(2))
            for line in list(server.lines)
            if (m := re.search(r"as worker (\d+) \(pid (\d+)\)", line))
        }
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise AssertionError("".join(server.lines))


def test_workers_setting_and_each_workers_share_of_the_cores() -> None:
    assert load_settings([]).worker_count == 1
    assert load_settings(["--workers", "auto"]).worker_count == usable_cores()
    with pytest.raises(ValueError, match="at least 1, or auto"):
        load_settings(["--workers", "0"])
    settings = Settings(workers=2, replica_id="r", metrics_port=9100, http_port=0)
    worker = worker_settings(settings, 1, port=5000, http_port=5001)
    assert (worker.worker_count, worker.port, worker.http_port, worker.metrics_port) == (1, 5000, 5001, None)
    assert worker.replica_id == "r/w1"
    assert worker.intra_op_threads == max(1, usable_cores() // 2)
    assert worker_settings(settings.model_copy(update={"intra_op_threads": 3}), 0, 1, None).intra_op_threads == 3


def test_auto_follows_a_containers_cpu_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == usable_cores(tmp_path / "absent")
    cpu_max.write_text("150000 100000\n")  # limits.cpu: 1500m
    assert usable_cores(cpu_max) == min(2, usable_cores(tmp_path / "absent"))
    cpu_max.write_text("10000 100000\n")
    assert usable_cores(cpu_max) == 1


def test_two_workers_answer_on_one_port_and_metrics_add_up(spawn: type[ServerProcess]) -> None:
    metrics_port = _free_port()
    server = spawn("--workers", "2", "--metrics-port", str(metrics_port), "--http-port", "0", "--log-requests")
    server.wait_serving()
    _worker_pids(server, 2)
    seen = _replicas(server.address, 24)
    # Each fresh connection goes to one worker, chosen by the kernel's hash: over 24 both show up.
    assert set(seen) == {f"{os.uname().nodename}/w0", f"{os.uname().nodename}/w1"}, seen
    with grpc.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        # Model control would change one worker's models only: refused, with what to do instead.
        with pytest.raises(grpc.RpcError) as refused:
            stub.LoadModel(pb.LoadModelRequest(name="digits"))
    assert info.header.model_name == "digits"
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only one of this server's 2 workers" in refused.value.details()
    http_port = next(
        int(m.group(1)) for line in server.lines if (m := re.search(r"over HTTP on port (\d+)\) as worker", line))
    )
    for _ in range(4):  # the HTTP port is shared the same way
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=10) as reply:
            assert reply.status == 200
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    encodes = re.search(r'vaeserve_requests_total\{code="OK",method="Encode",model="digits"[^}]*\} (\S+)', text)
    assert encodes and float(encodes.group(1)) == 24.0, text
    assert re.search(r"^vaeserve_ready 1\.0$", text, re.M), text


def test_a_client_with_several_connections_uses_every_worker(spawn: type[ServerProcess]) -> None:
    server = spawn("--workers", "2")
    server.wait_serving()
    _worker_pids(server, 2)
    x = np.zeros((64, 64), np.float32)
    workers = {f"{os.uname().nodename}/w0", f"{os.uname().nodename}/w1"}
    # 16 connections, each placed by the kernel's hash: all on one worker has odds 2 in 65,536.
    with Client(server.address, connections=16, batch_size=4) as client:
        assert set(client.encode(x).served_by.replica.split(",")) == workers

    async def from_asyncio() -> set[str]:
        async with AsyncClient(server.address, connections=16, batch_size=4) as client:
            return set((await client.encode(x)).served_by.replica.split(","))

    assert asyncio.run(from_asyncio()) == workers


def test_sigterm_drains_every_worker(spawn: type[ServerProcess], worse_bundle: Path, lg: LinearGaussian) -> None:
    server = spawn("--bundle", str(worse_bundle), "--workers", "2", "--grace-s", "60", "--drain-delay-s", "0.5")
    server.wait_serving()
    _worker_pids(server, 2)
    x = codec.to_proto(lg.sample(600, seed=1))
    channels: dict[str, grpc.Channel] = {}
    try:
        while len(channels) < 2:  # one connection held by each worker
            channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
            info = vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
            if info.header.replica_id in channels:
                channel.close()
            else:
                channels[info.header.replica_id] = channel
        long = {
            replica: vae_pb2_grpc.VaeServiceStub(channel).Score.future(pb.ScoreRequest(x=x, k=10_000))
            for replica, channel in channels.items()
        }
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        for replica, future in long.items():
            reply = future.result(timeout=90)
            assert reply.header.replica_id == replica
            assert np.isfinite(codec.from_proto(reply.log_px)).all()
    finally:
        for channel in channels.values():
            channel.close()
    assert server.proc.wait(60) == 0
    log = "".join(server.lines)
    assert log.count("shutting down: NOT_SERVING") == 2 and "stopped (0 worker restarts)" in log


def test_a_killed_worker_is_replaced(spawn: type[ServerProcess]) -> None:
    server = spawn("--workers", "2")
    server.wait_serving()
    pids = _worker_pids(server, 2)
    os.kill(pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while _worker_pids(server, 2)[1] == pids[1]:
        assert time.monotonic() < deadline, "".join(server.lines)
        time.sleep(0.2)
    assert any("worker 1" in line and "restarting it" in line for line in server.lines)
    server.wait_serving()
    deadline = time.monotonic() + 30
    while len(_replicas(server.address, 12)) < 2:  # the new worker serves once its model is loaded
        assert time.monotonic() < deadline, "".join(server.lines)


def test_workers_that_cannot_serve_stop_the_supervisor(spawn: type[ServerProcess], tmp_path: Path) -> None:
    server = spawn("--bundle", str(tmp_path), "--workers", "2")
    assert server.proc.wait(60) == 2
    assert f"{tmp_path}/manifest.json: missing" in "".join(server.lines)
