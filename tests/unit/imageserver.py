"""A real HTTP server on 127.0.0.1 for the image download tests: Range and
If-Range like a mirror, and faults on demand (cut connections, stalls,
errors), with a record of every request and of the bytes it sent."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEND_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Served:
    path: str
    range: str | None
    status: int


@dataclass
class Faults:
    range_support: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes ...
    cuts: int = 0  # ... for this many responses
    status_after_cuts: int | None = None  # then answer every request with this status
    stall_after: int | None = None  # send this many body bytes, then go silent
    stall_seconds: float = 0.0
    chunk_delay: float = 0.0  # seconds between chunks: a slow mirror


@dataclass
class ImageServer:
    files: dict[str, bytes] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    served: list[Served] = field(default_factory=list)
    bytes_sent: int = 0
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def gets(self, path: str) -> list[Served]:
        return [s for s in self.served if s.path == "/" + path.lstrip("/")]

    def _record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def _sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _take_cut(self) -> int | None:
        with self._lock:
            if self.faults.cut_after is None:
                return None
            if self.faults.cuts > 0:
                self.faults.cuts -= 1
                return self.faults.cut_after
            return None

    def _status_override(self) -> int | None:
        with self._lock:
            return self.faults.status_after_cuts if self.faults.cuts == 0 else None


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = server.files.get(self.path)
            range_header = self.headers.get("Range")
            override = server._status_override()
            if body is None or override is not None:
                status = 404 if body is None else override or 500
                server._record(Served(self.path, range_header, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if_range = self.headers.get("If-Range")
            if (match and server.faults.range_support
                    and (if_range is None or if_range == etag)):
                start = int(match.group(1))
                if start >= len(body):
                    server._record(Served(self.path, range_header, 416))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                status = 206
            else:
                self.send_response(200)
                status = 200
            server._record(Served(self.path, range_header, status))
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self._send(body[start:])

        def _send(self, data: bytes) -> None:
            limit = server._take_cut()
            end = len(data) if limit is None else min(limit, len(data))
            faults = server.faults
            stall_at, sent = faults.stall_after, 0
            while sent < end:
                if sent == stall_at:
                    time.sleep(faults.stall_seconds)
                    stall_at = None
                n = min(SEND_CHUNK, end - sent)
                if stall_at is not None and sent < stall_at:
                    n = min(n, stall_at - sent)
                try:
                    self.wfile.write(data[sent:sent + n])
                except OSError:
                    return
                sent += n
                server._sent(n)
                if faults.chunk_delay:
                    time.sleep(faults.chunk_delay)
            if sent < len(data):  # cut off: the client sees the connection close early
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

    return Handler


@contextmanager
def serving(files: dict[str, bytes] | None = None) -> Iterator[ImageServer]:
    server = ImageServer(files={"/" + k.lstrip("/"): v for k, v in (files or {}).items()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def sha256(data: bytes) -> str:
    """A digest as roost.yaml spells it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
