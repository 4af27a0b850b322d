"""A small HTTP client for the host agent's Unix socket (stdlib: starts fast)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from roost.errors import HostAgentUnreachable, RequestFailed, RequestRefused


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def request(sock: Path, method: str, path: str, body: Any = None,
            timeout: float = 10.0) -> Any:
    """The decoded JSON answer; for an HTTP error, RequestRefused (400, 404:
    the request was wrong) or RequestFailed, with its message."""
    conn = _UnixConnection(sock, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        raise HostAgentUnreachable(f"cannot reach the host agent at {sock}: {e}") from None
    finally:
        conn.close()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        decoded = data.decode(errors="replace")
    if resp.status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else decoded
        if resp.status in (400, 404):
            raise RequestRefused(str(message), resp.status)
        raise RequestFailed(str(message), resp.status)
    return decoded
