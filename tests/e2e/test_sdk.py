"""The Python SDK (roost.sdk) against real VMs on the built-in image:
commands with streamed output, exit codes, stdin, background commands
killed, a pty; files through the guest agent (binary, 10 MB, permissions,
watch); pause and resume keep a process; a fork is an independent copy;
idle suspend and auto-resume on connect; files with exec disabled; and a
sandbox cut off the network. (tests/e2e/test_debian.py runs it on
debian-12.)"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from roost.sdk import (
    CommandError,
    CommandExited,
    RequestRefused,
    Sandbox,
    WrongState,
)
from roost.store.instance import Instance, Status
from tests.e2e.conftest import START_TIMEOUT, Roost, as_guest_root, wait_until
from tests.e2e.hostdns import HOSTS_ADDRESS, HOSTS_NAME, guest_getent

NAME = "sdk"
LISTEN_18777 = ("import socket, time\ns = socket.socket()\n"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "s.bind(('0.0.0.0', 18777))\ns.listen()\ntime.sleep(600)\n")


@pytest.fixture(scope="module")
def home(roost: Roost) -> Iterator[Roost]:
    """The SDK reads ROOST_HOME as roost does: the suite's home, for this module."""
    old = os.environ.get("ROOST_HOME")
    os.environ["ROOST_HOME"] = str(roost.home)
    try:
        yield roost
    finally:
        if old is None:
            os.environ.pop("ROOST_HOME", None)
        else:
            os.environ["ROOST_HOME"] = old


@pytest.fixture(scope="module")
def sb(home: Roost) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(name=NAME, memory="512MiB", disk="4GiB",
                             env={"GREETING": "hello from the sdk"},
                             sets=[f"hostResolver.hosts={{{HOSTS_NAME}: {HOSTS_ADDRESS}}}"],
                             start_timeout=START_TIMEOUT)
    try:
        yield sandbox
    finally:
        sandbox.close()
        home.run("delete", "--force", NAME, timeout=120, check=False)


def test_create_gives_a_running_instance_roost_lists(home: Roost, sb: Sandbox) -> None:
    assert sb.status() == Status.RUNNING
    row = home.ls()[NAME]
    assert row["status"] == "Running"
    config = (home.home / NAME / "roost.yaml").read_text()
    assert "allowFiles: true" in config and "GREETING" in config


def test_run_streams_output_and_gives_the_exit_code(sb: Sandbox) -> None:
    chunks: list[bytes] = []
    errs: list[bytes] = []
    result = sb.commands.run("for i in 1 2 3; do echo line $i; sleep 0.2; done; "
                             "echo oops >&2; exit 3", on_stdout=chunks.append,
                             on_stderr=errs.append)
    assert result.exit_code == 3 and not result.ok
    assert result.stdout == b"line 1\nline 2\nline 3\n" == b"".join(chunks)
    assert len(chunks) >= 2  # streamed as written, not once at the end
    assert result.stderr == b"oops\n" == b"".join(errs)
    assert sb.commands.run(["sh", "-c", "echo $GREETING"]).text == "hello from the sdk\n"
    assert sb.commands.run("pwd", cwd="/tmp").text == "/tmp\n"
    assert sb.commands.run("echo $A", env={"A": "b c"}).text == "b c\n"
    with pytest.raises(CommandExited) as exited:
        sb.commands.run("exit 7", check=True)
    assert exited.value.result.exit_code == 7
    with pytest.raises(CommandError) as missing:
        sb.commands.run(["/no/such/program"])
    assert missing.value.exit_status == 127
    timed = sb.commands.run(["sleep", "30"], timeout=1)
    assert timed.timed_out and timed.exit_code != 0


def test_stdin_and_a_background_command_killed(sb: Sandbox) -> None:
    data = os.urandom(300_000)
    digest = sb.commands.run(["sha256sum"], stdin=data).text.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    reader = sb.commands.run("read line; echo got $line", background=True)
    reader.send_stdin("a line\n")
    assert reader.wait().text == "got a line\n"
    sleeper = sb.commands.run(["sleep", "600"], background=True)
    assert sleeper.pid > 0 and not sleeper.exited
    assert sb.commands.run(["kill", "-0", str(sleeper.pid)]).ok
    ended = sleeper.kill()
    assert ended.killed and ended.signal == 15
    assert not sb.commands.run(["kill", "-0", str(sleeper.pid)]).ok


