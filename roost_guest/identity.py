"""A forked guest takes on its own identity: host name, SSH host key, MAC.

A fork of a suspended instance wakes with its source's memory, so with its
source's host name, sshd keys and NIC address. The host agent sends the
fork's (`reidentify`); here they are applied to whatever the guest runs:

* the host name: sethostname (the `hostname` command), /etc/hostname, and
  the old name in /etc/hosts;
* the SSH host key: OpenSSH's /etc/ssh/ssh_host_ed25519_key (its other
  host keys, the source's, removed) and a SIGHUP to sshd, which then loads
  it; or, on the built-in image, dropbear's key in /run/roost, and the
  dropbear listener ended for its wrapper to start again with it;
* the MAC: `ip link set dev IF address` of the interface that had the old
  one (virtio-net takes a new address while up).

Each step that cannot be done is reported, not fatal: the host agent says
so, and SSH (which pins the new key) shows whether it took.

Standard library only, and Python 3.8 compatible: it runs in the guest.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
OPENSSH_DIR = "/etc/ssh"
DROPBEAR_KEY = "/run/roost/dropbear_host_key"  # the built-in image's sshd prefers it
# roost-dns keeps itself there at boot; run by sh, for /run is noexec on
# images that boot through initramfs-tools.
DNS_MOVE = ("/bin/sh", "/run/roost/roost-dns", "--move")
DNS_STATE = "/run/roost/dns"  # roost-dns: how the guest's DNS reaches hostResolver
SSHD_RESTART = "/run/roost/sshd-restart"  # usr/lib/roost/sshd: restart dropbear at once
RESTART_WAIT = 10.0  # for dropbear to listen again


class IdentityError(Exception):
    pass


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = "%s.roost-new" % path
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _run(argv: List[str]) -> str:
    """"" if it ran fine, else why not."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s: %s" % (argv[0], e)
    if proc.returncode != 0:
        return "%s: %s" % (" ".join(argv), proc.stdout.decode(errors="replace").strip()[-200:])
    return ""


def set_hostname(name: str, problems: List[str]) -> None:
    old = socket.gethostname()
    problem = _run(["hostname", name])
    if problem:
        problems.append(problem)
        return
    with contextlib.suppress(OSError):
        _write("/etc/hostname", (name + "\n").encode(), 0o644)
    try:
        with open("/etc/hosts") as f:
            hosts = f.read()
    except OSError:
        return
    if old and old != name:
        new_hosts = re.sub(r"(?<![\w.-])%s(?![\w.-])" % re.escape(old), name, hosts)
        if new_hosts != hosts:
            with contextlib.suppress(OSError):
                _write("/etc/hosts", new_hosts.encode(), 0o644)


