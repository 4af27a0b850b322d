"""The API's route table and the OpenAPI 3.1 document made from it.

ApiServer registers its aiohttp routes from the same Route list this
module describes, so what GET /v1/openapi.json says is what ha.sock serves.
Input schemas come from the models (roost.hostagent.apimodels).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from roost.hostagent.apiinput import adapter
from roost.hostagent.apimodels import ApiInput

RouteHandler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
JSON = "application/json"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "what went wrong"}},
}
# Every route can answer these: a wrong input (or a refused operation) and a failure.
# Any other path answers 404, any other method 405 (see the document's description).
COMMON_ERRORS = {400: "the request is wrong: its message says what to change",
                 500: "the host agent failed to do it; the message says why"}
BODY_ERRORS = {413: "the request body is larger than 1 MiB",
               415: "the request body is not application/json, or is encoded "
                    "(a Content-Encoding other than identity)"}


@dataclass(frozen=True)
class Reply:
    """A success answer: its description, media type and JSON schema (None:
    no body, as for a 101 that switches to a WebSocket)."""

    description: str
    schema: dict[str, Any] | None
    media_type: str = JSON
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. x-item-schema of JSON lines


@dataclass(frozen=True)
class WebSocket:
    """The messages of a route that upgrades to a WebSocket. OpenAPI describes
    only the upgrade; the messages go in the operation's x-websocket."""

    description: str
    client: tuple[type[ApiInput], ...]  # its JSON text messages, from the client
    server: dict[str, dict[str, Any]]  # named schemas of its JSON text messages, to it
    binary: str  # what binary messages carry


@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str  # aiohttp's and OpenAPI's syntax alike: /v1/snapshots/{tag}
    summary: str
    handler: RouteHandler  # called with the request and its validated input (or None)
    ok: dict[int, Reply]
    errors: dict[int, str] = field(default_factory=dict)  # beyond COMMON_ERRORS
    takes: type[ApiInput] | None = None
    takes_in: Literal["body", "query", "path"] = "body"
    websocket: WebSocket | None = None
    raw_body: bool = False  # takes its body as bytes (application/octet-stream), streamed

    @property
    def operation_id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", f"{self.method} {self.path}".lower()).strip("_")

    def error_statuses(self) -> dict[int, str]:
        extra = BODY_ERRORS if self.takes is not None and self.takes_in == "body" else {}
        return {**COMMON_ERRORS, **extra, **self.errors}


def _schema_of(model: type[ApiInput], components: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema, put in components; a $ref to it."""
    schema = adapter(model).json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _parameters(route: Route) -> list[dict[str, Any]]:
    assert route.takes is not None
    schema = adapter(route.takes).json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": route.takes_in, "required": name in required,
             **({"description": prop.pop("description")} if "description" in prop else {}),
             "schema": prop}
            for name, prop in schema["properties"].items()]


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    if route.takes is not None and route.takes_in == "body":
        op["requestBody"] = {"required": True, "content": {
            JSON: {"schema": _schema_of(route.takes, components)}}}
    elif route.takes is not None:
        op["parameters"] = _parameters(route)
    if route.raw_body:
        op["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    responses: dict[str, Any] = {}
    for status, reply in route.ok.items():
        responses[str(status)] = {"description": reply.description}
        if reply.schema is not None:
            responses[str(status)]["content"] = {
                reply.media_type: {"schema": reply.schema, **reply.extra}}
    for status, description in sorted(route.error_statuses().items()):
        responses[str(status)] = {"description": description, "content": {
            JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    op["responses"] = responses
    if route.websocket is not None:
        op["x-websocket"] = _websocket(route.websocket, components)
    return op


def _websocket(ws: WebSocket, components: dict[str, Any]) -> dict[str, Any]:
    components.update(ws.server)
    return {
        "description": ws.description,
        "clientMessages": {"oneOf": [_schema_of(model, components) for model in ws.client]},
        "serverMessages": {"oneOf": [{"$ref": f"#/components/schemas/{name}"}
                                     for name in ws.server]},
        "binaryMessages": ws.binary,
    }


def document(routes: list[Route], version: str,
             schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI 3.1 description of `routes`; `schemas`: named answer schemas."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA, **schemas}
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "roost host agent", "version": version,
                 "description": "The API of one instance's host agent, served on the "
                                "instance's ha.sock (a Unix socket, mode 0600). A path "
                                "not listed here answers 404, and a method a listed "
                                "path does not serve 405 with an Allow header; both "
                                "with an Error body. A request HTTP itself refuses (an "
                                "unknown method, a malformed or over-long line, a "
                                "content coding it cannot decode) is answered 400 by "
                                "the HTTP server, in text, before any route."},
        "servers": [{"url": "http://localhost", "description": "over ha.sock"}],
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }

