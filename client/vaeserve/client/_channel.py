"""Channel set-up shared by the sync and async clients: TLS, message limits, retries, load balancing.

Retries are gRPC's own (a service config retry policy): calls answered UNAVAILABLE are
retried with exponential backoff. Every vaeserve RPC is a pure function of its request,
or (LoadModel, UnloadModel) asks for a state that a repeat leaves as it is, so retrying is
safe (a repeated UnloadModel may answer NOT_FOUND: the first one did the work).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

__all__ = ["ChannelConfig", "TlsConfig"]

SERVICE = "vaeserve.api.v1.VaeService"


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the server; give a client certificate and key for mutual TLS."""

    ca_cert: Path | None = None  # None: the system's trusted roots
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None  # expected name in the server certificate, if not the target's host

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )


@dataclass(frozen=True)
class ChannelConfig:
    target: str = "localhost:50051"
    tls: TlsConfig | None = None
    retries: int = 3  # extra attempts after UNAVAILABLE (gRPC allows at most 4)
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 3.0
    max_message_mb: int = 64
    round_robin: bool = False  # spread calls over every address the target resolves to (e.g. dns:///service:50051)
    token: str | None = None  # sent as `authorization: Bearer <token>` with every call
    connections: int = 1  # channels of their own (a server's workers each take some of them)

    def options(self) -> list[tuple[str, Any]]:
        config: dict[str, Any] = {}
        if self.retries > 0:
            config["methodConfig"] = [
                {
                    "name": [{"service": SERVICE}],
                    "retryPolicy": {
                        "maxAttempts": min(self.retries + 1, 5),
                        "initialBackoff": f"{self.initial_backoff_s}s",
                        "maxBackoff": f"{self.max_backoff_s}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        if self.round_robin:
            config["loadBalancingConfig"] = [{"round_robin": {}}]
        limit = self.max_message_mb << 20
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.enable_retries", 1 if self.retries > 0 else 0),
            # gRPC stops retrying a call once it has sent more than this (256 KiB by default): let
            # every request up to the message limit be retried.
            ("grpc.per_rpc_retry_buffer_size", limit),
            ("grpc.retry_buffer_size", 4 * limit),
            ("grpc.service_config", json.dumps(config)),
        ]
        if self.tls and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        if self.connections > 1:  # else gRPC shares one connection among channels to the same address
            options.append(("grpc.use_local_subchannel_pool", 1))
        return options

    def channel(self) -> grpc.Channel:
        if self.tls:
            channel = grpc.secure_channel(self.target, self.tls.credentials(), options=self.options())
        else:
            channel = grpc.insecure_channel(self.target, options=self.options())
        return grpc.intercept_channel(channel, _Bearer(self.token)) if self.token else channel

    def aio_channel(self) -> grpc.aio.Channel:
        interceptors = _aio_bearer(self.token) if self.token else None
        if self.tls:
            return grpc.aio.secure_channel(
                self.target, self.tls.credentials(), options=self.options(), interceptors=interceptors
            )
        return grpc.aio.insecure_channel(self.target, options=self.options(), interceptors=interceptors)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def _with_token(details: Any, token: str) -> _CallDetails:
    metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
    compression = getattr(details, "compression", None)
    return _CallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, compression
    )


# grpc-stubs makes the interceptor bases generic only in its stubs: typed loosely here.
_Sync: Any = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)
_AioUnaryUnary: Any = grpc.aio.UnaryUnaryClientInterceptor
_AioUnaryStream: Any = grpc.aio.UnaryStreamClientInterceptor
_AioStreamStream: Any = grpc.aio.StreamStreamClientInterceptor


class _Bearer(*_Sync):  # type: ignore[misc]
    """Adds the bearer token to every call of a synchronous channel (plaintext or TLS alike)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_token(details, self.token), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_token(details, self.token), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_token(details, self.token), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_token(details, self.token), requests)


def _aio_bearer(token: str) -> Any:
    def details_of(details: Any) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("authorization", f"Bearer {token}"))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    class UnaryUnary(_AioUnaryUnary):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(details_of(details), request)

    class UnaryStream(_AioUnaryStream):  # type: ignore[misc]
        async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(details_of(details), request)

    class StreamStream(_AioStreamStream):  # type: ignore[misc]
        async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
            return await continuation(details_of(details), requests)

    return [UnaryUnary(), UnaryStream(), StreamStream()]
