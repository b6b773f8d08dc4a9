"""OpenTelemetry traces (`--tracing`; the optional `tracing` extra installs the SDK and its OTLP exporter).

Off, nothing of OpenTelemetry is imported and every component holds `tracing=None`. On, each server
process (a `--workers` process too, after it is spawned) starts its own tracer provider, not the
global one, so servers in one process keep apart. The exporter is configured by the standard
``OTEL_*`` variables, read by the SDK itself. Spans are exported from a bounded queue on a thread
of the SDK: a collector that is slow or down costs dropped spans and log lines, never a request.

The spans: one per call at the boundary (a SERVER span, child of the caller's W3C ``traceparent``),
and below it a ``queue wait`` and an ``engine run`` span per engine run. A run that the dynamic batcher
merges from several requests sits under a ``batch`` span, child of the first of them and linked to
each (`batched`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

__all__ = ["CallSpan", "RunSpans", "Tracing", "start_tracing"]

log = logging.getLogger("vaeserve.server.tracing")

SERVICE_NAME = "vaeserve-server"  # unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it
_FLUSH_S = 5.0  # at shutdown, for the last spans; a collector that is down never holds up the exit
_GRPC = {"v1": "vaeserve.api.v1.VaeService", "v2": "inference.GRPCInferenceService"}
# The server's own failures, as OpenTelemetry's gRPC conventions list them; a caller's mistake is no error here.
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


def start_tracing(replica_id: str) -> Tracing | None:
    """This process's tracing, or None (with a warning) where OpenTelemetry is missing or its
    configuration is broken: the server then serves without traces rather than not at all."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "tracing is on but OpenTelemetry is not installed (%s): pip install 'vaeserve-server[tracing]'; "
            "serving without traces",
            exc,
        )
        return None
    try:
        ours = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": replica_id})
        resource = ours.merge(OTELResourceDetector().detect())  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
        exporter = OTLPSpanExporter()
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # the sampler: OTEL_TRACES_SAMPLER
        provider.add_span_processor(BatchSpanProcessor(exporter))
    except Exception as exc:  # a malformed OTEL_* value: the SDK raises what it raises
        log.warning("tracing is on but its OpenTelemetry configuration is broken (%r); serving without traces", exc)
        return None
    return Tracing(provider, exporter)


class Tracing:
    """The tracer of one server; its methods are called only when tracing is on."""

    def __init__(self, provider: TracerProvider, exporter: SpanExporter) -> None:
        from opentelemetry import context, propagate, trace

        self._provider, self._exporter = provider, exporter
        self._tracer = provider.get_tracer("vaeserve.server")
        self._context, self._propagate, self._trace = context, propagate, trace

    def enter(self, name: str | None, carrier: Mapping[str, Any] | None, protocol: str, method: str) -> CallSpan:
        """A call's SERVER span, child of the caller's trace context (`carrier`: its headers or metadata),
        current until `CallSpan.end`. `name`: by default the gRPC method's full name."""
        parent = self._propagate.extract(carrier) if carrier else None
        attributes = {"vaeserve.protocol": protocol, "vaeserve.method": method}
        if name is None:
            service = _GRPC.get(protocol, protocol)  # a service with no protocol of ours is named as it is
            name = f"{service}/{method}"
            attributes |= {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        span = self._tracer.start_span(name, parent, self._trace.SpanKind.SERVER, attributes)
        return CallSpan(self, span, self._context.attach(self._trace.set_span_in_context(span, parent)))

    def current(self) -> Context:
        return self._context.get_current()

    def run_spans(self, labels: tuple[str, str], rows: int) -> RunSpans:
        """A run's spans, children of the current span: its wait in the queue, then the run."""
        return RunSpans(self, self.current(), _run_attributes(labels, rows))

    def inline_run(self, labels: tuple[str, str], rows: int) -> contextlib.AbstractContextManager[Span]:
        """The `engine run` span of work run right on the event loop (no queue)."""
        attributes = {**_run_attributes(labels, rows), "vaeserve.inline": True}
        return self._tracer.start_as_current_span("engine run", attributes=attributes)

    def start(self, name: str, parent: Context | None, attributes: dict[str, Any]) -> Span:
        return self._tracer.start_span(name, parent, attributes=attributes)

    def end(self, span: Span, error: str | None) -> None:
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()

    def detach(self, token: Token[Context]) -> None:
        self._context.detach(token)

    @contextlib.contextmanager
    def batched(self, parents: Sequence[Context], inputs: int) -> Iterator[None]:
        """The context a batcher's run goes on in: its one request's, or for requests merged into one run,
        a `batch` span under the first of them, linked to every one (the others' traces point to it)."""
        if len(parents) == 1:
            token = self._context.attach(parents[0])
            try:
                yield
            finally:
                self._context.detach(token)
            return
        links = [self._trace.Link(self._trace.get_current_span(p).get_span_context()) for p in parents]
        attributes = {"vaeserve.batch.requests": len(parents), "vaeserve.batch.inputs": inputs}
        with self._tracer.start_as_current_span("batch", parents[0], links=links, attributes=attributes):
            yield

    async def close(self) -> None:
        """Exports the spans left, for at most a few seconds, without blocking the event loop."""
        closing = threading.Thread(target=self._provider.shutdown, name="vaeserve-trace-flush", daemon=True)
        closing.start()
        deadline = time.monotonic() + _FLUSH_S
        while closing.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if closing.is_alive():
            log.warning("tracing: the last spans were not exported within %g s (is the collector down?)", _FLUSH_S)
            self._exporter.shutdown()  # stops its retries: the flushing thread ends soon after


def _run_attributes(labels: tuple[str, str], rows: int) -> dict[str, Any]:
    return {"vaeserve.model": labels[0], "vaeserve.version": labels[1], "vaeserve.rows": rows}


class CallSpan:
    """A call's span at the boundary, current while the call is in the server."""

    __slots__ = ("_span", "_token", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, token: Token[Context]) -> None:
        self._tracing, self._span, self._token = tracing, span, token

    def end(self, attributes: dict[str, Any], status: str, message: str | None) -> None:
        """`status`: the call's status code's name; an error when the server failed, with its `message`."""
        self._span.set_attributes(attributes)
        self._span.set_attribute("vaeserve.status", status)
        self._tracing.end(self._span, (message or status) if status in _SERVER_FAULTS else None)
        self._tracing.detach(self._token)


class RunSpans:
    """An engine run's `queue wait` span (from `Tracing.run_spans` to `started`), then its `engine run`
    span (to `finished`). Each ends once; a run refused in the queue ends its wait as an error."""

    __slots__ = ("_attributes", "_parent", "_run", "_tracing", "_wait")

    def __init__(self, tracing: Tracing, parent: Context, attributes: dict[str, Any]) -> None:
        self._tracing, self._parent, self._attributes = tracing, parent, attributes
        self._wait: Span | None = tracing.start("queue wait", parent, attributes)
        self._run: Span | None = None

    def started(self) -> None:
        if self._wait is not None:
            self._wait.end()
            self._wait = None
        self._run = self._tracing.start("engine run", self._parent, self._attributes)

    def left(self) -> None:
        """The caller is done with the run: a run that never started (its caller went away) ends its wait."""
        if self._run is None and self._wait is not None:
            self._wait.end()
            self._wait = None

    def finished(self, error: BaseException | None = None) -> None:
        """Ends the run, or the wait of a run that never started (expired in the queue, or its caller left)."""
        span = self._run or self._wait
        self._run = self._wait = None
        if span is not None:
            self._tracing.end(span, None if error is None else str(error) or type(error).__name__)
