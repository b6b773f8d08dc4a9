"""Prometheus metrics, served over HTTP on their own port (`--metrics-port`; off by default).

With `--workers`, each worker records into prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR,
set by the supervisor before it starts them) and the supervisor serves their sum; every gauge says how
it adds up over workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """The server's counters; one registry per server, so tests and several servers in a process don't mix.

    Request families are labelled by model and version (empty when a request never reached a model,
    e.g. NOT_FOUND), so one dashboard follows a version swap.
    """

    def __init__(self, *, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        model = ["model", "version"]
        self.requests = Counter(
            "vaeserve_requests",
            "requests answered, by protocol (v1, v2, v2-http), method, status code and model",
            ["protocol", "method", "code", *model],
            registry=r,
        )
        self.latency = Histogram(
            "vaeserve_request_seconds",
            "request duration",
            ["protocol", "method", *model],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "vaeserve_requests_in_flight",
            "requests in progress (every protocol)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inputs = Counter("vaeserve_inputs", "inputs scored, encoded or decoded", ["method", *model], registry=r)
        self.samples = Counter("vaeserve_importance_samples", "inputs x K evaluated by Score", model, registry=r)
        self.anomaly_flags = Counter(
            "vaeserve_anomaly_flags",
            "inputs flagged anomalous (p-value <= the request's alpha), by model and anomaly score",
            [*model, "score"],
            registry=r,
        )
        self.batch_inputs = Histogram(
            "vaeserve_batch_inputs",
            "inputs per merged engine run (dynamic batching)",
            ["kind", *model],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model = Gauge(
            "vaeserve_model_info",
            "a ready model version (value 1; with workers, 1 while any worker has it ready)",
            ["name", "version", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "vaeserve_ready",
            "1 while the server is SERVING (with workers: while every live worker is)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.queue_depth = Gauge(
            "vaeserve_queue_depth",
            "engine runs waiting for a thread (the work queue), by model",
            model,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "vaeserve_queue_seconds",
            "time engine runs waited for a thread, by model",
            model,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.payload_written = Counter(
            "vaeserve_payload_records_written", "payload log records the sink took (--payload-log)", registry=r
        )
        self.payload_dropped = Counter(
            "vaeserve_payload_records_dropped",
            "payload log records lost, by reason: queue_full (the sink fell behind), sink_error, shutdown, error",
            ["reason"],
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._in_flight_count: Callable[[], float] | None = None

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), looked up once: labels() takes a lock and builds a key on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, protocol: str, method: str, code: str, model: str, version: str, seconds: float) -> None:
        self._child(self.requests, protocol, method, code, model, version).inc()
        self._child(self.latency, protocol, method, model, version).observe(seconds)

    def count_inputs(self, model: str, version: str, method: str, inputs: int, draws: int = 0) -> None:
        self._child(self.inputs, method, model, version).inc(inputs)
        if draws:
            self._child(self.samples, model, version).inc(inputs * draws)

    def count_anomaly_flags(self, model: str, version: str, score: str, flagged: int) -> None:
        """One add per score and request (also of 0: the series exists before the first flag)."""
        self._child(self.anomaly_flags, model, version, score).inc(flagged)

    def observe_batch(self, model: str, version: str, kind: str, inputs: int) -> None:
        self._child(self.batch_inputs, kind, model, version).observe(inputs)

    def set_queue_depth(self, model: str, version: str, depth: int) -> None:
        self._child(self.queue_depth, model, version).set(depth)

    def observe_queue_wait(self, model: str, version: str, seconds: float) -> None:
        self._child(self.queue_wait, model, version).observe(seconds)

    def model_ready(self, name: str, version: str, provider: str, ready: bool) -> None:
        if ready or self.multiprocess:  # a removed child would live on in the worker's file: set it to 0
            self.model.labels(name, version, provider).set(int(ready))
            return
        with contextlib.suppress(KeyError):
            self.model.remove(name, version, provider)

    def count_payload(self, *, written: int = 0, dropped: int = 0, reason: str = "") -> None:
        """From the payload log's writer thread, and from the request path for queue_full."""
        if written:
            self.payload_written.inc(written)
        if dropped:
            self.payload_dropped.labels(reason).inc(dropped)

    def track_in_flight(self, count: Callable[[], float]) -> None:
        """The in-flight gauge reads `count` when scraped, so requests pay nothing for it; a worker's
        scrape happens in the supervisor, so there `refresh()` copies it into the file instead."""
        self._in_flight_count = count
        if not self.multiprocess:
            self.in_flight.set_function(count)

    def refresh(self) -> None:
        """Copies values read on demand into the multiprocess files (a worker calls it every second)."""
        if self._in_flight_count is not None:
            self.in_flight.set(self._in_flight_count())

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
