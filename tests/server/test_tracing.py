"""OpenTelemetry traces, end to end: real servers export over OTLP/gRPC to a small receiver on loopback
(the collector's TraceService, implemented here), and the spans that arrive are checked."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk.trace import TracerProvider

from tests.conftest import REPO
from tests.serving import RunningServer, ServerProcess, server_settings
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.api.v2 import grpc_predict_v2_pb2_grpc
from vaeserve.client import AsyncClient, Client

SCORE = "vaeserve.api.v1.VaeService/Score"
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
caller = TracerProvider().get_tracer("test-caller")  # the caller's own spans: only their context is sent


@dataclass(frozen=True)
class Received:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status: int
    attributes: dict[str, Any]
    links: frozenset[tuple[str, str]]
    resource: dict[str, Any]


def _values(attributes: Any) -> dict[str, Any]:
    def value(v: common_pb2.AnyValue) -> Any:
        which = v.WhichOneof("value")
        return getattr(v, which) if which else None

    return {a.key: value(a.value) for a in attributes}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """What an OpenTelemetry collector's OTLP/gRPC trace endpoint does, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._arrived = threading.Condition()

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._arrived:
            for resource_spans in request.resource_spans:
                resource = _values(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    self.spans += [_received(s, resource) for s in scope.spans]
            self._arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait(self, ready: Callable[[list[Received]], bool], timeout: float = 15.0) -> list[Received]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: ready(self.spans), timeout):
                raise AssertionError(f"spans received: {[(s.name, s.parent_id) for s in self.spans]}")
            return list(self.spans)


