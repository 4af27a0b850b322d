"""A hostile guest (issue 10): attacks made from guest root against the host.

Each test is one attack, or a few of one kind, tried for real: guest root
(the micro image's user here) with the programs in tests/e2e/hostile_tools,
against real virtiofsd, QEMU 9p, sftp-server and the host agent. Each
asserts that the host is unchanged where it must be and that the host agent
still serves (`roost ls`, `roost mount list`, GET /v1/info, `roost shell`).

Every attack tried is recorded with its outcome in tests/.results/hostile.json
(`summary` counts them):

    python3 -c 'import json; print(json.load(open("tests/.results/hostile.json"))["summary"])'

The flood figures (host and guest agent RSS after an event flood of
ROOST_FLOOD_SECS seconds, default 60) are under `figures` there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from roost.errors import RoostError
from roost.ops import hostapi
from tests.e2e.conftest import (
    STATIC_RO_GUEST,
    Roost,
    small_vm,
    static_share,
    virtiofsd_pids,
    wait_until,
)

RESULTS = Path(__file__).resolve().parents[1] / ".results" / "hostile.json"
TOOLS = Path(__file__).with_name("hostile_tools")
FORGE_PORT_TAKEN_WITHIN = 5.0  # seconds: we must win the race against init's respawn
RSS_BOUND_KIB = 150 * 1024
ANSWER_WITHIN = 5.0  # seconds for `roost ls` and the API under a flood
FLOOD_SECS = float(os.environ.get("ROOST_FLOOD_SECS", "60"))
# Guest ports for the floods; forwarded to the same host ports on 127.0.0.1.
# Below Linux's ephemeral ports (32768-60999), in the guest and on the host:
# there an outgoing connection may hold one of them at any time.
FLOOD_FIRST_PORT = 21000
UNUSED_UID = 54321
GUEST_UID = 1234  # what guest root tries to give files to
NOBODY = 65534

_results: dict[str, Any] = {"attacks": {}, "figures": {}}
# The image the attacks run on, when it is not the built-in one: a prefix of
# each attack's name in the record (see attacks_on).
_image: list[str] = []


# -- the record of attacks ---------------------------------------------------

def _save() -> None:
    attacks = _results["attacks"]
    _results["summary"] = {"tried": len(attacks),
                           "refused": sum(1 for a in attacks.values() if a["refused"]),
                           "notRefused": sorted(k for k, a in attacks.items() if not a["refused"])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_results, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def attacks_on(image: str) -> Iterator[None]:
    """The attacks run in this block are recorded as on `image`."""
    _image.append(image)
    try:
        yield
    finally:
        _image.pop()


def record(name: str, what: str, refused: bool, detail: Any) -> bool:
    if _image:
        name, what = f"{_image[-1]}/{name}", f"{what} ({_image[-1]})"
    _results["attacks"][name] = {"what": what, "refused": refused, "detail": detail}
    _save()
    return refused


@contextmanager
def attack(name: str, what: str) -> Iterator[dict[str, Any]]:
    """One attack: refused when the block's assertions all hold."""
    detail: dict[str, Any] = {}
    try:
        yield detail
    except BaseException as e:
        record(name, what, False, {**detail, "failure": str(e)[:2000]})
        raise
    record(name, what, True, detail)


def figure(name: str, values: dict[str, Any]) -> None:
    _results["figures"][name] = values
    _save()


# -- the guest ---------------------------------------------------------------

def guest(roost: Roost, name: str, script: str, check: bool = True,
          input: str | None = None) -> str:
    proc = roost.run("shell", name, "--", "sh", "-c", script, check=check, input=input)
    return proc.stdout if check else proc.stdout + proc.stderr


# Run in the guest: write the tools (one JSON line on stdin), then run one.
_BOOT = """import json, os, runpy, sys
d = "/tmp/hostile/hostile_tools"
os.makedirs(d, exist_ok=True)
for n, s in json.loads(sys.stdin.readline()).items():
    with open(os.path.join(d, n), "w") as f:
        f.write(s)
sys.path.insert(0, "/tmp/hostile")
sys.argv = sys.argv[1:]
runpy.run_module("hostile_tools." + sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _tools_line() -> str:
    return json.dumps({p.name: p.read_text() for p in sorted(TOOLS.glob("*.py"))}) + "\n"


def _tool_argv(name: str, tool: str, args: list[str], prefix: str) -> list[str]:
    command = " ".join(shlex.quote(a) for a in ["python3", "-c", _BOOT, tool, *args])
    return ["shell", name, "--", "sh", "-c", f"{prefix}exec {command}"]


def guest_tool(roost: Roost, name: str, tool: str, *args: str, prefix: str = "",
               timeout: float = 300) -> Any:
    """Run hostile_tools.TOOL in the guest as root; its JSON."""
    proc = roost.run(*_tool_argv(name, tool, list(args), prefix), input=_tools_line(),
                     timeout=timeout)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def first_json(proc: subprocess.Popen[str]) -> Any:
    """The first line a background tool prints, as JSON; if it printed none,
    a failure with what it said on stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=60)
        raise AssertionError(f"the guest tool exited ({proc.returncode}) before its first "
                             f"line: {proc.stderr.read()[-2000:]}")
    return json.loads(line)


