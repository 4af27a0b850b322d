"""A stand-in for QEMU's virtio-serial port, for the real guest agent on the host.

The guest side is a pty: the guest agent opens its slave as the port device
(`--port`). The host side is a Unix socket, as QEMU's chardev (ga.sock) is,
joined to one host connection at a time. Like the real port it outlives the
guest agent process (the pty stays open here), so a guest agent killed and
started again finds the host still connected and the bytes either side
wrote meanwhile still there, which is what a restart inside a VM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import tty


class VirtioPort:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.device = ""
        self._master = self._slave = -1
        self._server: asyncio.Server | None = None
        self._host: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # a byte pipe: no echo, no line editing, no signals
        self.device = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self._server = await asyncio.start_unix_server(self._serve_host, self.socket_path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._host is not None:
            self._host.close()
        if self._tasks:  # each ends at the EOF of its closed connection
            await asyncio.wait(self._tasks, timeout=5)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _serve_host(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if self._host is not None:  # a new host connection replaces the old one
            self._host.close()
        self._host = writer
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._to_host, writer)
        try:
            while data := await reader.read(65536):
                await self._to_guest(data)
        except OSError:
            pass
        finally:
            if self._host is writer:
                loop.remove_reader(self._master)
                self._host = None
            writer.close()

    def _to_host(self, writer: asyncio.StreamWriter) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, OSError):
            return
        writer.write(data)

    async def _to_guest(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:  # the guest's input buffer is full
                await asyncio.sleep(0.002)
                continue
            view = view[n:]