def _received(span: Any, resource: dict[str, Any]) -> Received:
    return Received(
        span.name,
        span.trace_id.hex(),
        span.span_id.hex(),
        span.parent_span_id.hex(),
        span.kind,
        span.status.code,
        _values(span.attributes),
        frozenset((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        resource,
    )


def _named(spans: list[Received], name: str) -> list[Received]:
    return [s for s in spans if s.name == name]


def _children(spans: list[Received], parent: Received) -> dict[str, Received]:
    return {s.name: s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id}


def _scored(callers: list[str]) -> Callable[[list[Received]], bool]:
    """Every caller's Score span has arrived."""
    return lambda spans: {s.trace_id for s in _named(spans, SCORE)} >= set(callers)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The receiver on a loopback port, and the standard variables that point servers (and workers) at it."""
    servicer = Receiver()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: export soon, not every 5 s
    yield servicer
    server.stop(None)


def _x(rows: int, dim: int = 10) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)


def test_a_call_is_a_span_under_its_callers_with_queue_wait_and_engine_run_below(
    receiver: Receiver, serve: Callable[..., RunningServer], exact_bundle: Path
) -> None:
    server = serve(exact_bundle, tracing=True)
    with caller.start_as_current_span("caller") as span, Client(server.address) as client:
        client.score(_x(4), k=100)  # 400 rows: the thread pool's work (not batched: K above batch_max_k)
        client.encode(_x(1))  # one row: run right on the event loop, no queue
    calling = span.get_span_context()
    trace_id, span_id = f"{calling.trace_id:032x}", f"{calling.span_id:016x}"

    def arrived(spans: list[Received]) -> bool:
        return all(_named(spans, n) for n in (SCORE, "vaeserve.api.v1.VaeService/Encode")) and len(spans) >= 5

    spans = receiver.wait(arrived)
    score = _named(spans, SCORE)[0]
    assert (score.trace_id, score.parent_id, score.kind) == (trace_id, span_id, SERVER_KIND)
    assert score.attributes["rpc.method"] == "Score" and score.attributes["vaeserve.status"] == "OK"
    assert score.attributes["vaeserve.model"] == server.app.registry.entries()[0].name
    assert score.resource["service.name"] == "vaeserve-server"
    assert score.resource["service.instance.id"] == "test-replica"
    below = _children(spans, score)
    assert set(below) == {"queue wait", "engine run"}, below
    assert below["engine run"].attributes["vaeserve.rows"] >= 400
    encode = _named(spans, "vaeserve.api.v1.VaeService/Encode")[0]
    assert encode.trace_id == trace_id
    inline = _children(spans, encode)
    assert set(inline) == {"engine run"} and inline["engine run"].attributes["vaeserve.inline"] is True


def test_a_merged_run_is_a_batch_span_linked_to_every_request_in_it(
    receiver: Receiver, serve: Callable[..., RunningServer], exact_bundle: Path
) -> None:
    # One engine thread, every run on it, and 50 ms for requests to gather while one runs: they merge.
    server = serve(exact_bundle, tracing=True, executor_threads=1, inline_rows=0, batch_max_delay_ms=50)

    async def calls(n: int) -> list[str]:
        async with AsyncClient(server.address) as client:

            async def one(i: int) -> str:
                with caller.start_as_current_span(f"caller {i}") as span:
                    await client.score(_x(32), k=8, skip_anomaly=True)
                return f"{span.get_span_context().trace_id:032x}"

            return list(await asyncio.gather(*(one(i) for i in range(n))))

    batches: list[Received] = []
    for _ in range(5):  # merging depends on arrival: a round with none is tried again
        callers = asyncio.run(calls(6))
        spans = receiver.wait(_scored(callers))
        batches = [b for b in _named(spans, "batch") if b.trace_id in callers]
        if batches:
            break
    assert batches, "no requests were merged in five rounds"
    scores = {(s.trace_id, s.span_id): s for s in _named(spans, SCORE) if s.trace_id in callers}
    assert {s.trace_id for s in scores.values()} == set(callers)  # each call continues its own caller's trace
    for batch in batches:
        assert len(batch.links) == batch.attributes["vaeserve.batch.requests"] >= 2
        assert batch.links <= set(scores), "a batch links to the requests merged into it"
        assert (batch.trace_id, batch.parent_id) in batch.links, "and sits under the first of them"
        assert set(_children(spans, batch)) == {"queue wait", "engine run"}


def test_http_calls_continue_the_callers_trace_and_probes_make_no_spans(
    receiver: Receiver, serve: Callable[..., RunningServer], exact_bundle: Path
) -> None:
    server = serve(exact_bundle, tracing=True, http_port=0)
    base = f"http://127.0.0.1:{server.app.http_port}"
    for probe in ("/v2/health/live", "/v2/health/ready"):
        urllib.request.urlopen(base + probe, timeout=10).close()
    with grpc.insecure_channel(server.address) as channel:
        grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2.ServerLiveRequest())
    with Client(server.address) as client:
        assert client.health() == "SERVING"
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "content-type": "application/json"}
    model = server.app.registry.entries()[0].name
    urllib.request.urlopen(urllib.request.Request(f"{base}/v2/models/{model}", headers=headers), timeout=10).close()
    bad = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=b"{not json", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=10)
    assert refused.value.code == 400
    spans = receiver.wait(lambda s: bool(_named(s, "POST /v2/models/{name}/infer")))
    metadata, infer = _named(spans, "GET /v2/models/{name}")[0], _named(spans, "POST /v2/models/{name}/infer")[0]
    assert (metadata.trace_id, metadata.parent_id, metadata.kind) == (trace_id, parent, SERVER_KIND)
    assert metadata.attributes["vaeserve.protocol"] == "v2-http"
    # A caller's mistake is recorded, but is no error of the server's.
    assert infer.attributes["vaeserve.status"] == "INVALID_ARGUMENT" and infer.status != ERROR
    assert {s.name for s in spans} == {"GET /v2/models/{name}", "POST /v2/models/{name}/infer"}, "probes"


def test_a_broken_exporter_never_fails_a_request(
    monkeypatch: pytest.MonkeyPatch, exact_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # nobody listens
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    server = RunningServer(server_settings(exact_bundle, tracing=True))
    try:
        assert server.app.tracing is not None
        with Client(server.address) as client:
            for _ in range(3):
                assert len(client.score(_x(4), k=100).log_px) == 4
                time.sleep(0.05)  # exports fail meanwhile, on the SDK's thread
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 8.0, "a collector that is down does not hold up the shutdown"

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")  # a malformed variable: the exporter cannot start
    with caplog.at_level(logging.WARNING, logger="vaeserve.server.tracing"):
        server = RunningServer(server_settings(exact_bundle, tracing=True))
    try:
        assert server.app.tracing is None and "serving without traces" in caplog.text
        with Client(server.address) as client:
            assert len(client.score(_x(2), k=10).log_px) == 2
    finally:
        server.stop()


_OFF = """
import sys
import numpy as np
from tests.serving import RunningServer, server_settings
from vaeserve.client import Client
server = RunningServer(server_settings(None))  # the bundled digits model
with Client(server.address) as client:
    client.score(np.zeros((2, 64), np.float32), k=10)
server.stop()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_tracing_off_imports_no_opentelemetry_at_all() -> None:
    """Off by default: the server and the client never import OpenTelemetry (a process of their own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VAESERVE_"))}
    done = subprocess.run([sys.executable, "-c", _OFF], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_each_worker_process_starts_its_own_sdk(receiver: Receiver, spawn: type[ServerProcess]) -> None:
    server = spawn("--workers", "2", "--tracing")
    server.wait_serving()
    workers = {f"{socket.gethostname()}/w0", f"{socket.gethostname()}/w1"}
    # 16 connections, each placed by the kernel's hash: all on one worker has odds 2 in 65,536.
    with Client(server.address, connections=16, batch_size=4) as client:
        client.encode(np.zeros((64, 64), np.float32))
    encode = "vaeserve.api.v1.VaeService/Encode"
    receiver.wait(lambda s: {x.resource["service.instance.id"] for x in _named(s, encode)} == workers)
