"""vaeserve_anomaly_flags_total counts the flags that Score replies carry, over both protocols."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sklearn.datasets import load_digits

from tests.serving import RunningServer, server_settings
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc

ALPHA = 0.5  # about half of normal inputs flagged: counts well away from 0 and from the batch size


@pytest.fixture(scope="module")
def server(digits_bundle: Path) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(digits_bundle, http_port=0))
    yield running
    running.stop()


def flags_counted(server: RunningServer) -> dict[str, float]:
    families = [f for f in server.app.metrics.registry.collect() if f.name == "vaeserve_anomaly_flags"]
    assert len(families) == 1
    counted = {}
    for sample in families[0].samples:
        if sample.name.endswith("_total"):
            assert (sample.labels["model"], sample.labels["version"]) == ("digits", "1")
            counted[sample.labels["score"]] = sample.value
    return counted


def test_flags_are_counted_per_model_and_score_over_both_protocols(server: RunningServer) -> None:
    x = load_digits().data[:40]
    expected: Counter[str] = Counter()
    with grpc.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        for names, rows in ((["nll", "combined"], slice(0, 25)), (["nll"], slice(25, 40))):
            request = pb.ScoreRequest(x=codec.to_proto(x[rows]), k=20, seed=1, alpha=ALPHA, anomaly_scores=names)
            reply = stub.Score(request)
            assert [a.name for a in reply.anomalies] == names
            for anomaly in reply.anomalies:
                expected[anomaly.name] += int(codec.from_proto(anomaly.is_anomaly).sum())
        # skip_anomaly: no score computed, nothing counted (not even a 0).
        stub.Score(pb.ScoreRequest(x=codec.to_proto(x[:5]), k=20, skip_anomaly=True))

    body = {
        "inputs": [{"name": "x", "shape": [10, 64], "datatype": "FP64", "data": x[:10].ravel().tolist()}],
        "parameters": {"k": 20, "alpha": ALPHA, "anomaly_scores": "reconstruction"},
        "outputs": [{"name": "is_anomaly"}],
    }
    infer = urllib.request.Request(
        f"http://127.0.0.1:{server.app.http_port}/v2/models/digits/infer", data=json.dumps(body).encode()
    )
    with urllib.request.urlopen(infer, timeout=30) as answer:
        (output,) = json.loads(answer.read())["outputs"]
    expected["reconstruction"] += sum(output["data"])

    assert 0 < expected["nll"] < 40 and 0 < expected["reconstruction"] < 10, expected
    assert flags_counted(server) == {name: float(count) for name, count in expected.items()}


def test_the_counter_is_declared_with_its_labels() -> None:
    from vaeserve.server.boundary.metrics import Metrics

    metrics = Metrics()
    metrics.count_anomaly_flags("m", "2", "nll", 0)
    metrics.count_anomaly_flags("m", "2", "nll", 3)
    labels = {"model": "m", "version": "2", "score": "nll"}
    assert metrics.registry.get_sample_value("vaeserve_anomaly_flags_total", labels) == 3.0
