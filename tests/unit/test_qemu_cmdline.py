from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from roost.driver.base import DataDisk, mac_address
from roost.driver.qemu.cmdline import (
    BootSpec,
    QemuSpec,
    build_argv,
    spec_from_json,
    spec_to_json,
)


def spec(tmp: Path, accel: str = "tcg") -> QemuSpec:
    d = tmp / "odd,dir"
    return QemuSpec(
        name="dev", qemu="qemu-system-x86_64", accel=accel, cpus=2, memory=1024**3,
        disk=d / "disk.qcow2", cidata=d / "cidata.iso", ssh_port=40022,
        qmp_sock=d / "qmp.sock", ga_sock=d / "ga.sock", serial_sock=d / "serial.sock",
        serial_log=d / "serial.log", pidfile=d / "qemu.pid",
        boot=BootSpec(kernel=tmp / "vmlinux", initrd=tmp / "initrd"),
    )


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_guest_ram_passed_as_a_memfd_of_the_drivers(tmp_path: Path) -> None:
    # QEMU opens the descriptor it inherited as the backend's file: still
    # shared memory (virtiofsd maps it), now also the host agent's to save.
    argv = build_argv(spec(tmp_path), ram_fd=7)
    assert option(argv, "-object") == [
        "memory-backend-file,id=mem,size=1024M,share=on,mem-path=/proc/self/fd/7"]
    # A RAM file of a VM an older roost suspended goes before it.
    old = build_argv(dataclasses.replace(spec(tmp_path), ram_file=tmp_path / "ram.bin"), ram_fd=7)
    assert option(old, "-object") == [
        f"memory-backend-file,id=mem,size=1024M,share=on,mem-path={tmp_path}/ram.bin"]


def test_tcg_command_line(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path))
    assert option(argv, "-accel") == ["tcg,thread=multi,tb-size=512"]
    assert option(argv, "-m") == ["1024M"]
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in option(argv, "-object")
    netdev = option(argv, "-netdev")[0]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev
    devices = option(argv, "-device")
    assert "virtserialport,bus=vser0.0,chardev=ga,name=io.roost.guest_agent.0" in devices
    assert sum(d.startswith("pcie-root-port") for d in devices) == 8
    assert option(argv, "-kernel") == [str(tmp_path / "vmlinux")]


def test_sandbox_is_on_unless_the_host_opts_out(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path))
    assert argv[1:3] == ["-sandbox",
                         "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    assert option(argv, "-sandbox") == [argv[2]]
    assert "-sandbox" not in build_argv(spec(tmp_path), sandboxed=False)


def test_commas_in_paths_are_escaped(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path))
    drive = option(argv, "-drive")[0]
    assert f"file={tmp_path}/odd,,dir/disk.qcow2," in drive
    assert option(argv, "-qmp")[0].startswith(f"unix:{tmp_path}/odd,,dir/qmp.sock,server=on")


def test_kvm_uses_host_cpu(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path, accel="kvm"))
    assert option(argv, "-accel") == ["kvm"] and option(argv, "-cpu") == ["host"]


def test_mac_is_stable_and_local() -> None:
    assert mac_address("dev") == mac_address("dev") != mac_address("other")
    assert mac_address("dev").startswith("52:55:55:")


def test_restore_loads_paused_through_qmp(tmp_path: Path) -> None:
    restore = dataclasses.replace(spec(tmp_path), ram_file=tmp_path / "ram.bin",
                                  incoming=tmp_path / "vmstate.bin")
    argv = build_argv(restore)
    # -S: the host agent decides when the loaded VM runs; defer: x-ignore-shared
    # must be set over QMP before the state is read (QEMU 7.2 has no -global for it).
    assert argv[-3:] == ["-S", "-incoming", "defer"]
    assert "-S" not in build_argv(spec(tmp_path))
    assert f"mem-path={tmp_path}/ram.bin" in option(argv, "-object")[0]


def test_spec_survives_json_for_suspend(tmp_path: Path) -> None:
    saved = dataclasses.replace(spec(tmp_path), extra=("-device", "x"),
                                ram_file=tmp_path / "ram.bin", incoming=tmp_path / "vm")
    loaded = spec_from_json(json.loads(json.dumps(spec_to_json(saved))))
    assert loaded == saved
    assert build_argv(loaded) == build_argv(saved)


def test_additional_disks_are_found_by_their_name(tmp_path: Path) -> None:
    """Each additional disk is a virtio-blk device whose serial is its name
    (the guest's roost-disks finds it by that), after root and cidata, and a
    suspended VM's saved machine keeps them."""
    disks = (DataDisk("data", tmp_path / "a,b" / "datadisk", "qcow2"),
             DataDisk("scratch", tmp_path / "datadisk", "raw"))
    with_disks = dataclasses.replace(spec(tmp_path), data_disks=disks)
    argv = build_argv(with_disks)
    drives, devices = option(argv, "-drive"), option(argv, "-device")
    assert drives[-2].startswith(f"if=none,id=data-data,file={tmp_path}/a,,b/datadisk,"
                                 "format=qcow2,")
    assert drives[-1].startswith(f"if=none,id=data-scratch,file={tmp_path}/datadisk,format=raw")
    assert "virtio-blk-pci,drive=data-data,serial=data" in devices
    assert devices.index("virtio-blk-pci,drive=cidata") < devices.index(
        "virtio-blk-pci,drive=data-scratch,serial=scratch")
    assert spec_from_json(json.loads(json.dumps(spec_to_json(with_disks)))) == with_disks