def guest_tool_popen(roost: Roost, name: str, tool: str, *args: str,
                     prefix: str = "") -> subprocess.Popen[str]:
    """The same in the background; its stdin stays open after the tools."""
    proc = subprocess.Popen([sys.executable, "-m", "roost",
                             *_tool_argv(name, tool, list(args), prefix)],
                            env=roost.env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(_tools_line())
    proc.stdin.flush()
    return proc


# -- the host ----------------------------------------------------------------

def mounts(roost: Roost, name: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(roost.run("mount", "list", name, "--json").stdout)
    return {row["mountPoint"]: row for row in rows}


def info(roost: Roost, name: str, timeout: float = 10.0) -> dict[str, Any]:
    result: dict[str, Any] = hostapi.request(roost.home / name / "ha.sock", "GET", "/v1/info",
                                              timeout=timeout)
    return result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def proc_uids(pid: int | str) -> list[int]:
    """Real, effective, saved and fs uid of a process, as the host sees them."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def host_agent_pid(roost: Roost, name: str) -> int:
    pid = roost.pid(name, "ha.pid")
    assert pid is not None
    return pid


def host_agent_serves(roost: Roost, name: str, ha_pid: int | None = None) -> dict[str, float]:
    """The host agent answers on all its doors; how long each took."""
    took: dict[str, float] = {}
    start = time.monotonic()
    assert roost.ls()[name]["status"] == "Running"
    took["ls"] = time.monotonic() - start
    start = time.monotonic()
    listed = mounts(roost, name)
    took["mountList"] = time.monotonic() - start
    assert all(row["state"] == "mounted" for row in listed.values()), listed
    start = time.monotonic()
    answer = info(roost, name)
    took["info"] = time.monotonic() - start
    assert answer["name"] == name
    if ha_pid is not None:
        assert answer["hostagentPid"] == ha_pid, "the host agent was restarted"
    start = time.monotonic()
    roost.run("shell", name, "--", "true")
    took["shell"] = time.monotonic() - start
    return {k: round(v, 3) for k, v in took.items()}


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Names, types, modes, owners, sizes, times, contents and xattrs under root."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [".", *dirnames, *filenames]:
            path = Path(dirpath, entry)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content: str | None = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                      for n in os.listxattr(path, follow_symlinks=False)}
            key = os.path.normpath(os.path.relpath(path, root))
            out[key] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                        st.st_mtime_ns, st.st_ctime_ns, content, xattrs)
    return out


def owners(root: Path) -> dict[str, tuple[int, int, str]]:
    """uid, gid and mode of everything under root (root included)."""
    return {k: (v[1], v[2], v[0]) for k, v in snapshot(root).items()}


@pytest.fixture
def hostile_dir() -> Iterator[Path]:
    """A fresh directory on the host that others may enter (mode 0755), with a
    secret beside the shares made in it: the file an escape would reach."""
    d = Path(tempfile.mkdtemp(prefix="hostile-", dir="/tmp"))
    d.chmod(0o755)
    (d / "secret.txt").write_text(f"host secret {secrets.token_hex(8)}\n")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_share(parent: Path, name: str, owner: int = 0) -> Path:
    share = parent / name
    share.mkdir()
    (share / "from-host.txt").write_text("host data\n")
    # Links out of the share: absolute, and relative through `..`.
    (share / "abs-link").symlink_to(parent / "secret.txt")
    (share / "rel-link").symlink_to("../secret.txt")
    for path in (share, share / "from-host.txt", share / "abs-link", share / "rel-link"):
        os.chown(path, owner, owner, follow_symlinks=False)
    return share


@contextmanager
def hot_mount(roost: Roost, name: str, share: Path, point: str, kind: str,
              writable: bool) -> Iterator[str]:
    roost.run("mount", "add", name, str(share), point, "--type", kind,
              *(["--writable"] if writable else []))
    try:
        yield point
    finally:
        roost.run("mount", "remove", name, point)


def euid_program() -> bytes:
    """A static x86-64 ELF that exits with its effective uid (mod 256): what
    guest root would plant to see whom a setuid file runs as on the host."""
    code = bytes.fromhex("b86b0000000f05" "89c7" "b83c0000000f05")  # exit(geteuid())
    base, headers = 0x400000, 64 + 56
    ehdr = (b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + headers, 64, 0, 0, 64, 56,
                          1, 0, 0, 0))
    size = headers + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def run_as_nobody(path: Path) -> int:
    """Run `path` on the host as nobody; its exit status."""
    return subprocess.run([str(path)], user=NOBODY, group=NOBODY, extra_groups=[],
                          timeout=30).returncode


def exit_codes(out: str) -> dict[str, int]:
    """The `name=$?` lines of a guest script's output."""
    found = (re.fullmatch(r"([a-z-]+)=(\d+)", line.strip()) for line in out.splitlines())
    return {m.group(1): int(m.group(2)) for m in found if m}


def refused_all(results: dict[str, str]) -> bool:
    return all(v != "ok" for v in results.values())


# -- read-only shares --------------------------------------------------------

# mount(2) itself, MS_REMOUNT without MS_RDONLY: `mount -o remount,rw` goes
# through util-linux's mount.fuse helper on Debian, which cannot remount.
REMOUNT_RW = """import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(None, sys.argv[1].encode(), None, 32, None) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))
"""

def _remount_rw_and_write(roost: Roost, name: str, point: str, existing: str,
                          host_dir: Path, detail: dict[str, Any]) -> None:
    """Guest root remounts `point` read-write (the guest then lets it write)
    and tries every write: each is refused, `host_dir` is unchanged and the
    host agent still serves. What the guest saw goes in `detail`."""
    before = snapshot(host_dir)
    ha = host_agent_pid(roost, name)
    remount = guest(roost, name, f"python3 -c {shlex.quote(REMOUNT_RW)} {point} 2>&1; "
                    f"echo rc=$?; grep ' {point} ' /proc/mounts")
    detail.update(remount=remount.strip(),
                  writes=guest_tool(roost, name, "write_attempts", point, existing))
    assert " rw," in detail["remount"], "the guest did not remount it rw"
    assert refused_all(detail["writes"]), detail["writes"]
    assert snapshot(host_dir) == before
    detail["hostAgent"] = host_agent_serves(roost, name, ha)


def test_static_read_only_virtiofs_share_remounted_read_write(roost: Roost, vm: str) -> None:
    try:
        with attack("virtiofs-static-ro-remount-rw",
                    "guest root remounts a read-only static virtiofs share rw and writes"
                    ) as detail:
            _remount_rw_and_write(roost, vm, STATIC_RO_GUEST, "hello.txt",
                                  static_share(roost, "ro"), detail)
    finally:
        guest(roost, vm, f"mount -o remount,ro {STATIC_RO_GUEST}")


@pytest.mark.parametrize("kind", ["virtiofs", "reverse-sshfs"])
def test_read_only_hot_mount_remounted_read_write(roost: Roost, vm: str, hostile_dir: Path,
                                                  kind: str) -> None:
    share = make_share(hostile_dir, "ro")
    with hot_mount(roost, vm, share, f"/mnt/hostile-ro-{kind}", kind, writable=False) as point, \
            attack(f"{kind}-hot-ro-remount-rw",
                   f"guest root remounts a read-only {kind} hot-mount rw and writes") as detail:
        _remount_rw_and_write(roost, vm, point, "from-host.txt", hostile_dir, detail)


def test_read_only_sftp_session_hijacked(roost: Roost, vm: str, hostile_dir: Path) -> None:
    """Guest root speaks SFTP itself on a read-only reverse-sshfs mount's
    session (taken from the running sshfs): sftp-server, read-only and on
    an empty root, refuses every write and every way out."""
    share = make_share(hostile_dir, "ro")
    before = snapshot(hostile_dir)
    secret = str(hostile_dir / "secret.txt")
    ha = host_agent_pid(roost, vm)
    with hot_mount(roost, vm, share, "/mnt/hostile-hijack", "reverse-sshfs", False) as point:
        got = guest_tool(roost, vm, "hijack_sshfs", point, "from-host.txt", secret,
                         "abs-link", "rel-link")
        ok_writes = record("reverse-sshfs-ro-raw-sftp-writes",
                           "guest root sends SFTP writes, chmod 4777, symlink on a read-only "
                           "reverse-sshfs session", refused_all(got["readOnly"])
                           and snapshot(hostile_dir) == before, got["readOnly"])
        ok_escapes = record("reverse-sshfs-raw-sftp-escapes",
                            "guest root asks sftp-server for host paths outside the share: "
                            "absolute, ../, symlinks out, /etc/passwd, /proc",
                            _escapes_refused(got["escapes"], hostile_dir), got["escapes"])
        assert (share / "from-host.txt").read_text() == "host data\n"
        # sshfs, resumed, still serves the mount.
        assert guest(roost, vm, f"cat {point}/from-host.txt") == "host data\n"
    assert ok_writes, got["readOnly"]
    assert ok_escapes, got["escapes"]
    assert snapshot(hostile_dir) == before
    host_agent_serves(roost, vm, ha)


def _escapes_refused(escapes: dict[str, Any], hostile_dir: Path) -> bool:
    """sftp-server saw only its own root: the share and its binary's files."""
    secret = (hostile_dir / "secret.txt").read_text()
    texts = [v for v in escapes.values() if isinstance(v, str)]
    return (escapes["root"] == ["dev", "etc", "lib", "lib64", "share", "usr"]
            and escapes["realpath .."] == "/"
            and not any(secret in t for t in texts)
            and escapes["passwd"] != Path("/etc/passwd").read_text()
            and escapes["proc"] == "NO_SUCH_FILE"
            and all(v == "NO_SUCH_FILE" for k, v in escapes.items()
                    if k in ("absolute", "dotdot") or k.startswith("via ")))


# -- owners, modes, devices and links in writable shares ------------------------

def as_uid(uid: int, script: str) -> str:
    """A guest command line running `script` as uid and gid `uid` (no groups)."""
    boot = (f"import os, sys; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); "
            "os.execvp('sh', ['sh', '-c', sys.argv[1]])")
    return f"python3 -c {shlex.quote(boot)} {shlex.quote(script)}"


def test_forged_owners_through_virtiofs(roost: Roost, vm: str, hostile_dir: Path) -> None:
    share = make_share(hostile_dir, "owned", owner=UNUSED_UID)
    ha = host_agent_pid(roost, vm)
    with hot_mount(roost, vm, share, "/mnt/hostile-owned", "virtiofs", True) as point, \
            attack("virtiofs-forged-owners",
                   f"guest root and the owner's uid in a share owned by {UNUSED_UID}: create as "
                   f"root, chown to root and to {GUEST_UID}, chgrp, setuid/setgid, device "
                   "nodes, files of another guest user") as detail:
        as_owner = as_uid(UNUSED_UID, f"""cd {point}
            echo made > by-owner; echo create=$?
            chown 0:0 by-owner; echo chown-root=$?
            chown {GUEST_UID} by-owner; echo chown-other=$?
            chgrp {GUEST_UID} by-owner; echo chgrp-other=$?
            chmod 6755 by-owner; echo chmod-setuid=$?
            chmod 0755 by-owner; echo chmod-plain=$?
            mkdir -m 2755 setgid-dir; echo mkdir-setgid=$?
            mknod char-dev c 1 3; echo mknod-char=$?
            mkfifo a-fifo; echo mkfifo=$?
            echo more >> from-host.txt; echo append=$?
            rm rel-link; echo delete=$?""")
        out = guest(roost, vm, f"""cd {point}
            echo made > by-guest-root; echo root-create=$?
            mknod block-dev b 8 0; echo mknod-block=$?
            {as_owner}
            su -s /bin/sh nobody -c 'touch by-nobody' 2>&1; echo nobody-create=$?
            ls -ln""", check=False)
        codes = exit_codes(out)
        detail["guest"] = out
        detail["codes"] = codes
        # Only the owner's ids are mapped: guest root (and nobody) map to no one.
        assert codes["root-create"] != 0 and codes["nobody-create"] != 0
        assert "Invalid argument" in out
        assert codes["create"] == 0 and codes["chmod-plain"] == 0
        assert codes["chown-root"] != 0 and codes["chown-other"] != 0
        assert codes["chgrp-other"] != 0
        assert codes["chmod-setuid"] != 0 and codes["mkdir-setgid"] != 0
        assert codes["mknod-char"] != 0 and codes["mknod-block"] != 0
        assert codes["mkfifo"] == 0 and codes["append"] == 0 and codes["delete"] == 0
        assert (share / "from-host.txt").read_text() == "host data\nmore\n"
        assert not (share / "rel-link").is_symlink()
        seen = owners(share)
        detail["host"] = seen
        assert {(uid, gid) for uid, gid, _ in seen.values()} == {(UNUSED_UID, UNUSED_UID)}
        assert not any(mode[0] in "cb" for _, _, mode in seen.values())
        assert not any(set(mode) & {"s", "S"} for _, _, mode in seen.values())
        assert {"by-guest-root", "by-nobody", "char-dev"}.isdisjoint(seen)
        detail["daemon"] = _virtiofsd_confined(roost, vm, share)
        detail["hostAgent"] = host_agent_serves(roost, vm, ha)


def _virtiofsd_confined(roost: Roost, name: str, share: Path) -> dict[str, Any]:
    """The share's virtiofsd, seen from the host: the owner's uid, the only
    one mapped in its namespace (to itself), its root the share itself."""
    owner = share.stat().st_uid
    mine = [pid for pid in virtiofsd_pids(roost, name) if proc_uids(pid) == [owner] * 4]
    assert len(mine) == 1, mine
    pid = mine[0]
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    root = sorted(os.listdir(f"/proc/{pid}/root"))
    assert uid_map == [str(owner), str(owner), "1"], uid_map
    assert root == sorted(os.listdir(share)), root
    return {"pid": pid, "uidMap": uid_map, "root": root}


@pytest.mark.parametrize("owner", [UNUSED_UID, 0], ids=["owner-54321", "owner-root"])
@pytest.mark.parametrize("kind", ["virtiofs", "reverse-sshfs"])
def test_setuid_program_planted_in_a_writable_share(roost: Roost, vm: str, hostile_dir: Path,
                                                    kind: str, owner: int) -> None:
    """Guest root (or, where only the owner's uid is mapped, the guest user
    with the owner's uid) writes a program into a writable share and tries
    to make it setuid; a host user who runs it must not become anyone else."""
    share = make_share(hostile_dir, "planted", owner=owner)
    program = base64.b64encode(euid_program()).decode()
    name = f"{kind}-setuid-planted-{'root-owned' if owner == 0 else 'user-owned'}-share"
    with hot_mount(roost, vm, share, f"/mnt/hostile-suid-{kind}", kind, True) as point, \
            attack(name, f"a setuid program planted in a writable {kind} share "
                         f"owned by uid {owner}; a host user runs it") as detail:
        write = (f"python3 -c 'import base64, sys; open(\"{point}/euid\", \"wb\")"
                 f".write(base64.b64decode(sys.stdin.read()))' && chmod 755 {point}/euid && "
                 f"echo more >> {point}/from-host.txt && rm {point}/rel-link; echo write=$?; "
                 f"chmod 4755 {point}/euid; echo setuid=$?; chmod 2755 {point}/euid; "
                 f"echo setgid=$?")
        writer = as_uid(owner, write) if kind == "virtiofs" and owner != 0 else write
        out = guest(roost, vm, writer, check=False, input=program)
        codes = exit_codes(out)
        detail["guest"] = out
        assert codes["write"] == 0, out
        assert codes["setuid"] != 0 and codes["setgid"] != 0, out
        assert (share / "from-host.txt").read_text() == "host data\nmore\n"
        assert not (share / "rel-link").is_symlink()
        assert {uid for uid, _, _ in owners(share).values()} == {owner}
        st = os.stat(share / "euid")
        detail["hostMode"] = stat.filemode(st.st_mode)
        detail["hostOwner"] = st.st_uid
        euid = run_as_nobody(share / "euid")
        detail["euidOnHost"] = euid
        assert st.st_uid == owner and st.st_mode & 0o6000 == 0
        assert euid == NOBODY % 256, f"the planted program ran as uid {euid} (mod 256)"


@pytest.mark.parametrize("kind", ["virtiofs", "reverse-sshfs"])
def test_symlinks_out_of_a_share(roost: Roost, vm: str, hostile_dir: Path, kind: str) -> None:
    """Links in a share that point out of it (the host's own and ones guest
    root makes) never reach the host file: the guest resolves them in its
    own tree, and the daemons see only the share. A link guest root makes
    is stored as written: it is the host's programs that would follow it."""
    share = make_share(hostile_dir, "links", owner=UNUSED_UID)
    secret = hostile_dir / "secret.txt"
    with hot_mount(roost, vm, share, f"/mnt/hostile-links-{kind}", kind, True) as point, \
            attack(f"{kind}-symlink-escape",
                   f"guest root follows and makes symlinks out of a {kind} share") as detail:
        script = (f"cd {point}; ln -s {secret} guest-abs; "
                  f"ln -s ../../../../..{secret} guest-rel; "
                  "for l in abs-link rel-link guest-abs guest-rel; do cat $l 2>&1; done")
        # virtiofs maps only the owner's uid: links are made as the owner there.
        out = guest(roost, vm, as_uid(UNUSED_UID, script) if kind == "virtiofs" else script,
                    check=False)
        detail["guest"] = out
        assert secret.read_text() not in out
        assert os.readlink(share / "guest-abs") == str(secret)
        if kind == "reverse-sshfs":
            got = guest_tool(roost, vm, "hijack_sshfs", point, "-", str(secret), "abs-link",
                             "rel-link", "guest-abs", "guest-rel")
            detail["rawSftp"] = got["escapes"]
            detail["daemon"] = _sftp_server_confined(share)
            assert _escapes_refused(got["escapes"], hostile_dir), got["escapes"]
        else:
            detail["daemon"] = _virtiofsd_confined(roost, vm, share)


def _sftp_server_confined(share: Path) -> dict[str, Any]:
    """The sftp-server serving `share` (its owner's uid, an empty root with
    the share at /share), seen from the host."""
    owner = share.stat().st_uid
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if (b"sftp-server" in argv[0] and proc_uids(entry.name) == [owner] * 4
                    and sorted(os.listdir(entry / "root" / "share")) == sorted(os.listdir(share))):
                found.append({"pid": int(entry.name), "root": sorted(os.listdir(entry / "root")),
                              "uidMap": (entry / "uid_map").read_text().split()})
        except (OSError, ValueError, AssertionError):
            continue
    assert len(found) == 1, found
    assert found[0]["root"] == ["dev", "etc", "lib", "lib64", "share", "usr"], found
    assert found[0]["uidMap"] == [str(owner), str(owner), "1"], found
    return found[0]


# -- floods -------------------------------------------------------------------

def _flood_state(roost: Roost, name: str, count: int) -> dict[str, int] | None:
    """The host's forwards of the flood's guest ports: how many go through
    the guest agent, how many over SSH, how many failed; None while the host
    agent does not answer."""
    try:
        answer = info(roost, name, 60.0)
    except RoostError:
        return None

    def flooded(f: dict[str, Any]) -> bool:
        if f["protocol"] != "tcp":
            return False
        return FLOOD_FIRST_PORT <= int(f["guestAddr"].rsplit(":", 1)[1]) < FLOOD_FIRST_PORT + count

    active = [f for f in answer["portForwards"] if flooded(f)]
    return {"agent": sum(f["via"] == "agent" for f in active),
            "ssh": sum(f["via"] == "ssh" for f in active),
            "failed": sum(flooded(f) for f in answer["portForwardsFailed"])}


def _flood_forwards(roost: Roost, name: str, count: int) -> int:
    """The host's forwards (active or failed) of the flood's guest ports;
    -1 while the host agent does not answer."""
    state = _flood_state(roost, name, count)
    return -1 if state is None else sum(state.values())


def _wait_forwards(roost: Roost, name: str, count: int, want: dict[str, int],
                   timeout: float, log_from: int) -> float:
    """Wait until the flood's forwards are `want` (e.g. {"ssh": count}, the
    rest 0); the seconds it took. A timeout says what was seen last and what
    the host agent logged meanwhile."""
    want = {"agent": 0, "ssh": 0, "failed": 0, **want}
    seen: list[dict[str, int] | None] = [None]
    started = time.monotonic()

    def done() -> bool:
        seen[0] = _flood_state(roost, name, count)
        return seen[0] == want

    try:
        wait_until(done, timeout, f"the flood's forwards to be {want}")
    except AssertionError as e:
        logged = (roost.home / name / "ha.stderr.log").read_text(errors="replace")[log_from:]
        notes = [line for line in logged.splitlines()
                 if " forwarding " not in line and " stopping " not in line][-30:]
        raise AssertionError(f"{e}; last seen {seen[0]}; the host agent logged:\n"
                             + "\n".join(notes)) from None
    return round(time.monotonic() - started, 1)


def _log_size(roost: Roost, name: str) -> int:
    return (roost.home / name / "ha.stderr.log").stat().st_size


def _echo_through(roost: Roost, name: str, guest_port: int) -> bytes:
    """A message to the guest's echo listener through its host forward."""
    host_addr = next(f["hostAddr"] for f in info(roost, name)["portForwards"]
                     if f["guestAddr"].endswith(f":{guest_port}"))
    host, port = host_addr.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=30) as s:
        s.sendall(b"through the forward")
        return s.recv(100)


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler:
    """In a thread, while a flood runs: the host agent's RSS every half
    second, and how long `roost ls` and GET /v1/info take, one each second
    (inf: no answer within a minute)."""

    def __init__(self, roost: Roost, name: str, pid: int) -> None:
        self.roost, self.name, self.pid = roost, name, pid
        self.peak_kib = rss_kib(pid)
        self.ls_seconds: list[float] = []
        self.info_seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _timed(self, into: list[float], call: Any) -> None:
        start = time.monotonic()
        try:
            call()
            into.append(round(time.monotonic() - start, 3))
        except (AssertionError, RoostError, subprocess.TimeoutExpired):
            into.append(float("inf"))

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.5):
            with suppress(OSError, AssertionError):
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            tick += 1
            if tick % 4 == 1:
                self._timed(self.ls_seconds, lambda: self.roost.run("ls", "--json", timeout=60))
            elif tick % 4 == 3:
                self._timed(self.info_seconds, lambda: info(self.roost, self.name, 60.0))

    def figures(self) -> dict[str, Any]:
        return {"hostAgentRssKiBPeak": self.peak_kib,
                "lsSecondsMax": max(self.ls_seconds, default=0.0),
                "infoSecondsMax": max(self.info_seconds, default=0.0),
                "samples": len(self.ls_seconds) + len(self.info_seconds)}

    def check(self) -> None:
        assert self.peak_kib < RSS_BOUND_KIB, f"host agent RSS {self.peak_kib} KiB"
        slow = {k: v for k, v in self.figures().items()
                if k.endswith("SecondsMax") and v >= ANSWER_WITHIN}
        assert not slow, (f"the host agent answered only after {slow} s during the flood "
                          f"(bound {ANSWER_WITHIN} s; inf: not within 60 s)")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_listener_flood(roost: Roost, vm: str) -> None:
    """Guest root opens 2000 listening ports at once, then closes them: the
    host agent forwards them all, lets them all go, stays small, and
    answers throughout."""
    count = 2000
    ha = host_agent_pid(roost, vm)
    fds_before, rss_before = _fd_count(ha), rss_kib(ha)
    log_from = _log_size(roost, vm)
    with attack("listener-flood", f"guest root opens {count} listening ports at once, "
                "then closes them") as detail:
        with Sampler(roost, vm, ha) as sampler:
            flood = guest_tool_popen(roost, vm, "flood", "listen", str(count),
                                     str(FLOOD_FIRST_PORT), "600", prefix="ulimit -n 8192; ")
            started = time.monotonic()
            try:
                assert flood.stdout is not None
                assert first_json(flood) == {"listening": count}
                _wait_forwards(roost, vm, count, {"agent": count}, 300, log_from)
                detail["forwardAllSeconds"] = round(time.monotonic() - started, 1)
                detail["fdsAtPeak"] = _fd_count(ha)
                detail["rssAtPeakKiB"] = rss_kib(ha)
            finally:
                assert flood.stdin is not None
                flood.stdin.close()
                flood.wait(timeout=120)
            detail["releaseAllSeconds"] = _wait_forwards(roost, vm, count, {}, 300, log_from)
            wait_until(lambda: _fd_count(ha) <= fds_before + 4, 30, "the host agent's fds")
        detail.update(rssBeforeKiB=rss_before, **sampler.figures(),
                      lsSeconds=sampler.ls_seconds, infoSeconds=sampler.info_seconds)
        detail["hostAgent"] = host_agent_serves(roost, vm, ha)
        sampler.check()
    figure("listenerFlood", {"listeners": count, **detail})


