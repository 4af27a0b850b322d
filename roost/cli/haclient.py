"""A small HTTP client for the host agent's Unix socket (stdlib: starts fast)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roost.errors import RoostError, UsageError


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
    conn = _UnixConnection(sock, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        raise RoostError(f"cannot reach the host agent at {sock}: {e}") from None
    finally:
        conn.close()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        decoded = data.decode(errors="replace")
    if resp.status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else decoded
        if resp.status in (400, 404):  # the request was wrong, not roost
            raise UsageError(str(message))
        raise RoostError(str(message))
    return decoded


def stream_lines(sock: Path, method: str, path: str, body: Any = None,
                 timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """A request whose answer is JSON lines, yielded as they arrive."""
    conn = _UnixConnection(sock, timeout if timeout is not None else 10.0)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload,
                     headers={"Content-Type": "application/json"} if payload else {})
        resp = conn.getresponse()
        if resp.status >= 400:
            data = resp.read()
            try:
                message = json.loads(data).get("error", data.decode(errors="replace"))
            except (ValueError, AttributeError):
                message = data.decode(errors="replace")
            if resp.status in (400, 403, 404):
                raise UsageError(str(message))
            raise RoostError(str(message))
        if conn.sock is not None:
            conn.sock.settimeout(timeout)  # output may pause for long
        for line in resp:
            if line.strip():
                yield json.loads(line)
    except OSError as e:
        raise RoostError(f"cannot reach the host agent at {sock}: {e}") from None
    finally:
        conn.close()
