"""Commands in a sandbox, through the guest agent (no SSH): the host
agent's exec WebSocket (roost.hostagent.execws) from asyncio.

A command's output is streamed to callbacks as it comes and kept for its
result; stdin is sent within the credit the host agent grants, so a
command that reads slowly slows the sender instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from roost.errors import RequestFailed, RequestRefused, RoostError
from roost.sdk.transport import HostAgentTransport

STDOUT, STDERR = 1, 2
Output = Callable[[bytes], Awaitable[None] | None]
KILL_WAIT = 10.0  # after a kill, how long the guest has to confirm the exit


class CommandError(RoostError):
    """The command could not be run (not found: exit_status 127, not
    executable: 126), or its connection failed (exit_status None)."""

    def __init__(self, message: str, exit_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class CommandExited(RoostError):
    """`check=True` and the command did not exit 0: `result` says how it ended."""

    def __init__(self, result: CommandResult) -> None:
        how = f"signal {result.signal}" if result.signal else f"status {result.exit_code}"
        super().__init__(f"{shlex.join(result.argv)} exited with {how}"
                         f"{' (timed out)' if result.timed_out else ''}: "
                         f"{result.stderr[-500:].decode(errors='replace')}")
        self.result = result


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int | None = None  # the number of the signal that ended it (9: SIGKILL)
    timed_out: bool = False  # ended by its `timeout`
    killed: bool = False  # ended by kill()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        """stdout, decoded (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode(errors="replace")


def command_argv(cmd: str | Sequence[str]) -> list[str]:
    """The argv the guest runs: a string through /bin/sh -c."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
    if not argv:
        raise ValueError("an empty command: give a string or a list of arguments")
    return argv


def _signal_number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value else None


async def _call(callback: Output | None, data: bytes) -> None:
    if callback is None:
        return
    result = callback(data)
    if inspect.isawaitable(result):
        await result


class CommandHandle:
    """A running command: wait for it, send it stdin, signal or kill it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, argv: list[str], pid: int,
                 window: int, on_stdout: Output | None, on_stderr: Output | None) -> None:
        self.argv = argv
        self.pid = pid
        self._ws = ws
        self._credit = window
        self._credit_changed = asyncio.Event()
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._on = {STDOUT: on_stdout, STDERR: on_stderr}
        self._result: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._killed = False
        self._reader = asyncio.ensure_future(self._read())

    @property
    def stdout(self) -> bytes:
        """What it has written to stdout so far."""
        return bytes(self._stdout)

    @property
    def stderr(self) -> bytes:
        return bytes(self._stderr)

    @property
    def exited(self) -> bool:
        return self._result.done()

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                    which, data = msg.data[0], msg.data[1:]
                    (self._stdout if which == STDOUT else self._stderr).extend(data)
                    await _call(self._on.get(which), data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._control(json.loads(msg.data))
                    if self._result.done():
                        break
        except Exception as e:  # the callback's error or the connection's ends the wait
            if not self._result.done():
                self._result.set_exception(e)
        finally:
            self._credit_changed.set()
            if not self._result.done():
                self._result.set_exception(CommandError(
                    "the host agent closed the command's connection before it exited"))
            await self._ws.close()

    def _control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "window":
            self._credit += int(message.get("bytes") or 0)
            self._credit_changed.set()
        elif kind == "exit":
            code = message.get("exitCode")
            self._result.set_result(CommandResult(
                self.argv, code if isinstance(code, int) else -1, bytes(self._stdout),
                bytes(self._stderr), _signal_number(message.get("signal")),
                bool(message.get("timedOut")), bool(message.get("killed")) or self._killed))
        elif kind == "error":
            self._result.set_exception(CommandError(str(message.get("error")),
                                                    message.get("exitCode")))

    async def wait(self, check: bool = False) -> CommandResult:
        """How it ended; with `check`, CommandExited unless it exited 0."""
        result = await asyncio.shield(self._result)
        if check and not result.ok:
            raise CommandExited(result)
        return result

    async def send_stdin(self, data: bytes | str) -> None:
        """Send `data` to its stdin (waiting while it does not read)."""
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            while self._credit <= 0 and not self._result.done():
                self._credit_changed.clear()
                await self._credit_changed.wait()
            if self._result.done():
                raise CommandError("the command has exited; its stdin is closed")
            n = min(len(view), self._credit, 64 * 1024)
            self._credit -= n
            await self._ws.send_bytes(bytes(view[:n]))
            view = view[n:]

    async def close_stdin(self) -> None:
        if not self._result.done():
            await self._ws.send_json({"type": "eof"})

    async def signal(self, name: str) -> None:
        """Send a signal ("INT", "TERM"...) to every process of the command."""
        if not self._result.done():
            await self._ws.send_json({"type": "signal", "signal": name})

    async def kill(self, name: str = "TERM") -> CommandResult:
        """`name` to the command's processes, SIGKILL after a grace; its result."""
        if not self._result.done():
            self._killed = True
            await self._ws.send_json({"type": "kill", "signal": name})
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), KILL_WAIT)
        except TimeoutError:
            await self._ws.close()  # the host agent kills it when the client goes
            raise CommandError(f"the guest did not confirm the kill in {KILL_WAIT:g}s"
                               ) from None

    async def resize(self, rows: int, cols: int) -> None:
        """A pty's new size."""
        if not self._result.done():
            await self._ws.send_json({"type": "resize", "rows": rows, "cols": cols})

    async def close(self) -> None:
        """Stop following it; a command still running is killed."""
        await self._ws.close()
        with contextlib.suppress(Exception):
            await self._reader


