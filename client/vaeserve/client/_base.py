"""What the sync and async clients share: their options and the request target."""

from __future__ import annotations

from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.client import _convert as cv
from vaeserve.client._channel import ChannelConfig, TlsConfig

__all__ = ["ClientBase"]


class ClientBase:
    """Options of `Client` and `AsyncClient`; `_open()` makes the channel and stubs."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = 60.0,
        batch_size: int = 1024,
        concurrency: int = 2,
        model: str | None = None,
        version: str | None = None,
        tls: TlsConfig | None = None,
        retries: int = 3,
        round_robin: bool = False,
        max_message_mb: int = 64,
    ) -> None:
        """`target` is host:port, or dns:///name:port with `round_robin` to spread calls over replicas;
        `timeout` is each call's deadline in seconds; arrays go in requests of `batch_size` inputs, with
        up to `concurrency` in flight; `model` and `version`, when given, must match the served model;
        calls answered UNAVAILABLE are retried up to `retries` times with exponential backoff."""
        self.config = ChannelConfig(
            target=target, tls=tls, retries=retries, round_robin=round_robin, max_message_mb=max_message_mb
        )
        self.timeout = timeout
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self._spec: pb.ModelSpec = cv.model_spec(model, version)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError
