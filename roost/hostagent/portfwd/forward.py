"""Forwarders: a host socket whose traffic goes through guest agent tunnels.

Each forwarder binds on start() (raising OSError when it cannot) and opens
one tunnel stream per host connection (TCP, Unix) or per host peer (UDP).
`opener` gives the current guest agent session, so a forwarder outlives a
reconnect of the host agent to the guest agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError, TunnelStream

log = logging.getLogger(__name__)

Opener = Callable[[], Awaitable[GuestAgentClient]]
UDP_IDLE_SECONDS = 60.0
# `ssh -O forward|cancel` is a request to the local master: it answers in
# milliseconds unless it is stuck.
SSH_CONTROL_SECONDS = 10.0
SSH_BATCH = 100  # forwards per `ssh -O forward|cancel`


class Forward:
    """The interface of every forwarder."""

    description = ""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class _StreamServer(Forward):
    """Accepts local connections and splices each into a new tunnel."""

    def __init__(self, opener: Opener) -> None:
        self.opener = opener
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def _open(self) -> TunnelStream:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            try:
                stream = await self._open()
            except (GuestAgentError, OSError) as e:
                log.info("%s: %s", self.description, e)
                return
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await stream.splice(reader, writer)
        finally:
            self._conns.discard(task)
            # Also when stop() cancels us before the splice: nothing else closes it.
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)


def _dual_stack_listener(port: int) -> socket.socket:
    """A TCP socket on [::]:port that also accepts IPv4 (as ::ffff:a.b.c.d)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(100)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class TCPForward(_StreamServer):
    def __init__(self, opener: Opener, host_ip: str, host_port: int,
                 guest_host: str, guest_port: int) -> None:
        super().__init__(opener)
        self.host_ip, self.host_port = host_ip, host_port
        self.guest_host, self.guest_port = guest_host, guest_port
        self.description = f"tcp {host_ip}:{host_port} -> guest {guest_host}:{guest_port}"

    async def start(self) -> None:
        if ipaddress.ip_address(self.host_ip) == ipaddress.IPv6Address("::"):
            # As Lima's: "::" takes IPv4 too. asyncio would make it IPv6-only.
            self._server = await asyncio.start_server(
                self._handle, sock=_dual_stack_listener(self.host_port), limit=1 << 18)
            return
        self._server = await asyncio.start_server(
            self._handle, self.host_ip, self.host_port, reuse_address=True, limit=1 << 18)

    async def _open(self) -> TunnelStream:
        client = await self.opener()
        return await client.open_stream("tcp", host=self.guest_host, port=self.guest_port,
                                        optimistic=True)


class UnixForward(_StreamServer):
    """A host Unix socket to a guest Unix socket (e.g. docker.sock), or to a
    guest TCP port (`guest_tcp`: host and port, Lima's guestPort with hostSocket)."""

    def __init__(self, opener: Opener, host_path: str, guest_path: str = "",
                 guest_tcp: tuple[str, int] | None = None) -> None:
        super().__init__(opener)
        self.host_path, self.guest_path, self.guest_tcp = host_path, guest_path, guest_tcp
        target = guest_path if guest_tcp is None else f"{guest_tcp[0]}:{guest_tcp[1]}"
        self.description = f"unix {host_path} -> guest {target}"

    async def start(self) -> None:
        path = Path(self.host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, self.host_path)
        os.chmod(self.host_path, 0o600)

    async def _open(self) -> TunnelStream:
        client = await self.opener()
        if self.guest_tcp is not None:
            return await client.open_stream("tcp", host=self.guest_tcp[0],
                                            port=self.guest_tcp[1], optimistic=True)
        return await client.open_stream("unix", path=self.guest_path, optimistic=True)

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.host_path)


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UDPForward) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._received(data, addr)


