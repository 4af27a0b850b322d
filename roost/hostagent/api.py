"""The host agent's HTTP API on ha.sock (mode 0600)."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from roost.errors import RoostError, UsageError
from roost.hostagent import execws
from roost.hostagent.execstream import ExecSpec, GuestExec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Mounts(Protocol):
    def listing(self) -> list[dict[str, Any]]: ...

    async def add(self, location: str, mount_point: str, kind: str,
                  writable: bool) -> dict[str, Any]: ...

    async def remove(self, mount_point: str) -> dict[str, Any]: ...


log = logging.getLogger(__name__)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """roost's errors as JSON: a usage error is 400, any other 500, and a bug
    says what it was (the traceback goes to ha.stderr.log), never just 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except UsageError as e:
        return _error(400, str(e))
    except RoostError as e:
        return _error(500, str(e))
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"the host agent failed: {type(e).__name__}: {e} "
                           "(the traceback is in ha.stderr.log)")


class Guest(Protocol):
    """What the API asks of the guest agent session (roost.hostagent.session)."""

    async def request(self, kind: str) -> dict[str, Any]: ...

    async def start_exec(self, spec: ExecSpec) -> GuestExec: ...


class Checkpoints(Protocol):
    """What the API asks of suspend and snapshots (roost.hostagent.checkpoint)."""

    async def suspend(self) -> dict[str, Any]: ...

    async def snapshot_create(self, tag: str) -> dict[str, Any]: ...

    async def snapshot_apply(self, tag: str) -> dict[str, Any]: ...

    async def snapshot_delete(self, tag: str) -> dict[str, Any]: ...


class ApiServer:
    def __init__(self, info: Callable[[], dict[str, Any]],
                 status: Callable[[], dict[str, Any]], mounts: Mounts, guest: Guest,
                 checkpoints: Checkpoints) -> None:
        self._info = info
        self._status = status
        self._mounts = mounts
        self._guest = guest
        self._checkpoints = checkpoints
        self.app = web.Application(middlewares=[_errors])
        self.app.router.add_get("/v1/info", self._get_info)
        self.app.router.add_get("/v1/status", self._get_status)
        self.app.router.add_get("/v1/mounts", self._get_mounts)
        self.app.router.add_post("/v1/mounts", self._post_mount)
        self.app.router.add_delete("/v1/mounts", self._delete_mount)
        for kind in ("status", "health", "probes", "diff"):
            self.app.router.add_get(f"/v1/guest/{kind}", self._get_guest)
        self.app.router.add_post("/v1/suspend", self._suspend)
        self.app.router.add_post("/v1/snapshots", self._snapshot)
        self.app.router.add_post("/v1/snapshots/{tag}/apply", self._snapshot)
        self.app.router.add_delete("/v1/snapshots/{tag}", self._snapshot)
        self.app.router.add_get("/v1/exec", self._exec)
        self._runner: web.AppRunner | None = None

    async def _suspend(self, request: web.Request) -> web.Response:
        return web.json_response(await self._checkpoints.suspend())

    async def _snapshot(self, request: web.Request) -> web.Response:
        try:
            if request.method == "DELETE":
                result = await self._checkpoints.snapshot_delete(request.match_info["tag"])
            elif "tag" in request.match_info:
                result = await self._checkpoints.snapshot_apply(request.match_info["tag"])
            else:
                body = await request.json()
                result = await self._checkpoints.snapshot_create(str(body["tag"]))
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected JSON with tag")
        return web.json_response(result)

    async def _get_guest(self, request: web.Request) -> web.Response:
        """/v1/guest/{status,health,probes,diff}: the guest agent's answer as it is."""
        kind = request.path.rsplit("/", 1)[-1]
        try:
            return web.json_response(await self._guest.request(kind))
        except UsageError as e:
            return _error(400, str(e))
        except RoostError as e:
            return _error(503, str(e))

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket: the command's stdin, output, signals and exit (execws)."""
        return await execws.serve(request, self._guest.start_exec)

    async def _get_mounts(self, request: web.Request) -> web.Response:
        return web.json_response(self._mounts.listing())

    async def _post_mount(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            location, mount_point = str(body["location"]), str(body["mountPoint"])
            kind, writable = str(body.get("type", "")), bool(body.get("writable", False))
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected JSON with location, mountPoint, type, writable")
        return web.json_response(await self._mounts.add(location, mount_point, kind, writable),
                                 status=201)

    async def _delete_mount(self, request: web.Request) -> web.Response:
        mount_point = request.query.get("mountPoint", "")
        try:
            return web.json_response(await self._mounts.remove(mount_point))
        except UsageError as e:
            return _error(404 if "nothing is mounted" in str(e) else 400, str(e))

    async def _get_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._info())

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status())

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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        path.unlink(missing_ok=True)
