"""The built-in default image, assembled from Debian packages.

Nothing is downloaded but .deb files through apt. The result is three
files cached under a key made of the exact package versions and the
recipe, so a rebuild happens only when either changes:

* ``vmlinux``: the kernel's ELF image, booted through QEMU's PVH entry;
* ``initrd``: an uncompressed initramfs that mounts the root disk;
* ``base.qcow2``: the ext4 root file system every instance's disk is
  copy-on-write over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from roost.errors import RoostError
from roost.image import cpio, debpick, ext4, kernel
from roost.image.buildcache import build_once, images_dir, newest_built
from roost.image.cpio import NewcWriter
from roost.image.debpick import extract_picked
from roost.image.ext4 import write_root_fs
from roost.image.tools import run as _run
from roost.store.paths import cache_dir

Progress = Callable[[str], None]

RECIPE_VERSION = "2"
KERNEL_META_PACKAGE = "linux-image-amd64"
PACKAGES = [
    "busybox-static",
    "libc6",
    "zlib1g",
    "libgcc-s1",
    "dropbear-bin",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "libcrypt1",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libexpat1",
    "libffi8",
    "libuuid1",
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    "libss2",
    "libblkid1",
    "openssh-sftp-server",
    "sshfs",
    "fuse3",
    "libfuse3-3",
    "libglib2.0-0",
    "libpcre2-8-0",
    "libmount1",
    "libselinux1",
    # sudo's and PAM's libraries
    "libpam0g",
    "libaudit1",
    "libcap-ng0",
    # procps' library (it links libsystemd, and that its compressors)
    "libproc2-0",
    "libsystemd0",
    "libcap2",
    "libgcrypt20",
    "libgpg-error0",
    "liblz4-1",
    "liblzma5",
    "libzstd1",
    # GNU install's (ACLs), bash's (terminfo)
    "libacl1",
    "libattr1",
    "libtinfo6",
]
# Packages of which the image takes only these files (globs): commands
# shell scripts and Lima users expect that busybox-static lacks, each the
# Debian binary. Nothing busybox has is replaced: its ash (/bin/sh) runs its
# own applets before searching PATH, so a second `ps` or `timeout` would
# only answer to bash and full paths.
PICKED_FILES = {
    "sudo": ["usr/bin/sudo", "usr/bin/sudoedit", "usr/libexec/sudo/sudoers.so",
             "usr/libexec/sudo/libsudo_util.so.0*", "etc/sudoers"],
    "libpam-modules": ["lib/x86_64-linux-gnu/security/pam_unix.so"],
    "procps": ["usr/bin/pgrep", "usr/bin/pkill", "usr/bin/pidwait"],
    "coreutils": [
        *(f"usr/bin/{name}" for name in [
            "nohup", "nice", "install", "stdbuf", "printenv", "comm", "join", "split"]),
        "usr/libexec/coreutils/libstdbuf.so",
    ],
    "util-linux": ["usr/bin/flock", "bin/mountpoint"],
    "libc-bin": ["usr/bin/getent"],
    "bash": ["bin/bash"],
}
# Modules the initramfs loads: the root disk (crc32c: ext4 checksums) and
# what sshd and the guest agent need right after (network, the agent's
# port, the cidata ISO). Each group is loaded in order, the groups in
# parallel (two vCPUs; insmod under TCG is slow), so no module of a later
# group may depend on one of an earlier group.
BOOT_MODULE_GROUPS = [
    ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console"],
    ["ext4", "crc32c_generic", "isofs", "overlay"],
]
# Everything the running guest may load: ACPI power button, shared folders,
# overlay root, vsock, port discovery.
GUEST_MODULES = [
    *(m for group in BOOT_MODULE_GROUPS for m in group),
    "button", "evdev", "virtio_rng",
    "9p", "9pnet_virtio", "virtiofs", "fuse", "overlay", "squashfs", "loop",
    "vsock", "vmw_vsock_virtio_transport", "inet_diag", "tcp_diag", "udp_diag",
    "unix_diag",
]
_PRUNE = [
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
    "usr/share/lintian", "usr/share/bug", "usr/share/gdb", "usr/share/i18n",
    "usr/lib/x86_64-linux-gnu/gconv", "usr/share/glib-2.0", "boot",
]
_PY_PRUNE = [
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "pydoc_data", "distutils", "sqlite3", "dbm", "curses", "config-3.11-x86_64-linux-gnu",
]
ROOT_FS_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class BuiltinImage:
    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd"

    @property
    def disk(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def manifest(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.directory / "manifest.json").read_text())
        return data


def resolve_packages() -> list[tuple[str, str]]:
    """(package, .deb file name) for every package, as apt would fetch it now."""
    if shutil.which("apt-get") is None:
        raise RoostError("the built-in image is assembled with apt; apt-get was not found")
    depends = _run(["apt-cache", "depends", "--no-recommends", KERNEL_META_PACKAGE])
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*)", depends)
    if not match:
        raise RoostError(
            f"cannot resolve {KERNEL_META_PACKAGE}; run `apt-get update` (scripts/setup.sh does)"
        )
    names = [match.group(1), *PACKAGES, *PICKED_FILES]
    try:
        out = _run(["apt-get", "download", "--print-uris", *names])
    except RoostError as e:
        raise RoostError(f"{e}\nhint: run `apt-get update` first (scripts/setup.sh does)") from e
    return pair_with_files(names, re.findall(r"^'[^']+' (\S+\.deb) ", out, re.M))


def pair_with_files(names: list[str], files: list[str]) -> list[tuple[str, str]]:
    """(package, .deb file name) in the order of `names`. apt prints the
    files in an order of its own; a file is named <package>_<version>_<arch>."""
    by_name = {filename.split("_", 1)[0]: filename for filename in files}
    missing = [name for name in names if name not in by_name]
    if missing or len(files) != len(names):
        raise RoostError(f"apt resolved {len(files)} files for {len(names)} packages; "
                         f"no file for {missing}: {files}")
    return [(name, by_name[name]) for name in names]


def _recipe_digest() -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    # This module and the ones it builds with: a change to any is a new recipe.
    for module in [__file__, kernel.__file__, cpio.__file__, debpick.__file__, ext4.__file__]:
        h.update(Path(module).read_bytes())
    h.update(json.dumps(
        [PACKAGES, PICKED_FILES, GUEST_MODULES, _PRUNE, _PY_PRUNE, ROOT_FS_BYTES]).encode())
    guestfs = resources.files("roost.image") / "guestfs"
    for path in sorted(_walk(guestfs)):
        h.update(path.encode())
        h.update((guestfs / path).read_bytes())
    return h.hexdigest()


def _walk(root: resources.abc.Traversable, prefix: str = "") -> Iterator[str]:
    for child in root.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            yield from _walk(child, rel + "/")
        else:
            yield rel


def cache_key(debs: list[tuple[str, str]]) -> str:
    h = hashlib.sha256(_recipe_digest().encode())
    for _, filename in sorted(debs):
        h.update(filename.encode() + b"\n")
    return h.hexdigest()[:16]


def find_cached() -> BuiltinImage | None:
    """The newest built image, without asking apt (for commands that must be fast)."""
    newest = newest_built("builtin")
    return BuiltinImage(newest) if newest is not None else None


def ensure_builtin_image(progress: Progress = lambda _: None) -> BuiltinImage:
    """Return the image for the current package versions, building it if needed."""
    progress("resolving packages")
    debs = resolve_packages()
    image = BuiltinImage(images_dir() / f"builtin-{cache_key(debs)}")
    build_once(image.directory, lambda tmp: _build(tmp, debs, progress))
    return image


def _download(debs: list[tuple[str, str]], progress: Progress) -> Path:
    debdir = cache_dir() / "debs"
    debdir.mkdir(parents=True, exist_ok=True)
    missing = [name for name, filename in debs if not (debdir / filename).exists()]
    if missing:
        progress(f"downloading {len(missing)} Debian packages")
        _run(["apt-get", "download", *missing], cwd=debdir)
    return debdir


def _build(out: Path, debs: list[tuple[str, str]], progress: Progress) -> None:
    started = time.monotonic()
    debdir = _download(debs, progress)
    root = out / "rootfs"
    root.mkdir()
    progress("unpacking packages")
    picked: dict[str, list[str]] = {}
    for name, filename in debs:
        if name in PICKED_FILES:
            picked[name] = extract_picked(debdir / filename, root, PICKED_FILES[name])
        else:
            _run(["dpkg-deb", "-x", str(debdir / filename), str(root)])
    kernel_release = _kernel_release(root)

    progress("extracting the PVH kernel")
    (out / "vmlinux").write_bytes(
        kernel.extract_vmlinux((root / "boot" / f"vmlinuz-{kernel_release}").read_bytes())
    )
    progress("selecting kernel modules")
    boot_order, kept_modules = _prune_modules(root, kernel_release)
    progress("building the initramfs")
    _write_initrd(out / "initrd", root, kernel_release, boot_order)

    progress("assembling the root file system")
    for rel in _PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    _install_busybox(root)
    _install_guestfs(root)
    _write_etc(root)
    _install_sudo(root)
    _prepare_python(root)
    _run([str(root / "bin" / "busybox"), "depmod", "-b", str(root), kernel_release])

    progress("writing the base disk")
    raw = out / "root.raw"
    write_root_fs(root, raw, ROOT_FS_BYTES, "roost-root")
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "base.qcow2")])
    raw.unlink()
    root_bytes = sum(p.lstat().st_size for p in root.rglob("*") if p.is_file())
    shutil.rmtree(root)
    manifest = {
        "recipe": RECIPE_VERSION,
        "kernelRelease": kernel_release,
        "packages": [filename for _, filename in debs],
        "pickedFiles": picked,
        "modules": kept_modules,
        "sizes": {
            "vmlinux": (out / "vmlinux").stat().st_size,
            "initrd": (out / "initrd").stat().st_size,
            "baseQcow2": (out / "base.qcow2").stat().st_size,
            "rootFiles": root_bytes,
        },
        "buildSeconds": round(time.monotonic() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _kernel_release(root: Path) -> str:
    releases = [p.name for p in (root / "lib" / "modules").iterdir()]
    if len(releases) != 1:
        raise RoostError(f"expected one kernel in the packages, found {releases}")
    return releases[0]


def _prune_modules(root: Path, release: str) -> tuple[list[list[str]], list[str]]:
    moddir = root / "lib" / "modules" / release
    index = kernel.module_index(moddir)
    keep = kernel.load_order(GUEST_MODULES, index)
    groups = kernel.parallel_load_groups(BOOT_MODULE_GROUPS, index)
    kept_files = {index[m] for m in keep}
    for ko in list(moddir.rglob("*.ko")):
        if ko not in kept_files:
            ko.unlink()
    for p in [moddir / "modules.dep", moddir / "modules.alias", moddir / "modules.symbols"]:
        p.unlink(missing_ok=True)
    # The initramfs gets the module files, group by group, in load order.
    return [[index[m].relative_to(moddir).as_posix() for m in g] for g in groups], keep


def _write_initrd(path: Path, root: Path, release: str, boot_groups: list[list[str]]) -> None:
    moddir = root / "lib" / "modules" / release
    guestfs = resources.files("roost.image") / "guestfs" / "initrd"
    with open(path, "wb") as f:
        w = NewcWriter(f)
        for d in ["bin", "dev", "proc", "sys", "newroot", "modules"]:
            w.add_dir(d)
        w.add_char_device("dev/console", 5, 1)
        w.add_char_device("dev/null", 1, 3, 0o666)
        w.add_file("bin/busybox", (root / "bin" / "busybox").read_bytes(), 0o755)
        w.add_file("init", (guestfs / "init").read_bytes(), 0o755)
        lines = []
        for group in boot_groups:
            names = [rel.rsplit("/", 1)[-1] for rel in group]
            for rel, name in zip(group, names, strict=True):
                w.add_file(f"modules/{name}", (moddir / rel).read_bytes())
            lines.append(" ".join(names))
        # One line per group: init loads the lines in parallel.
        w.add_file("modules.load", ("\n".join(lines) + "\n").encode())
        w.close()


def _install_busybox(root: Path) -> None:
    busybox = root / "bin" / "busybox"
    for rel in _run([str(busybox), "--list-full"]).split():
        link = root / rel
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(busybox, link.parent))


def _install_guestfs(root: Path) -> None:
    src = resources.files("roost.image") / "guestfs" / "rootfs"
    for rel in _walk(src):
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = (src / rel).read_bytes()
        dest.write_bytes(data)
        dest.chmod(0o755 if data.startswith(b"#!") else 0o644)


def _write_etc(root: Path) -> None:
    etc = root / "etc"
    files = {
        "passwd": (
            # The login shell reads /etc/environment (dropbear has no pam_env).
            "root:x:0:0:root:/root:/usr/lib/roost/login-shell\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        ),
        "group": "root:x:0:\ntty:x:5:\nsudo:x:27:\nnogroup:x:65534:\n",
        "shadow": "root:*:19000:0:99999:7:::\n",
        # dropbear refuses a user whose shell is not listed here.
        "shells": "/bin/sh\n/bin/ash\n/bin/bash\n/usr/lib/roost/login-shell\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        "profile": "export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n",
        # Mounted by one `mount -a` in the boot script (one fork, not six).
        "fstab": (
            "proc /proc proc nosuid,nodev,noexec 0 0\n"
            "sysfs /sys sysfs nosuid,nodev,noexec 0 0\n"
            "tmpfs /run tmpfs mode=0755,nosuid,nodev 0 0\n"
            "tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n"
            "devpts /dev/pts devpts gid=5,mode=0620,ptmxmode=0666 0 0\n"
            "tmpfs /dev/shm tmpfs mode=1777,nosuid,nodev 0 0\n"
        ),
        "os-release": (
            'NAME="roost built-in"\nID=roost\n'
            'PRETTY_NAME="roost built-in (Debian 12 packages)"\n'
        ),
    }
    for name, text in files.items():
        (etc / name).write_text(text)
    (etc / "shadow").chmod(0o600)
    for d in ["root", "home", "mnt", "run", "tmp", "var/log/roost", "var/lib/roost", "etc/acpi",
              "etc/roost/integrations.d", "etc/roost/probes.d", "usr/local/bin", "dev", "proc",
              "sys", "mnt/roost-lower", "mnt/roost-upper", "mnt/cidata"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o700)
    (root / "tmp").chmod(0o1777)
    python3 = root / "usr" / "bin" / "python3"
    if not python3.exists():
        python3.symlink_to("python3.11")
    # Dropbear looks for the SFTP server here; scp and sftp need it.
    sftp = root / "usr" / "lib" / "sftp-server"
    if not sftp.exists():
        sftp.symlink_to("openssh/sftp-server")


def _install_sudo(root: Path) -> None:
    """The modes Debian's sudo has once installed (its maintainer script sets
    /etc/sudoers'); the user's rule is written at boot (usr/lib/roost/user.sh)."""
    (root / "usr" / "bin" / "sudo").chmod(0o4755)
    (root / "etc" / "sudoers").chmod(0o440)
    (root / "etc" / "sudoers.d").mkdir(mode=0o755, exist_ok=True)


def _prepare_python(root: Path) -> None:
    stdlib = root / "usr" / "lib" / "python3.11"
    for rel in _PY_PRUNE:
        shutil.rmtree(stdlib / rel, ignore_errors=True)
    # Debian ships no .pyc; compile with the guest's own interpreter so the
    # magic number matches, and unchecked so no source stat is needed.
    env = {"PYTHONHOME": str(root / "usr"), "PATH": "/usr/bin:/bin"}
    _run([str(root / "usr" / "bin" / "python3.11"), "-S", "-m", "compileall", "-q",
          "-j", "0", "--invalidation-mode", "unchecked-hash", "-d", "/usr/lib/python3.11",
          str(stdlib)], env=env)
