"""The HTTP API's OpenAPI document and its page, against real servers on loopback: the document is valid
OpenAPI 3.1, describes exactly the routes the server answers, every documented call answers as documented,
and the page works offline (its script served by the server, no external URL)."""

from __future__ import annotations

import json
import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import REPO
from tests.serving import RunningServer, server_settings
from vaeserve.server.protocols.v2 import routes

TOKEN = "openapi-test-token"
STATIC = REPO / "server/vaeserve/server/protocols/v2/static"


@pytest.fixture(scope="module")
def server(digits_bundle: Path) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(digits_bundle, http_port=0))
    yield running
    running.stop()


def call(
    server: RunningServer, path: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET (or a POST with `body`)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{server.app.http_port}{path}", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers["content-type"], reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["content-type"], err.read()


def openapi(server: RunningServer, token: str | None = None) -> dict[str, Any]:
    status, kind, body = call(server, "/v2/openapi.json", token=token)
    assert (status, kind) == (200, "application/json"), body
    document: dict[str, Any] = json.loads(body)
    return document


def schema_check(document: dict[str, Any]) -> Callable[[dict[str, Any], Any], None]:
    """Validates a value against a schema of the document (its $refs resolved in it)."""
    registry = Registry().with_resource("urn:api", Resource.from_contents(document, DRAFT202012))

    def check(schema: dict[str, Any], value: Any) -> None:
        if "$ref" in schema:
            schema = {"$ref": "urn:api" + schema["$ref"]}
        OAS31Validator(schema, registry=registry).validate(value)

    return check


def test_the_document_is_valid_openapi_3(server: RunningServer) -> None:
    document = openapi(server)
    validate(document)  # raises with what is wrong
    assert document["openapi"].startswith("3.") and document["info"]["version"]
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds are unique"
    assert "securitySchemes" not in document["components"], "no tokens here: no security"


def test_every_live_route_is_documented_and_nothing_else(server: RunningServer) -> None:
    assert server.app.http is not None
    live = {
        (route.path, method.lower())
        for route in server.app.http.app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"  # starlette adds HEAD to every GET
    }
    documented = {(path, verb) for path, ops in openapi(server)["paths"].items() for verb in ops}
    assert live == documented
    for path, verb in documented:
        assert all(name in {"name", "version"} for name in re.findall(r"{(\w+)}", path)), (path, verb)


def test_every_documented_call_answers_as_documented(server: RunningServer) -> None:
    """Each operation, with the document's own examples (a served model), answers 200 with a documented
    media type; every JSON reply validates against its schema."""
    document = openapi(server)
    check = schema_check(document)
    seen: dict[str, str] = {}
    for path, ops in document["paths"].items():
        for verb, op in ops.items():
            examples = {p["name"]: p["example"] for p in op.get("parameters", []) if p["in"] == "path"}
            seen |= examples
            assert set(examples) == set(re.findall(r"{(\w+)}", path)), f"{verb} {path}: each path parameter"
            url = path.format(**examples)
            body = None
            if verb == "post":
                body = json.dumps(op["requestBody"]["content"]["application/json"]["example"]).encode()
            status, kind, reply = call(server, url, body)
            assert status == 200, f"{verb} {url}: {status} {reply[:200]!r}"
            content = op["responses"]["200"]["content"]
            assert kind in content, f"{verb} {url}: {kind} is not among {list(content)}"
            if kind == "application/json":
                check(content[kind]["schema"], json.loads(reply))
    assert seen == {"name": "digits", "version": "1"}, "the served model is the example"


def test_errors_answer_as_documented(server: RunningServer) -> None:
    document = openapi(server)
    check = schema_check(document)
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    cases = [
        ("/v2/models/nope", None, document["paths"]["/v2/models/{name}"]["get"], 404),
        (
            "/v2/models/digits/versions/9/ready",
            None,
            document["paths"]["/v2/models/{name}/versions/{version}/ready"]["get"],
            404,
        ),
        ("/v2/models/nope/infer", b'{"inputs": []}', infer, 404),
        ("/v2/models/digits/infer", b'{"inputs": [{"name": "x"}]}', infer, 400),
        ("/v2/models/digits/infer", b"not json", infer, 400),
    ]
    for url, body, op, want in cases:
        status, kind, reply = call(server, url, body)
        assert status == want and str(status) in op["responses"], (url, status, reply)
        check(op["responses"][str(status)]["content"][kind]["schema"], json.loads(reply))
    for status in ("400", "404", "429", "500", "503"):
        assert status in infer["responses"], f"infer documents {status}"
    binary = infer["requestBody"]["content"]["application/octet-stream"]
    assert binary["schema"] == {"$ref": "#/components/schemas/BinaryInferenceRequest"}
    assert [p["name"] for p in infer["parameters"] if p["in"] == "header"] == ["Inference-Header-Content-Length"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.attributes: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            self.attributes[name] = value
            if name in {"src", "href", "spec-url"} and value:
                self.links.append(value)


def test_the_page_and_its_script_are_served_with_no_external_url(server: RunningServer) -> None:
    status, kind, page = call(server, "/v2/docs")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    text = page.decode()
    assert not re.search(r"https?:|//[a-z]", text, re.IGNORECASE), "the page names no other host (no CDN)"
    parsed = _Links()
    parsed.feed(text)
    assert parsed.attributes.get("load-fonts") == "false", "RapiDoc would fetch its fonts from Google"
    served: dict[str, str] = {}
    for link in parsed.links:
        assert not urlsplit(link).scheme and not urlsplit(link).netloc, link
        target = urljoin("/v2/docs", link)
        status, kind, body = call(server, target)
        assert status == 200 and body, target
        served[target] = kind
    assert served == {
        "/v2/docs/rapidoc-min.js": "text/javascript; charset=utf-8",
        "/v2/openapi.json": "application/json",
    }
    _, _, script = call(server, "/v2/docs/rapidoc-min.js")
    assert script == (STATIC / "rapidoc-min.js").read_bytes()


def test_the_package_ships_the_page(server: RunningServer) -> None:
    """A non-editable install (`pip install ./server`: the server venv, the image) takes package data only."""
    pyproject = tomllib.loads((REPO / "server/pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["vaeserve.server"]
    package = REPO / "server/vaeserve/server"
    for path in STATIC.iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch(relative, p) for p in patterns), f"{relative} is not package data"
    readme = (STATIC / "README.md").read_text()
    assert "9.3.8" in readme and "MIT" in readme
    assert "rapidoc-min.js" in {r.path.rpartition("/")[2] for r in routes.ROUTES}


def test_with_tokens_the_page_is_open_like_the_probes(
    serve: Callable[..., RunningServer], digits_bundle: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    server = serve(digits_bundle, http_port=0, auth_tokens=tokens)
    document = openapi(server)  # no token
    validate(document)
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    ops = {op["operationId"]: op for ops in document["paths"].values() for op in ops.values()}
    for name, op in ops.items():
        guarded = name not in {"ServerLive", "ServerReady", "OpenAPI", "APIPage", "APIPageScript"}
        assert ("security" in op) == guarded and ("401" in op["responses"]) == guarded, name
    assert "digits" not in json.dumps(document), "a model is named only to callers that may read its metadata"
    assert call(server, "/v2/docs")[0] == 200 and call(server, "/v2/docs/rapidoc-min.js")[0] == 200
    assert call(server, "/v2/models/digits")[0] == 401
    assert call(server, "/v2/models/digits", token=TOKEN)[0] == 200


def test_auth_health_guards_the_page_too(
    serve: Callable[..., RunningServer], digits_bundle: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    server = serve(digits_bundle, http_port=0, auth_tokens=tokens, auth_health=True)
    for path in ("/v2/openapi.json", "/v2/docs", "/v2/docs/rapidoc-min.js"):
        status, _, body = call(server, path)
        assert status == 401 and "bearer token" in json.loads(body)["error"], path
    document = openapi(server, TOKEN)
    assert all("security" in op for ops in document["paths"].values() for op in ops.values())
    assert document["paths"]["/v2/models/{name}"]["get"]["parameters"][0]["example"] == "digits"
