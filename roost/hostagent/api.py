"""The host agent's HTTP API on ha.sock (mode 0600).

Its routes are one table (ApiServer._route_table) that registers them and
describes them at GET /v1/openapi.json. Each handler gets its input already
checked against its model (roost.hostagent.apimodels); a wrong one is a 400
naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, get_args

from aiohttp import web

from roost import __version__
from roost.errors import RoostError, UsageError
from roost.hostagent import execws, openapi
from roost.hostagent.apiinput import InputError, field_names, from_json, from_strings
from roost.hostagent.apimodels import (
    ApiInput,
    DirCreate,
    DiskCopy,
    FileRef,
    FileRemove,
    FileRename,
    FileWatch,
    FileWrite,
    MountAdd,
    MountRemove,
    MountType,
    SnapshotCreate,
    SnapshotRef,
)
from roost.hostagent.errors import Forbidden
from roost.hostagent.execstream import ExecSpec, GuestExec
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.openapi import Reply, Route
from roost_guest import protocol

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUEST_REQUESTS = ("status", "health", "probes", "diff")  # answered by the guest agent
WATCH_POLL = 0.5  # how often a watch looks whether its client is still there


class Mounts(Protocol):
    def listing(self) -> list[dict[str, Any]]: ...

    async def add(self, location: str, mount_point: str, kind: str,
                  writable: bool) -> dict[str, Any]: ...

    async def remove(self, mount_point: str, force: bool = False) -> dict[str, Any]: ...


log = logging.getLogger(__name__)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Answer(Exception):
    """An error answer with its status, raised from within a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _guest_refused(client: GuestAgentClient, e: GuestAgentError) -> _Answer:
    """The guest agent's refusal of a files request as an answer: 404 for a
    path that is not there, 503 when the guest agent went away, else 400."""
    message = str(e)
    if not client.connected:
        return _Answer(503, f"the guest agent does not answer: {message}")
    return _Answer(404 if "(ENOENT)" in message else 400, message)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """roost's errors as JSON: a usage error is 400, any other 500, and a bug
    says what it was (the traceback goes to ha.stderr.log), never just 500."""
    try:
        return await handler(request)
    except _Answer as e:
        return _error(e.status, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        routing = request.match_info.http_exception is not None  # no such route or method
        message = f"{e.reason}: {request.method} {request.path}" if routing else e.text
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        response = web.json_response({"error": message}, status=e.status, headers=allow)
        if e.headers.get("Connection") == "close":
            response.force_close()
        return response
    except UsageError as e:
        return _error(400, str(e))
    except RoostError as e:
        return _error(500, str(e))
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"the host agent failed: {type(e).__name__}: {e} "
                           "(the traceback is in ha.stderr.log)")


async def _expect(request: web.Request) -> None:
    """Expect: 100-continue is answered; any other expectation is ignored, as
    RFC 9110 allows (aiohttp's own answer, a text 417, is in no document)."""
    if (request.version >= (1, 1)
            and request.headers.get("Expect", "").strip().lower() == "100-continue"):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _accepting(route: Route) -> Handler:
    """The route's handler, given its input once checked."""
    async def handle(request: web.Request) -> web.StreamResponse:
        return await route.handler(request, await _input(route, request))

    return handle


