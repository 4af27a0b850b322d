"""Guest agent services through the CLI: exec (dev only), idle/busy status, logs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import signal
import socket
import struct
import sys
import termios
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import HEALTH_FLAG, Roost, as_guest_root, small_vm, wait_until
from tests.terminal import read_size_until, read_until


def test_exec_output_exit_code_and_audit(roost: Roost, vm: str) -> None:
    proc = roost.run("exec", vm, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                     check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    audit = roost.run("exec", vm, "--", "cat", "/var/log/roost/exec.log").stdout
    assert '"exitCode": 7' in audit


def guest_has(roost: Roost, vm: str, command_line: str) -> bool:
    """Whether a process runs in the guest with exactly this command line."""
    return roost.run("exec", vm, "--", "pgrep", "-fx", command_line,
                     check=False).returncode == 0


def test_exec_timeout_kills_the_group(roost: Roost, vm: str) -> None:
    start = time.monotonic()
    proc = roost.run("exec", vm, "--timeout", "1", "--", "sh", "-c",
                     "sleep 1236 & sleep 1237", check=False)
    assert proc.returncode == 124 and "killed after 1s" in proc.stderr
    assert time.monotonic() - start < 15
    assert not guest_has(roost, vm, "sleep 1236") and not guest_has(roost, vm, "sleep 1237")


def test_exec_streams_stdin(roost: Roost, vm: str) -> None:
    assert roost.run("exec", vm, "--", "cat", input="hi\n").stdout == "hi\n"
    proc = roost.run("exec", vm, "--", "/no/such/program", check=False)
    assert proc.returncode == 127 and "cannot run /no/such/program" in proc.stderr


def test_exec_ctrl_c_kills_the_group_and_exits_130(roost: Roost, vm: str) -> None:
    proc = roost.popen("exec", vm, "--", "sh", "-c", "sleep 1234 & sleep 1235")
    try:
        wait_until(lambda: guest_has(roost, vm, "sleep 1235"), 60, "the guest's sleep")
        assert guest_has(roost, vm, "sleep 1234")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not guest_has(roost, vm, "sleep 1234") and not guest_has(roost, vm, "sleep 1235")


def test_exec_tty_is_interactive(roost: Roost, vm: str) -> None:
    pid, master = pty.fork()
    if pid == 0:  # roost exec -t on a terminal of its own, as a user runs it
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        os.execve(sys.executable, [sys.executable, "-m", "roost", "exec", "-t", vm, "--", "sh"],
                  roost.env)
    try:
        os.write(master, b"test -t 0 && echo tty-$((6*7)); stty size\r")
        out = read_until(master, b"tty-42\r\n30 90\r\n")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        out = read_size_until(master, b"33 111\r\n")
        os.write(master, b"sleep 1238\r")
        time.sleep(1)
        os.write(master, b"\x03")  # ^C goes to the guest's terminal: sleep ends, sh stays
        os.write(master, b"echo still-$((1+1))\r")
        out = read_until(master, b"still-2\r\n")
        os.write(master, b"exit 3\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3, out
    finally:
        os.close(master)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_exec_refused_when_disabled(roost: Roost) -> None:
    with small_vm(roost, "noexec"):
        proc = roost.run("exec", "noexec", "--", "true", check=False)
        assert proc.returncode == 2 and "allowExec: true" in proc.stderr


def status(roost: Roost, vm: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(roost.run("status", vm, "--json").stdout)
    return data


def test_busy_while_burning_cpu_then_idle(roost: Roost, vm: str) -> None:
    burn = roost.run("shell", vm, "--", "sh", "-c",
                     "(while :; do :; done) </dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while status(roost, vm)["state"] != "busy":
            assert time.monotonic() < deadline, "never busy"
            time.sleep(0.2)
    finally:
        roost.run("shell", vm, "--", "kill", burn)
    deadline = time.monotonic() + 10
    while (s := status(roost, vm))["state"] != "idle":
        assert time.monotonic() < deadline, "never idle again"
        time.sleep(0.2)
    assert s["lastBusyAt"] is not None


def test_logs_sources(roost: Roost, vm: str) -> None:
    host = roost.run("logs", vm, "--source", "hostagent", "-n", "5").stdout
    assert host.count("\n") <= 5 and "roost" in host
    agent = roost.run("logs", vm, "--source", "guestagent").stdout
    assert "roost-guestagent: serving" in agent
    roost.run("logs", vm, "--source", "serial")


# The guest agent's pid: python3 running its main (init's wrapper execs it).
GUEST_AGENT_PID = r"""
for d in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
    /usr/bin/python3*"roost_guest.agent import main"*) echo "${d#/proc/}";;
  esac
