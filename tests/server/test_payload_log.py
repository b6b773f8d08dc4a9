"""The payload log on real servers on loopback: its records equal the replies (our client over gRPC, V2 over
HTTP), inputs are hashed unless raw values are asked for (up to a cap), sampling, a blocked sink that never
holds up scoring (its losses counted), and rotation of the file sink."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.serving import RunningServer, ServerProcess, server_settings
from vaeserve.api.scores import ANOMALY_FIELDS, SCORE_COLUMNS, anomaly_column
from vaeserve.client import Client
from vaeserve.server.boundary.guard import RequestInfo
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.engine import ScoreOptions, ScoreResult
from vaeserve.server.payload import log as payload_log
from vaeserve.server.payload.sinks import BATCH_CONTENT_TYPE, FileSink, worker_path
from vaeserve.server.serving.calls import Scored

Serve = Callable[..., RunningServer]
X = load_digits().data[:40].reshape(40, 1, 8, 8).astype(np.float32)  # raw units 0..16


def as_json(values: np.ndarray) -> list[Any]:
    """What a record holds for an array: its values, NaN and infinities as null."""
    return [v if not isinstance(v, float) or np.isfinite(v) else None for v in values.tolist()]


def wait_for(read: Callable[[], list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while len(records := read()) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(records) == n, records
    return records


def file_records(path: Path) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric(server: RunningServer, name: str, **labels: str) -> float:
    return server.app.metrics.registry.get_sample_value(name, labels) or 0.0


def http_infer(server: RunningServer, x: np.ndarray, request_id: str) -> tuple[dict[str, Any], str]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        "parameters": {"k": 50, "seed": 5, "anomaly_scores": "nll"},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.app.http_port}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"x-request-id": request_id, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read()), reply.headers["x-request-id"]


@pytest.fixture
def sink() -> Iterator[tuple[str, list[tuple[str, list[dict[str, Any]]]]]]:
    """An HTTP sink on loopback: its URL and the (content type, records) of each POST it was sent."""
    posts: list[tuple[str, list[dict[str, Any]]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/events", posts
    server.shutdown()
    server.server_close()


def test_records_equal_the_replies(serve: Serve, digits_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    server = serve(digits_bundle, payload_log=str(path), http_port=0)
    with Client(server.address, retries=0) as client:
        scores = client.score(X[:20], k=50, seed=3, anomaly_scores=["nll", "reconstruction"])
    v2_reply, v2_id = http_infer(server, X[20:25], "audit-7")
    with Client(server.address, retries=0, batch_size=3) as client:
        streamed = list(client.score_stream(X[25:31], k=10))
    v1, v2, *stream = wait_for(file_records(path), 4)
    # A stream's messages: a record each, under the stream's request id.
    assert [r["data"]["method"] for r in stream] == ["ScoreStream"] * 2
    assert stream[0]["data"]["request_id"] == stream[1]["data"]["request_id"]
    assert [r["data"]["scores"]["log_px"] for r in stream] == [as_json(s.log_px) for s in streamed]

    for record in (v1, v2):  # CloudEvents' required attributes, and ours
        assert record["specversion"] == "1.0" and record["type"] == "io.vaeserve.score"
        assert record["source"] == "/vaeserve/test-replica" and record["datacontenttype"] == "application/json"
        assert record["subject"] == "digits:1" and record["time"].endswith("Z")
    assert v1["id"] != v2["id"]

    data = v1["data"]
    assert (data["protocol"], data["method"], data["model"], data["version"]) == ("v1", "Score", "digits", "1")
    assert data["request_id"] and (data["k"], data["seed"]) == (50, 3)
    want = {c.name: getattr(scores, c.name) for c in SCORE_COLUMNS if getattr(scores, c.name) is not None}
    for name, anomaly in scores.anomalies.items():
        want.update({anomaly_column(name, f.name): getattr(anomaly, f.name) for f in ANOMALY_FIELDS})
    assert set(data["scores"]) == set(want)
    for name, values in want.items():
        assert data["scores"][name] == as_json(values), name  # exactly the client's numbers
    assert [a["name"] for a in data["anomalies"]] == ["nll", "reconstruction"]
    assert data["anomalies"][0]["threshold"] == scores.anomalies["nll"].threshold

    # Hashed by default: sha256 of each input's bytes as sent, no values.
    inputs = data["inputs"]
    assert inputs["dtype"] == "float32" and inputs["shape"] == [20, 1, 8, 8] and "values" not in inputs
    assert inputs["sha256"] == [hashlib.sha256(row.tobytes()).hexdigest() for row in X[:20]]

    data = v2["data"]
    assert (data["protocol"], data["method"], data["request_id"]) == ("v2-http", "ModelInfer", "audit-7") and v2_id
    column_of = {c.v2_name: c.name for c in SCORE_COLUMNS}
    outputs = {column_of.get(o["name"], o["name"]): o["data"] for o in v2_reply["outputs"]}
    assert outputs == data["scores"]
    assert metric(server, "vaeserve_payload_records_written_total") == 4


def test_raw_values_up_to_the_cap_to_an_http_sink(
    serve: Serve, digits_bundle: Path, sink: tuple[str, list[tuple[str, list[dict[str, Any]]]]]
) -> None:
    url, posts = sink
    cap = X[:4].nbytes
    server = serve(digits_bundle, payload_log=url, payload_log_raw=True, payload_log_max_bytes=cap)
    with Client(server.address, retries=0) as client:
        client.score(X[:4], k=10)
        client.score(X[:5], k=10)

    def received() -> list[dict[str, Any]]:
        return [record for _, batch in posts for record in batch]

    small, large = sorted(wait_for(received, 2), key=lambda r: r["data"]["inputs"]["shape"][0])
    assert {content_type for content_type, _ in posts} == {BATCH_CONTENT_TYPE}
    assert small["data"]["inputs"]["values"] == X[:4].tolist()
    assert "values" not in large["data"]["inputs"] and len(large["data"]["inputs"]["sha256"]) == 5
    assert (
        large["data"]["inputs"]["values_omitted"]
        == f"{X[:5].nbytes} bytes, over payload_log_max_bytes ({cap}): hashes only"
    )


def test_sample_rate_zero_logs_nothing(digits_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    server = RunningServer(server_settings(digits_bundle, payload_log=str(path), payload_log_sample=0.0))
    with Client(server.address, retries=0) as client:
        for _ in range(3):
            client.score(X[:2], k=10)
    server.stop()  # writes whatever was queued
    assert not path.exists() and metric(server, "vaeserve_payload_records_written_total") == 0


def test_a_blocked_sink_never_holds_up_scoring_and_its_losses_are_counted(digits_bundle: Path) -> None:
    # A sink that takes the connection (the kernel's backlog) and never answers: the writer hangs on it.
    listener = socket.create_server(("127.0.0.1", 0), backlog=4)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/events"
    server = RunningServer(server_settings(digits_bundle, payload_log=url, payload_log_queue=1))
    try:
        # A deadline far below the sink's timeout: a log written on the request path would miss it.
        with Client(server.address, retries=0, timeout=5.0) as client:
            for i in range(8):
                assert len(client.score(X[i : i + 2], k=10)) == 2
        # At most one record is held by the hung writer and one waits in the queue: the rest are dropped.
        assert metric(server, "vaeserve_payload_records_dropped_total", reason="queue_full") >= 8 - 1 - 2
        assert metric(server, "vaeserve_payload_records_written_total") == 0
    finally:
        listener.close()  # resets the hung connection: the writer sees a sink error and goes on
    server.stop()
    assert metric(server, "vaeserve_payload_records_dropped_total", reason="sink_error") >= 1


class BlockedSink:
    """A sink whose writes wait until released: a disk or a mount that hangs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[bytes] = []

    def write(self, lines: list[bytes]) -> None:
        self.release.wait(20)
        self.lines += lines

    def close(self) -> None:
        pass


