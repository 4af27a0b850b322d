"""Exec over the guest agent protocol: the real guest agent on a Unix socket
and the host's GuestExec, with stdin, kills, time limits, a pty and flow
control."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from roost.driver.channel import UnixDialer
from roost.hostagent.execstream import CannotRun, ExecSpec, GuestExec
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError, StreamReset, TunnelStream
from roost_guest import execute, protocol
from tests.unit.exec_helpers import marker, pids_of, rss_bytes, wait_for
from tests.unit.guest_agent_process import guest_agent_on


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[GuestAgentClient]:
    path = str(tmp_path / "ga.sock")
    with guest_agent_on(path, "--allow-exec", "--audit-log", str(tmp_path / "audit.log")):
        c = GuestAgentClient(UnixDialer(path))
        await c.connect()
        yield c
        await c.close()


async def drain(stream: TunnelStream | None) -> bytes:
    out = b""
    while stream is not None and (data := await stream.recv()) is not None:
        out += data
        await stream.ack(len(data))
    return out


async def run_to_end(run: GuestExec, stdin: bytes = b"", eof: bool = True
                     ) -> tuple[bytes, bytes, dict[str, Any]]:
    async def feed() -> None:
        await run.stdio.send(stdin)
        if eof:
            await run.stdio.send_eof()

    _, out, err = await asyncio.gather(feed(), drain(run.stdio), drain(run.stderr))
    return out, err, await run.wait()


async def test_output_exit_code_and_audit(client: GuestAgentClient, tmp_path: Path) -> None:
    run = await GuestExec.start(client, ExecSpec(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    out, err, exit_ = await run_to_end(run)
    assert (out, err, exit_["exitCode"], exit_["killed"]) == (b"out\n", b"err\n", 3, False)
    await run.close()
    record = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert record["argv"] == ["sh", "-c", "echo out; echo err >&2; exit 3"]
    assert record["exitCode"] == 3 and record["tty"] is False


async def test_stdin_is_streamed_and_flow_controlled(client: GuestAgentClient) -> None:
    # Several windows each way at once: cat echoes while the host still sends.
    data = bytes(range(256)) * (4 * protocol.WINDOW // 256 + 7)
    run = await GuestExec.start(client, ExecSpec(["cat"]))
    out, err, exit_ = await run_to_end(run, data)
    assert out == data and err == b"" and exit_["exitCode"] == 0
    # A command that never reads stdin: what is sent is still granted back.
    run = await GuestExec.start(client, ExecSpec(["sh", "-c", "exec 0<&-; sleep 60"]))
    await asyncio.wait_for(run.stdio.send(b"x" * 3 * protocol.WINDOW), 30)
    await run.kill("KILL")
    _, _, exit_ = await run_to_end(run, eof=False)
    assert exit_["killed"] is True
    # Once it has exited, stdin still on its way fails at once: no credit comes back.
    run = await GuestExec.start(client, ExecSpec(["true"]))
    _, _, exit_ = await run_to_end(run, eof=False)
    with pytest.raises(StreamReset, match="the command has exited"):
        await asyncio.wait_for(run.stdio.send(b"x" * 3 * protocol.WINDOW), 10)
    await run.close()


async def test_a_missing_program_exits_127(client: GuestAgentClient) -> None:
    with pytest.raises(CannotRun, match="cannot run /no/such/program") as caught:
        await GuestExec.start(client, ExecSpec(["/no/such/program"]))
    assert caught.value.exit_code == 127
    assert await client.request("ping") == {"pong": True}


async def test_exec_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = str(tmp_path / "ga.sock")
    with guest_agent_on(path):
        c = GuestAgentClient(UnixDialer(path))
        await c.connect()
        with pytest.raises(GuestAgentError, match="exec is disabled"):
            await GuestExec.start(c, ExecSpec(["true"]))
        await c.close()


def group_command() -> tuple[list[str], list[list[str]]]:
    """A shell whose child and grandchild sleep: argv, and the two sleeps' argv."""
    a, b = marker(), marker()
    return ["sh", "-c", f"sleep {a} & sh -c 'sleep {b}'"], [["sleep", a], ["sleep", b]]


def all_running(sleeps: list[list[str]]) -> bool:
    return all(pids_of(s) for s in sleeps)


def none_running(sleeps: list[list[str]]) -> bool:
    return not any(pids_of(s) for s in sleeps)


async def test_kill_ends_the_whole_process_group(client: GuestAgentClient) -> None:
    argv, sleeps = group_command()
    run = await GuestExec.start(client, ExecSpec(argv))
    await asyncio.to_thread(wait_for, lambda: all_running(sleeps), 5, "the sleeps")
    started = time.monotonic()
    await run.kill("INT")  # sh's background job ignores SIGINT: SIGKILL ends it
    _, _, exit_ = await run_to_end(run)
    assert exit_["killed"] and not exit_["timedOut"]
    assert exit_["exitCode"] == 128 + 2 and exit_["signal"] == 2  # the shell died of SIGINT
    assert none_running(sleeps)
    assert time.monotonic() - started < execute.KILL_GRACE + 2


async def test_the_host_going_away_kills_the_command(client: GuestAgentClient) -> None:
    argv, sleeps = group_command()
    await GuestExec.start(client, ExecSpec(argv))
    await asyncio.to_thread(wait_for, lambda: all_running(sleeps), 5, "the sleeps")
    await client.close()
    await asyncio.to_thread(wait_for, lambda: none_running(sleeps), execute.KILL_GRACE + 3,
                            "the sleeps to be killed")


