"""The Open Inference Protocol (KServe V2) on real servers: gRPC and HTTP, our stubs, plain HTTP and
tritonclient (in its own venv and process), with the numbers checked against VaeService's."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.serving import RunningServer, server_settings
from tests.v2 import triton_venv
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.api.v2 import grpc_predict_v2_pb2_grpc as v2_grpc


@pytest.fixture(scope="module")
def server(digits_bundle: Path) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(digits_bundle, http_port=0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return load_digits().data[:64].reshape(64, 1, 8, 8).astype(np.uint8)  # raw units 0..16


def native_score(channel: grpc.Channel, x: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    request = pb.ScoreRequest(x=codec.to_proto(x), k=k, seed=seed, anomaly_scores=["nll"])
    reply = vae_pb2_grpc.VaeServiceStub(channel).Score(request)
    return {
        "log_px": codec.from_proto(reply.log_px),
        "log_px_se": codec.from_proto(reply.log_px_se),
        "elbo": codec.from_proto(reply.elbo),
        "ess": codec.from_proto(reply.ess),
        "is_anomaly": codec.from_proto(reply.anomaly.is_anomaly),
        "anomaly_percentile": codec.from_proto(reply.anomaly.percentile),
    }


def infer(channel: grpc.Channel, name: str, x: np.ndarray | None, **params: Any) -> v2.ModelInferResponse:
    request = v2.ModelInferRequest(model_name=name)
    if x is not None:
        datatype = {np.dtype("u1"): "UINT8", np.dtype("f4"): "FP32", np.dtype("f8"): "FP64"}[x.dtype]
        request.inputs.add(name="z" if name.endswith(".decode") else "x", datatype=datatype, shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
    for key, value in params.items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[type(value)]
        setattr(request.parameters[key], field, value)
    return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)


def outputs_of(reply: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP64": "<f8", "FP32": "<f4", "BOOL": "?"}
    return {
        o.name: np.frombuffer(raw, dtype=dtypes[o.datatype]).reshape(tuple(o.shape))
        for o, raw in zip(reply.outputs, reply.raw_output_contents)
    }


def http(server: RunningServer, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.app.http_port}{path}",
        data=data,
        headers=headers or {},
        method="POST" if data else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_grpc_v2_scores_equal_vaeservice(channel: grpc.Channel, x: np.ndarray) -> None:
    reply = infer(channel, "digits", x, k=200, seed=9, anomaly_scores="nll")
    got = outputs_of(reply)
    want = native_score(channel, x, 200, 9)
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)  # the same call: exactly equal
    assert got["is_anomaly"].dtype == bool and got["log_px"].shape == (64,)
    assert "prior_log_px" not in got  # computed only when asked for
    assert reply.model_version == "1" and reply.parameters["k"].int64_param == 200
    assert reply.parameters["seed"].int64_param == 9


def test_grpc_v2_other_models_and_subsets(channel: grpc.Channel, x: np.ndarray) -> None:
    native = vae_pb2_grpc.VaeServiceStub(channel)
    enc = outputs_of(infer(channel, "digits.encode", x, n_samples=3, seed=4))
    ref = native.Encode(pb.EncodeRequest(x=codec.to_proto(x), n_samples=3, seed=4))
    np.testing.assert_array_equal(enc["z_mean"], codec.from_proto(ref.z_mean))
    np.testing.assert_array_equal(enc["z_samples"], codec.from_proto(ref.z_samples))
    dec = outputs_of(infer(channel, "digits.decode", enc["z_mean"], sample=True, seed=2))
    ref_dec = native.Decode(pb.DecodeRequest(z=codec.to_proto(enc["z_mean"]), sample=True, seed=2))
    np.testing.assert_array_equal(dec["probs"], codec.from_proto(ref_dec.decoded.params["probs"]))
    np.testing.assert_array_equal(dec["x_sample"], codec.from_proto(ref_dec.decoded.x_sample))
    smp = outputs_of(infer(channel, "digits.sample", None, n=5, seed=3))
    assert smp["z"].shape == (5, 8) and smp["logits"].shape == (5, 1, 8, 8) and "x_sample" not in smp
    request = v2.ModelInferRequest(
        model_name="digits", outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="prior_log_px")]
    )
    request.inputs.add(name="x", datatype="UINT8", shape=x[:2].shape)
    request.raw_input_contents.append(x[:2].tobytes())
    only = outputs_of(v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request))
    assert list(only) == ["prior_log_px"] and only["prior_log_px"].shape == (2,)


def test_grpc_v2_health_and_metadata(channel: grpc.Channel) -> None:
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(v2.ServerLiveRequest()).live and stub.ServerReady(v2.ServerReadyRequest()).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="digits")).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="digits.encode", version="1")).ready
    meta = stub.ModelMetadata(v2.ModelMetadataRequest(name="digits"))
    assert (meta.name, list(meta.versions), meta.platform) == ("digits", ["1"], "vaeserve")
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("x", "FP32", [-1, 1, 8, 8])]
    outputs = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert outputs["log_px"] == ("FP64", [-1]) and outputs["is_anomaly"] == ("BOOL", [-1])
    assert {"elbo", "elbo_se", "log_px", "log_px_se", "ess", "anomaly_score", "anomaly_percentile"} <= set(outputs)
    dec = stub.ModelMetadata(v2.ModelMetadataRequest(name="digits.decode"))
    assert [list(i.shape) for i in dec.inputs] == [[-1, 8]]
    assert stub.ServerMetadata(v2.ServerMetadataRequest()).extensions == ["binary_tensor_data"]


@pytest.mark.parametrize(
    ("name", "x", "params", "code", "message"),
    [
        ("nope", np.zeros((1, 64), np.float32), {}, grpc.StatusCode.NOT_FOUND, "'nope' is not served here"),
        ("digits", np.zeros((2, 7), np.float32), {}, grpc.StatusCode.INVALID_ARGUMENT, "x has shape (2, 7)"),
        ("digits", np.full((1, 64), 99, np.uint8), {}, grpc.StatusCode.INVALID_ARGUMENT, "Bernoulli model"),
        ("digits", np.zeros((1, 64), np.float32), {"K": 3}, grpc.StatusCode.INVALID_ARGUMENT, "'K' is not one of"),
        ("digits", np.zeros((1, 64), np.float32), {"k": "3"}, grpc.StatusCode.INVALID_ARGUMENT, "k must be int"),
        ("digits", np.zeros((1, 64), np.float32), {"k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k must be at least 1"),
        ("digits", np.zeros((1, 64), np.float32), {"k": 10**6}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_k"),
        ("digits.sample", None, {}, grpc.StatusCode.INVALID_ARGUMENT, "takes parameter n"),
        ("digits.encode", None, {}, grpc.StatusCode.INVALID_ARGUMENT, "takes input(s) ['x']"),
    ],
)
def test_grpc_v2_errors(
    channel: grpc.Channel, name: str, x: np.ndarray | None, params: dict[str, Any], code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        infer(channel, name, x, **params)
    assert err.value.code() == code and message in err.value.details(), err.value.details()


def test_grpc_v2_malformed_tensors(channel: grpc.Channel) -> None:
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    cases = [
        (dict(datatype="FP32", shape=[1, 64]), [b"\0" * 10], "has 10 bytes; shape [1, 64] of FP32 needs 256"),
        (dict(datatype="FP16", shape=[1, 64]), [b"\0" * 128], "datatype FP16"),
        (dict(datatype="FP32", shape=[-1, 64]), [b""], "dimensions must be >= 0"),
        (dict(datatype="FP32", shape=[1, 64]), [], "has 0 values in contents"),
    ]
    for tensor, raw, message in cases:
        request = v2.ModelInferRequest(model_name="digits", raw_input_contents=raw)
        request.inputs.add(name="x", **tensor)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    request = v2.ModelInferRequest(model_name="digits")  # typed contents work too
    request.inputs.add(
        name="x", datatype="FP32", shape=[1, 64], contents=v2.InferTensorContents(fp32_contents=[0] * 64)
    )
    assert len(stub.ModelInfer(request).outputs) > 10


def test_http_json_and_errors(server: RunningServer, channel: grpc.Channel, x: np.ndarray) -> None:
    assert http(server, "/v2/health/live") == (200, {"live": True})
    assert http(server, "/v2/health/ready") == (200, {"ready": True})
    assert http(server, "/v2")[1]["extensions"] == ["binary_tensor_data"]
    status, meta = http(server, "/v2/models/digits/versions/1")
    assert status == 200 and meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert http(server, "/v2/models/digits/ready") == (200, {"name": "digits", "ready": True})
    body = {
        "id": "r-1",
        "inputs": [{"name": "x", "shape": [4, 64], "datatype": "UINT8", "data": x[:4].ravel().tolist()}],
        "parameters": {"k": 50, "seed": 1},
        "outputs": [{"name": "log_px"}, {"name": "is_anomaly"}],
    }
    status, reply = http(server, "/v2/models/digits/infer", body)
    assert status == 200 and reply["id"] == "r-1" and reply["model_version"] == "1"
    got = {o["name"]: o for o in reply["outputs"]}
    want = native_score(channel, x[:4], 50, 1)
    np.testing.assert_array_equal(np.array(got["log_px"]["data"]), want["log_px"])
    assert got["is_anomaly"]["datatype"] == "BOOL" and got["is_anomaly"]["data"] == want["is_anomaly"].tolist()
    status, error = http(server, "/v2/models/nope/infer", body)
    assert status == 404 and "'nope' is not served here" in error["error"]
    assert http(server, "/v2/models/nope")[0] == 404 and http(server, "/v2/models/nope/ready")[0] == 404
    bad = {**body, "inputs": [{"name": "x", "shape": [4, 64], "datatype": "UINT8", "data": [1, 2]}]}
    status, error = http(server, "/v2/models/digits/infer", bad)
    assert status == 400 and "has 2 values in data; shape [4, 64] needs 256" in error["error"]
    assert http(server, "/v2/models/digits/infer", b"{not json")[0] == 400
    status, error = http(server, "/v2/models/digits/infer", {**body, "parameters": {"k": 10**6}})
    assert status == 429 and "max_k" in error["error"]


def test_http_binary_tensor_extension(server: RunningServer, channel: grpc.Channel, x: np.ndarray) -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "UINT8", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "parameters": {"k": 30, "seed": 2, "anomaly_scores": "nll", "binary_data_output": True},
        }
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.app.http_port}/v2/models/digits/infer",
        data=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        length = int(reply.headers["Inference-Header-Content-Length"])
        body = reply.read()
    meta, offset, got = json.loads(body[:length]), length, {}
    for output in meta["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP64": "<f8", "BOOL": "?"}[output["datatype"]]
        got[output["name"]] = np.frombuffer(body[offset : offset + size], dtype=dtype)
        offset += size
    assert offset == len(body)
    for name, values in native_score(channel, x, 30, 2).items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_v2_requests_share_the_metrics_labelled_by_protocol(server: RunningServer, channel: grpc.Channel) -> None:
    from prometheus_client import generate_latest

    infer(channel, "digits", np.zeros((1, 64), np.float32), k=5)
    http(server, "/v2/health/live")
    text = generate_latest(server.app.metrics.registry).decode()
    assert 'method="ModelInfer",model="digits",protocol="v2",version="1"' in text
    assert 'method="ServerLive",model="",protocol="v2-http",version=""' in text


@pytest.fixture(scope="session")
def triton_python() -> Path:
    return triton_venv.triton_python()


def test_tritonclient_grpc_and_http(
    server: RunningServer, channel: grpc.Channel, x: np.ndarray, triton_python: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(
        [
            str(triton_python),
            str(Path(__file__).with_name("triton_calls.py")),
            server.address,
            f"127.0.0.1:{server.app.http_port}",
            str(tmp_path / "x.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    want = native_score(channel, x, 100, 7)
    enc = vae_pb2_grpc.VaeServiceStub(channel).Encode(pb.EncodeRequest(x=codec.to_proto(x)))
    for kind in ("grpc", "http"):
        r = results[kind]
        assert (r["live"], r["ready"], r["model_ready"], r["absent_ready"], r["server"]) == (
            True,
            True,
            True,
            False,
            "vaeserve",
        ), kind
        assert r["inputs"] == [["x", "FP32", [-1, 1, 8, 8]]] and "anomaly_percentile" in r["outputs"]
        assert r["encode_outputs"] == ["z_mean", "z_logvar", "z_samples"]
        for name in ("log_px", "log_px_se", "ess", "elbo", "is_anomaly"):
            np.testing.assert_array_equal(np.array(r[name]), want[name], err_msg=f"{kind} {name}")
        np.testing.assert_array_equal(np.array(r["every_percentile"]), want["anomaly_percentile"])
        np.testing.assert_array_equal(np.array(r["z_mean"], np.float32), codec.from_proto(enc.z_mean))
        assert "'nope' is not served here" in r["missing"]
        assert "x has shape (2, 7)" in r["refused"]
    assert results["grpc"]["missing"].startswith("StatusCode.NOT_FOUND")
    assert results["http"]["missing"].startswith("404") or "404" in results["http"]["missing"]
    assert sys.executable != str(triton_python)
