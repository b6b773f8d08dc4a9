"""Building the gRPC server (apart from running it) and its lifecycle: load, warm up, serve, drain.

Health: the server ("" and the VaeService name) is SERVING while at least one model has a ready
version and the server is not draining; each model's name is a health service of its own,
SERVING while that model has a ready version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vaeserve.api.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.api.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from vaeserve.server.boundary.auth import Authenticator, read_tokens
from vaeserve.server.boundary.guard import Guard
from vaeserve.server.boundary.health import HealthService
from vaeserve.server.boundary.interceptor import Boundary
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.boundary.tracing import Tracing, start_tracing
from vaeserve.server.engine import BundleError, NoiseCache
from vaeserve.server.payload import PayloadLog, open_payload_log
from vaeserve.server.protocols.v1.servicer import VaeServicer
from vaeserve.server.protocols.v2.dataplane import DataPlane
from vaeserve.server.protocols.v2.grpc_servicer import InferenceServicer
from vaeserve.server.protocols.v2.http import HttpServer, create_app
from vaeserve.server.repository.loader import ModelLoader
from vaeserve.server.repository.registry import ModelRegistry, ModelState
from vaeserve.server.repository.source import BundleSource, RepositorySource, Source
from vaeserve.server.serving.work_queue import WorkQueue
from vaeserve.server.settings import Settings
from vaeserve.server.worker import Worker

__all__ = ["App", "create_server", "serve", "source_of"]

log = logging.getLogger(__name__)
SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
V2_SERVICE_NAME = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Lifecycle:
    """Where the server is in its life; readiness (health, V2 ServerReady) depends on it."""

    draining: bool = False


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    registry: ModelRegistry
    health: HealthService
    metrics: Metrics
    work: WorkQueue
    http: HttpServer | None = None
    payload: PayloadLog | None = None
    tracing: Tracing | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    _health_names: set[str] = field(default_factory=set)
    _poller: asyncio.Task[None] | None = None
    _listen: Callable[[], Awaitable[tuple[int, HttpServer | None]]] | None = None

    async def listen(self) -> None:
        """Binds the ports and starts taking calls (create_server does it at once, except for a worker)."""
        if self._listen is not None:
            self.port, self.http = await self._listen()
            self._listen = None

    async def load(self) -> None:
        """Loads every model the source holds; refuses to serve when none of them loads."""
        await self.registry.sync()
        if not self.registry.ready_names():
            failed = [f"{e.name}:{e.version}: {e.reason}" for e in self.registry.entries() if e.reason]
            raise BundleError(
                "no model could be loaded from the "
                + self.registry.source.describe()
                + (": " + "; ".join(failed) if failed else " (it holds no model versions)")
            )
        await self.update_health()

    async def start(self, poll_s: float | None = None) -> None:
        """Loads the models, then (given an interval) keeps polling the repository for changes."""
        await self.load()
        if poll_s is not None:
            self._poller = asyncio.get_running_loop().create_task(self.registry.poll(poll_s), name="vaeserve-poll")

    def changed(self) -> None:
        """The registry's callback: health and the model metrics follow its state."""
        for entry in self.registry.entries():
            if entry.model is not None:
                ready = entry.state is ModelState.READY
                self.metrics.model_ready(entry.name, entry.version, entry.model.engine.provider, ready)
        with contextlib.suppress(RuntimeError):  # no loop: nothing serves yet
            asyncio.get_running_loop().create_task(self.update_health())

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    async def update_health(self) -> None:
        if self.lifecycle.draining:
            return
        ready = self.registry.ready_names()
        serving = bool(ready)
        self.metrics.ready.set(int(serving))
        for name in ("", SERVICE_NAME):
            await self.health.set(name, _SERVING if serving else _NOT_SERVING)
        for name in self.registry.known_names() | self._health_names:
            await self.health.set(name, _SERVING if name in ready else _NOT_SERVING)
            self._health_names.add(name)

    async def stop(self, grace: float | None, drain_delay_s: float = 0.0) -> None:
        """Health NOT_SERVING (health watchers told and let go), still taking requests for drain_delay_s so
        load balancers move away, then stop accepting, let requests in flight finish (up to grace), close models."""
        self.lifecycle.draining = True
        if self._poller is not None:
            self._poller.cancel()
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        if drain_delay_s > 0:
            await asyncio.sleep(drain_delay_s)
        stopping = [self.server.stop(grace)] + ([self.http.stop()] if self.http else [])
        await asyncio.gather(*stopping)
        await self.registry.close()
        self.work.shutdown()
        if self.payload is not None:  # after the last request: its record is queued
            await asyncio.to_thread(self.payload.close)
        if self.tracing is not None:  # after the last run: its spans have ended
            await self.tracing.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    root = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=root,
        require_client_auth=settings.require_client_cert,
    )


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """gRPC channel arguments: message limits and connection hygiene (nothing held open forever); the port
    is shared only by workers (else a second server on a busy port would silently split its traffic)."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", settings.max_message_mb << 20),
        ("grpc.max_send_message_length", settings.max_message_mb << 20),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.server_handshake_timeout_ms", ms(settings.handshake_timeout_s)),
        ("grpc.keepalive_time_ms", ms(settings.keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout_s)),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Clients may ping as often as every 10 s without calls (grpc-java's and grpc-go's minimum), no oftener.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_idle_s is not None:
        options.append(("grpc.max_connection_idle_ms", ms(settings.max_connection_idle_s)))
    if settings.max_connection_age_s is not None:
        options.append(("grpc.max_connection_age_ms", ms(settings.max_connection_age_s)))
        options.append(("grpc.max_connection_age_grace_ms", ms(settings.grace_s)))
    return options


def authenticator(settings: Settings) -> Authenticator | None:
    if settings.auth_tokens is None and settings.admin_tokens is None:
        return None
    tokens = read_tokens(settings.auth_tokens) if settings.auth_tokens else []
    admin = read_tokens(settings.admin_tokens) if settings.admin_tokens else []
    return Authenticator(tokens, admin, guard_health=settings.auth_health)


def source_of(settings: Settings) -> Source:
    if settings.model_repository is not None:
        return RepositorySource(settings.model_repository)
    assert settings.bundle is not None  # the settings fill in the bundled model
    return BundleSource(settings.bundle)


async def create_server(settings: Settings, worker: Worker | None = None) -> App:
    """A started server on settings.host:settings.port (0: any free port) with an empty registry:
    NOT_SERVING until `App.load()` has loaded a model. A worker shares its ports with its siblings and
    binds them only on `App.listen()`, once its models are ready: the kernel never hands a connection
    to a worker that would answer UNAVAILABLE, at start or after a restart."""
    limit = settings.max_message_mb << 20
    metrics = Metrics(multiprocess=worker is not None)
    held = None if settings.max_request_mb_in_flight is None else settings.max_request_mb_in_flight << 20
    # Here, not in the supervisor: each worker process starts its own SDK (its exporter thread and channel).
    tracing = start_tracing(settings.replica_id) if settings.tracing else None
    guard = Guard(settings.max_in_flight, settings.log_requests, metrics, authenticator(settings), held, tracing)
    options = server_options(settings, reuse_port=worker is not None)
    server = grpc.aio.server(interceptors=[Boundary(guard)], options=options)
    if settings.metrics_port is not None:
        metrics.serve(settings.host, settings.metrics_port)
    max_queue_s = None if settings.max_queue_ms is None else settings.max_queue_ms / 1000.0
    work = WorkQueue(
        settings.executor_threads, max_queue_s=max_queue_s, metrics=metrics, nice=settings.engine_nice, tracing=tracing
    )
    payload = open_payload_log(settings, worker.index if worker else None, metrics)
    loader = ModelLoader(settings, work, NoiseCache(settings.noise_cache_mb << 20), metrics, payload)
    registry = ModelRegistry(
        source_of(settings), loader, default_model=settings.default_model, retire_timeout_s=settings.grace_s
    )
    vae_pb2_grpc.add_VaeServiceServicer_to_server(VaeServicer(registry, guard, worker.count if worker else 1), server)
    lifecycle = Lifecycle()
    plane = DataPlane(registry, lambda: not lifecycle.draining and bool(registry.ready_names()))
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, guard), server)
    health_servicer = HealthService()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((SERVICE_NAME, V2_SERVICE_NAME, health_name, reflection.SERVICE_NAME), server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _NOT_SERVING)

    async def listen() -> tuple[int, HttpServer | None]:
        address = f"{settings.host}:{settings.port}"
        credentials = _credentials(settings)
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not listen on {address}")
        await server.start()
        http = None
        if settings.http_port is not None:
            reuse = worker is not None
            http = HttpServer(
                create_app(plane, guard, limit), settings.host, settings.http_port, settings.grace_s, reuse_port=reuse
            )
            http.start()
        return port, http

    app = App(server, settings.port, registry, health_servicer, metrics, work, lifecycle=lifecycle, _listen=listen)
    app.payload = payload  # closed by App.stop, after the last request
    app.tracing = tracing
    registry.on_change = app.changed
    if worker is None:
        await app.listen()
    return app


async def serve(settings: Settings, worker: Worker | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then drains: the process exits 0 after requests in flight finish.
    A worker also stops (draining) when its supervisor is gone, and keeps its metrics files current."""
    app = await create_server(settings, worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker is not None:
        await _start(app, settings)
        await app.listen()
    tls = (
        "TLS" + (" with client certificates" if settings.require_client_cert else "")
        if settings.tls_cert
        else "plaintext"
    )
    http = f"; Open Inference Protocol over HTTP on port {app.http_port}" if app.http_port else ""
    log.info(
        "listening on %s:%d (%s%s)%s",
        settings.host,
        app.port,
        tls,
        http,
        f" as worker {worker.index} (pid {os.getpid()})" if worker else "; health NOT_SERVING while models load",
    )
    if worker is None:
        await _start(app, settings)
    ready = ", ".join(f"{e.name}:{e.version}" for e in app.registry.entries() if e.state is ModelState.READY)
    polling = f", polled every {settings.repository_poll_s:g} s" if settings.repository_poll_s else ""
    log.info("SERVING %s as replica %s (%s%s)", ready, settings.replica_id, app.registry.source.describe(), polling)
    background = [loop.create_task(_follow_supervisor(worker, app.metrics, stop))] if worker else []
    await stop.wait()
    for task in background:
        task.cancel()
    log.info(
        "shutting down: NOT_SERVING; taking requests for %g s more, then draining those in flight (grace %.0f s)",
        settings.drain_delay_s,
        settings.grace_s,
    )
    await app.stop(settings.grace_s, settings.drain_delay_s)
    log.info("stopped")


async def _start(app: App, settings: Settings) -> None:
    try:
        await app.start(settings.repository_poll_s)
    except BaseException:
        await app.stop(0)
        raise


async def _follow_supervisor(worker: Worker, metrics: Metrics, stop: asyncio.Event) -> None:
    """Every second: the in-flight gauge into the metrics files; a stop (drain) when the supervisor died
    without telling us (kill -9), so no worker outlives it holding the port."""
    while not stop.is_set():
        metrics.refresh()
        if os.getppid() != worker.supervisor_pid:
            log.error("worker %d: the supervisor (pid %d) is gone; draining", worker.index, worker.supervisor_pid)
            stop.set()
            return
        await asyncio.sleep(1.0)