def test_event_flood(roost: Roost, vm: str) -> None:
    """For ROOST_FLOOD_SECS, guest root opens and closes 100 listeners as
    fast as it can: a `ports` event at each of the guest agent's scans.
    The figures: the guest and host agents' RSS after it."""
    count = 100
    ha = host_agent_pid(roost, vm)
    rss_before = rss_kib(ha)
    with attack("event-flood", f"guest root churns {count} listeners for {FLOOD_SECS:g}s"
                ) as detail:
        with Sampler(roost, vm, ha) as sampler:
            got = guest_tool(roost, vm, "flood", "churn", str(FLOOD_SECS), str(count),
                             str(FLOOD_FIRST_PORT), timeout=FLOOD_SECS + 300)
            ended = time.monotonic()
            wait_until(lambda: _flood_forwards(roost, vm, count) == 0, 300,
                       "the host's forwards to match the guest (none)")
            settled = time.monotonic() - ended
        detail.update(got, floodSeconds=FLOOD_SECS, hostAgentRssKiBBefore=rss_before,
                      hostAgentRssKiB=rss_kib(ha), **sampler.figures(),
                      settledSeconds=round(settled, 1))
        detail["hostAgent"] = host_agent_serves(roost, vm, ha)
        assert got["cycles"] > 0
        assert 0 < got["guestAgentRssKiB"] < RSS_BOUND_KIB
        sampler.check()
    figure("eventFlood", detail)