async def _input(route: Route, request: web.Request) -> ApiInput | None:
    """The request's body, query or path as the route's model; InputError if
    it is not that, or brings what the route does not take."""
    where = f"{route.method} {route.path}"
    model, source = route.takes, route.takes_in if route.takes is not None else None
    if source != "query" and request.query:
        raise InputError(f"{where} takes no query parameters (got {', '.join(request.query)})")
    if source != "body" and request.body_exists and not route.raw_body:
        raise InputError(f"{where} takes no request body")
    if model is None:
        return None
    if source == "query":
        for name in request.query:
            if len(request.query.getall(name)) > 1:
                raise InputError(f"query parameter {name}: given more than once")
        return from_strings(model, request.query, "query parameter")
    if source == "path":
        return from_strings(model, request.match_info, "path parameter")
    if not request.body_exists:
        raise InputError(f"{where} takes a JSON object body with: {', '.join(field_names(model))}")
    if request.content_type != openapi.JSON:
        raise web.HTTPUnsupportedMediaType(
            text=f"send the body as {openapi.JSON} (got {request.content_type})")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        # Closed after: aiohttp would drain the body unread, decompressing it,
        # and a body that is no gzip then dropped the next request unanswered.
        raise web.HTTPUnsupportedMediaType(
            text=f"send the body uncompressed, with no Content-Encoding (got {encoding})",
            headers={"Connection": "close"})
    try:
        raw = await request.read()
    except web.RequestPayloadError as e:  # its framing broke (chunks, a short body)
        raise InputError(f"the request body could not be read: {e}") from None
    return from_json(model, raw)


class Guest(Protocol):
    """What the API asks of the guest agent session (roost.hostagent.session)."""

    async def request(self, kind: str) -> dict[str, Any]: ...

    async def start_exec(self, spec: ExecSpec) -> GuestExec: ...

    async def files(self) -> GuestAgentClient: ...


class Checkpoints(Protocol):
    """What the API asks of suspend and snapshots (roost.hostagent.checkpoint)."""

    async def suspend(self) -> dict[str, Any]: ...

    async def snapshot_create(self, tag: str) -> dict[str, Any]: ...

    async def snapshot_apply(self, tag: str) -> dict[str, Any]: ...

    async def snapshot_delete(self, tag: str) -> dict[str, Any]: ...

    async def copy_disk(self, dest: str) -> dict[str, Any]: ...


