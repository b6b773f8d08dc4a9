"""The request guard: the one place a call enters the server and leaves it, whatever its protocol.

``with guard.request(protocol, method, ...) as info:`` gives the call an id, checks its bearer
token and admits it, or refuses it at once beyond ``max_in_flight`` or ``max_request_mb_in_flight``
(both counted over every protocol together). On leaving it gives back what the call held, turns an
error into a typed `Refusal` (a bug is logged with its traceback), writes the log line and records
the metrics. The gRPC interceptor and the HTTP routes each answer a refusal in their own terms, after
it has been counted. What every call should get (tracing, payload logging) belongs here: with tracing
on, a call (V2's health checks aside) is a span from the door to its answer, current while it runs.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from vaeserve.server.boundary.auth import Authenticator
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.boundary.status import Refusal, refusal_of
from vaeserve.server.boundary.tracing import CallSpan, Tracing
from vaeserve.server.errors import LimitExceeded

__all__ = ["AUTHORIZATION_KEY", "DOCS_METHODS", "HEALTH_METHODS", "REQUEST_ID_KEY", "Guard", "Passage", "RequestInfo"]

log = logging.getLogger("vaeserve.requests")
errors_log = logging.getLogger("vaeserve.server.boundary")

REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"
# The Open Inference Protocol's health checks: open without a token, like grpc.health.v1 (unless guarded).
HEALTH_METHODS = frozenset({"ServerLive", "ServerReady"})
# The HTTP API's OpenAPI document and its page: open like the probes, as a browser opening a page sends no
# token (protocols/v2/apidocs.py says why nothing guarded leaks through them).
DOCS_METHODS = frozenset({"OpenAPI", "APIPage"})
_OPEN_METHODS = HEALTH_METHODS | DOCS_METHODS

_ID_PREFIX = uuid.uuid4().hex[:8]  # unique per process; a counter makes ids unique within it
_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class RequestInfo:
    """What the guard knows of a call; the registry fills in the model and version that served it."""

    request_id: str
    protocol: str = ""
    method: str = ""
    model: str = ""
    version: str = ""
    in_bytes: int = 0
    out_bytes: int = 0
    refusal: Refusal | None = None  # refused at the door, or failed: the protocol answers it
    started: float = field(default_factory=time.perf_counter)


class Guard:
    """The server's one guard, shared by every protocol: its counts of calls and bytes in flight are global."""

    def __init__(
        self,
        max_in_flight: int,
        log_requests: bool = True,
        metrics: Metrics | None = None,
        auth: Authenticator | None = None,
        max_bytes_in_flight: int | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.tracing = tracing
        self.log_requests = log_requests
        self.metrics = metrics
        self.auth = auth
        self.max_bytes_in_flight = max_bytes_in_flight
        self.in_flight = 0
        self.bytes_in_flight = 0
        self._open: dict[object, RequestInfo] = {}
        if metrics:
            metrics.track_in_flight(lambda: self.in_flight)

    def request(
        self,
        protocol: str,
        method: str,
        *,
        request_id: str | None = None,
        authorization: str | None = None,
        in_bytes: int = 0,
        hold: bool = True,
        key: object = None,
        answered: tuple[type[BaseException], ...] = (),
        carrier: Mapping[str, Any] | None = None,
        span_name: str | None = None,
    ) -> Passage:
        """A call's way through the guard. `hold`: count `in_bytes` against max_request_mb_in_flight (a
        stream's size is not known up front). `key`: what the protocol's handler is given, so it can find
        the call with `request_of` (gRPC: the servicer context). `answered`: exceptions by which a handler
        has answered the call itself (gRPC's context.abort): recorded ABORTED and let through. `carrier`:
        the call's headers or metadata, for the caller's trace context; `span_name`: its span's name
        (default: the gRPC method's full name)."""
        given = request_id[:64] if request_id else f"{_ID_PREFIX}-{next(_ids):x}"
        info = RequestInfo(given, protocol, method, in_bytes=in_bytes)
        traced = None
        if self.tracing is not None and method not in HEALTH_METHODS:
            traced = (span_name, carrier)
        return Passage(self, info, authorization, in_bytes if hold else None, key, answered, traced)

    def request_of(self, key: object) -> RequestInfo:
        """The admitted call entered under `key` (KeyError outside one: a handler reached around the guard)."""
        return self._open[key]

    def authorize(self, method: str, authorization: str | None) -> Refusal | None:
        """The token check alone, for health and reflection when tokens guard them (probes stay cheap)."""
        try:
            self._check_token(method, authorization)
        except Exception as exc:
            return refusal_of(exc)
        return None

    def needs_token(self, method: str) -> bool:
        """Whether a call of `method` needs a bearer token here (the OpenAPI document says so per route)."""
        return self.auth is not None and (method not in _OPEN_METHODS or self.auth.guard_health)

    def _check_token(self, method: str, authorization: str | None) -> None:
        if self.auth is not None and self.needs_token(method):
            self.auth.check(authorization, method)

    def _admit(self, info: RequestInfo, authorization: str | None, held: int | None) -> None:
        """Raises the domain error that refuses the call, or takes its place and holds its bytes."""
        self._check_token(info.method, authorization)
        if self.in_flight >= self.max_in_flight:
            raise LimitExceeded(
                f"server busy: {self.in_flight} requests in flight (max_in_flight "
                f"{self.max_in_flight}); retry with backoff"
            )
        limit = self.max_bytes_in_flight
        # One request alone is always let through: the message limit bounds it.
        if held is not None and limit is not None and self.bytes_in_flight and self.bytes_in_flight + held > limit:
            raise LimitExceeded(
                f"server busy: {self.bytes_in_flight / 2**20:.0f} MB of requests in progress and this one is "
                f"{held / 2**20:.1f} MB (max_request_mb_in_flight {limit / 2**20:g}); retry with backoff"
            )
        self.in_flight += 1
        self.bytes_in_flight += held or 0

    def _release(self, held: int | None) -> None:
        self.in_flight -= 1
        self.bytes_in_flight -= held or 0

    def _refuse(self, info: RequestInfo, exc: BaseException) -> Refusal:
        refusal = info.refusal = refusal_of(exc)
        if refusal.is_bug:
            errors_log.error("%s failed (request %s)", info.method, info.request_id, exc_info=exc)
        return refusal

    def _record(self, info: RequestInfo, status: str) -> None:
        seconds = time.perf_counter() - info.started
        if self.metrics:
            self.metrics.observe_request(info.protocol, info.method, status, info.model, info.version, seconds)
        if self.log_requests:
            model = f"{info.model}:{info.version}" if info.model else "-"
            log.info(
                "rpc protocol=%s method=%s id=%s model=%s status=%s in_bytes=%d out_bytes=%d ms=%.2f",
                info.protocol,
                info.method,
                info.request_id,
                model,
                status,
                info.in_bytes,
                info.out_bytes,
                seconds * 1000.0,
            )

    def _end_span(self, span: CallSpan, info: RequestInfo, status: str) -> None:
        attributes = {"vaeserve.request_id": info.request_id}
        if info.model:
            attributes |= {"vaeserve.model": info.model, "vaeserve.version": info.version}
        span.end(attributes, status, info.refusal.message if info.refusal is not None else None)


class Passage:
    """``with`` it: refused at the door, the call comes back with `refusal` set and the body must do no
    work (``if info.refusal is None``). An error in the body becomes `refusal` and goes no further, so
    the protocol answers it after the guard has counted it; a cancellation goes on up, counted CANCELLED.
    A class rather than a generator context manager: it runs on every call."""

    __slots__ = ("_admitted", "_answered", "_authorization", "_guard", "_held", "_key", "_span", "_traced", "info")

    def __init__(
        self,
        guard: Guard,
        info: RequestInfo,
        authorization: str | None,
        held: int | None,
        key: object,
        answered: tuple[type[BaseException], ...],
        traced: tuple[str | None, Mapping[str, Any] | None] | None = None,
    ) -> None:
        self._guard, self.info, self._authorization, self._held = guard, info, authorization, held
        self._key, self._answered, self._admitted = key, answered, False
        self._traced = traced
        self._span: CallSpan | None = None

    def __enter__(self) -> RequestInfo:
        guard, info = self._guard, self.info
        if self._traced is not None and guard.tracing is not None:  # first: a refused call is traced too
            self._span = guard.tracing.enter(*self._traced, info.protocol, info.method)
        try:
            guard._admit(info, self._authorization, self._held)
        except Exception as exc:
            guard._refuse(info, exc)
            return info
        self._admitted = True
        if self._key is not None:
            guard._open[self._key] = info
        return info

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        guard, info = self._guard, self.info
        if self._admitted:
            guard._release(self._held)
            if self._key is not None:
                del guard._open[self._key]
        handled = False
        if exc is None:
            status = "OK" if info.refusal is None else info.refusal.code.name
        elif isinstance(exc, self._answered):
            status = "ABORTED"
        elif isinstance(exc, Exception):
            status, handled = guard._refuse(info, exc).code.name, True
        else:
            status = "CANCELLED"
        guard._record(info, status)
        if self._span is not None:
            guard._end_span(self._span, info, status)
        return handled
