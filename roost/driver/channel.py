"""Byte streams to the guest agent, behind one interface.

* virtio-serial: QEMU exposes the port as a Unix socket (`ga.sock`);
* hybrid vsock (Firecracker, Cloud Hypervisor): a Unix socket on which the
  host first writes ``CONNECT <port>\\n`` and reads ``OK <port>\\n``;
* kernel vsock (vhost-vsock): AF_VSOCK to (guest CID, port).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from roost_guest import protocol

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_LIMIT = 4 * protocol.MAX_FRAME


class Dialer(Protocol):
    def describe(self) -> str: ...

    async def dial(self) -> Stream: ...


class UnixDialer:
    def __init__(self, path: str, kind: str = "unix") -> None:
        self.path = path
        self.kind = kind

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"

    async def dial(self) -> Stream:
        return await asyncio.open_unix_connection(self.path, limit=_LIMIT)


class HybridVsockDialer:
    def __init__(self, path: str, port: int = protocol.VSOCK_PORT, timeout: float = 5.0) -> None:
        self.path = path
        self.port = port
        self.timeout = timeout

    def describe(self) -> str:
        return f"hybrid-vsock:{self.path}:{self.port}"

    async def dial(self) -> Stream:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=_LIMIT)
        try:
            writer.write(protocol.vsock_connect_line(self.port))
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            protocol.parse_vsock_ok(line)
        except BaseException:
            writer.close()
            raise
        return reader, writer


class VsockDialer:
    def __init__(self, cid: int, port: int = protocol.VSOCK_PORT) -> None:
        self.cid = cid
        self.port = port

    def describe(self) -> str:
        return f"vsock:{self.cid}:{self.port}"

    async def dial(self) -> Stream:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (self.cid, self.port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=_LIMIT)