_OBJECT: dict[str, Any] = {"type": "object"}
# Named answer schemas of the OpenAPI document (the inputs' come from apimodels).
ANSWER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Status": {
        "type": "object", "description": "The host agent's status, as in its last event.",
        "required": ["running", "degraded", "exiting"],
        "properties": {
            "running": {"type": "boolean"}, "degraded": {"type": "boolean"},
            "exiting": {"type": "boolean"},
            "errors": {"type": "array", "items": {"type": "string"},
                       "description": "the newest errors, oldest first"},
            "errorsDropped": {"type": "integer", "minimum": 1,
                              "description": "older errors no longer listed"},
        },
    },
    "Mount": {
        "type": "object",
        "required": ["location", "mountPoint", "type", "writable", "ephemeral", "state"],
        "properties": {
            "location": {"type": "string"}, "mountPoint": {"type": "string"},
            "type": {"enum": list(get_args(MountType))}, "writable": {"type": "boolean"},
            "ephemeral": {"type": "boolean", "description": "added at run time"},
            "state": {"enum": ["mounted", "failed"]}, "slot": {"type": "string"},
            "error": {"type": "string"},
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class ApiServer:
    def __init__(self, info: Callable[[], dict[str, Any]],
                 status: Callable[[], dict[str, Any]], mounts: Mounts, guest: Guest,
                 checkpoints: Checkpoints) -> None:
        self._info = info
        self._status = status
        self._mounts = mounts
        self._guest = guest
        self._checkpoints = checkpoints
        self.routes = self._route_table()
        self._openapi: dict[str, Any] | None = None  # made on first request
        self.app = web.Application(middlewares=[_errors])
        for route in self.routes:
            self.app.router.add_route(route.method, route.path, _accepting(route),
                                      expect_handler=_expect)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # long answers (watches) end when it is set

    def _route_table(self) -> list[Route]:
        guest_errors = {503: "the guest agent does not answer"}
        snapshot = Reply("done; what was saved or restored", _OBJECT)
        return [
            Route("GET", "/v1/openapi.json", "This document.", self._get_openapi,
                  {200: Reply("the OpenAPI 3.1 description of this API", _OBJECT)}),
            Route("GET", "/v1/info", "The instance, its driver, requirements, forwards, "
                  "mounts and status.", self._get_info, {200: Reply("the instance", _OBJECT)}),
            Route("GET", "/v1/status", "The status, as in the last event.", self._get_status,
                  {200: Reply("the status", _ref("Status"))}),
            Route("GET", "/v1/mounts", "Static and runtime mounts.", self._get_mounts,
                  {200: Reply("the mounts", {"type": "array", "items": _ref("Mount")})}),
            Route("POST", "/v1/mounts", "Mount a host folder in the running guest.",
                  self._post_mount, {201: Reply("mounted", _ref("Mount"))}, takes=MountAdd),
            Route("DELETE", "/v1/mounts", "Unmount a runtime mount.", self._delete_mount,
                  {200: Reply("unmounted", _OBJECT)}, {404: "nothing is mounted there"},
                  takes=MountRemove, takes_in="query"),
            *(Route("GET", f"/v1/guest/{kind}", f"The guest agent's {kind}, as it answers.",
                    self._get_guest, {200: Reply(f"the guest agent's {kind}", _OBJECT)},
                    guest_errors) for kind in GUEST_REQUESTS),
            Route("POST", "/v1/suspend", "Save the VM's state to disk and stop.",
                  self._suspend, {200: Reply("suspended", _OBJECT)}),
            Route("POST", "/v1/snapshots", "Snapshot the running VM (disk and state).",
                  self._snapshot_create, {200: snapshot}, takes=SnapshotCreate),
            Route("POST", "/v1/snapshots/{tag}/apply", "Bring the VM back to a snapshot.",
                  self._snapshot_apply, {200: snapshot}, takes=SnapshotRef, takes_in="path"),
            Route("DELETE", "/v1/snapshots/{tag}", "Delete a snapshot.", self._snapshot_delete,
                  {200: snapshot}, takes=SnapshotRef, takes_in="path"),
            Route("POST", "/v1/disk/copy", "Copy the VM's disk with its snapshots (the VM "
                  "is paused for it): a fork from a snapshot starts from the copy.",
                  self._copy_disk, {200: Reply("copied", _OBJECT)}, takes=DiskCopy),
            Route("GET", "/v1/exec", "Run a command in the guest (guestAgent.allowExec) "
                  "over a WebSocket: its stdin, output, signals and exit.", self._exec,
                  {101: Reply("switching to the WebSocket; its messages are in x-websocket",
                              None)},
                  {400: "not a WebSocket upgrade (or a query or body was sent)"},
                  websocket=execws.WEBSOCKET),
            *self._file_routes(),
        ]

    def _file_routes(self) -> list[Route]:
        errors = {403: "guestAgent.allowFiles is off for this instance",
                  404: "no such file or directory in the guest",
                  503: "the guest agent does not answer"}
        entry = {"type": "object", "properties": {
            "type": {"enum": ["file", "dir", "symlink", "other"]}, "size": {"type": "integer"},
            "mode": {"type": "integer"}, "mtime": {"type": "number"},
            "uid": {"type": "integer"}, "gid": {"type": "integer"}}}
        return [
            Route("GET", "/v1/files", "A file of the guest, its bytes as they are read "
                  "(guestAgent.allowFiles).", self._file_read,
                  {200: Reply("the file; X-Roost-Mode has its permission bits", {
                      "type": "string", "format": "binary"}, "application/octet-stream")},
                  errors, takes=FileRef, takes_in="query"),
            Route("PUT", "/v1/files", "Write a file of the guest from the body; it replaces "
                  "the file at once when all of it has come.", self._file_write,
                  {200: Reply("written: path, mode, size", _OBJECT)}, errors,
                  takes=FileWrite, takes_in="query", raw_body=True),
            Route("DELETE", "/v1/files", "Remove a file or directory of the guest.",
                  self._file_remove, {200: Reply("removed", _OBJECT)}, errors,
                  takes=FileRemove, takes_in="query"),
            Route("GET", "/v1/files/stat", "What a path of the guest is.", self._file_stat,
                  {200: Reply("exists: false, or its type, size, mode, mtime, uid, gid",
                              entry)}, errors, takes=FileRef, takes_in="query"),
            Route("GET", "/v1/files/list", "A directory of the guest, sorted by name.",
                  self._file_list, {200: Reply("the entries, each with its name", {
                      "type": "array", "items": entry})}, errors,
                  takes=FileRef, takes_in="query"),
            Route("POST", "/v1/files/rename", "Rename a file or directory of the guest.",
                  self._file_rename, {200: Reply("renamed", _OBJECT)}, errors,
                  takes=FileRename),
            Route("POST", "/v1/files/dir", "Make a directory in the guest.", self._file_mkdir,
                  {200: Reply("the directories made", _OBJECT)}, errors, takes=DirCreate),
            Route("GET", "/v1/files/watch", "Changes under a path of the guest, one JSON "
                  "object a line, until the client closes.", self._file_watch,
                  {200: Reply("{\"path\", \"kind\": created|modified|deleted} lines "
                              "(and {\"dropped\": n} when the reader fell behind)",
                              {"type": "string"}, "application/x-ndjson")},
                  errors, takes=FileWatch, takes_in="query"),
        ]

    async def _files(self) -> GuestAgentClient:
        try:
            return await self._guest.files()
        except Forbidden as e:
            raise _Answer(403, str(e)) from None
        except RoostError as e:
            raise _Answer(503, str(e)) from None

    async def _file_call(self, kind: str, **params: Any) -> web.Response:
        from roost.hostagent import files

        client = await self._files()
        try:
            return web.json_response(await files.request(client, kind, **params))
        except GuestAgentError as e:
            raise _guest_refused(client, e) from None

    async def _file_stat(self, request: web.Request, q: FileRef) -> web.Response:
        return await self._file_call("stat", path=q.path)

    async def _file_list(self, request: web.Request, q: FileRef) -> web.Response:
        from roost.hostagent import files

        client = await self._files()
        try:
            answer = await files.request(client, "list", path=q.path)
        except GuestAgentError as e:
            raise _guest_refused(client, e) from None
        return web.json_response(files.checked_entries(answer.get("entries")))

    async def _file_remove(self, request: web.Request, q: FileRemove) -> web.Response:
        return await self._file_call("remove", path=q.path, recursive=q.recursive)

    async def _file_rename(self, request: web.Request, body: FileRename) -> web.Response:
        return await self._file_call("rename", **{"from": body.path, "to": body.to})

    async def _file_mkdir(self, request: web.Request, body: DirCreate) -> web.Response:
        mode = {"mode": body.mode} if body.mode >= 0 else {}
        return await self._file_call("mkdir", path=body.path, parents=body.parents, **mode)

    async def _file_read(self, request: web.Request, q: FileRef) -> web.StreamResponse:
        from roost.hostagent import files

        client = await self._files()
        try:
            opened = await files.read(client, q.path)
        except GuestAgentError as e:
            raise _guest_refused(client, e) from None
        try:
            response = web.StreamResponse(headers={
                "Content-Type": "application/octet-stream",
                "X-Roost-Mode": str(int(opened.meta["mode"])),
                "X-Roost-Size": str(int(opened.meta["size"]))})
            await response.prepare(request)
            async for data in opened.items:
                await response.write(data)
            await response.write_eof()
        except (ConnectionResetError, OSError):
            pass  # the client left
        except GuestAgentError as e:
            # The status line has gone: the client sees a body cut short.
            log.warning("reading %s from the guest failed: %s", q.path, e)
            if request.transport is not None:
                request.transport.close()
        finally:
            await opened.close()
        return response

    async def _file_write(self, request: web.Request, q: FileWrite) -> web.Response:
        from roost.hostagent import files

        client = await self._files()

        async def body() -> AsyncIterator[bytes]:
            while data := await request.content.read(protocol.DATA_CHUNK):
                yield data

        try:
            written = await files.write(client, q.path, q.mode if q.mode >= 0 else None,
                                        body())
        except GuestAgentError as e:
            raise _guest_refused(client, e) from None
        except web.RequestPayloadError as e:
            raise InputError(f"the request body could not be read: {e}") from None
        except ConnectionResetError:  # the client left: files.write reset the guest's end
            log.info("a write of %s was given up by its client", q.path)
            raise _Answer(400, "the client closed the connection") from None
        return web.json_response(written)

    async def _file_watch(self, request: web.Request, q: FileWatch) -> web.StreamResponse:
        import json

        from roost.hostagent import files

        client = await self._files()
        try:
            opened = await files.watch(client, q.path, q.recursive)
        except GuestAgentError as e:
            raise _guest_refused(client, e) from None
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})

        async def forward() -> None:
            await response.prepare(request)
            async for change in opened.items:
                await response.write(json.dumps(change).encode() + b"\n")

        # Ends when the client leaves or the host agent closes, though nothing
        # changes: aiohttp does not cancel a handler whose client has gone.
        task = asyncio.ensure_future(forward())
        try:
            while not task.done():
                transport = request.transport
                if transport is None or transport.is_closing() or self._closing.is_set():
                    break
                await asyncio.wait([task], timeout=WATCH_POLL)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError, OSError):
                await task
            await opened.close()
        return response

    async def _get_openapi(self, request: web.Request, _: None) -> web.Response:
        if self._openapi is None:
            self._openapi = openapi.document(self.routes, __version__, ANSWER_SCHEMAS)
        return web.json_response(self._openapi)

    async def _suspend(self, request: web.Request, _: None) -> web.Response:
        return web.json_response(await self._checkpoints.suspend())

    async def _snapshot_create(self, request: web.Request, body: SnapshotCreate
                               ) -> web.Response:
        return web.json_response(await self._checkpoints.snapshot_create(body.tag))

    async def _snapshot_apply(self, request: web.Request, ref: SnapshotRef) -> web.Response:
        return web.json_response(await self._checkpoints.snapshot_apply(ref.tag))

    async def _snapshot_delete(self, request: web.Request, ref: SnapshotRef) -> web.Response:
        return web.json_response(await self._checkpoints.snapshot_delete(ref.tag))

    async def _copy_disk(self, request: web.Request, body: DiskCopy) -> web.Response:
        return web.json_response(await self._checkpoints.copy_disk(body.path))

    async def _get_guest(self, request: web.Request, _: None) -> web.Response:
        """/v1/guest/{status,health,probes,diff}: the guest agent's answer as it is."""
        kind = request.path.rsplit("/", 1)[-1]
        try:
            return web.json_response(await self._guest.request(kind))
        except UsageError as e:
            return _error(400, str(e))
        except RoostError as e:
            return _error(503, str(e))

    async def _exec(self, request: web.Request, _: None) -> web.StreamResponse:
        """A WebSocket: the command's stdin, output, signals and exit (execws)."""
        return await execws.serve(request, self._guest.start_exec)

    async def _get_mounts(self, request: web.Request, _: None) -> web.Response:
        return web.json_response(self._mounts.listing())

    async def _post_mount(self, request: web.Request, body: MountAdd) -> web.Response:
        rec = await self._mounts.add(body.location, body.mount_point, body.type, body.writable)
        return web.json_response(rec, status=201)

    async def _delete_mount(self, request: web.Request, query: MountRemove) -> web.Response:
        try:
            return web.json_response(await self._mounts.remove(query.mount_point,
                                                              force=query.force))
        except UsageError as e:
            return _error(404 if "nothing is mounted" in str(e) else 400, str(e))

    async def _get_info(self, request: web.Request, _: None) -> web.Response:
        return web.json_response(self._info())

    async def _get_status(self, request: web.Request, _: None) -> web.Response:
        return web.json_response(self._status())

    async def serving(self) -> tuple[web.Server, Callable[[], Awaitable[None]]]:
        """aiohttp's server for connections accepted elsewhere (apisocket.py),
        and what closes it."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        assert self._runner.server is not None
        return self._runner.server, self._cleanup

    async def _cleanup(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def start(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        # Create the socket with mode 0600 from the start, not chmod after.
        old = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(path)).start()
        finally:
            os.umask(old)

    async def close(self, path: Path) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        path.unlink(missing_ok=True)