def _pids_of(exe_name: str) -> List[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if os.path.basename(argv0.decode(errors="replace")) == exe_name:
            pids.append(int(entry))
    return pids


def _listening_sockets(port: int) -> List[str]:
    """The sockets (as /proc/PID/fd links name them) listening on TCP `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.append("socket:[%s]" % fields[9])
        except (OSError, IndexError, ValueError):
            continue
    return found


def _listeners(pids: List[int], port: int) -> List[int]:
    """Those of `pids` that hold a socket listening on `port`. Not the
    oldest dropbear: a session the source's memory brought along, its
    listener ended by an earlier fork, may be older than the listener."""
    sockets = set(_listening_sockets(port))
    holders = []
    for pid in pids:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in sockets:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


SSHD_PID_FILES = ("/run/sshd.pid", "/var/run/sshd.pid")


def _sshd_listener() -> Optional[int]:
    for pidfile in SSHD_PID_FILES:
        try:
            with open(pidfile) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def set_host_key(private: str, public: str, dropbear_b64: str, problems: List[str]) -> str:
    """Which sshd now has the key: "openssh", "dropbear", or ""."""
    if os.path.isfile(os.path.join(OPENSSH_DIR, "sshd_config")):
        key = os.path.join(OPENSSH_DIR, "ssh_host_ed25519_key")
        try:
            _write(key, private.encode(), 0o600)
            _write(key + ".pub", (public.strip() + "\n").encode(), 0o644)
            for name in os.listdir(OPENSSH_DIR):  # the source's other host keys
                if name.startswith("ssh_host_") and not name.startswith("ssh_host_ed25519_"):
                    os.unlink(os.path.join(OPENSSH_DIR, name))
        except OSError as e:
            problems.append("writing %s: %s" % (key, e))
            return ""
        pid = _sshd_listener()
        if pid is None:
            problems.append("no sshd pid file: the new key is used from its next start")
        else:
            try:
                os.kill(pid, signal.SIGHUP)  # sshd re-executes itself and loads the keys
            except OSError as e:
                problems.append("signalling sshd (pid %d): %s" % (pid, e))
        return "openssh"
    pids = _pids_of("dropbear")
    if pids or os.path.exists("/usr/sbin/dropbear"):
        try:
            os.makedirs(os.path.dirname(DROPBEAR_KEY), exist_ok=True)
            _write(DROPBEAR_KEY, base64.b64decode(dropbear_b64), 0o600)
        except (OSError, ValueError) as e:
            problems.append("writing %s: %s" % (DROPBEAR_KEY, e))
            return ""
        # The listener's sessions are its children and stay. Its wrapper
        # starts it again, with the new key: answered once it listens, so
        # that the host's first login meets the new key.
        listeners = _listeners(pids, 22)
        if pids and not listeners:
            problems.append("no dropbear listens on port 22: the new key is used from "
                            "its next start")
        for pid in listeners[:1]:
            with contextlib.suppress(OSError):
                open(SSHD_RESTART, "w").close()  # its wrapper: at once, not after a pause
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + RESTART_WAIT
            while time.monotonic() < deadline:
                now = _listeners(_pids_of("dropbear"), 22)
                if now and pid not in now:
                    break
                time.sleep(0.02)
            else:
                problems.append("dropbear did not listen again within %gs" % RESTART_WAIT)
        return "dropbear"
    problems.append("no OpenSSH or dropbear found to give the host key to")
    return ""


def set_mac(old: str, new: str, problems: List[str]) -> str:
    """The interface whose address was `old` (the source's) now has `new`."""
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            with open("/sys/class/net/%s/address" % name) as f:
                address = f.read().strip().lower()
        except OSError:
            continue
        if address == new:
            return name  # already (a fork of a fork made from this one)
        if address == old or (not old and name != "lo" and address != "00:00:00:00:00:00"):
            problem = _run(["ip", "link", "set", "dev", name, "address", new])
            if problem:
                problems.append(problem)
                return ""
            announce(name, problems)
            return name
    problems.append("no interface with the source's MAC %s" % (old or "?"))
    return ""


def _gateway(interface: str) -> str:
    """The IPv4 default gateway through `interface` ("" if none)."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[0] == interface and fields[1] == "00000000":
                    return socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    except (OSError, IndexError, ValueError):
        pass
    return ""


def announce(interface: str, problems: List[str]) -> None:
    """Make the network learn the new address at once: the neighbours are
    forgotten, so the next packet to the gateway goes after an ARP request
    from the new MAC (QEMU's user network then sends the guest's traffic,
    SSH's included, to it; until then, to the old one)."""
    problem = _run(["ip", "neigh", "flush", "dev", interface])
    if problem:
        problems.append(problem)
    gateway = _gateway(interface)
    if not gateway:
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (gateway, 9))  # the discard port: only the ARP matters


def redirect_dns(port: int) -> str:
    """The guest's DNS redirect (roost-dns's DNAT) to hostResolver at
    another port; what /run/roost/dns says after."""
    if not os.path.exists(DNS_MOVE[1]):
        raise IdentityError("%s is missing: this guest's DNS was not redirected by roost-dns "
                            "at boot, so there is nothing to move" % DNS_MOVE[1])
    try:
        done = subprocess.run([*DNS_MOVE, str(port)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IdentityError("roost-dns --move %d: %s" % (port, e)) from None
    try:
        with open(DNS_STATE) as f:
            how = f.read(300).strip()
    except OSError:
        how = ""
    if done.returncode != 0:
        raise IdentityError("roost-dns --move %d failed: %s" % (
            port, done.stdout.decode(errors="replace").strip()[-300:] or how))
    return how


def reidentify(req: Dict[str, Any]) -> Dict[str, Any]:
    hostname, mac, old_mac = req.get("hostname"), req.get("mac"), req.get("sourceMac", "")
    private, public, dropbear = req.get("hostKey"), req.get("hostKeyPublic"), \
        req.get("dropbearKey")
    if not isinstance(hostname, str) or not HOSTNAME_RE.match(hostname):
        raise IdentityError("reidentify needs hostname: a host name (letters, digits, '-')")
    if not isinstance(mac, str) or not MAC_RE.match(mac) or not isinstance(old_mac, str) \
            or (old_mac and not MAC_RE.match(old_mac)):
        raise IdentityError("reidentify needs mac (and sourceMac): six lowercase hex pairs "
                            "with colons")
    if not all(isinstance(v, str) and v and "\0" not in v for v in (private, public, dropbear)):
        raise IdentityError("reidentify needs hostKey, hostKeyPublic and dropbearKey strings")
    assert isinstance(private, str) and isinstance(public, str) and isinstance(dropbear, str)
    problems: List[str] = []
    set_hostname(hostname, problems)
    ssh = set_host_key(private, public, dropbear, problems)
    interface = set_mac(old_mac, mac, problems)
    return {"hostname": socket.gethostname(), "ssh": ssh, "mac": interface and mac,
            "problems": problems}
