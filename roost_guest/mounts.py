"""Guest side of mounts: virtiofs and 9p devices, and reverse sshfs.

The host attaches the device (or, for sshfs, serves SFTP over a tunnel
stream) and asks here for the mount, so it never needs root over SSH.
Arguments go to mount(8) as separate words, never through a shell.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from roost_guest import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

DEVICE_WAIT_SECONDS = 10.0


class MountError(Exception):
    pass


def _run(argv: List[str], timeout: float = 30.0) -> str:
    import subprocess  # 0.3 s of import under TCG: only when mounting

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MountError("%s timed out" % argv[0]) from None
    except OSError as e:
        raise MountError("cannot run %s: %s" % (argv[0], e.strerror)) from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise MountError(out or "%s exited %d" % (argv[0], proc.returncode))
    return out


def _mount_at(path: str) -> Optional[Tuple[str, str]]:
    """(source, fstype) of the mount on top at `path`, from /proc/self/mounts."""
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1].replace("\\040", " ") == path:
                found = (fields[0].replace("\\040", " "), fields[2])
    return found


def keep_existing(req: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A host agent that took over a VM, not knowing which of roost.yaml's
    shares the guest still has, asks for each with keepExisting: the answer
    when the guest has it (same type and tag), else None, and the share is
    mounted as usual. A reverse-sshfs mount there is ended first: its
    server went with the host agent that started it."""
    path = req.get("mountPoint")
    if protocol.guest_mount_point_problem(path):
        return None  # check_mount_point says what is wrong
    norm = os.path.normpath(str(path))
    there = _mount_at(norm)
    if there is None:
        return None
    fstype = req.get("fstype")
    if fstype in ("virtiofs", "9p") and there == (req.get("tag"), fstype):
        return {"mountPoint": norm, "kept": True}
    if fstype == "reverse-sshfs" and there[1] == "fuse.sshfs":
        umount({"mountPoint": norm, "force": True})
    return None


def mounted_at(path: str) -> bool:
    return _mount_at(path) is not None


def check_mount_point(path: Any) -> str:
    problem = protocol.guest_mount_point_problem(path)
    if problem:
        raise MountError(problem)
    norm = os.path.normpath(str(path))
    if os.path.lexists(norm) and not os.path.isdir(norm):
        raise MountError("%s exists and is not a directory" % norm)
    if mounted_at(norm):
        raise MountError("%s is already a mount point" % norm)
    return norm


def mount_device(req: Dict[str, Any]) -> Dict[str, Any]:
    """Mount a virtiofs or 9p tag; waits for a just-plugged device to appear."""
    fstype = req.get("fstype")
    tag = req.get("tag")
    if fstype not in ("virtiofs", "9p") or not isinstance(tag, str) or not tag:
        raise MountError("mount needs fstype virtiofs or 9p and a tag")
    path = check_mount_point(req.get("mountPoint"))
    options = ["ro" if req.get("readonly") else "rw"]
    if fstype == "9p":
        options += ["trans=virtio", "version=%s" % req.get("version", "9p2000.L"),
                    "msize=%d" % int(req.get("msize", 512000))]
        if req.get("cache"):
            options.append("cache=%s" % req["cache"])
        if req.get("securityModel") in ("mapped-xattr", "mapped-file"):
            options.append("access=any")
    modules = ["virtiofs"] if fstype == "virtiofs" else ["9p", "9pnet_virtio"]
    with contextlib.suppress(MountError):  # built in or loaded: mount says if not
        _run(["modprobe", "-qa", *modules])
    os.makedirs(path, exist_ok=True)
    began = time.monotonic()
    deadline = began + DEVICE_WAIT_SECONDS
    attempts = 0
    while True:
        attempts += 1
        try:
            _run(["mount", "-t", fstype, "-o", ",".join(options), tag, path])
            break
        except MountError as e:
            # A hot-plugged device takes a moment to be probed.
            if time.monotonic() > deadline or not _device_missing(str(e), fstype):
                raise
            time.sleep(0.05)
    return {"mountPoint": path, "attempts": attempts,
            "seconds": round(time.monotonic() - began, 3)}


def _device_missing(message: str, fstype: str) -> bool:
    m = message.lower()
    if "no such device" in m or "no such file" in m or "not found" in m:
        return True
    # virtiofs answers EINVAL for a tag no probed device carries (yet).
    return fstype == "virtiofs" and "invalid argument" in m


