"""The SDK's connection to one instance's host agent: HTTP and WebSockets
on its Unix socket (ha.sock), through aiohttp, with the host agent's error
answers raised as roost's typed errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from roost.errors import HostAgentUnreachable, RequestFailed, RequestRefused

BASE = "http://roost"


def raise_for(status: int, body: bytes) -> None:
    """The host agent's error answer (JSON {"error"}) as a typed error."""
    try:
        message = str(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:2000]
    if status in (400, 404):
        raise RequestRefused(message, status)
    raise RequestFailed(message, status)


class HostAgentTransport:
    """One aiohttp session on ha.sock, opened on first use."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=str(self.sock))
            self._session = aiohttp.ClientSession(
                connector=connector, base_url=BASE,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def json(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, timeout: float = 120.0) -> Any:
        try:
            async with self.session().request(
                    method, path, params=params, json=body,
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    raise_for(resp.status, data)
                return json.loads(data) if data else None
        except aiohttp.ClientConnectionError as e:
            raise HostAgentUnreachable(f"cannot reach the host agent at {self.sock}: {e}"
                                       ) from None

    async def open(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   data: Any = None) -> aiohttp.ClientResponse:
        """A response whose body the caller reads (and releases)."""
        try:
            resp = await self.session().request(method, path, params=params, data=data)
        except aiohttp.ClientConnectionError as e:
            raise HostAgentUnreachable(f"cannot reach the host agent at {self.sock}: {e}"
                                       ) from None
        if resp.status >= 400:
            body = await resp.read()
            resp.release()
            raise_for(resp.status, body)
        return resp

    async def websocket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.session().ws_connect(path, max_msg_size=0, heartbeat=None)
        except aiohttp.WSServerHandshakeError as e:
            if e.status in (400, 404):
                raise RequestRefused(e.message, e.status) from None
            raise RequestFailed(e.message, e.status) from None
        except aiohttp.ClientConnectionError as e:
            raise HostAgentUnreachable(f"cannot reach the host agent at {self.sock}: {e}"
                                       ) from None