def test_a_pty(sb: Sandbox) -> None:
    screen = bytearray()
    term = sb.commands.pty(["/bin/sh"], rows=30, cols=100, on_data=screen.extend)
    try:
        term.send_stdin("stty size; tty; echo $((6*7))\n")
        wait_until(lambda: b"42" in screen, 30, "the pty's answer")
        assert b"30 100" in screen and b"/dev/pts/" in screen
        term.resize(40, 120)
        term.send_stdin("stty size; exit 5\n")
        result = term.wait(timeout=30)
        assert result.exit_code == 5 and b"40 120" in screen
    finally:
        term.close()


def test_files_round_trip(sb: Sandbox) -> None:
    data = os.urandom(10 * 1024 * 1024)
    started = time.monotonic()
    sb.files.make_dir("/tmp/sdk")
    info = sb.files.write("/tmp/sdk/blob.bin", data, mode=0o600)
    assert info.size == len(data) and info.mode == 0o600
    assert sb.files.read("/tmp/sdk/blob.bin") == data
    print(f"10 MB written and read back in {time.monotonic() - started:.2f}s")
    guest = sb.commands.run(["sha256sum", "/tmp/sdk/blob.bin"]).text.split()[0]
    assert guest == hashlib.sha256(data).hexdigest()
    assert sb.commands.run(["stat", "-c", "%a", "/tmp/sdk/blob.bin"]).text == "600\n"
    sb.files.write("/tmp/sdk/note.txt", "text\n")
    assert sb.files.read_text("/tmp/sdk/note.txt") == "text\n"
    assert [(e.name, e.type) for e in sb.files.list("/tmp/sdk")] == [
        ("blob.bin", "file"), ("note.txt", "file")]
    sb.files.rename("/tmp/sdk/note.txt", "/tmp/sdk/moved.txt")
    assert not sb.files.exists("/tmp/sdk/note.txt") and sb.files.exists("/tmp/sdk/moved.txt")
    with pytest.raises(FileNotFoundError):
        sb.files.stat("/tmp/sdk/note.txt")
    with pytest.raises(RequestRefused) as refused:
        sb.files.read("/tmp/sdk/none")
    assert refused.value.status == 404
    sb.files.remove("/tmp/sdk", recursive=True)
    assert not sb.files.exists("/tmp/sdk")


def test_a_new_file_belongs_to_its_directory_owner(sb: Sandbox) -> None:
    """The guest user's (the host user's name), in its home; root's in /tmp."""
    user = pwd.getpwuid(os.getuid()).pw_name
    home = sb.commands.run(f"getent passwd {user} | cut -d: -f6").text.strip()
    assert home, f"no guest user {user}"
    sb.files.write(f"{home}/from-sdk.txt", "mine")
    owner = sb.commands.run(["stat", "-c", "%U", f"{home}/from-sdk.txt"]).text.strip()
    assert owner == user
    sb.files.remove(f"{home}/from-sdk.txt")


def test_a_watch_sees_a_write(sb: Sandbox) -> None:
    sb.files.make_dir("/tmp/watched")
    with sb.files.watch("/tmp/watched") as watch:
        sb.commands.run("echo hi > /tmp/watched/new.txt")
        change = watch.next(timeout=30)
        assert (change.path, change.kind) == ("/tmp/watched/new.txt", "created")
        sb.commands.run("echo more >> /tmp/watched/new.txt")
        change = watch.next(timeout=30)
        assert (change.path, change.kind) == ("/tmp/watched/new.txt", "modified")
    sb.files.remove("/tmp/watched", recursive=True)


def test_ports_are_the_forwards_with_host_addresses(sb: Sandbox) -> None:
    server = sb.commands.run(["python3", "-c", LISTEN_18777], background=True)
    try:
        def forwarded() -> bool:
            return any(p.guest_port == 18777 for p in sb.ports())
        wait_until(forwarded, 30, "the guest's port 18777 forwarded")
        port = next(p for p in sb.ports() if p.guest_port == 18777)
        assert port.protocol == "tcp" and port.host_addr.startswith("127.0.0.1:")
        assert port.via == "agent"
    finally:
        server.kill()


