"""The OpenAPI 3.1 document of the HTTP routes, built from `routes.ROUTES` (what the server serves).

A model's outputs depend on it (its score columns and the anomaly scores it serves), so tensors are
described generically and ModelMetadata lists a model's own. Whether a route needs a bearer token
is asked of the guard that checks it. Where the caller may read model metadata anyway, a served
model's name, version and an input of its shape are the examples, so the page's "try" works at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaeserve.server.protocols.v2.routes import BINARY, HEADER_LENGTH, JSON, ROUTES, V2Route
from vaeserve.server.protocols.v2.tensors import DATATYPES

__all__ = ["Examples", "document"]

_ERRORS = {
    400: "Invalid argument: a bad tensor, parameter or output name (the message says which)",
    401: "No bearer token, or one this server does not accept (--auth-tokens)",
    404: "No such model or version (the message lists those served)",
    429: "Over a limit: calls or bytes in flight (retry with backoff), or infer's body size",
    500: "A bug: the server logged it with its traceback",
    503: "Not ready: the model is loading or the server is draining",
}
_PATH_PARAMETERS = {
    "name": "A served model `<model>` (scoring), or `<model>.encode`, `<model>.decode`, `<model>.sample`",
    "version": "A version of the model, as in the repository",
}


@dataclass(frozen=True)
class Examples:
    """A served model to show in the examples, and a request it answers."""

    name: str
    version: str
    request: dict[str, Any]


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_NUMBERS = {"type": ["number", "boolean", "null"]}  # null: NaN or infinity, which JSON lacks
_PARAMETER_VALUE = {"type": ["string", "number", "boolean", "null"]}
_TENSOR_FIELDS: dict[str, Any] = {
    "name": {"type": "string"},
    "datatype": {"type": "string", "enum": list(DATATYPES)},
    "shape": {"type": "array", "items": {"type": "integer"}},
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error={"type": "string", "description": "what was wrong, and what to do"}),
    "ServerLive": _obj(["live"], live={"type": "boolean"}),
    "ServerReady": _obj(["ready"], ready={"type": "boolean"}),
    "ModelReady": _obj(["name", "ready"], name={"type": "string"}, ready={"type": "boolean"}),
    "ServerMetadata": _obj(
        ["name", "version", "extensions"],
        name={"type": "string"},
        version={"type": "string"},
        extensions={"type": "array", "items": {"type": "string"}},
    ),
    "TensorMetadata": {
        **_obj(["name", "datatype", "shape"], **_TENSOR_FIELDS),
        "description": "a declared tensor; -1 in its shape is any size",
    },
    "ModelMetadata": _obj(
        ["name", "versions", "platform", "inputs", "outputs"],
        name={"type": "string"},
        versions={"type": "array", "items": {"type": "string"}},
        platform={"type": "string"},
        inputs={"type": "array", "items": _ref("TensorMetadata")},
        outputs={"type": "array", "items": _ref("TensorMetadata")},
    ),
    "Parameters": {
        "type": "object",
        "additionalProperties": _PARAMETER_VALUE,
        "description": "Request: the model's parameters (k, seed, alpha, anomaly_scores, ...: docs/v2.md lists "
        "them per model; an unknown one is a 400) and binary_data_output. Reply: what was used (k, seed, the "
        "anomaly score's threshold, warnings), so every result can be reproduced; infinity travels as null.",
    },
    "Tensor": {
        **_obj(
            ["name", "datatype", "shape"],
            **_TENSOR_FIELDS,
            data={"type": "array", "items": _NUMBERS, "description": "flat, row-major; NaN travels as null"},
            parameters=_obj([], binary_data_size={"type": "integer", "minimum": 0}),
        ),
        "description": "`data`, or `parameters.binary_data_size` bytes after the JSON header (binary extension)",
    },
    "RequestedOutput": _obj(
        ["name"],
        name={"type": "string", "description": "one of the model's outputs (ModelMetadata)"},
        parameters=_obj([], binary_data={"type": "boolean"}),
    ),
    "InferenceRequest": _obj(
        ["inputs"],
        id={"type": "string", "description": "echoed in the reply"},
        parameters=_ref("Parameters"),
        inputs={"type": "array", "items": _ref("Tensor"), "description": "as ModelMetadata declares them"},
        outputs={
            "type": "array",
            "items": _ref("RequestedOutput"),
            "description": "a subset to compute (none: the model's default outputs)",
        },
    ),
    "InferenceResponse": _obj(
        ["model_name", "model_version", "outputs"],
        model_name={"type": "string"},
        model_version={"type": "string"},
        id={"type": "string"},
        parameters=_ref("Parameters"),
        outputs={"type": "array", "items": _ref("Tensor")},
    ),
    "BinaryInferenceRequest": {
        "type": "string",
        "format": "binary",
        "description": f"an InferenceRequest as JSON, its length in {HEADER_LENGTH}, then each input's bytes",
    },
    "BinaryInferenceResponse": {
        "type": "string",
        "format": "binary",
        "description": f"an InferenceResponse as JSON, its length in {HEADER_LENGTH}, then each binary output",
    },
    "OpenAPIDocument": {"type": "object", "description": "an OpenAPI 3.1 document"},
    "Text": {"type": "string"},
}


def _path_parameter(name: str, examples: Examples | None) -> dict[str, Any]:
    parameter = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    parameter["description"] = _PATH_PARAMETERS[name]
    if examples:
        parameter["example"] = examples.name if name == "name" else examples.version
    return parameter


def _header_length() -> dict[str, Any]:
    return {"description": "the JSON header's length in bytes (binary tensor extension)", "schema": {"type": "integer"}}


def _operation(route: V2Route, needs_token: bool, examples: Examples | None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation, "tags": [route.tag], "summary": route.summary}
    if route.description:
        op["description"] = route.description
    parameters = [_path_parameter(name, examples) for name in re.findall(r"{(\w+)}", route.path)]
    if route.request:
        parameters.append({"name": HEADER_LENGTH, "in": "header", "required": False, **_header_length()})
        content: dict[str, dict[str, Any]] = {media: {"schema": _ref(schema)} for media, schema in route.request}
        if examples and JSON in content:
            content[JSON]["example"] = examples.request
        op["requestBody"] = {"required": True, "content": content}
    if parameters:
        op["parameters"] = parameters
    ok: dict[str, Any] = {"description": "OK", "content": {m: {"schema": _ref(s)} for m, s in route.replies}}
    if any(media == BINARY for media, _ in route.replies):
        ok["headers"] = {HEADER_LENGTH: {**_header_length(), "description": "set when the reply is binary"}}
    responses = {"200": ok}
    for status in sorted({*route.errors, 429, 500, *([401] if needs_token else []), *([503] if route.unready else [])}):
        schema: dict[str, Any] = _ref("Error")
        description = _ERRORS[status]
        if status == 503 and route.unready:  # an answer (ready: false), and maybe an error too
            schema, description = _ref(route.unready), "Not ready: the answer is `ready: false`"
            if 503 in route.errors:
                schema, description = {"oneOf": [schema, _ref("Error")]}, description + ", or an error"
        responses[str(status)] = {"description": description, "content": {JSON: {"schema": schema}}}
    op["responses"] = responses
    if needs_token:
        op["security"] = [{"bearer": []}]
    return op


def document(
    version: str,
    needs_token: Callable[[str], bool],
    examples: Examples | None = None,
    routes: tuple[V2Route, ...] = ROUTES,
) -> dict[str, Any]:
    """The OpenAPI document of `routes`; `needs_token(method)`: the guard's token rule."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.verb] = _operation(route, needs_token(route.method), examples)
    components: dict[str, Any] = {"schemas": SCHEMAS}
    if any(needs_token(route.method) for route in routes):
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vaeserve: the Open Inference Protocol (KServe V2) over HTTP",
            "version": version,
            "description": "Scores, encodes, decodes and samples with the served VAEs. Errors are "
            '`{"error": message}` with the status of the domain error. The same calls over gRPC: '
            "inference.GRPCInferenceService on the server's gRPC port.",
        },
        "tags": [{"name": tag} for tag in dict.fromkeys(route.tag for route in routes)],
        "paths": paths,
        "components": components,
    }
