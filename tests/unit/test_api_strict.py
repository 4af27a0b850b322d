"""The host agent's API refuses what its models do not describe, with a 400
naming the field, and describes itself at GET /v1/openapi.json. A real
aiohttp server on a Unix socket, the real guest agent behind it (exec), the
real checkpoints; mounts are a recorder, since nothing can be plugged here."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from openapi_spec_validator import validate as validate_spec

from roost.cli.main import cli
from roost.errors import UsageError
from roost.hostagent.api import ApiServer
from roost.hostagent.apimodels import ExecRequest, ExecResize, MountAdd, MountRemove, MountType
from roost.ops import hostapi
from roost.ops.mounts import remove_query
from roost.store.snapshots import check_tag
from roost_guest.protocol import EXEC_SIGNALS
from tests.unit.api_harness import RecordedMounts, served_api
from tests.unit.api_requests import Document
from tests.unit.guest_agent_process import guest_agent_on


@dataclass
@dataclass
class Api:
    http: aiohttp.ClientSession
    server: ApiServer
    mounts: RecordedMounts
    sock: Path
    doc: dict[str, Any] = field(default_factory=dict)

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """The answer, checked against what the document says of it."""
        async with self.http.request(method, path, **kw) as resp:
            raw = await resp.read()
            status, ctype, allow = resp.status, resp.content_type, resp.headers.get("Allow")
        if self.doc:  # (not while the document itself is fetched)
            problems = Document(self.doc).problems(method, path.split("?")[0], False, status,
                                                   ctype, allow, raw)
            assert problems == [], f"{method} {path} answered {status}: {problems}"
        text = raw.decode()
        return status, json.loads(text) if ctype == "application/json" else text

    async def exec_ws(self, *messages: Any) -> list[Any]:
        """Send `messages` on the exec WebSocket (dicts as JSON text, str as
        text, bytes as binary); what comes back until the close, each JSON
        message checked against the document's x-websocket."""
        ws_doc = self.doc["paths"]["/v1/exec"]["get"]["x-websocket"]
        doc = Document(self.doc)
        out: list[Any] = []
        async with self.http.ws_connect("/v1/exec") as ws:
            for message in messages:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                elif isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_json(message)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    out.append(json.loads(msg.data))
                    doc.validate(ws_doc["serverMessages"], out[-1])
                else:
                    out.append(msg.data)
        for message in messages:
            if isinstance(message, dict) and out[-1].get("status") != 400:
                doc.validate(ws_doc["clientMessages"], message)
        return out


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="roost-strict-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def agent_sock(short_dir: Path) -> Iterator[str]:
    path = str(short_dir / "ga.sock")
    with guest_agent_on(path, "--allow-exec"):
        yield path