done
true
"""


def guest_agent_pid(roost: Roost, vm: str) -> str:
    return roost.run("shell", vm, "--", "sh", "-c", GUEST_AGENT_PID).stdout.strip()


def test_a_killed_guest_agent_is_followed_again(roost: Roost, vm: str) -> None:
    # init respawns the guest agent; the host agent, still connected to the
    # virtio-serial port, learns of it from its new epoch, opens a new
    # session and subscribes again: a port opened after is forwarded.
    old = guest_agent_pid(roost, vm)
    assert old.isdigit(), old
    # A check the killed agent had in flight: its own session, marked, now
    # init's child. The respawned agent ends it.
    orphan = roost.run("shell", vm, "--", "python3", "-c",
                       "import subprocess; print(subprocess.Popen(['sleep', '300'], "
                       "start_new_session=True, env={'ROOST_GUEST_COMMAND': '1'}).pid)"
                       ).stdout.strip()
    assert orphan.isdigit(), orphan
    roost.run("shell", vm, "--", *as_guest_root("kill", "-9", old))
    killed = time.monotonic()
    while not (new := guest_agent_pid(roost, vm)).isdigit() or new == old:
        assert time.monotonic() - killed < 30, "the guest agent was not respawned"
        time.sleep(0.2)
    respawned = time.monotonic()
    alive = f"test -d /proc/{orphan} && ! grep -q '^State:.*Z' /proc/{orphan}/status"
    while roost.run("shell", vm, "--", "sh", "-c", alive, check=False).returncode == 0:
        assert time.monotonic() - respawned < 10, "the killed agent's check is still running"
        time.sleep(0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    roost.run("shell", vm, "--", "sh", "-c",
              "python3 -c 'import socket, time; s = socket.socket(); "
              f"s.bind((\"127.0.0.1\", {port})); s.listen(1); time.sleep(60)' "
              "</dev/null >/dev/null 2>&1 &")
    listening = time.monotonic()
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() - listening < 10, "the new guest port was never forwarded"
        time.sleep(0.05)
    print(f"guest agent respawned {respawned - killed:.1f}s after the kill; a new port "
          f"forwarded {time.monotonic() - listening:.2f}s after it listened")
    # From the host agent's log: the restart noticed, then the new session.
    log = (roost.home / vm / "ha.stderr.log").read_text().splitlines()
    ended = max(i for i, line in enumerate(log) if "the guest agent restarted" in line)
    opened = next(line for line in log[ended:] if "guest agent session opened" in line)
    took = _log_time(opened) - _log_time(log[ended])
    print(f"a new session {took:.2f}s after the restart was noticed")
    assert took < 2


def _log_time(line: str) -> float:
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def health(roost: Roost, vm: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(roost.run("health", vm, "--json").stdout)
    return data


def check(roost: Roost, vm: str, name: str) -> dict[str, Any]:
    return next(c for c in health(roost, vm)["checks"] if c["name"] == name)


# The guest agent's (pid $1) `sleep 30` children older than 5 s, with their
# age. The stuck check is killed 0.5 s into each run and runs every 5 s: a
# leaked sleep lives 30 s, so a leak leaves several such processes, while an
# in-flight one, however late its kill under load, is younger. Only children
# of the running agent count: the agent the test before SIGKILLed could not
# kill the check it had in flight, whose sleep, now init's, runs out its 30 s.
# (The age is from /proc/PID/stat's start time, in the kernel's USER_HZ
# ticks, against /proc/uptime.)
OLD_SLEEPS = r"""
now=$(cut -d' ' -f1 /proc/uptime)
for d in /proc/[0-9]*; do
  [ "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" = "sleep 30 " ] || continue
  [ "$(cut -d')' -f2 "$d/stat" 2>/dev/null | cut -d' ' -f3)" = "$1" ] || continue
  start=$(cut -d')' -f2 "$d/stat" 2>/dev/null | cut -d' ' -f21)
  [ -n "$start" ] && awk -v now="$now" -v start="$start" -v pid="${d#/proc/}" \
    'BEGIN { if (now - start / 100 > 5) printf "%s %.1fs\n", pid, now - start / 100 }'
