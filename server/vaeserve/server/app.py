"""Building the gRPC server (apart from running it) and its lifecycle: load, warm up, serve, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vaeserve.api.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server.bundle import load_bundle
from vaeserve.server.engine import Engine
from vaeserve.server.metrics import Metrics
from vaeserve.server.model import ServedModel
from vaeserve.server.runtime import RuntimeConfig
from vaeserve.server.servicer import VaeServicer
from vaeserve.server.settings import Settings
from vaeserve.server.status import RequestGuard

__all__ = ["App", "create_server", "load_model", "serve"]

log = logging.getLogger(__name__)
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]  # re-exported, untyped
SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    servicer: VaeServicer
    health: AsyncHealthServicer
    metrics: Metrics

    async def set_model(self, model: ServedModel) -> None:
        model.metrics = self.metrics
        self.metrics.model.labels(model.manifest.name, model.manifest.version, model.engine.provider).set(1)
        self.metrics.ready.set(1)
        self.servicer.model = model
        for name in ("", SERVICE_NAME):
            await self.health.set(name, _SERVING)

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, stop accepting, let requests in flight finish (up to grace), close sessions."""
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        await self.server.stop(grace)
        if self.servicer.model is not None:
            await self.servicer.model.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    root = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=root,
        require_client_auth=settings.require_client_cert,
    )


async def create_server(settings: Settings, model: ServedModel | None = None) -> App:
    """A started server on settings.host:settings.port (0: any free port); NOT_SERVING until it has a model."""
    limit = settings.max_message_mb << 20
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    metrics = Metrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.host, settings.metrics_port)
    servicer = VaeServicer(RequestGuard(settings.max_in_flight, settings.log_requests, metrics))
    vae_pb2_grpc.add_VaeServiceServicer_to_server(servicer, server)
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    await server.start()
    app = App(server, port, servicer, health_servicer, metrics)
    if model is not None:
        await app.set_model(model)
    return app


def load_model(settings: Settings) -> ServedModel:
    """Loads and checks the bundle, creates the sessions and runs each once."""
    bundle = load_bundle(settings.bundle)
    runtime = RuntimeConfig(
        device=settings.device,
        strict_device=settings.strict_device,
        intra_op_threads=settings.intra_op_threads,
        allow_spinning=settings.allow_spinning,
    )
    engine = Engine(
        bundle, runtime, chunk_samples=settings.chunk_samples, noise_cache_bytes=settings.noise_cache_mb << 20
    )
    engine.warm_up()
    m = bundle.manifest
    log.info(
        "model %s:%s loaded from %s: %s likelihood, input %s, latent %d, calibration %s; provider %s",
        m.name,
        m.version,
        bundle.path,
        m.likelihood,
        m.input_shape,
        m.latent_dim,
        f"K={m.calibration.k} on {len(m.calibration.scores)} inputs" if m.calibration else "none",
        engine.provider,
    )
    return ServedModel(engine, settings)


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then drains: the process exits 0 after requests in flight finish."""
    app = await create_server(settings)
    tls = (
        "TLS" + (" with client certificates" if settings.require_client_cert else "")
        if settings.tls_cert
        else "plaintext"
    )
    log.info("listening on %s:%d (%s); health NOT_SERVING while the model loads", settings.host, app.port, tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        model = await asyncio.to_thread(load_model, settings)
    except BaseException:
        await app.server.stop(0)
        raise
    await app.set_model(model)
    log.info("SERVING %s:%s as replica %s", model.manifest.name, model.manifest.version, settings.replica_id)
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining requests in flight (grace %.0f s)", settings.grace_s)
    await app.stop(settings.grace_s)
    log.info("stopped")
