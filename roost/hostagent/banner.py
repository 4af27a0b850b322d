"""A raw SSH identification-string probe (RFC 4253 section 4.2).

With user-mode networking the host port accepts before the guest's sshd
listens, so a connect proves nothing: only the server's identification
string does. The server may send other lines first (never starting with
"SSH-"); we skip a bounded number of them. Each read has its own deadline,
and the probe is an ordinary coroutine, so cancelling it stops it at once,
also in the middle of a read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

SUPPORTED_PREFIXES = ("SSH-2.0-", "SSH-1.99-")
MAX_PREAMBLE_LINES = 32
MAX_LINE_BYTES = 1024  # RFC: the identification string is at most 255 bytes
READ_TIMEOUT = 2.0  # an OpenSSH banner under TCG can take 0.6 s after accept
CONNECT_TIMEOUT = 2.0


class BannerError(Exception):
    """No acceptable banner on this attempt.

    `retryable` is False for answers that will not change by retrying soon
    (a non-SSH service, an SSH version we do not speak).
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Banner:
    identification: str
    preamble: tuple[str, ...]

    @property
    def software(self) -> str:
        return self.identification.split("-", 2)[2].split(" ", 1)[0]


async def _readline(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout)
    except TimeoutError:
        raise BannerError(f"no data within {timeout:g}s") from None
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise BannerError(f"connection closed mid-line after {e.partial[:40]!r}") from None
        raise BannerError("connection closed before an SSH identification string") from None
    except asyncio.LimitOverrunError:
        raise BannerError(f"line longer than {MAX_LINE_BYTES} bytes", retryable=False) from None
    return line


async def read_banner(
    reader: asyncio.StreamReader,
    read_timeout: float = READ_TIMEOUT,
    max_preamble: int = MAX_PREAMBLE_LINES,
) -> Banner:
    preamble: list[str] = []
    while True:
        raw = await _readline(reader, read_timeout)
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if line.startswith("SSH-"):
            if line.startswith(SUPPORTED_PREFIXES):
                return Banner(line, tuple(preamble))
            raise BannerError(f"unsupported SSH protocol version: {line[:80]!r}", retryable=False)
        preamble.append(line)
        if len(preamble) > max_preamble:
            raise BannerError(
                f"no SSH identification string within {max_preamble} lines "
                f"(first line: {preamble[0][:80]!r}); is this an SSH server?",
                retryable=False,
            )


async def probe_banner(
    host: str,
    port: int,
    read_timeout: float = READ_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    max_preamble: int = MAX_PREAMBLE_LINES,
) -> Banner:
    """One attempt: connect to host:port and read the identification string."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_LINE_BYTES), connect_timeout
        )
    except TimeoutError:
        raise BannerError(f"connect to {host}:{port} timed out") from None
    except OSError as e:
        raise BannerError(f"connect to {host}:{port}: {e.strerror or e}") from None
    try:
        return await read_banner(reader, read_timeout, max_preamble)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def wait_for_banner(
    host: str,
    port: int,
    *,
    timeout: float,
    stagger: float = 0.1,
    max_in_flight: int = 16,
    read_timeout: float = READ_TIMEOUT,
    retry_delay: float = 0.02,
) -> Banner:
    """Probe until a banner arrives, a permanent error, or `timeout`.

    With user-mode networking, a connection made before the guest's NIC is
    up is accepted by the host side and then parked: nothing ever arrives
    on it, and it never reaches sshd. So a silent attempt is not waited out:
    a fresh one starts every `stagger` seconds, and once `max_in_flight`
    are open the oldest is dropped for it (dropping one that did reach a
    slow sshd costs the guest a forked sshd, hence a generous window). A
    refused or closed attempt is replaced after `retry_delay`. The first
    banner wins; the rest are cancelled. Readiness thus follows the guest's
    sshd by at most about `stagger`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    in_flight: list[asyncio.Task[Banner]] = []  # oldest first
    last_error: BannerError | None = None
    next_start = loop.time()
    try:
        while True:
            now = loop.time()
            if now >= deadline:
                raise BannerError(
                    f"no SSH banner from {host}:{port} within {timeout:g}s"
                    + (f" (last attempt: {last_error})" if last_error else "")
                )
            if now >= next_start:
                if len(in_flight) >= max_in_flight:
                    in_flight.pop(0).cancel()
                in_flight.append(asyncio.ensure_future(
                    probe_banner(host, port, read_timeout=read_timeout)))
                next_start = now + stagger
            wait_until = min(deadline, next_start)
            if not in_flight:
                await asyncio.sleep(max(0.0, wait_until - loop.time()))
                continue
            done, _ = await asyncio.wait(
                in_flight, timeout=max(0.0, wait_until - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                in_flight.remove(task)
                exc = task.exception()
                if exc is None:
                    return task.result()
                if not isinstance(exc, BannerError):
                    raise exc
                if not exc.retryable:
                    raise exc
                last_error = exc
                # A refused or closed attempt is replaced quickly.
                next_start = min(next_start, loop.time() + retry_delay)
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
