"""Raw HTTP requests to the host agent's API, generated from its OpenAPI
document, of the kinds schemathesis does not send: unknown paths, methods a
path does not serve, odd query strings, wrong content types, bodies that are
not JSON, huge and broken bodies, bodies on routes that take none. And what
the document says of the answer to each: the operation it reaches, or 404
or 405 (the document's description says so of any other route)."""

from __future__ import annotations

import gzip
import json
import string
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import yarl
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator

from tests.unit.schema_values import Values

JSON_TYPE = "application/json"
MAX_BODY = 1 << 20  # aiohttp's client_max_size: a larger body is a 413
HUGE = (10_000, 200_000, MAX_BODY)  # sizes of huge strings and bodies
# Methods HTTP parsers know (aiohttp refuses others before any route, as a bad request).
OTHER_METHODS = ("PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "MKCOL")
ODD_QUERIES = ("", "=", "&", "&&=&", "a", "a=", "=b", "%", "%ZZ", "%00", "a=%ff", ";", "a=1;b=2",
               "mountPoint", "mountPoint=", "mountPoint=/a&mountPoint=/a", "mountPoint[]=/a",
               "MOUNTPOINT=/a", "mountPoint=%2Fa%00", "x" * 7000, "a=" + "%e2%82%ac" * 900)
CONTENT_TYPES = ("", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=utf-16",
                 "APPLICATION/JSON", "application/json-patch+json", "application/*", "*/*",
                 "application/json; charset=latin-1", "json", ";;;", "application/json\t")
BAD_JSON = (b"", b"{", b"}", b"[", b'{"a":', b"nul", b"NaN", b"Infinity", b"-", b"01",
            b'{"a" 1}', b"{'a': 1}", b'{"a": 1,}', b"\xff\xfe{}", b"\xef\xbb\xbf{}",
            b'{"\xff": 1}', b"[" * 100_000, b'{"a": "\\ud800"}', b"{} {}", b"\x00",
            b'{"a": 1e999999}', b'{"tag": "a", "tag": "b"}', b"1" * 5000)


@dataclass(frozen=True)
class RawRequest:
    kind: str  # the mutation, for the tally
    method: str
    path: str  # as sent: percent-encoded where it must be
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    broken: bool = True  # the document says its input is wrong (a 4xx is due)
    malformed: bool = False  # HTTP itself refuses it: a text 400, before any route

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    spec: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def body_schema(self) -> dict[str, Any] | None:
        """The JSON body's schema; None for none, or for bytes (PUT /v1/files)."""
        body = self.spec.get("requestBody")
        return body["content"].get(JSON_TYPE, {}).get("schema") if body else None

    def parameters(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == where]


class Document:
    """An OpenAPI document's operations, and which one a request reaches."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.values = Values(doc["components"]["schemas"])
        self.operations = [Operation(method.upper(), template, spec)
                           for template, ops in doc["paths"].items()
                           for method, spec in ops.items()]

    def route(self, method: str, path: str) -> tuple[Operation | None, set[str]]:
        """The operation `method path` reaches (None: none), and the methods
        its path is served with (empty: an unknown path)."""
        # As aiohttp matches routes: percent-decoded, but for %2F (a slash
        # in a segment, such as a {tag}).
        want = yarl.URL.build(path=path, encoded=True).path_safe.split("/")
        for template, ops in self.doc["paths"].items():
            parts = template.split("/")
            if len(parts) == len(want) and all(
                    p == w or (p.startswith("{") and w != "")
                    for p, w in zip(parts, want, strict=True)):
                methods = {m.upper() for m in ops}
                op = next((o for o in self.operations
                           if o.template == template and o.method == method), None)
                return op, methods
        return None, set()

    def validate(self, schema: dict[str, Any], value: Any) -> None:
        OAS31Validator({"allOf": [schema], "components": self.doc["components"]}).validate(value)

    def problems(self, method: str, path: str, broken: bool, status: int, ctype: str,
                 allow: str | None, body: bytes, malformed: bool = False) -> list[str]:
        """What in the answer `status ctype body` to `method path` is not as
        documented; `broken`: the request's input is wrong; `malformed`: HTTP
        refuses it (the document's description: a 400, in text)."""
        if malformed:
            return [] if status == 400 else [f"{status}, not 400, to a malformed request"]
        op, served = self.route(method, path)
        out = []
        if status >= 500:
            out.append(f"a server error {status}")
        if op is None:
            want = 405 if served else 404
            if status != want:
                out.append(f"{status}, not {want}, for a route the document does not list")
            if want == 405 and set((allow or "").split(",")) != served:
                out.append(f"Allow: {allow}, not {','.join(sorted(served))}")
            schema: dict[str, Any] | None = {"$ref": "#/components/schemas/Error"}
        else:
            reply = op.spec["responses"].get(str(status))
            if reply is None:
                return [*out, f"{status} is not an answer {op.label} documents"]
            if broken and status < 400:
                out.append(f"{status} to a request the document says is wrong")
            content = reply.get("content", {})
            schema = content[ctype]["schema"] if ctype in content else None
            if content and schema is None:
                out.append(f"content type {ctype!r}, not one of {sorted(content)}")
        if method != "HEAD" and schema is not None and not out:
            try:
                self.validate(schema, json.loads(body))
            except ValueError as e:
                out.append(f"the body is not JSON: {e}: {body[:200]!r}")
            except Exception as e:  # jsonschema's ValidationError
                out.append(f"the body is not as documented: {str(e)[:300]}")
        return out

    def path_of(self, op: Operation, draw: st.DrawFn) -> str:
        """The operation's path with valid path parameters."""
        path = op.template
        for p in op.parameters("path"):
            value = draw(self.values.valid(p["schema"]))
            path = path.replace("{" + p["name"] + "}", quote(value, safe=""))
        return path

    def valid_body(self, op: Operation, draw: st.DrawFn) -> bytes:
        schema = op.body_schema
        assert schema is not None
        return json.dumps(draw(self.values.valid(schema))).encode()

    def requests(self) -> st.SearchStrategy[RawRequest]:
        kinds = [self._unknown_path, self._other_method, self._odd_query, self._body_on_bodiless,
                 self._content_type, self._bad_json, self._broken_body, self._huge_field,
                 self._huge_body, self._content_encoding, self._expectation, self._malformed]
        return st.one_of([st.composite(kind)() for kind in kinds])

    def _op(self, draw: st.DrawFn, body: bool | None = None) -> Operation:
        ops = [o for o in self.operations if o.template != "/v1/exec"  # see the WebSocket test
               and (body is None or (o.body_schema is not None) == body)]
        return draw(st.sampled_from(ops))

    def _unknown_path(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw)
        path = self.path_of(op, draw)
        segment = quote(draw(st.text(min_size=1, max_size=20)), safe="")
        path = draw(st.sampled_from([
            path + "/", path + "/" + segment, path.upper(), "/v1/" + segment, "/v2" + path[3:],
            "/", "/v1", "/v1/", "//" + path.lstrip("/"), path.replace("/v1/", "/v1//"),
            "/" + segment + path, "/v1/%2e%2e" + path, path + "%2F", path + ".json"]))
        return RawRequest("unknown path", draw(st.sampled_from([op.method, *OTHER_METHODS])),
                          path)

    def _other_method(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw)
        _, served = self.route(op.method, op.template)
        method = draw(st.sampled_from([m for m in ("GET", "POST", "DELETE", *OTHER_METHODS)
                                       if m not in served]))
        return RawRequest("other method", method, self.path_of(op, draw))

    def _odd_query(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw)
        query = draw(st.sampled_from(ODD_QUERIES) | st.text(max_size=30).map(
            lambda t: quote(t, safe="=&;+%/?")))
        # As the server parses it: "&" is no parameter at all. A query the
        # operation takes may be right ("mountPoint=/a" is).
        given = bool(yarl.URL.build(query_string=query).query)
        broken = given and not op.parameters("query")
        body = self.valid_body(op, draw) if op.body_schema else None
        headers = {"Content-Type": JSON_TYPE} if body is not None else {}
        return RawRequest("odd query", op.method, self.path_of(op, draw), query, headers, body,
                          broken=broken)

    def _body_on_bodiless(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw, body=False)
        body = draw(st.sampled_from([b"{}", b"null", b"x", b"[]" * 1000]))
        ctype = draw(st.sampled_from([JSON_TYPE, "text/plain"]))
        return RawRequest("body on a route without one", op.method, self.path_of(op, draw),
                          headers={"Content-Type": ctype}, body=body)

    def _content_type(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw, body=True)
        ctype = draw(st.sampled_from(CONTENT_TYPES))
        headers = {"Content-Type": ctype} if ctype else {}
        # Media types are case-insensitive, parameters aside: APPLICATION/JSON is JSON.
        json_type = ctype.split(";")[0].strip().lower() == JSON_TYPE
        return RawRequest("content type", op.method, self.path_of(op, draw), headers=headers,
                          body=self.valid_body(op, draw), broken=not json_type)

    def _bad_json(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw, body=True)
        valid = self.valid_body(op, draw)
        body = draw(st.sampled_from(BAD_JSON) | st.binary(max_size=40)
                    | st.integers(1, max(1, len(valid) - 1)).map(lambda n: valid[:n]))
        return RawRequest("not JSON", op.method, self.path_of(op, draw),
                          headers={"Content-Type": JSON_TYPE}, body=body)

    def _broken_body(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw, body=True)
        assert op.body_schema is not None
        body = json.dumps(draw(self.values.broken(op.body_schema))).encode()
        return RawRequest("body breaking its schema", op.method, self.path_of(op, draw),
                          headers={"Content-Type": JSON_TYPE}, body=body)

    def _huge_field(self, draw: st.DrawFn) -> RawRequest:
        """A valid body but for one string field's size: within MAX_BODY, a
        valid one (the document bounds no string)."""
        op = self._op(draw, body=True)
        assert op.body_schema is not None
        value = json.loads(self.valid_body(op, draw))
        props = self.values.resolve(op.body_schema)["properties"]
        names = [n for n, p in props.items()
                 if self.values.resolve(p).get("type") == "string"
                 and "pattern" not in self.values.resolve(p)]
        if names:
            value[draw(st.sampled_from(names))] = "x" * draw(st.sampled_from(HUGE))
        body = json.dumps(value).encode()
        return RawRequest("huge field", op.method, self.path_of(op, draw),
                          headers={"Content-Type": JSON_TYPE}, body=body,
                          broken=len(body) > MAX_BODY or not names)

    def _huge_body(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw, body=True)
        size = draw(st.sampled_from(HUGE))
        body = draw(st.sampled_from([
            json.dumps({"x" * size: 1}).encode(), b" " * size + b"{}",
            json.dumps({f"f{i}": i for i in range(size // 16)}).encode(),
            json.dumps([string.ascii_letters] * (size // 50)).encode()]))
        return RawRequest("huge body", op.method, self.path_of(op, draw),
                          headers={"Content-Type": JSON_TYPE}, body=body)

    def _content_encoding(self, draw: st.DrawFn) -> RawRequest:
        """A body said to be compressed (gzip, deflate: aiohttp would
        decompress them): the API takes none; identity is no coding."""
        op = self._op(draw, body=True)
        coding = draw(st.sampled_from(["gzip", "deflate", "identity", "GZIP", "foo", "x-gzip"]))
        body = self.valid_body(op, draw)
        if draw(st.booleans()) and coding.lower() in ("gzip", "x-gzip"):
            body = gzip.compress(body)
        elif draw(st.booleans()) and coding == "deflate":
            body = zlib.compress(body)
        return RawRequest("content encoding", op.method, self.path_of(op, draw),
                          headers={"Content-Type": JSON_TYPE, "Content-Encoding": coding},
                          body=body, broken=coding != "identity")

    def _expectation(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw)
        body = self.valid_body(op, draw) if op.body_schema else None
        headers = {"Content-Type": JSON_TYPE} if body is not None else {}
        headers["Expect"] = draw(st.sampled_from(["100-continue", "200-ok", "", "weird"]))
        return RawRequest("expectation", op.method, self.path_of(op, draw), headers=headers,
                          body=body, broken=False)

    def _malformed(self, draw: st.DrawFn) -> RawRequest:
        op = self._op(draw)
        path = self.path_of(op, draw)
        method, headers = op.method, {}
        how = draw(st.sampled_from(["method", "long header", "long target", "header char",
                                    "coding"]))
        if how == "method":
            method = draw(st.sampled_from(["FETCH", "GETS", "BREW", "X"]))
        elif how == "long header":
            headers["X-Fuzz"] = "y" * 9000
        elif how == "long target":
            path += "/" + "z" * 9000
        elif how == "header char":
            headers["X-Fuzz"] = draw(st.sampled_from(["\x7f", "\x01", "a\x00b"]))
        else:  # aiohttp here has no decoder for these: refused as it parses
            headers["Content-Encoding"] = draw(st.sampled_from(["br", "zstd"]))
        body = b"{}" if how == "coding" else None
        return RawRequest(f"malformed HTTP ({how})", method, path, headers=headers, body=body,
                          malformed=True)
