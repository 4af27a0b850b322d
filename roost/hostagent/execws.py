"""`roost exec`'s WebSocket on ha.sock (GET /v1/exec): a guest command's
stdin, stdout, stderr, signals, resizes and exit, between the CLI and a
GuestExec.

Client to host agent: first a text message naming the command,
``{"argv": [...], "timeout": s, "tty": bool, "rows": n, "cols": n,
"term": name}``; then binary messages of stdin, within the credit granted,
and text messages ``{"type": "eof"}``, ``{"type": "resize", "rows",
"cols"}``, ``{"type": "signal", "signal": "INT"}`` and ``{"type": "kill",
"signal": "INT"}`` (the signal, then SIGKILL after the guest's grace).

Host agent to client: ``{"type": "started", "pid", "window": n}`` (n bytes
of stdin credit), then binary messages of output whose first byte is 1
(stdout) or 2 (stderr), and ``{"type": "window", "bytes": n}`` as stdin is
handed on; last ``{"type": "exit", "exitCode", "signal", "timedOut",
"killed"}`` or ``{"type": "error", "error", "status"}`` (status as HTTP's:
400 the request, 502 the guest; with "exitCode" when the command could not
run), then the close. A client that goes away before the exit has the
command killed (SIGHUP, then SIGKILL).

Stdin is credited here, not left to the socket's buffers, so that control
messages are read at once even while the command reads no stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from roost.errors import RoostError, UsageError
from roost.hostagent.execstream import CannotRun, ExecSpec, GuestExec
from roost.hostagent.guestagent import GuestAgentError, TunnelStream
from roost_guest import protocol

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
STDIN_WINDOW = protocol.WINDOW
SPEC_TIMEOUT = 30.0  # for the first message
MAX_ARGV_BYTES = protocol.MAX_FRAME - 4096  # the guest's request must fit one frame

Start = Callable[[ExecSpec], Awaitable[GuestExec]]


def parse_spec(text: str) -> ExecSpec:
    """The command message, checked; UsageError says what is wrong."""
    try:
        body = json.loads(text)
    except ValueError:
        raise UsageError("the exec request is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the exec request must be a JSON object")
    unknown = set(body) - {"argv", "timeout", "tty", "rows", "cols", "term"}
    if unknown:
        raise UsageError(f"unknown exec request fields: {', '.join(sorted(unknown))}")
    argv = body.get("argv")
    if not isinstance(argv, list) or not argv or not all(
            isinstance(a, str) and "\0" not in a for a in argv):
        raise UsageError("exec needs argv: a non-empty list of strings without NUL bytes")
    size = len(json.dumps(argv))
    if size > MAX_ARGV_BYTES:
        raise UsageError(f"the command line is {size} bytes; at most {MAX_ARGV_BYTES} fit")
    timeout = body.get("timeout", 0)
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not math.isfinite(timeout) or not 0 <= timeout < 1e9):
        raise UsageError("exec timeout must be a number of seconds >= 0 (0: no limit)")
    tty = body.get("tty", False)
    if not isinstance(tty, bool):
        raise UsageError("exec tty must be true or false")
    rows, cols = _size(body.get("rows", 0), "rows"), _size(body.get("cols", 0), "cols")
    term = body.get("term", "")
    if not isinstance(term, str) or len(term) > 64 or not all(
            c.isalnum() or c in "-_.+" for c in term):
        raise UsageError("exec term must be a terminal name such as xterm-256color")
    return ExecSpec(argv, float(timeout), tty, rows, cols, term)


def _size(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
        raise UsageError(f"exec {name} must be an integer from 0 to 65535")
    return value


async def serve(request: web.Request, start: Start) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=protocol.MAX_FRAME)
    await ws.prepare(request)
    try:
        first = await ws.receive(timeout=SPEC_TIMEOUT)
    except TimeoutError:
        await _fail(ws, 400, f"no exec request within {SPEC_TIMEOUT:g}s")
        return ws
    if first.type != WSMsgType.TEXT:
        if first.type == WSMsgType.BINARY:
            await _fail(ws, 400, "the first exec message must be the JSON request")
        return ws
    try:
        run = await start(parse_spec(first.data))
    except CannotRun as e:
        await _fail(ws, 400, str(e), exitCode=e.exit_code)
        return ws
    except UsageError as e:
        await _fail(ws, 400, str(e))
        return ws
    except RoostError as e:
        await _fail(ws, 502, str(e))
        return ws
    try:
        await Bridge(ws, run).serve()
    except Exception as e:  # a bug: the client learns of it, the traceback goes to the log
        log.exception("exec of %s failed", run.spec.argv[0])
        await _fail(ws, 500, f"the host agent failed: {type(e).__name__}: {e} "
                             "(the traceback is in ha.stderr.log)")
    finally:
        await run.close()
    return ws


async def _fail(ws: web.WebSocketResponse, status: int, error: str, **extra: Any) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json({"type": "error", "error": error, "status": status, **extra})
    await ws.close()


class Bridge:
    """One command between the WebSocket and its guest streams."""

    def __init__(self, ws: web.WebSocketResponse, command: GuestExec) -> None:
        self.ws = ws
        self.command = command
        self._stdin: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: EOF
        self._stdin_queued = 0
        self._client_error = ""

    async def serve(self) -> None:
        await self.ws.send_json({"type": "started", "pid": self.command.pid,
                                 "window": STDIN_WINDOW})
        command = asyncio.ensure_future(self._output_then_exit())
        client = asyncio.ensure_future(self._read_client())
        feeder = asyncio.ensure_future(self._feed_stdin())
        try:
            await asyncio.wait([command, client], return_when=asyncio.FIRST_COMPLETED)
            if self._client_error:
                await _fail(self.ws, 400, self._client_error)
            elif command.done() and not self.ws.closed:
                try:
                    exit_ = command.result()
                except ConnectionError:
                    return  # the client went away while output was flowing
                except GuestAgentError as e:  # StreamReset too: the session dropped
                    await _fail(self.ws, 502, f"the guest agent connection failed: {e}")
                    return
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_json({"type": "exit", **exit_})
                await self.ws.close()
            # else the client went away: the caller's close() kills the command
        finally:
            for task in (command, client, feeder):
                task.cancel()
            await asyncio.gather(command, client, feeder, return_exceptions=True)

    async def _output_then_exit(self) -> dict[str, Any]:
        run = self.command
        pumps = [self._pump(run.stdio, STDOUT)]
        if run.stderr is not None:
            pumps.append(self._pump(run.stderr, STDERR))
        await asyncio.gather(*pumps)
        return await run.wait()

    async def _pump(self, stream: TunnelStream, channel: int) -> None:
        prefix = bytes([channel])
        while (data := await stream.recv()) is not None:
            await self.ws.send_bytes(prefix + data)  # waits while the client is slow
            await stream.ack(len(data))

    async def _read_client(self) -> None:
        """Until the client closes: stdin into the queue, controls at once."""
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                if self._stdin_queued + len(msg.data) > STDIN_WINDOW:
                    self._client_error = "stdin beyond the granted window"
                    return
                self._stdin_queued += len(msg.data)
                self._stdin.put_nowait(msg.data)
            elif msg.type == WSMsgType.TEXT:
                error = await self._control(msg.data)
                if error:
                    self._client_error = error
                    return

    async def _control(self, text: str) -> str:
        """Act on one control message; the error, if it is not one."""
        try:
            body = json.loads(text)
            kind = body["type"]
        except (ValueError, KeyError, TypeError):
            return "an exec control message must be JSON with a type"
        run = self.command
        try:
            if kind == "eof":
                self._stdin.put_nowait(None)
            elif kind == "resize":
                await run.resize(_size(body.get("rows"), "rows"), _size(body.get("cols"), "cols"))
            elif kind in ("signal", "kill"):
                name = body.get("signal")
                if name not in protocol.EXEC_SIGNALS:
                    return f"unknown signal {name!r}; one of {', '.join(protocol.EXEC_SIGNALS)}"
                await (run.signal(name) if kind == "signal" else run.kill(name))
            else:
                return f"unknown exec control message type {kind!r}"
        except UsageError as e:
            return str(e)
        except (GuestAgentError, OSError) as e:
            log.debug("exec control %s not sent: %s", kind, e)
        return ""

    async def _feed_stdin(self) -> None:
        run = self.command
        while True:
            data = await self._stdin.get()
            if data is None:
                with contextlib.suppress(GuestAgentError, OSError):
                    await run.stdio.send_eof()
                continue
            # Waits for the guest's credit. Once the command is gone its stdin
            # is dropped, but still credited: the client never stalls on it.
            with contextlib.suppress(GuestAgentError, OSError):
                await run.stdio.send(data)
            self._stdin_queued -= len(data)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json({"type": "window", "bytes": len(data)})