# -- 9p (a second VM: 9p shares exist only at launch) ----------------------------

NINE_RW, NINE_RO = "/mnt/nine-rw", "/mnt/nine-ro"
NINE_REVERSE = "/run/hostile/reverse.sock"


@pytest.fixture(scope="module")
def nine_vm(roost: Roost, vm: str) -> Iterator[tuple[str, Path, Path]]:
    """A small VM with a writable and a read-only static 9p share (default
    security model), exec on and one reverse socket: also the guest whose
    agent guest root replaces (test_forged_guest_agent), so that the shared
    VM keeps its own."""
    name = "hostile9"
    rw, ro = roost.home / "nine-rw", roost.home / "nine-ro"
    for share in (rw, ro):
        share.mkdir(exist_ok=True)
    (ro / "from-host.txt").write_text("nine data\n")
    config = roost.home / f"{name}.yaml"
    config.write_text(
        "mountType: 9p\n"
        "guestAgent:\n  allowExec: true\n"
        "portForwards:\n"
        f"  - guestSocket: {NINE_REVERSE}\n"
        f"    hostSocket: {roost.home / 'nine-reverse.sock'}\n"
        "    reverse: true\n"
        "mounts:\n"
        f"  - location: {rw}\n    mountPoint: {NINE_RW}\n    writable: true\n"
        f"  - location: {ro}\n    mountPoint: {NINE_RO}\n")
    with small_vm(roost, name, "--config", str(config)):
        yield name, rw, ro


