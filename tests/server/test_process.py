"""The real `vaeserve-server` console script: serves, answers health checks, drains on SIGTERM, fails clearly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.bundles import LinearGaussian
from tests.serving import ServerProcess
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc


def test_serves_the_bundled_model_by_default(spawn: type[ServerProcess]) -> None:
    server = spawn()
    server.wait_serving()
    with grpc.insecure_channel(server.address) as channel:
        info = vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert info.header.model_name == "digits" and list(info.input_shape) == [1, 8, 8]
    assert any("SERVING digits:1" in line for line in server.lines)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    spawn: type[ServerProcess], worse_bundle: Path, lg: LinearGaussian
) -> None:
    server = spawn("--bundle", str(worse_bundle), "--grace-s", "60")
    server.wait_serving()
    x = lg.sample(1000, seed=1)
    with grpc.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        expected = codec.from_proto(stub.Score(pb.ScoreRequest(x=codec.to_proto(x[:3]), k=10_000)).log_px)
        long = stub.Score.future(pb.ScoreRequest(x=codec.to_proto(x), k=10_000))  # about 2 s of work
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        reply = long.result(timeout=60)
    np.testing.assert_allclose(codec.from_proto(reply.log_px)[:3], expected, rtol=1e-6)
    assert server.proc.wait(30) == 0
    log = "".join(server.lines)
    assert "shutting down" in log and "stopped" in log
    assert re.search(
        r"protocol=v1 method=Score id=[\w-]+ model=linear-gaussian:1 status=OK in_bytes=\d+ out_bytes=\d+ ms=\d", log
    )


def test_a_broken_bundle_stops_the_server_with_a_clear_message(spawn: type[ServerProcess], tmp_path: Path) -> None:
    server = spawn("--bundle", str(tmp_path))
    assert server.proc.wait(60) == 2
    assert f"{tmp_path}/manifest.json: missing" in "".join(server.lines)


def test_strict_cuda_without_a_gpu_refuses_to_start(spawn: type[ServerProcess]) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    server = spawn("--device", "cuda", "--strict-device")
    assert server.proc.wait(60) == 2
    assert "CUDAExecutionProvider" in "".join(server.lines)


def test_cuda_without_a_gpu_falls_back_to_cpu(spawn: type[ServerProcess]) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    server = spawn("--device", "cuda")
    server.wait_serving()
    with grpc.insecure_channel(server.address) as channel:
        info = vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert info.execution_provider == "CPUExecutionProvider"
    assert any("falling back to CPU" in line for line in server.lines)


def test_the_server_never_imports_torch() -> None:
    code = "\n".join(
        [
            "import sys, asyncio; import vaeserve.server.main, vaeserve.server.app as app",
            "from vaeserve.server.settings import Settings",
            "async def main():",
            "    a = await app.create_server(Settings(device='cpu', host='127.0.0.1', port=0))",
            "    await a.load()",
            "    await a.stop(0)",
            "asyncio.run(main())",
            "assert 'torch' not in sys.modules, 'torch was imported'",
        ]
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from importlib.metadata import requires

    forbidden = {
        "vaeserve-server": ("torch",),
        "vaeserve-api": ("torch", "onnxruntime"),
        "vaeserve-client": ("torch", "onnxruntime"),
    }
    for dist, names in forbidden.items():
        assert not [r for r in requires(dist) or [] if r.startswith(names)], dist


def test_healthcheck_probe(spawn: type[ServerProcess]) -> None:
    probe = Path(sys.executable).parent / "vaeserve-healthcheck"
    server = spawn()
    server.wait_serving()
    done = subprocess.run([str(probe), "--target", server.address], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "SERVING" in done.stdout
    done = subprocess.run(
        [str(probe), "--target", "127.0.0.1:1", "--timeout", "2"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr
