"""A gentle SSH readiness probe: the server's identification string.

With user-mode networking (slirp) the host port accepts before the guest's
sshd listens, so only the identification string (RFC 4253 section 4.2)
proves sshd is up; lines before it are skipped, up to a bound. One attempt
ends in one of these ways:

* refused: nothing listens on the host port yet (QEMU is starting);
* accepted, then closed, perhaps after a few lines: the guest answered, so
  its NIC is up and sshd is not listening yet, or sshd turned us away
  ("Exceeded MaxStartups");
* accepted and silent: slirp parked it (the guest NIC is not up yet), or a
  slow sshd holds it (OpenSSH under TCG: 0.3-0.6 s, seconds under load).

Slirp ignores a host connection until the guest answers its SYN, which it
re-sends every 6-12 s for 75 s: closing a parked connection does not cancel
it (measured: ones we had closed reached the guest's sshd 6-18 s later).
So every attempt costs the guest an sshd start-up, abandoned or not, and
abandoning one a slow sshd holds makes sshd start again for nothing. Hence:
at most `max_in_flight` attempts at once (well under OpenSSH's MaxStartups
10 and dropbear's 5 per address); silent attempts are started at growing
intervals; a silent one is replaced only while the guest has never
answered, and only after `parked_patience`; once it has answered, a silent
attempt is sshd's and keeps its full `patience`. Refused and closed
attempts cost the guest nothing but a SYN, so they are retried within
`poll_interval`: the banner is seen that soon after sshd listens.

The guest agent, which needs no network, often knows first that sshd
listens, and the built-in image's sshd launcher says on the console that
sshd starts: given a `kick` (an event set then, perhaps again later), the
probe starts a fresh attempt at once in place of the oldest parked one,
whose SYN slirp would only re-send seconds later.

Each read has its own deadline, and the probe is an ordinary coroutine, so
cancelling it stops it at once, also in the middle of a read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_PREFIXES = ("SSH-2.0-", "SSH-1.99-")
MAX_PREAMBLE_LINES = 32
MAX_LINE_BYTES = 1024  # RFC: the identification string is at most 255 bytes
READ_TIMEOUT = 2.0  # an OpenSSH banner under TCG can take 0.6 s after accept
CONNECT_TIMEOUT = 2.0
THROTTLED_LINE = "Exceeded MaxStartups"  # what OpenSSH says before dropping us


class BannerError(Exception):
    """No acceptable banner on this attempt.

    `retryable` is False for answers that will not change by retrying soon
    (a non-SSH service, an SSH version we do not speak). `refused`: the
    connection was refused. `answered`: the server end closed or wrote
    something, so the guest is reachable. `throttled`: sshd said it has too
    many connections starting up.
    """

    def __init__(self, message: str, retryable: bool = True, *, refused: bool = False,
                 answered: bool = False, throttled: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.refused = refused
        self.answered = answered
        self.throttled = throttled


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
            raise BannerError(f"connection closed mid-line after {e.partial[:40]!r}",
                              answered=True) from None
        raise BannerError("connection closed before an SSH identification string",
                          answered=True) from None
    except asyncio.LimitOverrunError:
        raise BannerError(f"line longer than {MAX_LINE_BYTES} bytes", retryable=False,
                          answered=True) from None
    return line


async def read_banner(
    reader: asyncio.StreamReader,
    read_timeout: float = READ_TIMEOUT,
    max_preamble: int = MAX_PREAMBLE_LINES,
) -> Banner:
    preamble: list[str] = []
    while True:
        try:
            raw = await _readline(reader, read_timeout)
        except BannerError as e:
            if not preamble:
                raise
            raise BannerError(f"{e} (after {preamble[-1][:80]!r})", e.retryable, answered=True,
                              throttled=preamble[-1] == THROTTLED_LINE) from None
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if line.startswith("SSH-"):
            if line.startswith(SUPPORTED_PREFIXES):
                return Banner(line, tuple(preamble))
            raise BannerError(f"unsupported SSH protocol version: {line[:80]!r}",
                              retryable=False, answered=True)
        preamble.append(line)
        if len(preamble) > max_preamble:
            raise BannerError(
                f"no SSH identification string within {max_preamble} lines "
                f"(first line: {preamble[0][:80]!r}); is this an SSH server?",
                retryable=False, answered=True,
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
        raise BannerError(f"connect to {host}:{port}: {e.strerror or e}", refused=True) from None
    try:
        return await read_banner(reader, read_timeout, max_preamble)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass(frozen=True)
class ProbePolicy:
    """How gently `wait_for_banner` probes; the defaults suit slirp and TCG."""

    max_in_flight: int = 3
    # Longest one attempt waits for the identification string.
    patience: float = 30.0
    # Before the guest has ever answered, a silent attempt may be parked by
    # slirp; it is replaced by a fresh one after this long.
    parked_patience: float = 10.0
    # Before the guest has answered: the gap after the newest silent attempt
    # before another starts, doubling from the first to the max value.
    first_spacing: float = 1.0
    max_spacing: float = 4.0
    # After it has answered, a silent attempt is a slow sshd's: the gap
    # before a second one joins it.
    answered_spacing: float = 10.0
    # Refused or closed attempts are retried after a delay doubling from
    # first_retry to poll_interval; a throttled one after throttled_backoff.
    first_retry: float = 0.02
    poll_interval: float = 0.05
    throttled_backoff: float = 2.0
    connect_timeout: float = CONNECT_TIMEOUT
    max_preamble: int = MAX_PREAMBLE_LINES


@dataclass
class _Attempt:
    started: float
    after_answer: bool  # started once the guest was known to answer
    task: asyncio.Task[Banner]


@dataclass
class _Prober:
    host: str
    port: int
    policy: ProbePolicy
    loop: asyncio.AbstractEventLoop
    open: list[_Attempt] = field(default_factory=list)  # oldest first
    answered: bool = False
    silent_run: int = 0  # attempts started since one was refused or answered
    retry_delay: float = 0.0
    not_before: float = 0.0
    started: int = 0
    last_error: BannerError | None = None

    def next_start(self) -> float:
        """When the next attempt may start, if there is room for it."""
        p = self.policy
        if self.answered:
            held = [a.started for a in self.open if a.after_answer]
            if not held:
                return self.not_before
            return max(self.not_before, held[-1] + p.answered_spacing)
        if not self.open:
            return self.not_before
        spacing = min(p.max_spacing, p.first_spacing * 2.0 ** max(0, self.silent_run - 1))
        return max(self.not_before, self.open[-1].started + spacing)

    def start(self, now: float) -> None:
        p = self.policy
        task = asyncio.ensure_future(probe_banner(
            self.host, self.port, read_timeout=p.patience,
            connect_timeout=p.connect_timeout, max_preamble=p.max_preamble))
        self.open.append(_Attempt(now, self.answered, task))
        self.started += 1
        self.silent_run += 1

    async def abandon(self, attempt: _Attempt) -> None:
        # Awaited, so its socket is closed before a new one opens.
        self.open.remove(attempt)
        attempt.task.cancel()
        await asyncio.gather(attempt.task, return_exceptions=True)

    async def kicked(self, now: float) -> None:
        """sshd listens: a parked attempt waits on slirp's SYN re-sends, a
        fresh one reaches sshd now. Nothing changes once the guest answered."""
        if self.answered:
            return
        if len(self.open) >= self.policy.max_in_flight:
            await self.abandon(self.open[0])
        self.start(now)

    def finished(self, attempt: _Attempt) -> Banner | None:
        """Account for a finished attempt; its banner, or None to go on."""
        self.open.remove(attempt)
        exc = attempt.task.exception()
        if exc is None:
            return attempt.task.result()
        if not isinstance(exc, BannerError) or not exc.retryable:
            raise exc
        p, now = self.policy, self.loop.time()
        self.last_error = exc
        if exc.throttled:
            self.not_before = now + p.throttled_backoff
        elif exc.answered or exc.refused:
            self.not_before = now + self.retry_delay
            self.retry_delay = min(self.retry_delay * 2, p.poll_interval)
        else:  # silent for its whole patience, or the connect timed out
            return None
        self.answered = self.answered or exc.answered
        self.silent_run = 0
        return None

    def timeout_error(self, timeout: float) -> BannerError:
        silent = len(self.open)
        last = f"last attempt: {self.last_error}; " if self.last_error else ""
        return BannerError(
            f"no SSH banner from {self.host}:{self.port} within {timeout:g}s "
            f"({last}{self.started} attempts, {silent} still silent)")


async def wait_for_banner(
    host: str,
    port: int,
    *,
    timeout: float,
    policy: ProbePolicy | None = None,
    kick: asyncio.Event | None = None,
) -> Banner:
    """Probe until a banner arrives, a permanent error, or `timeout`.

    See the module docstring for why attempts are made as they are. The
    first banner wins; the attempts still open are closed. `kick`, once
    set, means sshd listens in the guest (see the module docstring).
    """
    loop = asyncio.get_running_loop()
    p = policy or ProbePolicy()
    prober = _Prober(host, port, p, loop, retry_delay=p.first_retry, not_before=loop.time())
    deadline = loop.time() + timeout
    kicked = asyncio.ensure_future(kick.wait()) if kick is not None else None
    try:
        while True:
            for attempt in [a for a in prober.open if a.task.done()]:
                banner = prober.finished(attempt)
                if banner is not None:
                    return banner
            if kicked is not None and kicked.done():
                # Set again by a later sign (the console's, then the agent's):
                # each is worth a fresh attempt while the guest has not answered.
                assert kick is not None
                kick.clear()
                kicked = asyncio.ensure_future(kick.wait())
                await prober.kicked(loop.time())
                continue
            now = loop.time()
            if now >= deadline:
                raise prober.timeout_error(timeout)
            wake = min(deadline, prober.next_start())
            if now >= wake:
                if len(prober.open) < p.max_in_flight:
                    prober.start(now)
                    continue
                wake = deadline
                if not prober.answered:
                    replace_at = prober.open[0].started + p.parked_patience
                    if now >= replace_at:
                        await prober.abandon(prober.open[0])
                        continue
                    wake = min(wake, replace_at)
            timeout_left = max(0.0, wake - now)
            waits: list[asyncio.Future[Any]] = [a.task for a in prober.open]
            if kicked is not None:
                waits.append(kicked)
            if waits:
                await asyncio.wait(waits, timeout=timeout_left,
                                   return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(timeout_left)
    finally:
        if kicked is not None:
            kicked.cancel()
        tasks = [a.task for a in prober.open]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