def test_forged_owners_through_9p(roost: Roost, nine_vm: tuple[str, Path, Path]) -> None:
    name, rw, _ = nine_vm
    ha = host_agent_pid(roost, name)
    qemu_uid = os.stat(f"/proc/{roost.pid(name, 'qemu.pid')}").st_uid
    (rw / "from-host.txt").write_text("host data\n")
    (rw / "doomed.txt").write_text("host data\n")
    with attack("9p-forged-owners",
                f"guest root in a 9p share: chown {GUEST_UID}, setuid/setgid, device nodes, "
                "symlinks") as detail:
        out = guest(roost, name, f"""cd {NINE_RW}
            echo made > owned; chown {GUEST_UID}:{GUEST_UID} owned; echo chown=$?
            chmod 6755 owned; echo setuid=$?
            mknod char-dev c 1 3; echo mknod=$?
            ln -s /etc/shadow a-link; echo symlink=$?
            echo more >> from-host.txt; echo append=$?
            rm doomed.txt; echo delete=$?
            ls -ln""", check=False)
        detail["guest"] = out
        seen = {k: v for k, v in owners(rw).items() if k != "."}
        detail["host"] = seen
        assert {"owned", "char-dev", "a-link"} <= set(seen)
        # mapped-xattr: the guest's owners and modes live in xattrs; on the host
        # every file is QEMU's user's, a plain file with no setuid bit.
        assert {(uid, gid) for uid, gid, _ in seen.values()} == {(qemu_uid, qemu_uid)}
        made = {k: mode for k, (_, _, mode) in seen.items() if k != "from-host.txt"}
        assert all(mode[0] == "-" and not set(mode[1:]) & set("xsSt") for mode in made.values())
        assert (rw / "from-host.txt").read_text() == "host data\nmore\n"
        assert not (rw / "doomed.txt").exists()
        detail["hostAgent"] = host_agent_serves(roost, name, ha)