def test_pause_and_resume_keep_a_process(sb: Sandbox) -> None:
    """The guest's memory is kept: a detached process, a file on a tmpfs and
    the boot id are there after the resume. (A command the SDK follows ends
    at the pause: its connection goes with the host agent; see docs/sdk.md.)"""
    pid = sb.commands.run("setsid sleep 3000 </dev/null >/dev/null 2>&1 & echo $!").text.strip()
    sb.commands.run("echo in-ram > /run/sdk-marker")
    boot_id = sb.files.read_text("/proc/sys/kernel/random/boot_id")
    followed = sb.commands.run(["sleep", "3000"], background=True)
    paused = sb.pause()
    assert sb.status() == Status.SUSPENDED and paused.seconds > 0
    with pytest.raises(CommandError):
        followed.wait(timeout=30)
    started = time.monotonic()
    again = Sandbox.connect(NAME)  # auto-resume
    print(f"pause {paused.seconds:.2f}s, resume {time.monotonic() - started:.2f}s")
    assert again.status() == Status.RUNNING
    assert again.commands.run(["kill", "-0", pid]).ok
    assert again.files.read_text("/run/sdk-marker") == "in-ram\n"
    assert again.files.read_text("/proc/sys/kernel/random/boot_id") == boot_id
    again.commands.run(["kill", pid])


def test_zy_a_fork_of_a_snapshot_runs_on_from_it_as_a_new_machine(home: Roost,
                                                                  sb: Sandbox) -> None:
    """Taken while the sandbox runs, a snapshot holds its memory: the fork
    runs on from there (a tmpfs file, a process), with the disk as it was
    then and an identity of its own, while the source runs on; the fork's
    disk does not keep the source's snapshot."""
    sb.commands.run("echo then > /etc/sdk-snap; echo in-ram > /run/sdk-snap-ram; sync")
    pid = sb.commands.run("setsid sleep 3000 </dev/null >/dev/null 2>&1 & echo $!").text.strip()
    snap = sb.snapshot("fork-me")
    assert snap.kind == "vm"
    sb.commands.run("echo later > /etc/sdk-snap-later; rm /run/sdk-snap-ram; sync")
    started = time.monotonic()
    fork = Sandbox.fork(snap, name="sdk-snapfork", start_timeout=START_TIMEOUT)
    try:
        out = fork.commands.run("cat /run/sdk-snap-ram /etc/sdk-snap").text
        print(f"fork of a snapshot to its first output: {time.monotonic() - started:.2f}s")
        assert out == "in-ram\nthen\n"
        assert not fork.files.exists("/etc/sdk-snap-later")
        assert fork.commands.run(["kill", "-0", pid]).ok
        assert fork.commands.run(["hostname"]).text == "sdk-snapfork\n"
        assert home.run("shell", "sdk-snapfork", "--", "hostname").stdout == "sdk-snapfork\n"
        assert "fork-me" not in home.run("snapshot", "list", "sdk-snapfork").stdout
        fork.files.write("/etc/sdk-only-in-snapfork", "fork\n")
        assert sb.status() == Status.RUNNING
        assert sb.files.read_text("/etc/sdk-snap-later") == "later\n"
        assert not sb.files.exists("/etc/sdk-only-in-snapfork")
        assert sb.commands.run(["hostname"]).text == f"{NAME}\n"
        # The source holds the resolver port the snapshot's guest names: the
        # fork's guest was moved to its own host agent's, which answers
        # with the source gone.
        sb.pause()
        try:
            # A name only hostResolver knows (slirp's DNS, the fallback, does not).
            assert guest_getent(home, "sdk-snapfork", HOSTS_NAME) == [HOSTS_ADDRESS]
        finally:
            sb.resume(start_timeout=START_TIMEOUT)
    finally:
        fork.kill()
        sb.commands.run(["kill", pid])
        home.run("snapshot", "delete", NAME, "--tag", "fork-me", timeout=120)
    assert not Instance.at("sdk-snapfork").exists()


