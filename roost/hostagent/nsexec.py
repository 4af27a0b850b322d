"""The child side of roost.hostagent.userns: run as `python -I nsexec.py SPEC`.

It makes a user and mount namespace of its own, tells the parent (which
writes the id maps from outside: the share owner's uid and gid, mapped to
themselves, and no other), becomes the owner, builds the file-system view
the spec asks for and execs the program, with the namespace's capabilities
only when asked (virtiofsd switches to the guest's ids per request).
Standard library only and import-light: it runs for every share a guest
mounts.

SPEC (JSON): {"argv": [...], "binds": [[source, target, readonly], ...],
"scratch": dir or null, "chroot": bool, "chdir": str, "uid": n, "gid": n,
"keepCaps": bool, "files": {path: text}, "ready": fd, "go": fd}. A scratch directory gets a fresh
tmpfs (in the namespace only) in which the binds under it are made; with
chroot it becomes the root, so the program sees nothing but those binds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs's f_flag -> the mount flags a remount inside a user namespace must
# keep (the kernel locks them on mounts inherited from a more privileged one).
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
           (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
           (os.ST_RELATIME, MS_RELATIME))

_PR_SET_KEEPCAPS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 8, 47, 2
_CAP_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, flags, None),
           f"mount {source} on {target}")


def _bind(fd: int, target: str, readonly: bool) -> None:
    source = f"/proc/self/fd/{fd}"
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID
    if not stat.S_ISCHR(os.stat(target).st_mode):  # /dev/null must stay a device
        flags |= MS_NODEV
    st = os.statvfs(target)
    for st_flag, ms_flag in _LOCKED:
        if st.f_flag & st_flag:
            flags |= ms_flag
    if readonly:
        flags |= MS_RDONLY
    _mount(None, target, None, flags)


def _make_target(path: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass


def _capabilities(ambient: bool) -> None:
    """Every capability we may hold (in this namespace only) made effective
    again after a setuid; with `ambient`, kept across exec though the
    program runs as a uid other than 0."""
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; two words each
    _check(_libc.capget(header, data), "capget")
    data[0], data[3] = data[1], data[4]  # effective = permitted
    if ambient:
        data[2], data[5] = data[1], data[4]  # inheritable = permitted
    _check(_libc.capset(header, data), "capset")
    for cap in range(64) if ambient else ():
        if ((data[1] if cap < 32 else data[4]) >> (cap % 32)) & 1:
            _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0),
                   f"ambient capability {cap}")


# No setuid or setgid bit through a share: a program the guest planted in a
# root-owned share and made setuid would run as root on the host. The mode
# argument of each call that sets one (x86-64 numbers), by its position.
_MODE_ARG = {90: 1, 91: 1, 268: 2,          # chmod, fchmod, fchmodat
             2: 2, 257: 3, 85: 1,           # open, openat, creat
             83: 1, 258: 2, 133: 1, 259: 2}  # mkdir, mkdirat, mknod, mknodat
_HIDDEN_MODE = (437, 452)  # openat2, fchmodat2: the mode is out of reach; ENOSYS
_AUDIT_ARCH_X86_64, _X32_BIT = 0xC000003E, 0x40000000
_SET_ID_BITS = 0o6000
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def _no_set_id_bits_filter() -> list[tuple[int, int, int, int]]:
    """A classic BPF program for seccomp: (code, jt, jf, k) instructions."""
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06  # ld [k]; jeq #k; jset #k; ret #k
    eperm, enosys = _SECCOMP_RET_ERRNO | 1, _SECCOMP_RET_ERRNO | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, enosys),
            (ld, 0, 0, 0), (jset, 0, 1, _X32_BIT), (ret, 0, 0, enosys)]
    for nr in _HIDDEN_MODE:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, enosys)]
    for nr, arg in _MODE_ARG.items():
        # nr? then load the mode's low word: a set-id bit is EPERM, else allow.
        prog += [(jeq, 0, 4, nr), (ld, 0, 0, 16 + 8 * arg), (jset, 0, 1, _SET_ID_BITS),
                 (ret, 0, 0, eperm), (ret, 0, 0, _SECCOMP_RET_ALLOW)]
    return [*prog, (ret, 0, 0, _SECCOMP_RET_ALLOW)]


def _refuse_set_id_bits() -> None:
    prog = _no_set_id_bits_filter()

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    insns = (SockFilter * len(prog))(*(SockFilter(*i) for i in prog))
    fprog = SockFprog(len(prog), insns)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
           "seccomp filter")


def main(spec: dict[str, Any]) -> None:
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    # Held (in the new mount namespace: a bind's source must be in it) before
    # anything is mounted, so that a source under the scratch directory stays
    # reachable.
    binds = [(os.open(src, os.O_PATH | os.O_CLOEXEC), os.path.isdir(src), dst, bool(ro))
             for src, dst, ro in spec["binds"]]
    os.write(spec["ready"], b"1")
    if os.read(spec["go"], 1) != b"1":
        sys.exit(126)  # the parent could not map us
    # The owner's ids, the only ones mapped (files made from here on are
    # theirs), keeping the capabilities the namespace's creator has in it.
    uid, gid = spec["uid"], spec["gid"]
    os.setresgid(gid, gid, gid)
    with contextlib.suppress(PermissionError):  # denied here: there are none to drop
        os.setgroups([])
    _check(_libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities")
    os.setresuid(uid, uid, uid)
    _capabilities(ambient=False)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    scratch = spec["scratch"]
    if scratch:  # a fresh tmpfs over it (in here only), where the binds go
        _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV)
        os.chmod(scratch, 0o755)
    for fd, is_dir, dst, ro in binds:
        if scratch and (dst + "/").startswith(scratch + "/"):
            _make_target(dst, is_dir)
        _bind(fd, dst, ro)
        os.close(fd)
    for path, text in spec["files"].items():  # small files of its own, on the scratch tmpfs
        _make_target(path, False)
        with open(path, "w") as f:
            f.write(text)
    if spec["chroot"]:
        os.chroot(scratch)
    os.chdir(spec["chdir"])
    # Without keepCaps, exec as a uid other than 0 leaves the program none.
    if spec["keepCaps"]:
        _capabilities(ambient=True)
    for fd in (spec["ready"], spec["go"]):
        os.close(fd)
    _refuse_set_id_bits()
    os.execv(spec["argv"][0], spec["argv"])


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except OSError as e:
        sys.stderr.write(f"roost nsexec: {e}\n")
        sys.exit(127)
