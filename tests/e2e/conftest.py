"""One real VM under QEMU (TCG here), shared by the end-to-end tests.

State lives in a short temporary ROOST_HOME (Unix socket paths are limited
to 107 bytes). At the end every host agent and QEMU this suite started is
stopped by pid; nothing is killed by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from roost.store import instance
from tests.e2e.tls import make_ca

START_TIMEOUT = 600  # first start may build the image (apt downloads)


class Roost:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "ROOST_HOME": str(home)}

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "roost", *args], env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "roost", *args], env=self.env, text=True,
            capture_output=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"roost {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}" + self._agent_logs(args)
            )
        return proc

    def _agent_logs(self, args: tuple[str, ...]) -> str:
        """The end of the host agent's log of an instance named in `args`: the
        home is gone after the run, and this is where a failure's cause is."""
        for arg in args:
            log = self.home / arg / "ha.stderr.log"
            if arg and "/" not in arg and log.is_file():
                tail = log.read_text(errors="replace").splitlines()[-40:]
                return f"\n{log} (last lines):\n" + "\n".join(tail)
        return ""

    def ls(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.run("ls", "--json").stdout)
        return {row["name"]: row for row in rows}

    def pid(self, name: str, filename: str) -> int | None:
        try:
            return int((self.home / name / filename).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None


def as_guest_root(*command: str) -> list[str]:
    """`command` for `roost shell`, run as root in the guest. The guest user
    is the host user (root only when the suite runs as root), with
    passwordless sudo; scratch files that need no root go in that user's
    home, the shell's working directory."""
    return ["sudo", "-n", *command]


def pid_running(pid: int | None) -> bool:
    return pid is not None and instance.pid_running(pid)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _stop_leftovers(roost: Roost) -> None:
    """Stop whatever this suite started, by the pids it recorded."""
    for inst in roost.home.iterdir() if roost.home.exists() else []:
        if not (inst / "roost.yaml").exists():
            continue
        subprocess.run([sys.executable, "-m", "roost", "stop", "--force", inst.name],
                       env=roost.env, capture_output=True, timeout=120)
        for filename in ("qemu.pid", "ha.pid"):
            pid = roost.pid(inst.name, filename)
            if pid_running(pid) and pid is not None:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(inst).encode() in cmdline or inst.name.encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def roost() -> Iterator[Roost]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed: run `bash scripts/setup.sh`")
    home = Path(tempfile.mkdtemp(prefix="re2e-", dir="/tmp"))
    r = Roost(home)
    try:
        yield r
    finally:
        _stop_leftovers(r)
        if not os.environ.get("ROOST_E2E_KEEP"):  # set it to keep the logs for a post-mortem
            shutil.rmtree(home, ignore_errors=True)


# Port-forward rules the shared VM is created with (tests/e2e/test_portfwd.py).
REMAP_GUEST_PORT, REMAP_HOST_PORT = 18081, 28081
IGNORED_GUEST_PORT = 18082
SOCKET_GUEST_PORT = 18083  # forwarded to a host Unix socket (host_port_socket)
GUEST_ECHO_SOCKET = "/tmp/roost-e2e-echo.sock"
GUEST_REVERSE_SOCKET = "/run/roost-e2e/host-service.sock"
HEALTH_FLAG = "/tmp/roost-e2e-healthy"
E2E_DISK = "e2edata"  # the shared instance's additional disk
# roost.yaml's env: as written, in every login (nothing in it is expanded).
E2E_ENV_VALUE = "two words, $HOME and a = sign"
# Static mounts of the shared VM (virtiofs, the default here).
STATIC_RW_GUEST, STATIC_RO_GUEST = "/mnt/static-rw", "/mnt/static-ro"


def static_share(roost: Roost, which: str) -> Path:
    path = roost.home / f"share-{which}"
    path.mkdir(exist_ok=True)
    return path


def host_echo_socket(roost: Roost) -> Path:
    return roost.home / "e2e-echo.sock"


def e2e_ca_cert(roost: Roost) -> Path:
    """The CA certificate the shared instance's caCerts names."""
    return roost.home / "e2e-tls" / "e2e-ca.pem"


def host_port_socket(roost: Roost) -> Path:
    """Where the relative hostSocket of the guestPort rule lands: the instance's sock/."""
    return roost.home / "e2e" / "sock" / "e2e-port.sock"


def host_reverse_socket(roost: Roost) -> Path:
    return roost.home / "host-service.sock"


@pytest.fixture(scope="session")
def vm(roost: Roost) -> str:
    """The shared instance, created and started once."""
    name = "e2e"
    config = roost.home / "e2e.yaml"
    config.write_text(
        "portForwards:\n"
        f"  - guestPort: {REMAP_GUEST_PORT}\n"
        f"    hostPort: {REMAP_HOST_PORT}\n"
        f"  - guestPort: {IGNORED_GUEST_PORT}\n"
        "    ignore: true\n"
        f"  - guestPort: {SOCKET_GUEST_PORT}\n"
        "    hostSocket: e2e-port.sock\n"
        f"  - guestSocket: {GUEST_ECHO_SOCKET}\n"
        f"    hostSocket: {host_echo_socket(roost)}\n"
        f"  - guestSocket: {GUEST_REVERSE_SOCKET}\n"
        f"    hostSocket: {host_reverse_socket(roost)}\n"
        "    reverse: true\n"
        "healthChecks:\n"
        "  - name: web\n"
        f"    healthCmd: test -e {HEALTH_FLAG}\n"
        "    healthIntervalSecs: 1\n"
        "    startupGraceSecs: 600\n"
        "  - name: stuck\n"
        "    healthCmd: [sleep, '30']\n"
        "    healthIntervalSecs: 5\n"
        "    healthTimeoutSecs: 0.5\n"
        "guestAgent:\n"
        "  allowExec: true\n"
        "env:\n"
        f"  ROOST_E2E_ENV: '{E2E_ENV_VALUE}'\n"
        "worker:\n"
        "  sampleSecs: 0.2\n"
        "hostResolver:\n"
        "  hosts:\n"
        "    e2e-db.test: 10.11.12.13\n"
        "mounts:\n"
        f"  - location: {static_share(roost, 'rw')}\n"
        f"    mountPoint: {STATIC_RW_GUEST}\n"
        "    writable: true\n"
        f"  - location: {static_share(roost, 'ro')}\n"
        f"    mountPoint: {STATIC_RO_GUEST}\n"
    )
    (static_share(roost, "ro") / "hello.txt").write_text("static hello\n")
    ca = make_ca(roost.home / "e2e-tls", "e2e-ca")
    config.write_text(config.read_text() + f"caCerts:\n  files:\n    - {ca.cert}\n"
                      f"additionalDisks:\n  - {E2E_DISK}\n")
    roost.run("disk", "create", E2E_DISK, "--size", "256MiB")
    roost.run("create", name, "--config", str(config), "--cpus", "2", "--memory", "1GiB",
              "--disk", "4GiB")
    roost.run("start", name, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    return name


def virtiofsd_pids(roost: Roost, name: str) -> list[int]:
    """virtiofsd processes serving this instance (their environment names
    the socket they serve, in the instance's directory)."""
    out = []
    marker = f"ROOST_VIRTIOFSD_SOCKET={roost.home / name}/".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if (b"virtiofsd" in cmdline and any(v.startswith(marker) for v in environ.split(b"\0"))
                and pid_running(int(entry.name))):
            out.append(int(entry.name))
    return out


CLOCK_SLACK = 0.25  # seconds the guest's clock may be off the host's after a boot


def assert_guest_clock_is_the_hosts(roost: Roost, name: str) -> None:
    """The guest's wall clock, read between two of the host's, within CLOCK_SLACK."""
    before = time.time()
    guest = float(roost.run("shell", name, "--", "python3", "-c",
                            "import time; print(time.time())").stdout)
    after = time.time()
    assert before - CLOCK_SLACK <= guest <= after + CLOCK_SLACK, (before, guest, after)


@contextmanager
def small_vm(roost: Roost, name: str, *create_args: str) -> Iterator[str]:
    """A second VM (512 MiB, 4 GiB disk) beside the shared one, started;
    deleted with --force afterwards."""
    roost.run("create", name, *create_args, "--memory", "512MiB", "--disk", "4GiB")
    try:
        roost.run("start", name, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
        yield name
    finally:
        roost.run("delete", "--force", name, timeout=120)