async def test_timeout_kills_the_group_even_what_ignores_sigterm(
        client: GuestAgentClient) -> None:
    argv, sleeps = group_command()
    argv[2] = "trap '' TERM; " + argv[2]  # ignored signals stay ignored in the children
    started = time.monotonic()
    run = await GuestExec.start(client, ExecSpec(argv, timeout=0.5))
    _, _, exit_ = await run_to_end(run, eof=False)
    elapsed = time.monotonic() - started
    assert exit_["exitCode"] == execute.TIMEOUT_EXIT and exit_["timedOut"]
    assert exit_["signal"] == 9  # SIGTERM was ignored; SIGKILL after the grace
    assert none_running(sleeps)
    assert 0.5 + execute.KILL_GRACE - 0.1 < elapsed < 0.5 + execute.KILL_GRACE + 3


async def read_until(stream: TunnelStream, text: bytes) -> bytes:
    out = b""
    while text not in out:
        data = await stream.recv()
        assert data is not None, f"EOF before {text!r}, after {out!r}"
        out += data
        await stream.ack(len(data))
    return out


async def test_pty_is_a_terminal_and_resizes(client: GuestAgentClient) -> None:
    script = "test -t 0 && test -t 1 && test -t 2 && echo tty-yes; echo $TERM; stty size; " \
             "read line; echo got-$line; stty size"
    run = await GuestExec.start(client, ExecSpec(["sh", "-c", script], tty=True, rows=24,
                                                 cols=80, term="xterm-256color"))
    assert run.stderr is None  # one stream: the terminal
    head = await read_until(run.stdio, b"24 80\r\n")
    assert head == b"tty-yes\r\nxterm-256color\r\n24 80\r\n"
    await run.resize(40, 100)
    await run.stdio.send(b"hello\n")
    out, _, exit_ = await run_to_end(run, eof=False)
    assert out == b"hello\r\ngot-hello\r\n40 100\r\n" and exit_["exitCode"] == 0


async def test_pty_gets_eof_and_signals(client: GuestAgentClient) -> None:
    run = await GuestExec.start(client, ExecSpec(["cat"], tty=True))
    out, _, exit_ = await run_to_end(run, b"line\n")  # EOF is ^D on the terminal
    assert out == b"line\r\nline\r\n" and exit_["exitCode"] == 0
    a = marker()
    run = await GuestExec.start(client, ExecSpec(["sleep", a], tty=True))
    await run.signal("TERM")
    _, _, exit_ = await run_to_end(run, eof=False)
    assert exit_["signal"] == 15 and exit_["exitCode"] == 128 + 15 and not exit_["killed"]


async def test_an_output_flood_blocks_the_command_not_the_host(
        client: GuestAgentClient) -> None:
    size = 20 * protocol.WINDOW
    agent_pid = (await client.request("info"))["pid"]
    rss_before = rss_bytes(agent_pid)
    run = await GuestExec.start(client, ExecSpec(
        ["sh", "-c", f"head -c {size} /dev/zero; echo done >&2"]))
    await asyncio.sleep(1.0)  # nothing read: the guest may send one window, then waits
    assert run.stdio._queued <= protocol.WINDOW  # what the host holds
    assert not run.exited and run.stderr is not None and run.stderr._queued == 0
    assert rss_bytes(agent_pid) - rss_before < 8 * 1024 * 1024
    out, err, exit_ = await run_to_end(run)
    assert len(out) == size and out.count(0) == size
    assert err == b"done\n" and exit_["exitCode"] == 0


async def test_bad_requests_are_refused(client: GuestAgentClient) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"argv": []}, "non-empty list"),
        ({"argv": ["x"], "stream": "s"}, "needs stream"),
        ({"argv": ["x"], "stream": 2, "stderr": 2}, "two different"),
        ({"argv": ["x"], "stream": 3, "stderr": 4}, "needs stream: a host stream id"),
        ({"argv": ["x"], "stream": 2, "stderr": 0}, "needs stderr: a host stream id"),
        ({"argv": ["x"], "stream": 2, "stderr": 4, "seconds": -1}, ">= 0"),
        ({"argv": ["x"], "stream": 2, "tty": True, "term": "a b"}, "term")]
    for params, error in bad:
        with pytest.raises(GuestAgentError, match=error):
            await client.request("exec", **params)
    assert await client.request("ping") == {"pong": True}


async def test_wrong_controls_are_refused_and_the_command_runs_on(
        client: GuestAgentClient, caplog: pytest.LogCaptureFixture) -> None:
    """The guest's router takes exec controls like stream controls: a wrong
    field is refused for that command (exec-refused), a bad stream id is an
    error reply, one for a stream the guest does not know is dropped; none
    ends the command or the session."""
    run = await GuestExec.start(client, ExecSpec(["cat"]))
    unknown = client.new_stream()  # a host stream id the guest knows nothing of
    await client.notify("exec-signal", stream=run.stdio.id, signal="NOPE")
    await client.notify("exec-resize", stream=run.stdio.id, rows=-1, cols=5)
    await client.notify("exec-kill", stream=unknown.id, signal="KILL")
    await client.notify("exec-kill", stream=[run.stdio.id], signal="KILL")
    assert await client.request("ping") == {"pong": True}
    assert client.connected and not run.exited
    out, _, exit_ = await run_to_end(run, b"still here\n")
    assert (out, exit_["exitCode"], exit_["killed"]) == (b"still here\n", 0, False)
    assert sum("refused a control" in r.getMessage() for r in caplog.records) == 2
    assert sum("refused a frame" in r.getMessage() for r in caplog.records) == 1
    await run.close()
    await unknown.reset()