@pytest.fixture
async def api(agent_sock: str, short_dir: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[Api]:
    monkeypatch.setenv("ROOST_HOME", str(short_dir / "home"))
    mounts = RecordedMounts()
    async with served_api(agent_sock, lambda inst, guest: mounts) as served:
        a = Api(served.http, served.server, mounts, served.inst.ha_sock)
        status, a.doc = await a.call("GET", "/v1/openapi.json")
        assert status == 200
        yield a


async def test_the_document_is_openapi_and_lists_exactly_the_served_routes(api: Api) -> None:
    validate_spec(api.doc)
    served = {(r.method, r.resource.canonical) for r in api.server.app.router.routes()
              if r.resource is not None}
    described = {(method.upper(), path) for path, ops in api.doc["paths"].items()
                 for method in ops}
    assert served == described
    assert ("GET", "/v1/openapi.json") in served and len(served) == 24
    ops = [op for ops in api.doc["paths"].values() for op in ops.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)


async def test_the_document_describes_inputs_from_the_models(api: Api) -> None:
    schemas = api.doc["components"]["schemas"]
    mount = schemas["MountAdd"]
    assert mount["required"] == ["location", "mountPoint"]
    assert mount["additionalProperties"] is False
    assert mount["properties"]["writable"]["type"] == "boolean"
    assert mount["properties"]["type"]["enum"] == ["", *get_args(MountType)]
    assert schemas["ExecRequest"]["properties"]["argv"]["minItems"] == 1
    assert list(schemas["ExecRequest"]["properties"]) == [
        "argv", "timeout", "tty", "rows", "cols", "term", "env", "cwd"]
    assert schemas["ExecResize"]["properties"]["rows"]["maximum"] == 65535
    assert tuple(schemas["ExecSignal"]["properties"]["signal"]["enum"]) == EXEC_SIGNALS
    remove = api.doc["paths"]["/v1/mounts"]["delete"]
    assert [(p["name"], p["in"], p["required"]) for p in remove["parameters"]] == [
        ("mountPoint", "query", True), ("force", "query", False)]
    assert "requestBody" not in remove
    apply = api.doc["paths"]["/v1/snapshots/{tag}/apply"]["post"]
    assert apply["parameters"][0]["in"] == "path" and "pattern" in apply["parameters"][0]["schema"]
    exec_op = api.doc["paths"]["/v1/exec"]["get"]
    assert set(exec_op["responses"]) == {"101", "400", "500"}
    assert "content" not in exec_op["responses"]["101"] and "requestBody" not in exec_op
    ws = exec_op["x-websocket"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in ws["clientMessages"]["oneOf"]] == [
        "ExecRequest", "ExecEof", "ExecResize", "ExecSignal"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in ws["serverMessages"]["oneOf"]] == [
        "ExecStarted", "ExecWindow", "ExecExit", "ExecFailure"]


@pytest.mark.parametrize(("body", "message"), [
    ({"location": "/tmp", "mountPoint": "/mnt/x", "writable": "no"},
     'writable: expected a boolean, got "no"'),
    ({"location": 5, "mountPoint": "/mnt/x"}, "location: expected a string, got 5"),
    ({"location": "/tmp", "mountPoint": "/mnt/x", "type": "nfs"},
     "type: expected one of '', 'virtiofs', '9p' or 'reverse-sshfs', got \"nfs\""),
    ({"location": "/tmp", "mountPoint": "/mnt/x", "ro": True},
     "ro: unknown field (known: location, mountPoint, type, writable)"),
    ({"location": "/tmp", "mount_point": "/mnt/x"},
     "mountPoint: required; mount_point: unknown field"),
    ({}, "location: required; mountPoint: required"),
    ([1], "the request body must be a JSON object, got a list"),
    ("/tmp", "the request body must be a JSON object, got a string"),
    (None, "the request body must be a JSON object, got null"),
])
async def test_wrong_mount_bodies_are_refused_naming_the_field(
        api: Api, body: Any, message: str) -> None:
    status, answer = await api.call("POST", "/v1/mounts", data=json.dumps(body),
                                    headers={"Content-Type": "application/json"})
    assert status == 400 and answer["error"].startswith(message), answer
    assert api.mounts.added == []


@pytest.mark.parametrize(("body", "message"), [
    ({"argv": ["echo", 3]}, "argv[1]: expected a string, got 3"),
    ({"argv": "echo hi"}, 'argv: expected a list, got "echo hi"'),
    ({"argv": []}, "argv: expected at least 1 item(s), got []"),
    ({"argv": ["true"], "timeout": True}, "timeout: expected a number, got true"),
    ({"argv": ["true"], "timeout": "5"}, 'timeout: expected a number, got "5"'),
    ({"argv": ["true"], "timeout": -1}, "timeout: expected a number >= 0, got -1"),
    ({"timeout": 1}, "argv: required"),
    ({"argv": ["true"], "timeout": 1e9}, "timeout: expected a number < 1e+09, got 1000000000.0"),
    ({"argv": ["a\u0000b"]}, "argv[0]: expected a string without NUL bytes, got"),
    ({"argv": ["sh"], "tty": "yes"}, 'tty: expected a boolean, got "yes"'),
    ({"argv": ["sh"], "rows": 70000}, "rows: expected a number <= 65535, got 70000"),
    ({"argv": ["sh"], "cols": 1.5}, "cols: expected an integer, got 1.5"),
    ({"argv": ["sh"], "term": "x\u001b[2J"}, "term: expected a string matching"),
    ({"argv": ["sh"], "user": "root"},
     "user: unknown field (known: argv, timeout, tty, rows, cols, term, env, cwd)"),
    ({"argv": ["sh"], "env": {"A": 1}}, "env.A: expected a string"),
    ({"argv": ["sh"], "cwd": "tmp"}, "cwd: expected a string matching"),
    ([1], "the exec request must be a JSON object, got a list"),
    ('{"argv": [', "the exec request is not JSON ("),
    ('{"argv": ["true"], "timeout": NaN}', "timeout: expected a finite number"),
])
async def test_wrong_exec_requests_are_refused_naming_the_field(
        api: Api, body: Any, message: str) -> None:
    """The exec WebSocket's first message is checked like a request body."""
    first = body if isinstance(body, str) else json.dumps(body)
    answers = await api.exec_ws(first)
    assert len(answers) == 1 and answers[0]["status"] == 400, answers
    assert answers[0]["error"].startswith(message), answers


@pytest.mark.parametrize(("control", "message"), [
    ({"type": "resize", "rows": "24", "cols": 80}, 'rows: expected an integer, got "24"'),
    ({"type": "kill", "signal": "FOO"}, "signal: expected one of 'HUP', 'INT'"),
    ({"type": "eof", "now": True}, "now: unknown field (known: type)"),
    ({"type": "fly"}, "an exec control message must be a JSON object whose type is one of "
                      "eof, resize, signal, kill"),
    ([], "an exec control message must be a JSON object whose type"),
])
async def test_wrong_exec_controls_are_refused_naming_the_field(
        api: Api, control: Any, message: str) -> None:
    answers = await api.exec_ws({"argv": ["sleep", "30"]}, json.dumps(control))
    assert answers[0]["type"] == "started"
    assert answers[-1]["status"] == 400 and answers[-1]["error"].startswith(message), answers


async def test_bodies_that_are_not_json_objects(api: Api) -> None:
    headers = {"Content-Type": "application/json"}
    status, answer = await api.call("POST", "/v1/mounts", data=b'{"location": [',
                                    headers=headers)
    assert status == 400 and answer["error"].startswith("the request body is not JSON (")
    status, answer = await api.call("POST", "/v1/mounts")
    assert (status, answer["error"]) == (
        400, "POST /v1/mounts takes a JSON object body with: location, mountPoint, type, "
             "writable")
    status, answer = await api.call("POST", "/v1/mounts", data=b'{"location": "/tmp"}',
                                    headers={"Content-Type": "text/plain"})
    assert (status, answer["error"]) == (415, "send the body as application/json "
                                              "(got text/plain)")
    status, answer = await api.call("POST", "/v1/mounts", data=b" " * (1 << 20 | 1),
                                    headers=headers)
    assert status == 413 and "1048576" in answer["error"]
    status, answer = await api.call("GET", "/v1/exec")  # no upgrade
    assert status == 400 and "WebSocket" in answer["error"]


async def test_queries_paths_and_bodies_a_route_does_not_take(api: Api) -> None:
    status, answer = await api.call("DELETE", "/v1/mounts")
    assert (status, answer["error"]) == (400, "query parameter mountPoint: required")
    status, answer = await api.call("DELETE", "/v1/mounts?mountPoint=/a&lazy=1")
    assert (status, answer["error"]) == (
        400, "query parameter lazy: unknown field (known: mountPoint, force)")
    status, answer = await api.call("DELETE", "/v1/mounts?mountPoint=/a&force=maybe")
    assert status == 400 and answer["error"].startswith(
        "query parameter force: expected a boolean"), answer
    status, answer = await api.call("DELETE", "/v1/mounts?mountPoint=/a&mountPoint=/b")
    assert (status, answer["error"]) == (400, "query parameter mountPoint: given more than once")
    status, answer = await api.call("POST", "/v1/snapshots/a%20b/apply")
    assert status == 400 and answer["error"].startswith(
        'path parameter tag: expected a string matching ^[A-Za-z0-9]')
    status, answer = await api.call("GET", "/v1/info?verbose=1")
    assert (status, answer["error"]) == (400, "GET /v1/info takes no query parameters "
                                              "(got verbose)")
    status, answer = await api.call("POST", "/v1/suspend", json={"now": True})
    assert (status, answer["error"]) == (400, "POST /v1/suspend takes no request body")


async def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    status, answer = await api.call("GET", "/v1/nope")
    assert (status, answer) == (404, {"error": "Not Found: GET /v1/nope"})
    async with api.http.put("/v1/mounts") as resp:
        assert resp.status == 405 and set(resp.headers["Allow"].split(",")) == {
            "GET", "POST", "DELETE"}
        assert (await resp.json())["error"] == "Method Not Allowed: PUT /v1/mounts"


async def test_valid_requests_reach_their_handlers_typed(api: Api) -> None:
    status, rec = await api.call("POST", "/v1/mounts", json={
        "location": "/tmp", "mountPoint": "/mnt/a", "writable": True})
    assert (status, rec["writable"]) == (201, True)
    status, _ = await api.call("POST", "/v1/mounts", json={
        "location": "/tmp", "mountPoint": "/mnt/b", "type": "reverse-sshfs"})
    assert status == 201
    assert api.mounts.added == [("/tmp", "/mnt/a", "", True),
                                ("/tmp", "/mnt/b", "reverse-sshfs", False)]
    status, listing = await api.call("GET", "/v1/mounts")
    assert status == 200 and len(listing) == 2
    status, _ = await api.call("DELETE", "/v1/mounts?mountPoint=/mnt/a")
    assert status == 200 and api.mounts.removed == ["/mnt/a"] and api.mounts.forced == [False]
    status, _ = await api.call("DELETE", "/v1/mounts?mountPoint=/mnt/b&force=true")
    assert status == 200 and api.mounts.forced == [False, True]
    status, answer = await api.call("DELETE", "/v1/mounts?mountPoint=/mnt/zz")
    assert (status, answer["error"]) == (404, "nothing is mounted at /mnt/zz")
    status, answer = await api.call("POST", "/v1/snapshots", json={"tag": "a"})
    assert status == 400 and "cannot snapshot a running VM" in answer["error"]
    status, answer = await api.call("POST", "/v1/suspend")
    assert (status, answer["error"]) == (400, "this instance's driver cannot suspend")
    for path in ("/v1/info", "/v1/status", "/v1/guest/status"):
        assert (await api.call("GET", path))[0] == 200
    answers = await api.exec_ws({"argv": ["cat"], "timeout": 10}, b"hi\n", {"type": "eof"})
    assert answers[0]["type"] == "started" and b"\x01hi\n" in answers
    assert (answers[-1]["type"], answers[-1]["exitCode"]) == ("exit", 0)
    answers = await api.exec_ws({"argv": ["sh", "-c", "kill -STOP $$; echo on"]},
                                {"type": "signal", "signal": "CONT"})
    assert b"\x01on\n" in answers and answers[-1]["exitCode"] == 0
    answers = await api.exec_ws({"argv": ["no-such-program"]})
    assert answers == [{"type": "error", "status": 400, "exitCode": 127,
                        "error": answers[0]["error"]}]


async def test_the_cli_sends_what_the_api_takes(api: Api) -> None:
    """The CLI's bodies are the models' wire form; sent by its own client."""
    body = MountAdd(location="/tmp", mount_point="/mnt/c", writable=False).wire()
    rec = await asyncio.to_thread(hostapi.request, api.sock, "POST", "/v1/mounts", body)
    assert rec["mountPoint"] == "/mnt/c" and api.mounts.added[-1][3] is False
    assert MountRemove(mount_point="/mnt/c").wire() == {"mountPoint": "/mnt/c", "force": False}
    await asyncio.to_thread(hostapi.request, api.sock, "DELETE",
                            f"/v1/mounts?{remove_query('/mnt/c', True)}")
    assert (api.mounts.removed[-1], api.mounts.forced[-1]) == ("/mnt/c", True)
    answers = await api.exec_ws(ExecRequest(argv=["sh", "-c", "stty size"], tty=True, rows=7,
                                            cols=33, term="xterm").wire())
    assert b"\x017 33\r\n" in answers and answers[-1]["exitCode"] == 0
    assert ExecResize(type="resize", rows=1, cols=2).wire() == {
        "type": "resize", "rows": 1, "cols": 2}
    with pytest.raises(UsageError, match=r'writable: expected a boolean, got "no"'):
        await asyncio.to_thread(hostapi.request, api.sock, "POST", "/v1/mounts",
                                {**body, "writable": "no"})


def test_the_cli_mount_types_are_the_models() -> None:
    mount = cli.commands["mount"]
    add = mount.commands["add"]  # type: ignore[attr-defined]
    kind = next(p for p in add.params if p.name == "kind")
    assert tuple(kind.type.choices) == get_args(MountType)


async def test_a_snapshot_tag_ending_in_a_newline_is_refused(api: Api) -> None:
    with pytest.raises(UsageError, match="invalid snapshot tag"):
        check_tag("a\n")
    assert check_tag("a.b-c_1") == "a.b-c_1"
    status, answer = await api.call("POST", "/v1/snapshots", json={"tag": "a\n"})
    assert status == 400 and answer["error"].startswith("tag: expected a string matching")


@pytest.mark.parametrize("coding", ["gzip", "deflate", "foo"])
async def test_an_encoded_body_is_refused_not_a_server_error(api: Api, coding: str) -> None:
    """Found by the fuzz (test_api_fuzz): a gzip or deflate body that did not
    decompress was a 500; the API takes no content coding (415)."""
    status, answer = await api.call("POST", "/v1/mounts", data=b'{"location": "/tmp"',
                                    headers={"Content-Type": "application/json",
                                             "Content-Encoding": coding})
    assert (status, answer["error"]) == (
        415, f"send the body uncompressed, with no Content-Encoding (got {coding})")
    assert api.mounts.added == []


async def test_an_unknown_expectation_is_ignored(api: Api) -> None:
    """Found by the fuzz: Expect: weird was aiohttp's text 417, in no document."""
    body = {"location": "/tmp", "mountPoint": "/mnt/e"}
    for expect in ("weird", "100-continue"):
        status, _ = await api.call("POST", "/v1/mounts", json=body,
                                   headers={"Expect": expect})
        assert status == 201
