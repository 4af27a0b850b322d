"""HTTP clients of one Unix socket (as ha.sock is reached): a requests
Session, for tools that speak requests (schemathesis), and an http.client
connection, which sends a request target exactly as given."""

from __future__ import annotations

import http.client
import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool


def _connected(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


class _UnixConnection(HTTPConnection):
    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__("localhost", **kw)
        self._path = path

    def connect(self) -> None:
        self.sock = _connected(self._path, self.timeout)


class _UnixPool(HTTPConnectionPool):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout, maxsize=4)
        self._path = path

    def _new_conn(self) -> HTTPConnection:
        return _UnixConnection(self._path, timeout=self.timeout.connect_timeout)


class _UnixAdapter(HTTPAdapter):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._pool = _UnixPool(path, timeout)

    def get_connection_with_tls_context(self, *args: Any, **kw: Any) -> HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def unix_session(path: str, timeout: float = 30.0) -> requests.Session:
    """A Session that sends http:// requests, whatever their host, to `path`."""
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment (read at each request)
    session.mount("http://", _UnixAdapter(path, timeout))
    return session


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client's connection, to the socket at `path`."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _connected(self._path, self.timeout)