def test_read_only_9p_share_remounted_read_write(roost: Roost,
                                                 nine_vm: tuple[str, Path, Path]) -> None:
    name, _, ro = nine_vm
    try:
        with attack("9p-static-ro-remount-rw",
                    "guest root remounts a read-only 9p share rw and writes") as detail:
            _remount_rw_and_write(roost, name, NINE_RO, "from-host.txt", ro, detail)
    finally:
        guest(roost, name, f"mount -o remount,ro {NINE_RO}")


def test_symlinks_out_of_a_9p_share(roost: Roost, nine_vm: tuple[str, Path, Path]) -> None:
    name, rw, _ = nine_vm
    secret = rw.parent / f"nine-secret-{secrets.token_hex(4)}.txt"
    secret.write_text(f"host secret {secrets.token_hex(8)}\n")
    (rw / "abs-link").symlink_to(secret)
    (rw / "rel-link").symlink_to(f"../{secret.name}")
    try:
        with attack("9p-symlink-escape",
                    "guest root follows and makes symlinks out of a 9p share") as detail:
            out = guest(roost, name, f"cd {NINE_RW}; ln -s {secret} guest-abs; "
                                     "for l in abs-link rel-link guest-abs; do "
                                     "cat $l 2>&1; done", check=False)
            detail["guest"] = out
            assert secret.read_text() not in out
            # mapped-xattr keeps a guest's symlink as a plain file on the host.
            assert not (rw / "guest-abs").is_symlink()
    finally:
        secret.unlink()


