"""The host agent's API socket (ha.sock), served from its first connection.

The HTTP stack (aiohttp, and the API's routes and models: about 16 MB of a
host agent's 56) is loaded when the first client connects, not at start: an
instance nobody asks anything of keeps the memory. The socket itself is
bound at start (mode 0600 from the start), so a client never finds it
missing; the first request waits for the import (a few tenths of a second).
Connections are accepted here and handed to aiohttp's server one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("roost.hostagent")

# An asyncio protocol factory (aiohttp's web.Server) and what closes it.
Serving = tuple[Callable[[], asyncio.Protocol], Callable[[], Awaitable[None]]]


class LazyApiSocket:
    def __init__(self, serve: Callable[[], Awaitable[Serving]]) -> None:
        self._serve = serve
        self._serving: Serving | None = None
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._serving is not None

    async def start(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # 0600 from the start, not chmod after
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            try:
                if self._serving is None:
                    self._serving = await self._serve()
                factory: Any = self._serving[0]
                await loop.connect_accepted_socket(factory, conn)
            except Exception:  # this client is lost; the socket goes on serving
                log.exception("the API could not serve a connection")
                conn.close()

    async def close(self, path: Path) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(BaseException):
                await self._accepting
        if self._sock is not None:
            self._sock.close()
        if self._serving is not None:
            await self._serving[1]()
        path.unlink(missing_ok=True)
