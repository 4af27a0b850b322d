"""The host agent's first QMP connect: QEMU bind()s its socket before it
listen()s, and a connect in between is refused. Seen in CI on a loaded
machine as "cannot connect to QMP ... Connection refused" at `roost start`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from roost.driver.base import DriverError
from roost.driver.qemu.cmdline import BootSpec, QemuSpec
from roost.driver.qemu.driver import QemuDriver
from roost.driver.qemu.sandbox import OPT_OUT_ENV

# A stand-in for QEMU that leaves a bound, not yet listening, socket for a
# while, then answers QMP's greeting, qmp_capabilities and quit.
SLOW_LISTENER = r'''
import json, socket, sys, time
path = next(a for a in sys.argv if a.startswith("unix:")).split(",")[0][5:]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
time.sleep(float(sys.argv[1]))
s.listen(1)
c, _ = s.accept()
def send(msg):
    c.sendall(json.dumps(msg).encode() + b"\n")
send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
              "capabilities": []}})
buf, decoder = "", json.JSONDecoder()
while chunk := c.recv(4096).decode():
    buf += chunk
    while buf.strip():  # qemu.qmp ends a command with no newline
        cmd, end = decoder.raw_decode(buf.lstrip())
        buf = buf.lstrip()[end:]
        reply = {"return": {}}
        if "id" in cmd:
            reply["id"] = cmd["id"]
        send(reply)
        if cmd["execute"] == "quit":
            sys.exit(0)
'''


def stand_in(tmp: Path, listen_after: float) -> str:
    qemu = tmp / "qemu-system-x86_64"
    script = tmp / "slow_listener.py"
    script.write_text(SLOW_LISTENER)
    # build_argv puts -sandbox/-name first; the delay goes in as argv[1].
    qemu.write_text(f"#!/bin/sh\nexec {sys.executable} {script} {listen_after} \"$@\"\n")
    qemu.chmod(0o755)
    return str(qemu)


def spec(tmp: Path, qemu: str) -> QemuSpec:
    return QemuSpec(
        name="dev", qemu=qemu, accel="tcg", cpus=1, memory=256 * 1024**2,
        disk=tmp / "disk.qcow2", cidata=tmp / "cidata.iso", ssh_port=40022,
        qmp_sock=tmp / "qmp.sock", ga_sock=tmp / "ga.sock", serial_sock=tmp / "serial.sock",
        serial_log=tmp / "serial.log", pidfile=tmp / "qemu.pid",
        boot=BootSpec(kernel=tmp / "vmlinux", initrd=tmp / "initrd"),
    )


async def test_a_socket_bound_but_not_yet_listening_is_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(OPT_OUT_ENV, "off")  # the stand-in has no -sandbox
    driver = QemuDriver(spec(tmp_path, stand_in(tmp_path, 0.5)), tmp_path / "qemu.log")
    await driver.start()
    try:
        assert await driver._qmp_command("query-status")
    finally:
        await driver.quit()
    assert driver._exit is not None and driver._exit.result() == 0
    assert not (tmp_path / "qmp.sock").exists()
    # The refused attempts are expected, not errors in the host agent's log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_qemu_that_exits_is_reported_with_its_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPT_OUT_ENV, "off")
    qemu = tmp_path / "qemu-system-x86_64"
    # Binds the socket, never listens, and fails the way QEMU does.
    qemu.write_text(f"#!/bin/sh\n{sys.executable} -c 'import socket,sys; "
                    f"socket.socket(socket.AF_UNIX).bind(\"{tmp_path}/qmp.sock\")'\n"
                    "sleep 0.3; echo 'qemu-system-x86_64: -drive: no such file' >&2; exit 1\n")
    qemu.chmod(0o755)
    driver = QemuDriver(spec(tmp_path, str(qemu)), tmp_path / "qemu.log")
    with pytest.raises(DriverError) as e:
        await driver.start()
    assert "QEMU exited with status 1 while starting" in str(e.value)
    assert "-drive: no such file" in str(e.value)
