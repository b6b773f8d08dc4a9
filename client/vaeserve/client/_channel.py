"""Channel set-up shared by the sync and async clients: TLS, message limits, retries, load balancing.

Retries are gRPC's own (a service config retry policy): calls answered UNAVAILABLE are
retried with exponential backoff. Every vaeserve RPC is a pure function of its request,
or (LoadModel, UnloadModel) asks for a state that a repeat leaves as it is, so retrying is
safe (a repeated UnloadModel may answer NOT_FOUND: the first one did the work).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        return options

    def channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(self.target, self.tls.credentials(), options=self.options())
        return grpc.insecure_channel(self.target, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls:
            return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.target, options=self.options())
