"""The HTTP API's description and a page to try it, answered by the server itself: the machines it runs
on may be offline, so the page's script ships in the package (`static/README.md` says which and why).

Reading them needs a token only where the probes need one (`--auth-health`): a browser sends no token
when it opens a page, and the document holds nothing a token guards, since it names the served models
only where model metadata is open to the caller as well.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vaeserve.server.boundary.guard import Guard, RequestInfo
from vaeserve.server.errors import ModelNotFound, NotReady
from vaeserve.server.protocols.v2.dataplane import DataPlane
from vaeserve.server.protocols.v2.openapi import Examples, document
from vaeserve.server.protocols.v2.routes import HTML, JAVASCRIPT

__all__ = ["docs_handlers"]

Handler = Callable[[Request, RequestInfo], Awaitable[Response]]


@functools.cache
def _asset(name: str) -> bytes:
    return (files("vaeserve.server.protocols.v2") / "static" / name).read_bytes()


def _examples(plane: DataPlane) -> Examples | None:
    """The first ready model, its newest version and a request of zeros in its input's shape."""
    for name in sorted(plane.registry.ready_names()):
        try:
            version = plane.registry.resolve(name, "").version
            _, _, inputs, _ = plane.model_metadata(name, version)
        except (ModelNotFound, NotReady):  # retired since it was listed
            continue
        x = inputs[0]
        shape = [1, *(max(size, 1) for size in x.shape[1:])]
        tensor = {"name": x.name, "datatype": x.datatype, "shape": shape, "data": [0.0] * math.prod(shape)}
        return Examples(name, version, {"inputs": [tensor], "parameters": {"k": 100, "seed": 0}})
    return None


def docs_handlers(plane: DataPlane, guard: Guard) -> dict[str, Handler]:
    async def openapi(request: Request, info: RequestInfo) -> Response:
        named = not guard.needs_token("ModelMetadata") or guard.needs_token("OpenAPI")
        examples = _examples(plane) if named else None
        return JSONResponse(document(plane.server_metadata()[1], guard.needs_token, examples))

    async def page(request: Request, info: RequestInfo) -> Response:
        return Response(_asset("page.html"), media_type=HTML)

    async def script(request: Request, info: RequestInfo) -> Response:
        # A day: the file changes only with the server's version.
        return Response(_asset("rapidoc-min.js"), media_type=JAVASCRIPT, headers={"cache-control": "max-age=86400"})

    return {"OpenAPI": openapi, "APIPage": page, "APIPageScript": script}