FUSECTL = "/sys/fs/fuse/connections"


def mount_info(path: str) -> Optional[Tuple[str, str]]:
    """(st_dev as "major:minor", fstype) of the mount at `path`, from
    /proc/self/mountinfo: a stat() of a share whose server died would hang."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 7 or fields[4].replace("\\040", " ") != path:
                continue
            try:
                fstype = fields[fields.index("-", 6) + 1]
            except (ValueError, IndexError):
                continue
            found = (fields[2], fstype)  # the last one: the mount on top
    return found


def abort_fuse(path: str) -> bool:
    """Abort the FUSE connection (sshfs) of the mount at `path` through
    fusectl: its pending requests fail (ECONNABORTED), and so does any
    later I/O, instead of waiting for a server that is gone. False when it
    is no /dev/fuse mount: virtiofs has no fusectl entry and refuses
    MNT_FORCE (Linux sets no_control and no_force_umount for it); the host
    unplugs its device first instead, which fails its requests (ENOTCONN)."""
    info = mount_info(path)
    if info is None or not (info[1] == "fuse" or info[1].startswith("fuse.")):
        return False
    major, _, minor = info[0].partition(":")
    # fusectl names a connection by the kernel's dev_t (major << 20 | minor).
    conn = os.path.join(FUSECTL, str((int(major) << 20) | int(minor)))
    if not os.path.isdir(conn):
        with contextlib.suppress(MountError):
            _run(["modprobe", "-q", "fuse"])
        if not mounted_at(FUSECTL):
            _run(["mount", "-t", "fusectl", "fusectl", FUSECTL])
    try:
        with open(os.path.join(conn, "abort"), "w") as f:
            f.write("1")
    except OSError as e:
        raise MountError("cannot abort the FUSE connection of %s: %s" % (path, e)) from None
    return True


def umount(req: Dict[str, Any]) -> Dict[str, Any]:
    """Unmount; with force, an sshfs share is aborted first (its server may
    be dead, and then a plain umount or any access would hang) and the
    mount detached lazily, so nothing in the guest waits on it any more."""
    path = req.get("mountPoint")
    if not isinstance(path, str) or not path.startswith("/"):
        raise MountError("umount needs an absolute mount point")
    if not mounted_at(path):
        return {"mountPoint": path, "mounted": False}
    if req.get("force"):
        aborted = abort_fuse(path)
        _run(["umount", "-l", path])
        return {"mountPoint": path, "mounted": False, "aborted": aborted}
    try:
        _run(["umount", path])
    except MountError as e:
        raise MountError("cannot unmount %s: %s" % (path, e)) from None
    return {"mountPoint": path, "mounted": False}


def start_sshfs(req: Dict[str, Any], sock: socket.socket) -> Any:
    """Run `sshfs -o passive` with its stdin/stdout on `sock` (an SFTP stream
    the host serves with sftp-server); returns the process once mounted."""
    import subprocess

    path = check_mount_point(req.get("mountPoint"))
    remote = req.get("remotePath")
    if not isinstance(remote, str) or not remote.startswith("/"):
        raise MountError("reverse-sshfs needs the host path")
    os.makedirs(path, exist_ok=True)
    with contextlib.suppress(MountError):  # no udev to load it on first open
        _run(["modprobe", "-q", "fuse"])
    options = ["passive", "allow_other", "default_permissions" if req.get("readonly") else "",
               "ro" if req.get("readonly") else "",
               "follow_symlinks" if req.get("followSymlinks") else "",
               "cache=yes" if req.get("cache", True) else "cache=no"]
    argv = ["sshfs", ":" + remote, path, "-f", "-o", ",".join(o for o in options if o)]
    proc = subprocess.Popen(argv, stdin=sock.fileno(), stdout=sock.fileno(),
                            stderr=subprocess.PIPE, close_fds=True)
    deadline = time.monotonic() + DEVICE_WAIT_SECONDS
    while not mounted_at(path):
        if proc.poll() is not None:
            err = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
            raise MountError("sshfs exited %s: %s" % (proc.returncode, err))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise MountError("sshfs did not mount %s in %ds" % (path, DEVICE_WAIT_SECONDS))
        time.sleep(0.05)
    return proc
