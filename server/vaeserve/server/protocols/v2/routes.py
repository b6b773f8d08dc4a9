"""Every HTTP route the server answers, with what its OpenAPI entry says, in one table: `http.create_app`
serves this table and `openapi.document` describes it, so the routes and their description cannot
drift apart (tests/v2/test_openapi.py checks both against the live server).

A path is written once for both: starlette reads `{name}` as OpenAPI does (any text but "/").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BINARY", "HEADER_LENGTH", "HTML", "JAVASCRIPT", "JSON", "ROUTES", "V2Route"]

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension's JSON header length
JSON = "application/json"
BINARY = "application/octet-stream"  # the binary tensor extension: a JSON header, then raw tensors
HTML = "text/html; charset=utf-8"
JAVASCRIPT = "text/javascript; charset=utf-8"


@dataclass(frozen=True)
class V2Route:
    path: str
    verb: str  # "get" or "post"
    method: str  # the guard's name for the call: log line, metrics label and token rule
    operation: str  # OpenAPI operationId, unique
    tag: str
    summary: str
    replies: tuple[tuple[str, str], ...]  # the 200 reply: (media type, schema in components)
    errors: tuple[int, ...] = ()  # statuses answered {"error": ...}, beyond those every guarded call may get
    unready: str = ""  # the schema of a 503 that is an answer (ready: false), not only an error
    request: tuple[tuple[str, str], ...] = ()  # the body: (media type, schema in components)
    description: str = ""

    @property
    def handler(self) -> str:
        """The function that answers: one for a model's route with and without a version."""
        return self.operation.removesuffix("Version")


_MODEL = "/v2/models/{name}"
_VERSIONED = _MODEL + "/versions/{version}"


def _model_routes(base: str, suffix: str, which: str) -> list[V2Route]:
    return [
        V2Route(
            base,
            "get",
            "ModelMetadata",
            "ModelMetadata" + suffix,
            "metadata",
            f"A model's inputs and outputs ({which})",
            ((JSON, "ModelMetadata"),),
            (404, 503),
            description="Every input and output with its datatype and shape (-1: any size). The outputs "
            "depend on the model: its score columns and the anomaly scores it serves.",
        ),
        V2Route(
            base + "/ready",
            "get",
            "ModelReady",
            "ModelReady" + suffix,
            "health",
            f"Whether a model is ready ({which})",
            ((JSON, "ModelReady"),),
            (404, 503),
            unready="ModelReady",
        ),
        V2Route(
            base + "/infer",
            "post",
            "ModelInfer",
            "ModelInfer" + suffix,
            "inference",
            f"Score, encode, decode or sample ({which})",
            ((JSON, "InferenceResponse"), (BINARY, "BinaryInferenceResponse")),
            (400, 404, 503),
            request=((JSON, "InferenceRequest"), (BINARY, "BinaryInferenceRequest")),
            description="JSON tensors carry `data` as flat row-major lists. The binary tensor extension "
            "(tritonclient.http's default) sends the JSON header first, its length in the "
            "`Inference-Header-Content-Length` header, then each input's raw little-endian bytes "
            "(`parameters.binary_data_size`); outputs asked for with `binary_data` (or all, with the "
            "request parameter `binary_data_output`) come back the same way.",
        ),
    ]


ROUTES: tuple[V2Route, ...] = (
    V2Route("/v2/health/live", "get", "ServerLive", "ServerLive", "health", "Liveness", ((JSON, "ServerLive"),)),
    V2Route(
        "/v2/health/ready",
        "get",
        "ServerReady",
        "ServerReady",
        "health",
        "Readiness: a model is ready and the server is not draining",
        ((JSON, "ServerReady"),),
        unready="ServerReady",
    ),
    V2Route(
        "/v2", "get", "ServerMetadata", "ServerMetadata", "metadata", "Server metadata", ((JSON, "ServerMetadata"),)
    ),
    *_model_routes(_MODEL, "", "its newest ready version"),
    *_model_routes(_VERSIONED, "Version", "one version"),
    V2Route(
        "/v2/openapi.json",
        "get",
        "OpenAPI",
        "OpenAPI",
        "documentation",
        "This document (OpenAPI 3.1)",
        ((JSON, "OpenAPIDocument"),),
    ),
    V2Route(
        "/v2/docs",
        "get",
        "APIPage",
        "APIPage",
        "documentation",
        "A page to read and try this API (RapiDoc, served from the server itself)",
        ((HTML, "Text"),),
    ),
    V2Route(
        "/v2/docs/rapidoc-min.js",
        "get",
        "APIPage",
        "APIPageScript",
        "documentation",
        "The page's script (RapiDoc, MIT licence), shipped inside the server package",
        ((JAVASCRIPT, "Text"),),
    ),
)
