"""The QEMU command line, as a pure function of a spec (unit-testable)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.driver.base import GUEST_SSH_PORT, DataDisk, Share, mac_address
from roost.driver.qemu import guestram
from roost.driver.qemu.sandbox import sandbox_argv
from roost.store.durable import write_atomic

GUEST_AGENT_PORT_NAME = "io.roost.guest_agent.0"
# Spare root ports for file-system hot-plug, in the order they are used.
HOTPLUG_SLOTS = tuple(f"hp{i}" for i in range(8))
STATIC_CHASSIS = 100  # pcie-root-port chassis numbers of boot-time virtiofs shares
GUEST_NET = "192.168.5.0/24"
KERNEL_APPEND = "console=ttyS0 quiet panic=-1 cryptomgr.notests 8250.nr_uarts=1"


# OVMF from Debian's ovmf package: code read-only, variables per instance.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Under TCG: every feature TCG emulates. QEMU's default (qemu64) lacks
# x86-64-v2 (SSE4.2, POPCNT), which current distributions require.
TCG_CPU = "max"


@dataclass(frozen=True)
class BootSpec:
    """A kernel booted directly (the built-in image's PVH vmlinux, or an
    image's own kernel), else the firmware boots the disk: SeaBIOS, or UEFI
    (OVMF) with its variable store in `uefi_vars`."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = KERNEL_APPEND
    uefi_vars: Path | None = None


@dataclass(frozen=True)
class QemuSpec:
    name: str
    qemu: str
    accel: str
    cpus: int
    memory: int
    disk: Path
    cidata: Path
    ssh_port: int
    qmp_sock: Path
    ga_sock: Path
    serial_sock: Path
    serial_log: Path
    pidfile: Path
    boot: BootSpec
    shares: tuple[Share, ...] = ()  # roost.yaml's mounts, devices from launch
    data_disks: tuple[DataDisk, ...] = ()  # roost.yaml's additionalDisks
    # False: the machine a suspended VM was saved as. Its virtiofs devices
    # were unplugged (they block saving the state); their root ports stay.
    virtiofs_devices: bool = True
    # More arguments, last. Suspended VMs saved by an older roost have their
    # shares' devices here as arguments.
    extra: tuple[str, ...] = ()
    # Guest RAM in this file (shared): suspend then saves only device state
    # (x-ignore-shared), and the RAM file is the rest of the saved VM. Only
    # VMs suspended by an older roost have one: a file-backed RAM made every
    # guest write to fresh memory twice as slow and the host write it all
    # back to disk (bench/idle.py: 1 GiB in 50 s against 24 s, 1.6 GB
    # written back), for a faster suspend. RAM is memfd now (shared, for
    # virtiofsd): the driver's own, saved beside the state (memory_image),
    # or, when the driver cannot reach it, migrated into the state.
    ram_file: Path | None = None
    # The guest RAM a suspend saved beside `incoming` (guestram.py): the
    # driver fills its memfd with it, and `incoming` holds device state only.
    memory_image: Path | None = None
    # Resume: load the VM state saved in this file (-incoming defer, then
    # the driver passes it opened over QMP), then stay paused (-S) until
    # the host agent continues it.
    incoming: Path | None = None
    # A fork from a snapshot: load the VM state of the disk's internal
    # snapshot of this tag (-S, then loadvm over QMP), paused until the
    # host agent continues it, as after -incoming.
    loadvm: str | None = None
    cpu_type: str | None = None  # under TCG; None: TCG_CPU
    # False: slirp restricted (roost.yaml's network.internet): the guest's
    # packets reach nothing outside; hostfwd (SSH) still comes in.
    internet: bool = True


def spec_to_json(spec: QemuSpec) -> dict[str, Any]:
    """The machine as saved with a suspended VM: restoring needs the same one."""
    return dataclasses.asdict(spec, dict_factory=lambda items: {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in items})


def spec_from_json(data: dict[str, Any]) -> QemuSpec:
    def typed(cls: type[Any], values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(cls):
            v = values.get(f.name, f.default)
            if v is not None and "Path" in str(f.type):  # annotations are strings here
                v = Path(v)
            out[f.name] = v
        return out

    fields = typed(QemuSpec, data)
    fields["boot"] = BootSpec(**typed(BootSpec, data["boot"]))
    fields["shares"] = tuple(Share(**typed(Share, s)) for s in data.get("shares", ()))
    fields["data_disks"] = tuple(DataDisk(**typed(DataDisk, d))
                                 for d in data.get("data_disks", ()))
    fields["extra"] = tuple(data.get("extra", ()))
    return QemuSpec(**fields)


def ensure_uefi_vars(path: Path) -> Path:
    """The instance's own UEFI variable store, a copy of OVMF's template."""
    if not path.exists():
        if not OVMF_VARS.exists():
            from roost.driver.base import DriverError

            raise DriverError(f"{OVMF_VARS} is missing: UEFI boot (firmware.legacyBIOS: false) "
                              "needs OVMF (`apt-get install ovmf`)")
        write_atomic(path, OVMF_VARS.read_bytes())
    return path


def _option_value(value: str | Path) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def _data_disk_args(disks: tuple[DataDisk, ...]) -> list[str]:
    args = []
    for d in disks:
        args += ["-drive", f"if=none,id=data-{d.name},file={_option_value(d.path)},"
                 f"format={d.format},discard=unmap,werror=enospc,rerror=report",
                 "-device", f"virtio-blk-pci,drive=data-{d.name},serial={d.name}"]
    return args


def build_argv(spec: QemuSpec, sandboxed: bool = True, ram_fd: int | None = None) -> list[str]:
    """`sandboxed`: with QEMU's seccomp sandbox (see sandbox.py); a launch
    policy of the host, not part of the machine a suspend saves. `ram_fd`:
    the guest RAM is the driver's memfd, passed to QEMU as this descriptor
    (guestram.py); else QEMU makes its own."""
    mem_mib = spec.memory // (1024**2)
    if spec.ram_file is not None:
        memory = (f"memory-backend-file,id=mem,size={mem_mib}M,share=on,"
                  f"mem-path={_option_value(spec.ram_file)}")
    elif ram_fd is not None:
        memory = (f"memory-backend-file,id=mem,size={mem_mib}M,share=on,"
                  f"mem-path={guestram.backend_path(ram_fd)}")
    else:
        memory = f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on"
    argv = [spec.qemu, *(sandbox_argv() if sandboxed else [])]
    argv += [
        "-name", f"roost-{spec.name},debug-threads=on",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "q35,memory-backend=mem",
    ]
    if spec.accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", spec.cpu_type or TCG_CPU]
    argv += [
        "-smp", str(spec.cpus),
        "-m", f"{mem_mib}M",
        # Shareable RAM: vhost-user-fs (virtiofsd) needs it, also when hot-plugged.
        "-object", memory,
        "-rtc", "base=utc",
        "-no-reboot",
    ]
    if spec.boot.kernel is not None:
        argv += ["-kernel", str(spec.boot.kernel), "-append", spec.boot.append]
        if spec.boot.initrd is not None:
            argv += ["-initrd", str(spec.boot.initrd)]
    elif spec.boot.uefi_vars is not None:
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_option_value(OVMF_CODE)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_option_value(spec.boot.uefi_vars)}",
        ]
    argv += [
        # A write that finds the host file system full pauses the VM with the
        # request held (werror=enospc; QEMU's default, said here because the
        # host agent relies on it): the guest sees no I/O error, nothing is lost.
        "-drive", f"if=none,id=root,file={_option_value(spec.disk)},format=qcow2,discard=unmap,"
        "werror=enospc,rerror=report",
        "-device",
        "virtio-blk-pci,drive=root" + (",bootindex=0" if spec.boot.kernel is None else ""),
        "-drive",
        f"if=none,id=cidata,file={_option_value(spec.cidata)},format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=cidata",
        *_data_disk_args(spec.data_disks),
        "-netdev",
        f"user,id=net0,net={GUEST_NET},hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:{GUEST_SSH_PORT}"
        + ("" if spec.internet else ",restrict=on"),
        "-device", f"virtio-net-pci,netdev=net0,mac={mac_address(spec.name)}",
        "-device", "virtio-rng-pci",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=ga,path={_option_value(spec.ga_sock)},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=ga,name={GUEST_AGENT_PORT_NAME}",
        "-chardev",
        f"socket,id=serial0,path={_option_value(spec.serial_sock)},server=on,wait=off,"
        f"logfile={_option_value(spec.serial_log)}",
        "-serial", "chardev:serial0",
        "-qmp", f"unix:{_option_value(spec.qmp_sock)},server=on,wait=off",
        "-pidfile", str(spec.pidfile),
    ]
    # Spare root ports for file-system hot-plug (ACPI hot-plug on q35).
    for i, slot in enumerate(HOTPLUG_SLOTS):
        argv += ["-device", f"pcie-root-port,id={slot},bus=pcie.0,chassis={i + 1}"]
    if spec.incoming is not None:
        argv += ["-S", "-incoming", "defer"]
    elif spec.loadvm is not None:
        argv += ["-S"]
    return argv + share_argv(spec.shares, spec.virtiofs_devices) + list(spec.extra)


