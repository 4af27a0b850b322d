"""Every wait is bounded, and its timeout says what it last saw: readiness
requirements, `roost start --timeout` over image preparation, `ssh -O
forward` against a stuck master, and stopping an adopted virtiofsd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from roost.hostagent.mounts import virtiofsd
from roost.hostagent.mounts.virtiofsd import Virtiofsd
from roost.hostagent.portfwd import forward
from roost.hostagent.portfwd.forward import SSHForward
from roost.hostagent.requirements import NotReady, Requirement, wait_for
from roost.image.cloud import host_arch
from roost.store.instance import pid_running
from tests.unit.imageserver import serving, sha256

# -- readiness requirements ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def banner_check(port: int) -> Requirement:
    """A real check: connect to 127.0.0.1:port and read a line (no timeout of its own)."""
    async def check() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if not (await reader.readline()).startswith(b"SSH-"):
                raise NotReady("no SSH banner")
        finally:
            writer.close()

    return Requirement("ssh", "essential", "the SSH server answers", check,
                       "look at serial.log", timeout=0.6, retry_interval=0.05)


def test_a_timeout_names_the_requirement_the_time_and_the_last_error() -> None:
    result = asyncio.run(wait_for(banner_check(free_port())))  # nothing listens there
    assert not result.ok and result.attempts > 1
    assert 0.5 <= result.seconds < 1.5
    assert result.error.startswith("the SSH server answers: not ready after 0.")
    assert "limit 0.6s" in result.error
    assert "last error: ConnectionRefusedError" in result.error


def test_a_check_cut_off_by_the_deadline_keeps_the_error_before_it() -> None:
    port = free_port()

    async def scenario() -> tuple[str, float]:
        # Refused at first; then a server that accepts and never says a word.
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        def listen() -> None:
            silent.bind(("127.0.0.1", port))
            silent.listen()

        asyncio.get_running_loop().call_later(0.25, listen)
        try:
            result = await wait_for(banner_check(port))
        finally:
            silent.close()
        return result.error, result.seconds

    error, seconds = asyncio.run(scenario())
    assert seconds < 1.5
    assert "not ready after 0." in error and "TimeoutError: \n" not in error + "\n"
    assert "last error: ConnectionRefusedError" in error


def test_a_first_check_that_never_ends_says_so() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        result = asyncio.run(wait_for(banner_check(silent.getsockname()[1])))
    assert not result.ok and result.attempts == 1
    assert result.error.endswith("last error: none (the first check had not finished)")


def test_the_start_deadline_shortens_a_requirement_and_says_so() -> None:
    req = banner_check(free_port())
    long = Requirement(req.name, req.kind, req.description, req.check, req.debug_hint,
                       timeout=60.0)
    started = time.monotonic()
    result = asyncio.run(wait_for(long, deadline_left=0.4))
    assert time.monotonic() - started < 1.5
    assert "limit 0.4s, the rest of the start deadline" in result.error


def test_a_permanent_failure_ends_the_wait_with_its_reason() -> None:
    async def check() -> None:
        raise NotReady("provisioning step 10-user failed", permanent=True)

    req = Requirement("final", "final", "boot scripts finished", check, "", timeout=30.0)
    result = asyncio.run(wait_for(req))
    assert result.attempts == 1 and result.seconds < 1
    assert result.error == "boot scripts finished: provisioning step 10-user failed"


# -- roost start --timeout covers the image download ----------------------------------


def test_start_timeout_covers_a_slow_image_download(tmp_path: Path) -> None:
    image = os.urandom(4 * 1024 * 1024)  # 64 chunks, one every 0.5 s: half a minute
    home, cache = tmp_path / "h", tmp_path / "c"
    with serving({"disk.img": image}) as server:
        server.faults.chunk_delay = 0.5
        config = tmp_path / "slow.yaml"
        config.write_text(yaml.safe_dump({"images": [{
            "location": server.url("disk.img"), "digest": sha256(image), "arch": host_arch()}]}))
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "roost", "start", "slow", "--config", str(config),
             "--timeout", "3"],
            env={**os.environ, "ROOST_HOME": str(home), "ROOST_CACHE": str(cache)},
            capture_output=True, text=True, timeout=20, check=False)
        took = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert took < 8, f"--timeout 3 took {took:.1f}s"
    assert ("did not finish in 3s (--timeout): time ran out while preparing the image "
            "and the instance disk (last step: downloading") in r.stderr
    assert "Traceback" not in r.stderr
    inst = home / "slow"
    assert not (inst / "disk.qcow2").exists() and not (inst / "disk.qcow2.tmp").exists()
    assert not (inst / "ha.pid").exists()  # no host agent was started


# -- ssh -O forward against a stuck master ---------------------------------------------


@contextlib.contextmanager
def stuck_master(path: Path) -> Iterator[None]:
    """A ControlMaster socket that accepts a client and never answers it."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    try:
        yield
    finally:
        listener.close()


def test_ssh_forward_gives_up_on_a_master_that_does_not_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "SSH_CONTROL_SECONDS", 1.0)
    control = tmp_path / "ssh.sock"
    fwd = SSHForward(["ssh", "-F", "/dev/null", "-o", f"ControlPath={control}", "guest"],
                     "127.0.0.1", free_port(), "127.0.0.1", 8080)

    async def scenario() -> None:
        with stuck_master(control):
            started = time.monotonic()
            with pytest.raises(OSError) as e:
                await asyncio.wait_for(fwd.start(), 10)
            assert time.monotonic() - started < 5
            assert "the SSH master did not answer in 1s" in str(e.value)
            assert fwd.spec in str(e.value)

    asyncio.run(scenario())


# -- an adopted virtiofsd that will not die ---------------------------------------------


def test_stopping_an_adopted_daemon_that_outlives_sigkill_is_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # A process stuck in the kernel outlives SIGKILL; one cannot be made on
    # demand, so SIGKILL is withheld from this one (it ignores SIGTERM).
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    sent: list[int] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        sent.append(sig)
        if sig != signal.SIGKILL:
            real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(virtiofsd, "STOP_SECONDS", 0.3)
    monkeypatch.setattr(virtiofsd, "KILL_SECONDS", 0.3)
    daemon = Virtiofsd("/usr/lib/qemu/virtiofsd", tmp_path / "mnt0.vfs.sock", str(tmp_path),
                       tmp_path / "log")
    daemon.pidfile.write_text(f"{stubborn.pid}\n")
    daemon._adopted = stubborn.pid
    try:
        started = time.monotonic()
        with caplog.at_level(logging.ERROR):
            asyncio.run(asyncio.wait_for(daemon.stop(), 5))
        assert time.monotonic() - started < 2
        assert sent == [signal.SIGTERM, signal.SIGKILL]
        assert pid_running(stubborn.pid)
        assert daemon.pidfile.exists()  # still findable by whoever looks next
        assert any(f"pid {stubborn.pid}" in r.getMessage() and "outlived SIGTERM and SIGKILL"
                   in r.getMessage() for r in caplog.records)
    finally:
        real_kill(stubborn.pid, signal.SIGKILL)  # os.kill itself is the wrapper here
        stubborn.wait()
