"""The `debian-12` image: a real Debian 12 cloud image, built from Debian packages.

What a user gets from Debian's own genericcloud image, made offline with
mmdebstrap: systemd, cloud-init, OpenSSH, sudo, apt, python3 and the cloud
kernel, on an MBR disk that SeaBIOS boots through GRUB. Like the official
image it ships no users, no SSH host keys and an empty machine-id, so its
first boot is a real cloud-init first boot from roost's NoCloud seed.

The disk boots under SeaBIOS and under UEFI (OVMF), like Debian's own: an
MBR with an EFI system partition (FAT, GRUB as /EFI/BOOT/BOOTX64.EFI)
and the root partition last, so cloud-init's growpart can grow it; for
the BIOS, GRUB's boot sector and core image sit in the MBR gap. It is all
assembled without root and without loop devices: the ext4 file system is
written into its partition with `mkfs.ext4 -d -E offset=`, the FAT one
with mtools, the boot code by offset.
The file system is made inside mmdebstrap's customize hook, so files get
their owners from the build's own (possibly unshared) namespace.

Cached under a key of the recipe and the versions of the packages it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from roost.errors import RoostError
from roost.image.buildcache import build_once, images_dir, newest_built
from roost.image.tools import find_tool, run
from roost.store.durable import write_atomic

Progress = Callable[[str], None]

NAME = "debian-12"
SUITE = "bookworm"
RECIPE_VERSION = "1"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
PACKAGES = [
    "systemd-sysv", "udev", "dbus", "libpam-systemd",
    "cloud-init", "cloud-guest-utils", "openssh-server", "sudo", "apt", "python3",
    "ca-certificates", "iproute2", "ifupdown", "isc-dhcp-client", "netbase",
    "fuse3", "sshfs", "procps", "kmod", "e2fsprogs", "fdisk", "less", "locales", "zstd", "tzdata",
    "nftables",  # hostResolver's DNS redirect (roost-dns), as cloud images have it
    "rsync",  # roost copy's rsync backend, as Debian's cloud images have it
    KERNEL_PACKAGE, "initramfs-tools",
]
# Whose versions make the cache key: what the guest's behaviour depends on.
KEY_PACKAGES = ["cloud-init", "openssh-server", "systemd", "python3", "sudo", "libc6",
                KERNEL_PACKAGE]
DISK_BYTES = 3 * 1024**3
SECTOR = 512
ESP_START = 2048  # sectors: 1 MiB, the usual alignment; GRUB's core image before it
ESP_SECTORS = 32 * 2048  # 32 MiB
ROOT_START = ESP_START + ESP_SECTORS
ROOT_LABEL = "roost-root"
GRUB_PREFIX = "(hd0,msdos2)/boot/grub"
GRUB_MODULES = ["part_msdos", "ext2", "normal", "linux", "configfile", "search", "echo",
                "test", "boot", "serial", "terminal"]
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
KERNEL_CMDLINE = "root=LABEL=roost-root ro console=tty0 console=ttyS0,115200 net.ifnames=0"

# Written into the root before the file system is made.
_FILES = {
    "etc/fstab": f"LABEL={ROOT_LABEL} / ext4 defaults,discard,errors=remount-ro 0 1\n",
    "boot/grub/grub.cfg": (
        "# roost's debian-12 image: SeaBIOS, GRUB, the newest kernel (/vmlinuz).\n"
        "serial --unit=0 --speed=115200\nterminal_input serial console\n"
        "terminal_output serial console\nset timeout=0\n"
        "menuentry 'Debian GNU/Linux 12' {\n"
        f"  linux /vmlinuz {KERNEL_CMDLINE}\n  initrd /initrd.img\n}}\n"
    ),
    # NoCloud only: ds-identify then has one data source to look for.
    "etc/cloud/cloud.cfg.d/90-roost-datasource.cfg": "datasource_list: [NoCloud, None]\n",
    # cloud-init's work after sshd, in one Python start instead of two (its
    # import alone is 6-8 s under TCG): cloud-config.service is masked and
    # the config modules roost's seed uses run in the final stage, with the
    # modules that do nothing in a roost VM (grub-dpkg, byobu, snap, the
    # keys printed to the console, ...) left out. Images named by URL keep
    # their own stages.
    "etc/cloud/cloud.cfg.d/90-roost-stages.cfg": (
        "cloud_config_modules: []\n"
        "cloud_final_modules: [apt-configure, timezone, runcmd, scripts-vendor,\n"
        "  scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user,\n"
        "  final-message, power-state-change]\n"
    ),
    # What cloud-init's locale and set-passwords modules would do, done once
    # here: glibc's built-in locale (the default en_US.UTF-8 runs locale-gen,
    # seconds under TCG), and keys only for sshd, which set-passwords did by
    # editing sshd_config and restarting sshd under the first SSH login.
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/ssh/sshd_config.d/90-roost.conf": "PasswordAuthentication no\n",
    "etc/hostname": "localhost\n",
    # A small initramfs: the modules a VM needs, not every driver there is.
    "etc/initramfs-tools/conf.d/roost.conf": "MODULES=list\nCOMPRESS=zstd\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\nvirtio_scsi\next4\n",
}
_EXCLUDE = ["/usr/share/man/*", "/usr/share/info/*", "/usr/share/lintian/*",
            "/usr/share/locale/*", "/usr/share/doc/*"]
_INCLUDE_BACK = ["/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias"]


@dataclass(frozen=True)
class DebianImage:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def manifest(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.directory / "manifest.json").read_text())
        return data


def _tool(name: str, package: str) -> str:
    path = find_tool(name)
    if path:
        return path
    raise RoostError(f"{name} was not found; the {NAME} image needs it "
                     f"(`apt-get install {package}`, or run scripts/setup.sh)")


def package_versions() -> dict[str, str]:
    """The candidate version apt would install now of each key package."""
    out = run(["apt-cache", "policy", *KEY_PACKAGES])
    versions: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif line.strip().startswith("Candidate:") and current:
            versions[current] = line.split(":", 1)[1].strip()
    missing = [p for p in KEY_PACKAGES if versions.get(p, "(none)") == "(none)"]
    if missing:
        raise RoostError(f"apt knows no version of {', '.join(missing)}; run `apt-get update` "
                         "(scripts/setup.sh does)")
    return versions


def cache_key(versions: dict[str, str]) -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps([PACKAGES, _FILES, DISK_BYTES, sorted(versions.items())]).encode())
    return h.hexdigest()[:16]


def find_cached() -> DebianImage | None:
    """The newest built image, without asking apt."""
    newest = newest_built(NAME)
    return DebianImage(newest) if newest is not None else None


def ensure_debian_image(progress: Progress = lambda _: None) -> DebianImage:
    """The image for the current package versions, built if needed (about a minute)."""
    progress("resolving Debian package versions")
    versions = package_versions()
    image = DebianImage(images_dir() / f"{NAME}-{cache_key(versions)}")
    build_once(image.directory, lambda tmp: _build(tmp, versions, progress))
    return image


def _customize_script(staging: Path, raw: Path) -> str:
    """Runs in mmdebstrap's customize hook with the finished root as $1.

    The root has /proc, /sys and /dev mounted on it then; a plain (not
    recursive) bind mount of it is the tree without them, for mkfs.
    """
    mkfs = _tool("mkfs.ext4", "e2fsprogs")
    blocks = (DISK_BYTES - ROOT_START * SECTOR) // 4096
    q = shlex.quote
    view = q(str(raw.parent / "view"))
    return "; ".join([
        "set -e",
        f'cp -a {q(str(staging))}/. "$1"/',
        # Like Debian's cloud images: no host keys, no machine id, no users.
        'rm -f "$1"/etc/ssh/ssh_host_*',
        ': > "$1"/etc/machine-id',
        # cloud-config's modules run in the final stage (90-roost-stages.cfg);
        # e2scrub_reap reaps LVM snapshots, and there is no LVM, but it holds
        # multi-user.target (and so cloud-final) for 14 s of TCG.
        'ln -sf /dev/null "$1"/etc/systemd/system/cloud-config.service',
        'ln -sf /dev/null "$1"/etc/systemd/system/e2scrub_reap.service',
        'rm -f "$1"/var/lib/dbus/machine-id',
        # The .debs and caches are still there; mmdebstrap's own cleanup (the
        # lists too) comes after this hook, too late for the file system.
        # Not /tmp: mmdebstrap keeps its apt.conf there, and without it that
        # cleanup's `apt-get update` would empty the *host's* package lists.
        'rm -rf "$1"/var/tmp/* "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin',
        # The initramfs again, now with the small module list and zstd.
        'chroot "$1" update-initramfs -u -k all >/dev/null',
        'rm -f "$1"/boot/initrd.img-*.bak',
        f'mkdir -p {view}',
        f'mount --bind "$1" {view}',
        f'{mkfs} -q -F -L {ROOT_LABEL} -E offset={ROOT_START * SECTOR},root_owner=0:0 '
        f'-d {view} {q(str(raw))} {blocks} || {{ umount {view}; exit 1; }}',
        f'umount {view}',
    ])


def _build(out: Path, versions: dict[str, str], progress: Progress) -> None:
    started = time.monotonic()
    mmdebstrap = _tool("mmdebstrap", "mmdebstrap")
    grub_mkimage = _tool("grub-mkimage", "grub-pc-bin")
    sfdisk = _tool("sfdisk", "fdisk")
    mkfs_fat = _tool("mkfs.fat", "dosfstools")
    mcopy, mmd = _tool("mcopy", "mtools"), _tool("mmd", "mtools")
    for need, package in ((GRUB_DIR / "boot.img", "grub-pc-bin"),
                          (GRUB_EFI_DIR / "linux.mod", "grub-efi-amd64-bin")):
        if not need.exists():
            raise RoostError(f"{need} is missing; `apt-get install {package}`")
    staging = out / "staging"
    for rel, text in _FILES.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    raw = out / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(DISK_BYTES)
    # The EFI system partition, then Linux to the end (the last partition:
    # cloud-init's growpart extends it to the instance disk's size).
    layout = (f"label: dos\nstart={ESP_START}, size={ESP_SECTORS}, type=ef\n"
              f"start={ROOT_START}, type=83, bootable\n")
    proc = subprocess.run([sfdisk, "-q", str(raw)], input=layout, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RoostError(f"sfdisk failed: {proc.stderr.strip()}")

    progress(f"building {NAME} from Debian packages (mmdebstrap, about a minute)")
    argv = [mmdebstrap, "--mode=auto", "--variant=apt", "--format=null", "--quiet",
            "--include=" + ",".join(PACKAGES),
            *(f"--dpkgopt=path-exclude={p}" for p in _EXCLUDE),
            *(f"--dpkgopt=path-include={p}" for p in _INCLUDE_BACK),
            "--customize-hook=" + _customize_script(staging, raw),
            SUITE, "/dev/null"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RoostError(f"mmdebstrap failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-2000:]}")

    progress("installing GRUB (BIOS and UEFI)")
    core = out / "core.img"
    run([grub_mkimage, "-O", "i386-pc", "-o", str(core), "-p", GRUB_PREFIX,
        "biosdisk", *GRUB_MODULES])
    if core.stat().st_size > (ESP_START - 1) * SECTOR:
        raise RoostError("GRUB's core image does not fit before the first partition")
    efi = out / "BOOTX64.EFI"
    run([grub_mkimage, "-O", "x86_64-efi", "-o", str(efi), "-p", GRUB_PREFIX,
        "fat", *GRUB_MODULES])
    esp = out / "esp.img"
    run([mkfs_fat, "-C", "-n", "EFI", str(esp), str(ESP_SECTORS * SECTOR // 1024)])
    run([mmd, "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
    run([mcopy, "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"])
    with open(raw, "r+b") as f:
        # boot.img's code only: the partition table after byte 440 stays.
        f.write((GRUB_DIR / "boot.img").read_bytes()[:440])
        f.seek(SECTOR)  # core.img from sector 1, where boot.img looks for it
        f.write(core.read_bytes())
        f.seek(ESP_START * SECTOR)
        f.write(esp.read_bytes())
    for leftover in (core, efi, esp):
        leftover.unlink()

    progress("writing the base disk")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "base.qcow2")])
    raw.unlink()
    shutil.rmtree(staging)
    manifest = {
        "name": NAME, "recipe": RECIPE_VERSION, "suite": SUITE, "packages": PACKAGES,
        "versions": versions, "python": "3.11", "kernelCmdline": KERNEL_CMDLINE,
        "firmware": ["bios", "uefi"],
        "sizes": {"baseQcow2": (out / "base.qcow2").stat().st_size, "disk": DISK_BYTES},
        "buildSeconds": round(time.monotonic() - started, 1),
    }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