# -- the guest agent's channel ---------------------------------------------------

def test_forged_guest_agent(roost: Roost, nine_vm: tuple[str, Path, Path],
                            hostile_dir: Path) -> None:
    """Guest root kills the guest agent, takes its virtio port and speaks the
    wire protocol itself (hostile_tools.forge_agent): streams the host never
    granted are reset; a token the host did grant serves only that share,
    read-only as the host recorded it, once."""
    name, rw, _ = nine_vm
    share = make_share(hostile_dir, "granted")
    before = snapshot(hostile_dir)
    ha, qemu = host_agent_pid(roost, name), roost.pid(name, "qemu.pid")
    mounts_before = mounts(roost, name)
    ready = rw / "forge-ready"
    ready.unlink(missing_ok=True)
    proc = guest_tool_popen(roost, name, "forge_agent", f"{NINE_RW}/forge-ready",
                            "from-host.txt", str(hostile_dir / "secret.txt"), "60",
                            NINE_REVERSE, "abs-link", "rel-link")
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 120, "the forged agent")
        assert ready.exists(), proc.communicate()
        roost.run("mount", "add", name, str(share), "/mnt/forged", "--type", "reverse-sshfs")
        roost.run("mount", "remove", name, "/mnt/forged")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["portTakenAfter"] < FORGE_PORT_TAKEN_WITHIN, got
    refused = []
    for what, result in got["forged"].items():
        refused.append(record(f"forged-stream-{what}",
                              f"guest root announces a guest stream the host never granted "
                              f"({what}) and sends SFTP INIT",
                              bool(result["reset"]) and result["bytesFromHost"] == 0, result))
    granted = got.get("granted", {})
    refused.append(record("forged-agent-granted-token-writes",
                          "with the one-time token of a read-only reverse-sshfs mount, claiming "
                          "readonly: false and remotePath /, guest root sends SFTP writes",
                          bool(granted) and refused_all(granted["readOnly"])
                          and snapshot(hostile_dir) == before, granted.get("readOnly")))
    refused.append(record("forged-agent-granted-token-escapes",
                          "with that token, guest root asks for host paths outside the share",
                          bool(granted) and _escapes_refused(granted["escapes"], hostile_dir),
                          granted.get("escapes")))
    refused.append(record("forged-agent-token-replay",
                          "guest root uses the host's one-time token a second time",
                          bool(got.get("replay", {}).get("reset"))
                          and got["replay"]["bytesFromHost"] == 0, got.get("replay")))
    assert all(refused), json.dumps(got, indent=1)
    assert snapshot(hostile_dir) == before
    # The host agent never went away; once the forger is gone, the real guest
    # agent (respawned by init) answers again.
    assert roost.pid(name, "qemu.pid") == qemu
    host_agent_serves(roost, name, ha)
    assert mounts(roost, name) == mounts_before
    wait_until(lambda: roost.run("exec", name, "--", "true", check=False).returncode == 0,
               30, "the respawned guest agent to run a command")