class UDPForward(Forward):
    """One tunnel per host peer, closed after UDP_IDLE_SECONDS of silence."""

    def __init__(self, opener: Opener, host_ip: str, host_port: int,
                 guest_host: str, guest_port: int) -> None:
        self.opener = opener
        self.host_ip, self.host_port = host_ip, host_port
        self.guest_host, self.guest_port = guest_host, guest_port
        self.description = f"udp {host_ip}:{host_port} -> guest {guest_host}:{guest_port}"
        self._transport: asyncio.DatagramTransport | None = None
        self._peers: dict[tuple[str, int], asyncio.Queue[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPProtocol(self), local_addr=(self.host_ip, self.host_port))

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        queue = self._peers.get(addr)
        if queue is None:
            queue = asyncio.Queue(maxsize=256)  # beyond that, drop: it is UDP
            self._peers[addr] = queue
            task = asyncio.ensure_future(self._peer(addr, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(data)

    async def _peer(self, addr: tuple[str, int], queue: asyncio.Queue[bytes]) -> None:
        stream: TunnelStream | None = None
        try:
            client = await self.opener()
            stream = await client.open_stream("udp", host=self.guest_host, port=self.guest_port)

            async def to_guest() -> None:
                assert stream is not None
                while True:
                    data = await asyncio.wait_for(queue.get(), UDP_IDLE_SECONDS)
                    await stream.send(data)

            async def to_host() -> None:
                assert stream is not None
                while (data := await stream.recv()) is not None:
                    if self._transport is not None:
                        self._transport.sendto(data, addr)
                    await stream.ack(len(data))

            up, down = asyncio.ensure_future(to_guest()), asyncio.ensure_future(to_host())
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
                down.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        except (GuestAgentError, OSError) as e:
            log.info("%s: peer %s: %s", self.description, addr, e)
        finally:
            self._peers.pop(addr, None)
            if stream is not None:
                await stream.reset("idle")

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SSHForward(Forward):
    """TCP through the SSH ControlMaster (`ssh -O forward -L`): the fallback
    while the guest agent cannot be reached."""

    def __init__(self, ssh_base: list[str], host_ip: str, host_port: int,
                 guest_host: str, guest_port: int, host_socket: str | None = None) -> None:
        self.ssh_base = ssh_base  # ssh -F ssh.config ... (no host, no command)
        self.spec = f"{host_ip}:{host_port}:{guest_host}:{guest_port}"
        if ":" in host_ip:
            self.spec = f"[{host_ip}]:{host_port}:{guest_host}:{guest_port}"
        if host_socket is not None:  # made 0600 (ssh's StreamLocalBindMask)
            self.spec = f"{host_socket}:{guest_host}:{guest_port}"
        self.description = f"ssh -L {self.spec}"

    async def start(self) -> None:
        await _ssh_control(self.ssh_base, "forward", [self.spec])

    async def stop(self) -> None:
        await _ssh_control(self.ssh_base, "cancel", [self.spec])


class SSHMasterStuck(OSError):
    """The SSH master did not answer a control request in time."""


async def _ssh_control(ssh_base: list[str], op: str, specs: list[str]) -> None:
    """`ssh -O op -L spec ...`: the master answers at once, or it is stuck (a
    guest that froze mid-connection): then the request is given up, never
    waited on."""
    what = f"ssh -O {op} -L {specs[0]}" + (f" (and {len(specs) - 1} more)" if specs[1:] else "")
    proc = await asyncio.create_subprocess_exec(
        *ssh_base[:-1], "-O", op, *[arg for spec in specs for arg in ("-L", spec)],
        ssh_base[-1], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), SSH_CONTROL_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise SSHMasterStuck(f"{what}: the SSH master did not answer "
                             f"in {SSH_CONTROL_SECONDS:g}s") from None
    if proc.returncode != 0:
        raise OSError(f"{what}: {err.decode(errors='replace').strip()}")


async def start_ssh_forwards(forwards: list[SSHForward]) -> dict[SSHForward, OSError]:
    """Start many SSH forwards, SSH_BATCH to one `ssh -O forward` (a guest
    with two thousand listeners would otherwise take two thousand ssh
    processes, a minute of a loaded host): the forwards that failed, and why.
    A batch that fails is tried again one by one; the master answers a
    forward it already has with success, so each failure is its own."""
    failed: dict[SSHForward, OSError] = {}
    for i in range(0, len(forwards), SSH_BATCH):
        batch = forwards[i : i + SSH_BATCH]
        try:
            await _ssh_control(batch[0].ssh_base, "forward", [f.spec for f in batch])
            continue
        except OSError as e:
            if len(batch) == 1 or isinstance(e, SSHMasterStuck):
                failed.update((f, e) for f in batch)  # a stuck master: no one-by-one
                continue
        for fwd in batch:
            try:
                await fwd.start()
            except OSError as e:
                failed[fwd] = e
    return failed


async def stop_ssh_forwards(forwards: list[SSHForward]) -> None:
    """Cancel many SSH forwards, SSH_BATCH to one `ssh -O cancel`; a failure
    is logged (the master goes on with the batch's other cancels)."""
    for i in range(0, len(forwards), SSH_BATCH):
        batch = forwards[i : i + SSH_BATCH]
        try:
            await _ssh_control(batch[0].ssh_base, "cancel", [f.spec for f in batch])
        except OSError as e:
            log.warning("%s", e)
