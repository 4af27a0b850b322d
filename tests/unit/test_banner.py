"""The SSH banner probe against small local servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from roost.hostagent.banner import BannerError, probe_banner, wait_for_banner

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(r, w)
        finally:
            w.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def sends(*chunks: bytes, then_wait: float = 0.0) -> Handler:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            w.write(chunk)
            await w.drain()
        if then_wait:
            await asyncio.sleep(then_wait)

    return handler


async def probe(handler: Handler, **kw: float) -> str:
    async with FakeServer(handler) as port:
        banner = await probe_banner("127.0.0.1", port, **kw)  # type: ignore[arg-type]
        return banner.identification


async def test_openssh_banner() -> None:
    assert await probe(sends(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) == (
        "SSH-2.0-OpenSSH_9.2p1 Debian-2"
    )


async def test_ssh_1_99_is_accepted() -> None:
    assert await probe(sends(b"SSH-1.99-legacy\r\n")) == "SSH-1.99-legacy"


async def test_banner_split_across_writes() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for part in (b"SS", b"H-2.0-drop", b"bear\r", b"\n"):
            w.write(part)
            await w.drain()
            await asyncio.sleep(0.01)

    assert await probe(handler) == "SSH-2.0-dropbear"


async def test_preamble_lines_are_skipped() -> None:
    async with FakeServer(sends(b"Welcome\r\n", b"no SSH here\n", b"SSH-2.0-x\r\n")) as port:
        banner = await probe_banner("127.0.0.1", port)
    assert banner.identification == "SSH-2.0-x"
    assert banner.preamble == ("Welcome", "no SSH here")


async def test_accept_then_close_is_retryable() -> None:
    with pytest.raises(BannerError, match="closed before") as e:
        await probe(sends())
    assert e.value.retryable


async def test_wrong_version_is_permanent() -> None:
    with pytest.raises(BannerError, match="unsupported SSH protocol version") as e:
        await probe(sends(b"SSH-1.5-ancient\r\n"))
    assert not e.value.retryable


async def test_non_ssh_service_is_permanent() -> None:
    http = b"HTTP/1.1 400 Bad Request\r\n" * 40
    with pytest.raises(BannerError, match="is this an SSH server") as e:
        await probe(sends(http), max_preamble=5)
    assert not e.value.retryable


async def test_overlong_line_is_refused() -> None:
    with pytest.raises(BannerError, match="longer than"):
        await probe(sends(b"x" * 5000 + b"\n"))


async def test_hung_read_hits_the_per_read_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(BannerError, match=r"no data within 0\.2s") as e:
        await probe(sends(b"hello\r\n", then_wait=5), read_timeout=0.2)
    assert time.monotonic() - start < 1.5
    assert e.value.retryable


async def test_cancellation_during_read_stops_at_once() -> None:
    async with FakeServer(sends(then_wait=10)) as port:
        task = asyncio.ensure_future(probe_banner("127.0.0.1", port, read_timeout=30))
        await asyncio.sleep(0.2)
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - start < 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused() -> None:
    with pytest.raises(BannerError, match=r"connect to 127\.0\.0\.1") as e:
        await probe_banner("127.0.0.1", free_port())
    assert e.value.retryable


async def test_wait_retries_refused_until_server_appears() -> None:
    port = free_port()

    async def late_server() -> asyncio.Server:
        await asyncio.sleep(0.3)
        return await asyncio.start_server(
            sends(b"SSH-2.0-late\r\n"), "127.0.0.1", port)

    server_task = asyncio.ensure_future(late_server())
    start = time.monotonic()
    banner = await wait_for_banner("127.0.0.1", port, timeout=5)
    elapsed = time.monotonic() - start
    (await server_task).close()
    assert banner.identification == "SSH-2.0-late"
    # Retries are short: ready well within 100 ms of the server answering.
    assert elapsed < 0.3 + 0.1


async def test_wait_is_not_held_up_by_a_silent_connection() -> None:
    # The first connection is parked (as slirp does before the guest NIC is
    # up); later ones get the banner. The staggered attempt wins.
    seen = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            await asyncio.sleep(10)
            return
        w.write(b"SSH-2.0-second\r\n")
        await w.drain()

    async with FakeServer(handler) as port:
        start = time.monotonic()
        banner = await wait_for_banner("127.0.0.1", port, timeout=5, stagger=0.1,
                                       read_timeout=10)
        assert banner.identification == "SSH-2.0-second"
        assert time.monotonic() - start < 1.0


async def test_wait_gives_up_at_timeout_naming_the_last_error() -> None:
    with pytest.raises(BannerError, match=r"within 0.3s \(last attempt: connect"):
        await wait_for_banner("127.0.0.1", free_port(), timeout=0.3)


async def test_wait_stops_on_a_permanent_error() -> None:
    start = time.monotonic()
    with pytest.raises(BannerError, match="unsupported"):
        async with FakeServer(sends(b"SSH-1.0-x\r\n")) as port:
            await wait_for_banner("127.0.0.1", port, timeout=5)
    assert time.monotonic() - start < 1.0


async def test_wait_outlasts_many_parked_connections() -> None:
    # Like slirp before the guest NIC is up: every connection for a while is
    # accepted and then parked forever. Readiness must follow the first
    # answering connection closely, not wait out read timeouts.
    answer_from = time.monotonic() + 1.0
    parked: list[asyncio.Event] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if time.monotonic() < answer_from:
            ev = asyncio.Event()
            parked.append(ev)
            await asyncio.wait_for(ev.wait(), 30)
            return
        w.write(b"SSH-2.0-finally\r\n")
        await w.drain()

    async with FakeServer(handler) as port:
        banner = await wait_for_banner("127.0.0.1", port, timeout=10, stagger=0.05,
                                       max_in_flight=4, read_timeout=5)
        late = time.monotonic() - answer_from
    assert banner.identification == "SSH-2.0-finally"
    assert late < 0.1 + 0.05, late
    assert len(parked) > 4  # the cap dropped old attempts rather than waiting
