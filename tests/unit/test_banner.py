"""The SSH banner probe against small local servers that misbehave on purpose,
a stand-in for slirp in front of a booting guest, and a real OpenSSH sshd."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from roost.hostagent.banner import BannerError, ProbePolicy, probe_banner, wait_for_banner

from .banner_servers import Conn, CountingServer, SlirpModel, SshdDir, answers_after

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
    assert e.value.retryable and e.value.answered and not e.value.throttled


async def test_openssh_throttling_is_recognised() -> None:
    with pytest.raises(BannerError, match="Exceeded MaxStartups") as e:
        await probe(sends(b"Exceeded MaxStartups\r\n"))
    assert e.value.retryable and e.value.throttled


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
    assert e.value.retryable and e.value.answered  # it did say hello


async def test_silence_is_not_an_answer() -> None:
    with pytest.raises(BannerError, match=r"no data within 0\.2s") as e:
        await probe(sends(then_wait=5), read_timeout=0.2)
    assert e.value.retryable and not e.value.answered


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
    assert e.value.retryable and e.value.refused and not e.value.answered


# -- wait_for_banner: bounds and latency, counted server-side ------------------

# sshd must be seen within 100 ms of being able to answer; plus scheduling slack.
LATENCY = 0.15
# The default policy with its boot-time spans scaled down tenfold (slirp's
# re-send becomes 0.6 s in SlirpModel), so the tests take seconds.
FAST = ProbePolicy(parked_patience=1.0, first_spacing=0.1, max_spacing=0.4,
                   answered_spacing=1.0, throttled_backoff=0.5)


async def answers_now(conn: Conn) -> None:
    await conn.send_banner()
    await conn.client_closes(within=30)


async def closes_until(ready: float, conn: Conn) -> None:
    """A guest whose NIC is up: EOF at once until sshd listens at `ready`."""
    if time.monotonic() >= ready:
        await answers_now(conn)


async def test_banner_follows_a_port_that_opens_late() -> None:
    port = free_port()
    waiter = asyncio.ensure_future(wait_for_banner("127.0.0.1", port, timeout=10))
    await asyncio.sleep(0.5)  # refused until then
    async with CountingServer(answers_now, port) as server:
        banner = await waiter
        latency = time.monotonic() - server.listening_at
    assert banner.identification == "SSH-2.0-conn0"
    assert latency < LATENCY, latency


async def test_banner_follows_a_guest_that_resets_until_sshd_listens() -> None:
    ready = time.monotonic() + 1.0
    async with CountingServer(lambda c: closes_until(ready, c)) as server:
        await wait_for_banner("127.0.0.1", server.port, timeout=10)
        latency = time.monotonic() - ready
    assert latency < LATENCY, latency
    assert server.peak == 1
    # Resets are retried within the poll interval, not in a tight loop.
    assert len(server.conns) < 1.0 / ProbePolicy().poll_interval + 5, len(server.conns)


async def test_a_slow_sshd_keeps_its_connection_until_it_answers() -> None:
    # No answer from the guest yet, so the silent first attempt might be
    # parked: a second joins it after first_spacing, and that is all.
    async with CountingServer(answers_after(2.5)) as server:
        start = time.monotonic()
        banner = await wait_for_banner("127.0.0.1", server.port, timeout=20)
        elapsed = time.monotonic() - start
    assert banner.identification == "SSH-2.0-conn0"
    assert elapsed < 2.5 + LATENCY, elapsed
    assert server.peak == 2 and len(server.conns) == 2
    first = server.conns[0]
    assert first.answered_at is not None and first.client_closed_at is not None
    assert first.client_closed_at >= first.answered_at


async def test_once_the_guest_answered_a_silent_attempt_is_sshds() -> None:
    # The first connection is reset (guest up, sshd not yet); the next one
    # is held by a slow sshd, which gets it alone.
    async def behave(conn: Conn) -> None:
        if conn.index > 0:
            await answers_after(3.0)(conn)

    async with CountingServer(behave) as server:
        banner = await wait_for_banner("127.0.0.1", server.port, timeout=20)
    assert banner.identification == "SSH-2.0-conn1"
    assert server.peak == 1 and len(server.conns) == 2


async def test_parked_attempts_are_replaced_only_after_parked_patience() -> None:
    # Slirp before the guest NIC is up: the first K connections are parked.
    parked = 4

    async def behave(conn: Conn) -> None:
        if conn.index < parked:
            await conn.client_closes(within=30)
        else:
            await answers_now(conn)

    async with CountingServer(behave) as server:
        banner = await wait_for_banner("127.0.0.1", server.port, timeout=20, policy=FAST)
    assert banner.identification == f"SSH-2.0-conn{parked}"
    assert server.peak == FAST.max_in_flight
    answered_at = server.conns[parked].answered_at
    assert answered_at is not None
    replaced = [c for c in server.conns[:parked]
                if c.client_closed_at is not None and c.client_closed_at < answered_at]
    assert len(replaced) == 2  # with 3 in flight, for the 4th and 5th attempts
    for conn in replaced:
        assert conn.client_closed_at is not None
        lived = conn.client_closed_at - conn.accepted
        assert lived >= FAST.parked_patience - 0.01, (conn.index, lived)


async def test_sshd_listening_before_the_nic_is_up() -> None:
    # Like the built-in image: dropbear listens, then the NIC comes up.
    # Parked attempts answer at slirp's next re-send, fresh ones at once.
    model = SlirpModel(nic_up=2.0, sshd_listens=0.5)
    async with CountingServer(model.behave) as server:
        banner = await wait_for_banner("127.0.0.1", server.port, timeout=20, policy=FAST)
        latency = time.monotonic() - (model.origin + model.nic_up)
        await asyncio.sleep(2 * model.resend)  # abandoned attempts still arrive
    assert banner.identification.startswith("SSH-2.0-conn")
    assert latency < FAST.max_spacing + LATENCY, latency
    assert server.peak <= FAST.max_in_flight
    # Every connection made reaches sshd, abandoned or not: few were made.
    assert len(model.sessions) == len(server.conns) <= 2 * FAST.max_in_flight
    assert model.peak_sessions() <= 2 * FAST.max_in_flight


async def test_nic_up_long_before_sshd_listens() -> None:
    # Like a Debian cloud image: the NIC is up long before sshd. Parked
    # attempts are reset at their next re-send, then resets are polled.
    model = SlirpModel(nic_up=0.5, sshd_listens=2.5)
    async with CountingServer(model.behave) as server:
        await wait_for_banner("127.0.0.1", server.port, timeout=20, policy=FAST)
        latency = time.monotonic() - (model.origin + model.sshd_listens)
    # Polled resets: well under the 0.6 s a parked attempt would wait for
    # slirp's re-send (0.21 s seen on a loaded CI host, so not LATENCY).
    assert latency < model.resend / 2, latency
    assert server.peak <= FAST.max_in_flight
    assert len(model.sessions) == 1  # sshd saw only the connection that won


async def test_a_throttled_sshd_is_left_alone_for_a_while() -> None:
    async def behave(conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        if conn.index < 2:
            await loop.sock_sendall(conn.sock, b"Exceeded MaxStartups\r\n")
        else:
            await answers_now(conn)

    async with CountingServer(behave) as server:
        await wait_for_banner("127.0.0.1", server.port, timeout=20, policy=FAST)
    accepted = [c.accepted for c in server.conns]
    assert len(accepted) == 3
    gaps = [b - a for a, b in itertools.pairwise(accepted)]
    assert min(gaps) >= FAST.throttled_backoff - 0.01, gaps


async def test_cancelling_the_wait_closes_its_connections() -> None:
    async def silent(conn: Conn) -> None:
        await conn.client_closes(within=30)

    async with CountingServer(silent) as server:
        task = asyncio.ensure_future(wait_for_banner("127.0.0.1", server.port, timeout=30))
        await asyncio.sleep(1.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(server.conns) == 2
        assert not any(c.client_open() for c in server.conns)


async def test_wait_gives_up_at_timeout_naming_the_last_error() -> None:
    with pytest.raises(BannerError, match=r"within 0.3s \(last attempt: connect"):
        await wait_for_banner("127.0.0.1", free_port(), timeout=0.3)


async def test_wait_stops_on_a_permanent_error() -> None:
    start = time.monotonic()
    with pytest.raises(BannerError, match="unsupported"):
        async with FakeServer(sends(b"SSH-1.0-x\r\n")) as port:
            await wait_for_banner("127.0.0.1", port, timeout=5)
    assert time.monotonic() - start < 1.0


# -- against a real OpenSSH sshd -----------------------------------------------

@pytest.fixture
def sshd_dir() -> Iterator[SshdDir]:
    # Throttling starts at 3 unauthenticated connections and drops them all:
    # exactly the probe's bound.
    d = SshdDir(max_startups=f"{ProbePolicy().max_in_flight}:100:{ProbePolicy().max_in_flight}")
    yield d
    d.remove()


async def test_real_sshd_banner_without_throttling(sshd_dir: SshdDir) -> None:
    sshd = await sshd_dir.start(free_port())
    try:
        banner = await wait_for_banner("127.0.0.1", sshd.port, timeout=10)
    finally:
        await sshd.stop()
    assert banner.software.startswith("OpenSSH_"), banner
    assert not sshd.throttling(), sshd.log


async def test_real_sshd_that_starts_late(sshd_dir: SshdDir) -> None:
    port = free_port()
    waiter = asyncio.ensure_future(wait_for_banner("127.0.0.1", port, timeout=20))
    await asyncio.sleep(0.5)
    sshd = await sshd_dir.start(port)
    try:
        await waiter
        latency = time.monotonic() - sshd.listening_at
        start = time.monotonic()  # how long sshd itself takes to answer
        await probe_banner("127.0.0.1", port)
        own = time.monotonic() - start
    finally:
        await sshd.stop()
    assert latency - own < LATENCY, (latency, own)
    assert not sshd.throttling(), sshd.log


async def test_real_sshd_that_is_slow_to_accept(sshd_dir: SshdDir) -> None:
    # A stopped sshd: the kernel completes each connection and nothing is
    # said, as with an sshd starved by a booting guest. The probe must stay
    # within MaxStartups and keep its attempts until sshd answers them.
    sshd = await sshd_dir.start(free_port())
    try:
        sshd.proc.send_signal(signal.SIGSTOP)
        waiter = asyncio.ensure_future(wait_for_banner("127.0.0.1", sshd.port, timeout=20))
        await asyncio.sleep(4.0)  # attempts at 0, 1 and 3 s
        sshd.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        banner = await waiter
        after_resume = time.monotonic() - resumed
    finally:
        sshd.proc.send_signal(signal.SIGCONT)
        await sshd.stop()
    assert banner.software.startswith("OpenSSH_")
    assert after_resume < 1.0, after_resume
    accepted = [line for line in sshd.log if line.startswith("Connection from")]
    assert len(accepted) == ProbePolicy().max_in_flight, sshd.log
    assert not sshd.throttling(), sshd.log


async def test_a_kick_when_sshd_listens_beats_slirps_resend() -> None:
    # The guest agent says sshd listens (the NIC is up by then, as the
    # built-in image orders it): the parked attempts wait on slirp's slow
    # re-send, a fresh one is answered at once. Without the kick, the same
    # guest is seen only at a re-send or at the next spaced attempt.
    policy = ProbePolicy(parked_patience=10.0, first_spacing=2.0, max_spacing=4.0)

    async def banner_latency(kicked: bool) -> float:
        model = SlirpModel(nic_up=0.8, sshd_listens=0.8, resend=2.5)
        kick = asyncio.Event()
        loop = asyncio.get_running_loop()
        if kicked:
            loop.call_at(loop.time() + 0.85, kick.set)
        async with CountingServer(model.behave) as server:
            await wait_for_banner("127.0.0.1", server.port, timeout=20, policy=policy,
                                  kick=kick)
            assert server.peak <= policy.max_in_flight
        return time.monotonic() - (model.origin + model.sshd_listens)

    with_kick, without = await banner_latency(True), await banner_latency(False)
    assert with_kick < 0.05 + LATENCY, with_kick
    assert without > 1.0, without


async def test_a_kick_after_the_guest_answered_changes_nothing() -> None:
    # Once the guest has answered (reset or banner), attempts are not parked:
    # the kick must not add connections that sshd would pay for.
    # A slow sshd (OpenSSH under TCG) holds the attempt that reached it when
    # the kick comes.
    model = SlirpModel(nic_up=0.0, sshd_listens=0.6, banner_delay=0.6)
    kick = asyncio.Event()
    asyncio.get_running_loop().call_later(0.9, kick.set)
    async with CountingServer(model.behave) as server:
        await wait_for_banner("127.0.0.1", server.port, timeout=20, policy=FAST, kick=kick)
    assert len(model.sessions) == 1


@pytest.mark.parametrize(("listeners", "found"), [
    ([{"proto": "tcp", "ip": "0.0.0.0", "port": 22}], True),
    ([{"proto": "tcp", "ip": "::", "port": 22}], True),
    ([{"proto": "tcp", "ip": "192.168.5.15", "port": 22}], True),
    ([{"proto": "tcp", "ip": "127.0.0.1", "port": 22}], False),  # not reachable
    ([{"proto": "tcp", "ip": "::1", "port": 22}], False),
    ([{"proto": "udp", "ip": "0.0.0.0", "port": 22}], False),
    ([{"proto": "tcp", "ip": "0.0.0.0", "port": 2222}], False),
    ([], False),
])
def test_sshd_among_the_guest_agents_listeners(listeners: list[dict[str, object]],
                                               found: bool) -> None:
    from roost.hostagent.readiness import sshd_among

    assert sshd_among(listeners) is found
