"""`roost exec`'s WebSocket on ha.sock (GET /v1/exec): a guest command's
stdin, stdout, stderr, signals, resizes and exit, between the CLI and a
GuestExec.

Client to host agent: first a text message naming the command,
``{"argv": [...], "timeout": s, "tty": bool, "rows": n, "cols": n,
"term": name}`` (apimodels.ExecRequest); then binary messages of stdin,
within the credit granted, and text messages ``{"type": "eof"}``,
``{"type": "resize", "rows", "cols"}``, ``{"type": "signal", "signal":
"INT"}`` and ``{"type": "kill", "signal": "INT"}`` (the signal, then
SIGKILL after the guest's grace; apimodels.EXEC_CONTROLS). Each is checked
as strictly as the API's bodies: a wrong one is an error naming the field.

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
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from roost.errors import RoostError, UsageError
from roost.hostagent.apiinput import InputError, from_json
from roost.hostagent.apimodels import (
    EXEC_CONTROLS,
    ApiInput,
    ExecEof,
    ExecRequest,
    ExecResize,
    ExecSignal,
)
from roost.hostagent.execstream import CannotRun, ExecSpec, GuestExec
from roost.hostagent.guestagent import GuestAgentError, TunnelStream
from roost.hostagent.openapi import WebSocket
from roost_guest import protocol

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
STDIN_WINDOW = protocol.WINDOW
SPEC_TIMEOUT = 30.0  # for the first message
MAX_ARGV_BYTES = protocol.MAX_FRAME - 4096  # the guest's request must fit one frame

Start = Callable[[ExecSpec], Awaitable[GuestExec]]


def _message(kind: str, description: str, required: list[str],
             properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": description, "required": ["type", *required],
            "additionalProperties": False,
            "properties": {"type": {"const": kind}, **properties}}


_INT = {"type": "integer"}
# The protocol as GET /v1/openapi.json shows it (an x-websocket of the route).
WEBSOCKET = WebSocket(
    description=(
        "The client's first message is a JSON text message, an ExecRequest. The host "
        "agent answers ExecStarted (or ExecFailure, then closes). Then stdin goes as "
        "binary messages within the window granted by ExecStarted and ExecWindow, and "
        "controls as text messages (ExecEof, ExecResize, ExecSignal: type signal sends "
        "it to the command's whole session, kill then SIGKILLs it after a grace); "
        "output comes as binary messages; last ExecExit (or ExecFailure), then the "
        "close. A wrong message is an ExecFailure of status 400 naming the field; one "
        f"larger than {protocol.MAX_FRAME} bytes closes the WebSocket at once, with "
        "code 1009 (message too big). A client that leaves before the exit has the "
        "command killed (SIGHUP, then SIGKILL)."),
    client=(ExecRequest, *dict.fromkeys(EXEC_CONTROLS.values())),
    server={
        "ExecStarted": _message("started", "The command runs; `window` bytes of stdin "
                                "may be sent.", ["pid", "window"],
                                {"pid": _INT, "window": _INT}),
        "ExecWindow": _message("window", "`bytes` more of stdin may be sent.", ["bytes"],
                               {"bytes": _INT}),
        "ExecExit": _message("exit", "The command ended, after all its output.", ["exitCode"], {
            "exitCode": _INT, "signal": {"type": ["integer", "null"]},
            "timedOut": {"type": "boolean"}, "killed": {"type": "boolean"},
            "seconds": {"type": "number"}, "error": {"type": "string"}}),
        "ExecFailure": _message("error", "The exec failed; the WebSocket closes.",
                                ["error", "status"], {
            "error": {"type": "string"}, "status": {"enum": [400, 500, 502]},
            "exitCode": {**_INT, "description": "the command could not run: 127 not "
                                                "found, 126 not executable"}}),
    },
    binary="stdin from the client (within the granted window); output to it, whose "
           "first byte is the channel: 1 stdout, 2 stderr",
)


def parse_spec(text: str) -> ExecSpec:
    """The command message, checked against ExecRequest; InputError (a
    UsageError) names each wrong field."""
    body = from_json(ExecRequest, text, "the exec request")
    size = len(json.dumps(body.argv))
    if size > MAX_ARGV_BYTES:
        raise InputError(f"argv: the command line is {size} bytes; at most {MAX_ARGV_BYTES} fit")
    return ExecSpec(list(body.argv), body.timeout, body.tty, body.rows, body.cols, body.term,
                    tuple(body.env.items()), body.cwd)


def parse_control(text: str) -> ApiInput:
    """A control message, checked against its model (by its type)."""
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        kind = None
    model = EXEC_CONTROLS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InputError(f"an exec control message must be a JSON object whose type is one "
                         f"of {', '.join(EXEC_CONTROLS)}")
    return from_json(model, text, "the exec control message")


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
            control = parse_control(text)
        except UsageError as e:
            return str(e)
        run = self.command
        try:
            if isinstance(control, ExecEof):
                self._stdin.put_nowait(None)
            elif isinstance(control, ExecResize):
                await run.resize(control.rows, control.cols)
            elif isinstance(control, ExecSignal):
                await (run.signal(control.signal) if control.type == "signal"
                       else run.kill(control.signal))
        except (GuestAgentError, OSError) as e:
            log.debug("exec control %s not sent: %s", type(control).__name__, e)
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
