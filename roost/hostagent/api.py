"""The host agent's HTTP API on ha.sock (mode 0600)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web


class ApiServer:
    def __init__(self, info: Callable[[], dict[str, Any]],
                 status: Callable[[], dict[str, Any]]) -> None:
        self._info = info
        self._status = status
        self.app = web.Application()
        self.app.router.add_get("/v1/info", self._get_info)
        self.app.router.add_get("/v1/status", self._get_status)
        self._runner: web.AppRunner | None = None

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