class Commands:
    """`sandbox.commands`: run commands in the guest."""

    def __init__(self, transport: HostAgentTransport, env: Mapping[str, str]) -> None:
        self._transport = transport
        self._env = env

    async def start(self, cmd: str | Sequence[str], *, stdin: bytes | str | None = None,
                    on_stdout: Output | None = None, on_stderr: Output | None = None,
                    timeout: float = 0, cwd: str | None = None,
                    env: Mapping[str, str] | None = None, tty: bool = False,
                    rows: int = 0, cols: int = 0, keep_stdin: bool = False) -> CommandHandle:
        """The command, running. Its stdin gets `stdin`, then ends, unless
        `keep_stdin` (send_stdin() and close_stdin() are then yours)."""
        argv = command_argv(cmd)
        ws = await self._transport.websocket("/v1/exec")
        try:
            await ws.send_json({"argv": argv, "timeout": timeout, "tty": tty, "rows": rows,
                                "cols": cols, "term": "xterm-256color" if tty else "",
                                "env": {**self._env, **(env or {})}, "cwd": cwd or ""})
            first = await ws.receive(timeout=60)
            if first.type != aiohttp.WSMsgType.TEXT:
                raise CommandError("the host agent closed the exec connection "
                                   f"({first.type.name})")
            message = json.loads(first.data)
            if message.get("type") == "error":
                status = int(message.get("status") or 0)
                error = str(message.get("error"))
                if "exitCode" in message:
                    raise CommandError(error, message["exitCode"])
                if status == 400:
                    raise RequestRefused(error, 400)
                raise RequestFailed(error, status or 502)
        except BaseException:
            await ws.close()
            raise
        handle = CommandHandle(ws, argv, int(message.get("pid") or 0),
                               int(message.get("window") or 0), on_stdout, on_stderr)
        try:
            if stdin is not None:
                await handle.send_stdin(stdin)
            if not keep_stdin:
                await handle.close_stdin()
        except (CommandError, ConnectionError, aiohttp.ClientError):
            # It exited before taking all of its stdin (`head -c1`, or 127):
            # its result says how; anything else is raised by wait().
            if not handle.exited:
                await handle.close()
                raise
        except BaseException:
            await handle.close()
            raise
        return handle

    async def run(self, cmd: str | Sequence[str], *, stdin: bytes | str | None = None,
                  on_stdout: Output | None = None, on_stderr: Output | None = None,
                  timeout: float = 0, cwd: str | None = None,
                  env: Mapping[str, str] | None = None, background: bool = False,
                  check: bool = False) -> Any:
        """Run `cmd` (a string for /bin/sh -c, or an argv list) and return its
        CommandResult; with `background`, its CommandHandle at once (stdin
        stays open unless `stdin` is given). `timeout`: seconds until the
        guest kills it (0: none). `check`: CommandExited unless it exits 0."""
        handle = await self.start(cmd, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr,
                                  timeout=timeout, cwd=cwd, env=env,
                                  keep_stdin=background and stdin is None)
        if background:
            return handle
        try:
            return await handle.wait(check=check)
        finally:
            await handle.close()

    async def pty(self, cmd: str | Sequence[str] = ("/bin/sh", "-l"), *, rows: int = 24,
                  cols: int = 80, on_data: Output | None = None, timeout: float = 0,
                  cwd: str | None = None, env: Mapping[str, str] | None = None
                  ) -> CommandHandle:
        """`cmd` on a pseudo-terminal: send_stdin() types, on_data sees the
        screen's bytes, resize() changes its size."""
        return await self.start(cmd, on_stdout=on_data, timeout=timeout, cwd=cwd, env=env,
                                tty=True, rows=rows, cols=cols, keep_stdin=True)
