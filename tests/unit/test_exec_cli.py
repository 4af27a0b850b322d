"""`roost exec`'s client (roost.cli.execclient, in a process of its own) through
the host agent's exec WebSocket to the real guest agent on this host: stdin,
Ctrl-C, the client going away, time limits, a pty, and back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import pty
import signal
import struct
import sys
import tempfile
import termios
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from roost.driver.channel import UnixDialer
from roost.hostagent import execws
from roost.hostagent.events import EventEmitter
from roost.hostagent.session import GuestAgentSession
from roost_guest import execute
from tests.terminal import read_size_until, read_until
from tests.unit.exec_helpers import marker, pids_of, rss_bytes, wait_for
from tests.unit.guest_agent_process import guest_agent_on

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="roost-exec-") as d:
        yield Path(d)  # Unix socket paths must stay short


@pytest.fixture
async def ha_sock(short_dir: Path) -> AsyncIterator[Path]:
    """The exec endpoint as the host agent serves it, on a real Unix socket."""
    ga, ha = short_dir / "ga.sock", short_dir / "ha.sock"
    ga.unlink(missing_ok=True)
    with guest_agent_on(str(ga), "--allow-exec", "--audit-log", str(short_dir / "audit.log")):
        session = GuestAgentSession(UnixDialer(str(ga)), EventEmitter(io.StringIO()),
                                    instance="dev", allow_exec=True, changed=lambda: None)
        app = web.Application()

        async def handler(request: web.Request) -> web.StreamResponse:
            return await execws.serve(request, session.start_exec)

        app.router.add_get("/v1/exec", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(ha)).start()
        yield ha
        await runner.cleanup()
        await session.drop()


def cli_argv(sock: Path, argv: list[str], timeout: float = 0, tty: bool = False) -> list[str]:
    return [sys.executable, "-m", "tests.unit.exec_cli_process", str(sock), str(timeout),
            "tty" if tty else "notty", *argv]


async def cli(sock: Path, argv: list[str], timeout: float = 0, stdin: bytes | None = None
              ) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(sock, argv, timeout), cwd=REPO, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_stdin_is_streamed(ha_sock: Path) -> None:
    assert await cli(ha_sock, ["cat"], stdin=b"hi\n") == (0, b"hi\n", b"")
    data = os.urandom(3 * 1024 * 1024)
    code, out, _ = await cli(ha_sock, ["cat"], stdin=data)
    assert code == 0 and out == data


async def test_output_stays_apart_and_the_status_passes_through(ha_sock: Path) -> None:
    result = await cli(ha_sock, ["sh", "-c", "echo out; echo err >&2; exit 7"], stdin=b"")
    assert result == (7, b"out\n", b"err\n")


async def test_a_missing_program_exits_127(ha_sock: Path) -> None:
    code, _, err = await cli(ha_sock, ["/no/such/program"], stdin=b"")
    assert code == 127 and b"cannot run /no/such/program" in err


async def test_timeout_kills_the_group_and_exits_124(ha_sock: Path) -> None:
    a, b = marker(), marker()
    started = time.monotonic()
    code, _, err = await cli(ha_sock, ["sh", "-c", f"sleep {a} & sleep {b}"], timeout=0.5,
                             stdin=b"")
    assert code == 124 and b"roost exec: killed after 0.5s" in err
    assert not pids_of(["sleep", a]) and not pids_of(["sleep", b])
    assert time.monotonic() - started < 0.5 + execute.KILL_GRACE + 5


async def start_sleeping(sock: Path) -> tuple[asyncio.subprocess.Process, list[list[str]]]:
    a, b = marker(), marker()
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(sock, ["sh", "-c", f"sleep {a} & sleep {b}"]), cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    sleeps = [["sleep", a], ["sleep", b]]
    await asyncio.to_thread(wait_for, lambda: all(pids_of(s) for s in sleeps), 15,
                            "the guest's sleeps")
    return proc, sleeps


async def test_ctrl_c_kills_the_group_and_exits_130(ha_sock: Path) -> None:
    proc, sleeps = await start_sleeping(ha_sock)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), execute.KILL_GRACE + 10)
    assert proc.returncode == 130, err
    assert not any(pids_of(s) for s in sleeps)  # gone before the client exits


async def test_the_client_going_away_kills_the_command(ha_sock: Path) -> None:
    proc, sleeps = await start_sleeping(ha_sock)
    proc.kill()
    await proc.wait()
    await asyncio.to_thread(wait_for, lambda: not any(pids_of(s) for s in sleeps),
                            execute.KILL_GRACE + 5, "the sleeps to be killed")


async def test_a_client_that_does_not_read_slows_the_command(ha_sock: Path) -> None:
    size = 64 * 1024 * 1024 + 17  # a count no other head on this machine uses
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(ha_sock, ["head", "-c", str(size), "/dev/zero"]), cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=1 << 16)
    head = ["head", "-c", str(size), "/dev/zero"]
    await asyncio.to_thread(wait_for, lambda: pids_of(head), 15, "the guest's head")
    rss_before = rss_bytes(os.getpid())
    await asyncio.sleep(1.5)  # the client's stdout pipe is full: everything waits
    assert pids_of(head), "head finished though nobody read its output"
    assert rss_bytes(os.getpid()) - rss_before < 16 * 1024 * 1024  # the host agent's side
    assert proc.stdout is not None
    total = 0
    while chunk := await proc.stdout.read(1 << 20):
        total += len(chunk)
    assert await proc.wait() == 0 and total == size


async def test_tty_is_interactive_and_follows_the_window(ha_sock: Path) -> None:
    pid, master = pty.fork()
    if pid == 0:  # the client, on a terminal of its own
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        os.chdir(REPO)
        os.execv(sys.executable, cli_argv(ha_sock, ["sh"], tty=True))
    try:
        assert await asyncio.to_thread(drive_shell, master, pid) == 5
    finally:
        os.close(master)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def drive_shell(master: int, pid: int) -> int:
    """Type into the remote shell as a user would; its exit status."""
    os.write(master, b"stty size; echo $((6*7))\r")
    out = read_until(master, b"42\r\n")
    assert b"30 90\r\n" in out  # the local terminal's size, from the start
    # A resize of the local terminal reaches the guest's (SIGWINCH).
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    read_size_until(master, b"33 111\r\n")
    os.write(master, b"sleep 100\r")
    time.sleep(0.5)
    os.write(master, b"\x03")  # ^C is a byte for the remote terminal: sleep ends, sh stays
    os.write(master, b"echo still-$((1+1))\r")
    read_until(master, b"still-2")
    os.write(master, b"exit 5\r")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


async def serve_on(path: Path, app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner


async def test_refusals_say_what_to_do(short_dir: Path) -> None:
    # exec off in roost.yaml: a usage error (exit 2), before the guest is asked.
    off = GuestAgentSession(UnixDialer(str(short_dir / "none.sock")),
                            EventEmitter(io.StringIO()), instance="dev", allow_exec=False,
                            changed=lambda: None)
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await execws.serve(request, off.start_exec)

    app.router.add_get("/v1/exec", handler)
    runner = await serve_on(short_dir / "off.sock", app)
    code, _, err = await cli(short_dir / "off.sock", ["true"], stdin=b"")
    assert code == 2 and b"guestAgent.allowExec: true" in err
    await runner.cleanup()
    # A host agent of an older roost (POST /v1/exec, no WebSocket).
    async def old_exec(request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    old = web.Application()
    old.router.add_post("/v1/exec", old_exec)
    runner = await serve_on(short_dir / "old.sock", old)
    code, _, err = await cli(short_dir / "old.sock", ["true"], stdin=b"")
    assert code == 1 and b"restart the instance" in err
    await runner.cleanup()
    # No host agent at all.
    code, _, err = await cli(short_dir / "gone.sock", ["true"], stdin=b"")
    assert code == 1 and b"cannot reach the host agent" in err
