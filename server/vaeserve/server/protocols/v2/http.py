"""The Open Inference Protocol over HTTP/REST (`--http-port`): starlette routes on uvicorn, on the
gRPC server's event loop, over the same data plane and the same request boundary.

JSON tensors carry `data` as flat row-major lists; the binary tensor extension (what
tritonclient.http sends by default) puts the JSON header first, its length in the
`Inference-Header-Content-Length` header, then each binary tensor's bytes in order.
Errors are `{"error": message}` with the status code of the domain error. The routes are those of
`routes.ROUTES`, which `GET /v2/openapi.json` describes and `GET /v2/docs` shows (apidocs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vaeserve.server.boundary.guard import AUTHORIZATION_KEY, REQUEST_ID_KEY, Guard, RequestInfo
from vaeserve.server.errors import InvalidArgument, LimitExceeded
from vaeserve.server.protocols.v2.apidocs import docs_handlers
from vaeserve.server.protocols.v2.dataplane import DataPlane, Param, TensorSpec
from vaeserve.server.protocols.v2.routes import HEADER_LENGTH, ROUTES
from vaeserve.server.protocols.v2.tensors import DATATYPES, datatype_of, from_json, from_raw, to_json, to_raw

__all__ = ["HttpServer", "create_app"]

Handler = Callable[[Request, RequestInfo], Awaitable[Response]]


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LimitExceeded(f"request body of {int(declared)} bytes is above the {limit >> 20} MB limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceeded(f"request body is above the {limit >> 20} MB limit (max_message_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_infer(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    json_size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} is {header_length!r}; the body has {len(body)} bytes")
        json_size = int(header_length)
    try:
        header = json.loads(body[:json_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the request is not JSON ({exc})") from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs", []), list):
        raise InvalidArgument('the request must be a JSON object with a list of "inputs"')
    inputs: dict[str, np.ndarray] = {}
    offset = json_size
    for tensor in header.get("inputs", []):
        if not isinstance(tensor, dict):
            raise InvalidArgument("each input must be a JSON object with name, shape, datatype and data")
        name, datatype, shape = str(tensor.get("name", "")), str(tensor.get("datatype", "")), tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise InvalidArgument(f"input {name}: shape must be a list of integers")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidArgument(f"input {name}: binary_data_size {size!r} runs past the end of the body")
            array = from_raw(name, datatype, shape, body[offset : offset + size], DATATYPES)
            offset += size
        elif "data" in tensor:
            array = from_json(name, datatype, shape, tensor["data"], DATATYPES)
        else:
            raise InvalidArgument(f"input {name} has neither data nor binary_data_size")
        if name in inputs:
            raise InvalidArgument(f"input {name} is given twice")
        inputs[name] = array
    if offset != len(body):
        raise InvalidArgument(f"the body has {len(body) - offset} bytes beyond its tensors")
    return header, inputs


def create_app(plane: DataPlane, guard: Guard, max_body_bytes: int) -> Starlette:
    def route(method: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Each call through the request guard; a refusal answered as its HTTP status and a JSON error."""

        async def handle(request: Request) -> Response:
            headers = request.headers
            response: Response | None = None
            passage = guard.request(
                "v2-http",
                method,
                request_id=headers.get(REQUEST_ID_KEY),
                authorization=headers.get(AUTHORIZATION_KEY),
                in_bytes=int(headers.get("content-length") or 0),
                carrier=headers,
                span_name=f"{request.method} {getattr(request.scope.get('route'), 'path_format', method)}",
            )
            with passage as info:
                if info.refusal is None:
                    response = await handler(request, info)
            if info.refusal is not None:
                response = JSONResponse({"error": info.refusal.message}, status_code=info.refusal.http_status)
            assert response is not None  # the guard lets no call out without a response or a refusal
            response.headers[REQUEST_ID_KEY] = info.request_id
            return response

        return handle

    async def live(request: Request, info: RequestInfo) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request, info: RequestInfo) -> Response:
        ok = plane.server_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request, info: RequestInfo) -> Response:
        name, version, extensions = plane.server_metadata()
        return JSONResponse({"name": name, "version": version, "extensions": extensions})

    async def model_metadata(request: Request, info: RequestInfo) -> Response:
        p = request.path_params
        name, versions, inputs, outputs = plane.model_metadata(p["name"], p.get("version", ""))
        return JSONResponse(
            {
                "name": name,
                "versions": versions,
                "platform": "vaeserve",
                "inputs": [_spec(s) for s in inputs],
                "outputs": [_spec(s) for s in outputs],
            }
        )

    async def model_ready(request: Request, info: RequestInfo) -> Response:
        p = request.path_params
        plane.model_metadata(p["name"], p.get("version", ""))  # NOT_FOUND (404) for a model not served
        ok = plane.model_ready(p["name"], p.get("version", ""))
        return JSONResponse({"name": p["name"], "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request, info: RequestInfo) -> Response:
        p = request.path_params
        header, inputs = _parse_infer(await _body(request, max_body_bytes), request.headers.get(HEADER_LENGTH))
        parameters: dict[str, Param] = header.get("parameters") or {}
        requested = header.get("outputs")
        if requested is not None and not (
            isinstance(requested, list) and all(isinstance(o, dict) and "name" in o for o in requested)
        ):
            raise InvalidArgument('"outputs" must be a list of objects with a "name"')
        if not isinstance(parameters, dict):
            raise InvalidArgument('"parameters" must be a JSON object')
        inferred = await plane.infer(
            p["name"], p.get("version", ""), inputs, parameters, [o["name"] for o in requested or []] or None, info
        )
        binary_all = bool(parameters.get("binary_data_output", False))
        binary = {o["name"] for o in requested or [] if (o.get("parameters") or {}).get("binary_data", binary_all)}
        if not requested and binary_all:
            binary = {name for name, _ in inferred.outputs}
        outputs, blobs = [], []
        for name, array in inferred.outputs:
            entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
            if name in binary:
                blob = to_raw(array)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = to_json(array)
            outputs.append(entry)
        reply: dict[str, Any] = {
            "model_name": p["name"],
            "model_version": inferred.model.version,
            # JSON has no infinity: a threshold nothing can reach (+inf) travels as null, like NaN in tensors
            "parameters": {
                k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in inferred.parameters.items()
            },
            "outputs": outputs,
        }
        if "id" in header:
            reply["id"] = header["id"]
        text = json.dumps(reply, allow_nan=False).encode()
        if not blobs:
            return Response(text, media_type="application/json")
        return Response(
            b"".join([text, *blobs]), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))}
        )

    handlers: dict[str, Handler] = {
        "ServerLive": live,
        "ServerReady": ready,
        "ServerMetadata": server_metadata,
        "ModelMetadata": model_metadata,
        "ModelReady": model_ready,
        "ModelInfer": infer,
        **docs_handlers(plane, guard),
    }
    # The one route table, which the OpenAPI document describes too (routes.py).
    routes = [Route(r.path, route(r.method, handlers[r.handler]), methods=[r.verb.upper()]) for r in ROUTES]
    return Starlette(routes=routes)


class HttpServer:
    """uvicorn serving the app on the running event loop; `port` is the bound one (0 picks a free one)."""

    def __init__(self, app: Starlette, host: str, port: int, grace_s: float, *, reuse_port: bool = False) -> None:
        self.app = app
        self._sock = socket.create_server((host, port), reuse_port=reuse_port)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=int(grace_s) or 1
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()
