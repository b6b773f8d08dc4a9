"""grpc.health.v1.Health, with a shutdown that load balancers and watchers can follow.

The library's servicer keeps `Watch` streams open through a shutdown, so the server's grace period
runs out on them and ends them with a traceback. Here, entering shutdown sets every service
NOT_SERVING and ends every `Watch` stream after it has sent that status: a watcher learns the server
is going, and an idle server stops at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HealthService"]

Status = Any  # health_pb2.HealthCheckResponse.ServingStatus (an int enum the stubs type loosely)
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._status: dict[str, Status] = {}
        self._changed = asyncio.Condition()
        self.closing = False

    async def set(self, service: str, status: Status) -> None:
        if self.closing:  # a late update (a model that finished loading) must not undo the shutdown
            return
        if self._status.get(service) != status:
            self._status[service] = status
            async with self._changed:
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on, and every Watch stream ends after saying so."""
        self.closing = True
        for service in self._status:
            self._status[service] = _NOT_SERVING
        async with self._changed:
            self._changed.notify_all()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        sent = None
        while True:
            status = self._status.get(request.service, _UNKNOWN)
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
            if self.closing:
                if sent != _NOT_SERVING:
                    yield health_pb2.HealthCheckResponse(status=_NOT_SERVING)
                return
            async with self._changed:
                await self._changed.wait()