def test_ports_are_forwarded_after_the_guest_agent_restarts(
        roost: Roost, nine_vm: tuple[str, Path, Path]) -> None:
    name, _, _ = nine_vm
    assert guest_tool(roost, name, "guest_agent", "kill")["killed"]
    time.sleep(3)  # init respawns it; the host has 2 s to notice
    port = 18555
    listener = guest_tool_popen(roost, name, "flood", "listen", "1", str(port), "60")
    try:
        assert listener.stdout is not None
        assert first_json(listener) == {"listening": 1}
        wait_until(lambda: any(f["guestAddr"] == f"127.0.0.1:{port}"
                               for f in info(roost, name)["portForwards"]),
                   10, "the new guest port to be forwarded")
    finally:
        listener.kill()
        listener.wait()


def test_guest_agent_stopped_under_many_listeners(
        roost: Roost, nine_vm: tuple[str, Path, Path]) -> None:
    """Guest root stops the guest agent (SIGSTOP) while 500 ports listen:
    the host agent finds it silent, forwards them all over SSH instead, and
    moves them back to the guest agent once it runs again; a connection
    reaches the guest either way."""
    name, _, _ = nine_vm
    count = 500
    ha = host_agent_pid(roost, name)
    log_from = _log_size(roost, name)
    with attack("guest-agent-stopped", f"guest root stops the guest agent while {count} "
                "ports listen") as detail:
        flood = guest_tool_popen(roost, name, "flood", "listen", str(count),
                                 str(FLOOD_FIRST_PORT), "600", prefix="ulimit -n 8192; ")
        try:
            assert flood.stdout is not None
            assert first_json(flood) == {"listening": count}
            _wait_forwards(roost, name, count, {"agent": count}, 120, log_from)
            assert guest_tool(roost, name, "guest_agent", "stop")["stop"]
            try:
                detail["overSshSeconds"] = _wait_forwards(roost, name, count, {"ssh": count},
                                                          180, log_from)
                assert _echo_through(roost, name, FLOOD_FIRST_PORT + 7) == b"through the forward"
            finally:
                assert guest_tool(roost, name, "guest_agent", "cont")["cont"]
            detail["backToAgentSeconds"] = _wait_forwards(roost, name, count, {"agent": count},
                                                          120, log_from)
            assert _echo_through(roost, name, FLOOD_FIRST_PORT + 8) == b"through the forward"
        finally:
            assert flood.stdin is not None
            flood.stdin.close()
            flood.wait(timeout=120)
        _wait_forwards(roost, name, count, {}, 120, log_from)
        detail["hostAgent"] = host_agent_serves(roost, name, ha)
    figure("guestAgentStopped", detail)