done
"""


def test_health_checks_grace_timeout_and_bad_file(roost: Roost, vm: str) -> None:
    deadline = time.monotonic() + 30
    while check(roost, vm, "web")["detail"] == "":
        assert time.monotonic() < deadline, "the web check never ran"
        time.sleep(0.3)
    assert check(roost, vm, "web")["status"] == "starting"  # failing within its grace
    roost.run("shell", vm, "--", "touch", HEALTH_FLAG)
    while check(roost, vm, "web")["status"] != "healthy":
        assert time.monotonic() < deadline, "web never became healthy"
        time.sleep(0.3)
    while check(roost, vm, "stuck")["status"] != "error":
        assert time.monotonic() < deadline, "the stuck check never failed"
        time.sleep(0.3)
    assert "timed out after 0.5s (killed)" in check(roost, vm, "stuck")["detail"]
    # Killed, not left behind: no `sleep 30` is older than a run of the check.
    time.sleep(6)  # a second run, so a leak would have left one old enough
    agent = guest_agent_pid(roost, vm)
    assert agent.isdigit(), agent
    assert roost.run("shell", vm, "--", "sh", "-c", OLD_SLEEPS, "sh", agent).stdout == ""
    deadline = time.monotonic() + 30
    roost.run("shell", vm, "--",
              *as_guest_root("sh", "-c", "echo '{oops' > /etc/roost/integrations.d/broken.json"))
    while not health(roost, vm)["errors"]:
        assert time.monotonic() < deadline, "the bad file was not reported"
        time.sleep(0.3)
    assert health(roost, vm)["errors"][0]["file"].endswith("broken.json")
    assert check(roost, vm, "web")["status"] == "healthy"  # a bad file is not fatal
    roost.run("shell", vm, "--", *as_guest_root("rm", "/etc/roost/integrations.d/broken.json"))
    # Pushed to the host: the host agent's events and `roost ls` know.
    assert roost.ls()[vm]["health"] == "error"
    table = roost.run("ls").stdout
    assert "HEALTH" in table
    events = (roost.home / vm / "ha.stdout.log").read_text()
    assert '"guestHealth"' in events and '"healthy"' in events


def test_probe_with_json_output(roost: Roost, vm: str) -> None:
    spec = json.dumps({"name": "free", "cmd": "echo '{\"ok\": true, \"n\": 3}'",
                       "interval_secs": 1, "output_format": "json"})
    roost.run("shell", vm, "--", *as_guest_root("sh", "-c", "cat > /etc/roost/probes.d/free.json"),
              input=spec)
    deadline = time.monotonic() + 30
    while True:
        result = json.loads(roost.run("probes", vm, "--json").stdout)
        probes = {p["name"]: p for p in result["probes"]}
        if probes.get("free", {}).get("ok"):
            break
        assert time.monotonic() < deadline, f"probe never succeeded: {result}"
        time.sleep(0.3)
    assert probes["free"]["output"] == {"ok": True, "n": 3}
    roost.run("shell", vm, "--", *as_guest_root("rm", "/etc/roost/probes.d/free.json"))


def test_diff_of_a_read_only_root(roost: Roost, tmp_path: Path) -> None:
    config = tmp_path / "ro.yaml"
    config.write_text("readOnlyRoot: true\n")
    with small_vm(roost, "ro", "--config", str(config)):
        roost.run("shell", "ro", "--", *as_guest_root(
                  "sh", "-c", "echo hello > /root/created.txt; echo more >> /etc/profile; "
                  "rm /etc/shells; rm -rf /usr/lib/roost/acpid-gone 2>/dev/null; "
                  "rm -rf /etc/acpi && mkdir -p /etc/acpi/PWRF && echo new > /etc/acpi/PWRF/x"))
        changes = {c["path"]: c for c in json.loads(roost.run("diff", "ro", "--json").stdout)}
        assert changes["/root/created.txt"] == {"path": "/root/created.txt",
                                                "kind": "created", "size": 6}
        assert changes["/etc/profile"]["kind"] == "modified"
        assert changes["/etc/shells"]["kind"] == "deleted"
        # /etc/acpi was replaced: an opaque directory hides the old files.
        assert changes["/etc/acpi/PWRF/00000080"]["kind"] == "deleted"
        assert changes["/etc/acpi/PWRF/x"]["kind"] == "created"
        # More changes than one frame carries: the answer comes in parts.
        roost.run("shell", "ro", "--", *as_guest_root(
                  "python3", "-c", "import os; os.makedirs('/root/many'); "
                  "[open('/root/many/f%04d' % i, 'w').close() for i in range(2500)]"))
        paths = list(json.loads(roost.run("diff", "ro", "--json").stdout))
        assert paths == sorted(paths, key=lambda c: c["path"])
        assert sum(p["path"].startswith("/root/many/") for p in paths) == 2500
        human = roost.run("diff", "ro").stdout
        assert "+ /root/created.txt  (6B)" in human and "- /etc/shells" in human


def test_diff_without_overlay_explains(roost: Roost, vm: str) -> None:
    proc = roost.run("diff", vm, check=False)
    assert proc.returncode == 2 and "readOnlyRoot: true" in proc.stderr