def share_argv(shares: tuple[Share, ...], virtiofs_devices: bool = True) -> list[str]:
    """Boot-time devices of the shares: virtiofs on a root port of its own
    (unpluggable for a suspend), 9p as an fsdev (QEMU has no fsdev_add)."""
    args: list[str] = []
    for i, share in enumerate(shares):
        if share.type == "virtiofs":
            args += ["-device", f"pcie-root-port,id={share.slot},bus=pcie.0,"
                                f"chassis={STATIC_CHASSIS + i}"]
            if not virtiofs_devices:
                continue
            assert share.socket is not None, "a virtiofs share has virtiofsd's socket"
            args += ["-chardev", f"socket,id={share.id}-chr,path={_option_value(share.socket)}",
                     "-device", f"vhost-user-fs-pci,id={share.id},bus={share.slot},"
                                f"chardev={share.id}-chr,tag={share.tag},"
                                f"queue-size={share.queue_size}"]
        elif share.type == "9p":
            ro = "" if share.writable else ",readonly=on"
            args += ["-fsdev", f"local,id={share.id}-fs,path={_option_value(share.host_path)},"
                               f"security_model={share.security_model}{ro}",
                     "-device", f"virtio-9p-pci,id={share.id},"
                                f"fsdev={share.id}-fs,mount_tag={share.tag}"]
    return args