def test_the_queue_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload_log, "QUEUE_BYTES", 4 * X[:4].nbytes)  # four requests' inputs
    monkeypatch.setattr(payload_log, "_ROW_BYTES", 0)
    sink, metrics = BlockedSink(), Metrics()
    plog = payload_log.PayloadLog(sink, source="/test", queue_size=100, metrics=metrics)
    scored = Scored(ScoreResult({"log_px": np.zeros(4)}, per_dim=np.zeros((4, 64))), ScoreOptions(k=1), seed=0)
    for i in range(8):  # the hung writer's batch still counts: 4 fit, 4 are dropped
        plog.score(RequestInfo(f"r{i}", "v1", "Score"), "digits", "1", X[:4], scored)
    sink.release.set()
    plog.close()
    records = [json.loads(line) for line in sink.lines]
    assert [r["data"]["request_id"] for r in records] == ["r0", "r1", "r2", "r3"]
    assert metrics.registry.get_sample_value("vaeserve_payload_records_dropped_total", {"reason": "queue_full"}) == 4
    assert metrics.registry.get_sample_value("vaeserve_payload_records_written_total") == 4


def test_rotation_keeps_so_many_files_of_at_most_the_size(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    sink = FileSink(path, rotate_bytes=100, keep=2)
    lines = [f'{{"n":{i:03d},"pad":"{"x" * 20}"}}\n'.encode() for i in range(10)]  # 36 bytes each
    for line in lines:
        sink.write([line])
    sink.close()
    kept = [path.with_name("payload.jsonl.2"), path.with_name("payload.jsonl.1"), path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert all(p.stat().st_size <= 100 for p in kept)
    assert b"".join(p.read_bytes() for p in kept) == b"".join(lines[-6:])  # two lines a file, oldest first

    other = tmp_path / "other.jsonl"
    FileSink(other, rotate_bytes=100, keep=0).write(lines[:4])  # keep=0: one file, started again when full
    assert other.read_bytes() == lines[2] + lines[3] and not other.with_name("other.jsonl.1").exists()


def test_each_worker_writes_its_own_file(spawn: type[ServerProcess], tmp_path: Path) -> None:
    assert worker_path(Path("/logs/payload.jsonl"), None) == Path("/logs/payload.jsonl")
    server = spawn("--workers", "2", "--payload-log", str(tmp_path / "payload.jsonl"), "--replica-id", "r")
    server.wait_serving()
    # 16 connections, each placed by the kernel's hash: all on one worker has odds 2 in 65,536.
    with Client(server.address, connections=16, batch_size=2, retries=0) as client:
        client.score(X[:32], k=10)
    server.stop()  # each worker writes what it has queued before it exits
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["payload.w0.jsonl", "payload.w1.jsonl"]
    for index, path in enumerate(files):
        records = file_records(path)()
        assert records and {r["source"] for r in records} == {f"/vaeserve/r/w{index}"}
    assert sum(len(file_records(path)()) for path in files) == 16