def test_zz_a_fork_of_a_paused_sandbox_runs_on_as_a_new_machine(home: Roost,
                                                                sb: Sandbox) -> None:
    """Its memory (a tmpfs file, a process), its source's disk as a copy, and
    an identity of its own: host name, MAC, SSH host key (roost shell pins
    the fork's), instance-id; and what it writes is not in the source."""
    sb.commands.run("echo parent > /etc/sdk-mark; echo in-ram > /run/sdk-fork-ram; sync")
    pid = sb.commands.run("setsid sleep 3000 </dev/null >/dev/null 2>&1 & echo $!").text.strip()
    mac = sb.commands.run(["cat", "/sys/class/net/eth0/address"]).text
    with pytest.raises(WrongState, match="stopped or suspended"):
        Sandbox.fork(sb)  # a running one
    sb.pause()
    started = time.monotonic()
    fork = Sandbox.fork(sb, name="sdk-fork", start_timeout=START_TIMEOUT)
    try:
        out = fork.commands.run("cat /run/sdk-fork-ram /etc/sdk-mark").text
        print(f"fork of a paused sandbox to its first output: {time.monotonic() - started:.2f}s")
        assert out == "in-ram\nparent\n"
        assert fork.commands.run(["kill", "-0", pid]).ok
        assert fork.commands.run(["hostname"]).text == "sdk-fork\n"
        assert fork.commands.run(["cat", "/sys/class/net/eth0/address"]).text != mac
        assert home.run("shell", "sdk-fork", "--", "hostname").stdout == "sdk-fork\n"
        assert (home.home / "sdk-fork" / "ssh_host_ed25519_key.pub").read_text() != \
            (home.home / NAME / "ssh_host_ed25519_key.pub").read_text()
        assert Instance.at("sdk-fork").cloud_instance_id() != Instance.at(NAME).cloud_instance_id()
        fork.files.write("/etc/sdk-only-in-fork", "fork\n")
        parent = Sandbox.connect(NAME)  # the source resumes as it was
        assert parent.commands.run(["hostname"]).text == f"{NAME}\n"
        assert parent.files.read_text("/run/sdk-fork-ram") == "in-ram\n"
        assert not parent.files.exists("/etc/sdk-only-in-fork")
        assert home.run("shell", NAME, "--", "hostname").stdout == f"{NAME}\n"
    finally:
        fork.kill()
    assert not Instance.at("sdk-fork").exists()
    # The fork took the resolver port both guests were saved with; the
    # source, resumed after it, was moved to another, which still answers.
    assert guest_getent(home, NAME, HOSTS_NAME) == [HOSTS_ADDRESS]


# -- sandboxes of their own --------------------------------------------------------

@pytest.fixture(scope="module")
def host_server() -> Iterator[int]:
    """A local test server the guests try to reach (the host, 192.168.5.2):
    it says "reached" to whoever connects."""
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"reached\n")

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def fetch(port: int) -> list[str]:
    """A guest command that prints what the host's test server says, or why not."""
    return ["python3", "-c", "import socket, sys\ntry:\n"
            f"    s = socket.create_connection(('192.168.5.2', {port}), 5)\n"
            "    print(s.recv(64).decode().strip())\n"
            "except OSError as e:\n    print('unreachable', e)\n"]


def test_egress_allowed_by_default(sb: Sandbox, host_server: int) -> None:
    """The positive control for the test below: the same fetch, from a
    sandbox with the network on, reaches the host's test server."""
    if sb.status() != Status.RUNNING:
        sb = Sandbox.connect(NAME, start=True, start_timeout=START_TIMEOUT)
    assert sb.commands.run(fetch(host_server)).text == "reached\n"


def test_files_without_exec_and_egress_denied(home: Roost, host_server: int) -> None:
    with Sandbox.create(name="sdk-closed", memory="512MiB", disk="4GiB", allow_exec=False,
                        internet=False, start_timeout=START_TIMEOUT) as closed:
        closed.files.write("/tmp/only-files.txt", b"no exec needed")
        assert closed.files.read("/tmp/only-files.txt") == b"no exec needed"
        with pytest.raises(RequestRefused, match="allowExec"):
            closed.commands.run(["true"])
        # From guest root, over SSH: nothing the guest sends leaves it.
        probe = home.run("shell", "sdk-closed", "--", *as_guest_root(*fetch(host_server)),
                         check=False, timeout=60)
        assert "reached" not in probe.stdout and "unreachable" in probe.stdout, probe
    assert not Instance.at("sdk-closed").exists()  # the context manager deleted it


def test_idle_suspend_fires_and_connect_resumes(home: Roost) -> None:
    sandbox = Sandbox.create(name="sdk-idle", memory="512MiB", disk="4GiB",
                             sets=["lifecycle.idle={after: 3, action: suspend}"],
                             start_timeout=START_TIMEOUT)
    try:
        wait_until(lambda: sandbox.status() == Status.SUSPENDED, 120, "the idle suspend")
        started = time.monotonic()
        again = Sandbox.connect("sdk-idle")
        print(f"auto-resume on connect: {time.monotonic() - started:.2f}s")
        assert again.status() == Status.RUNNING
        assert again.commands.run(["echo", "back"]).text == "back\n"
    finally:
        home.run("delete", "--force", "sdk-idle", timeout=120, check=False)
