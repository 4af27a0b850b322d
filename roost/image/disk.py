"""An instance's disk: copy-on-write qcow2 over the cached base image.

The instance pins the image it was made from (`image.json`): its disk's
backing file and the kernel modules on it must keep matching the kernel it
boots, whatever newer image is built later.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from roost.errors import RoostError
from roost.store.instance import Instance, write_atomic

PIN_FILE = "image.json"


@dataclass(frozen=True)
class PinnedImage:
    kind: str  # "builtin" or "file"
    disk: Path  # the base the instance disk is backed by
    kernel: Path | None = None
    initrd: Path | None = None
    kernel_cmdline: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "kind": self.kind, "disk": str(self.disk),
            "kernel": str(self.kernel) if self.kernel else None,
            "initrd": str(self.initrd) if self.initrd else None,
            "kernelCmdline": self.kernel_cmdline,
        }


def read_pinned(inst: Instance) -> PinnedImage:
    try:
        data = json.loads(inst.path(PIN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        raise RoostError(
            f"instance {inst.name!r} has no disk yet; `roost start {inst.name}` makes it"
        ) from None
    pinned = PinnedImage(
        data["kind"], Path(data["disk"]),
        Path(data["kernel"]) if data.get("kernel") else None,
        Path(data["initrd"]) if data.get("initrd") else None,
        data.get("kernelCmdline"),
    )
    for p in (pinned.disk, pinned.kernel, pinned.initrd):
        if p is not None and not p.exists():
            raise RoostError(
                f"{p}, which instance {inst.name!r} was created from, is gone; "
                f"delete and recreate the instance (`roost delete {inst.name}`)"
            )
    return pinned


def _image_format(path: Path) -> str:
    proc = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RoostError(f"{path} is not a disk image qemu-img can read: {proc.stderr.strip()}")
    return str(json.loads(proc.stdout)["format"])


def prepare_disk(
    inst: Instance, image: str, size: int, progress: Callable[[str], None] = lambda _: None
) -> PinnedImage:
    """Create disk.qcow2 and the image pin if the instance has none yet."""
    if inst.disk.exists() and inst.path(PIN_FILE).exists():
        return read_pinned(inst)
    if image == "builtin":
        from roost.image.builtin import ensure_builtin_image

        built = ensure_builtin_image(progress)
        pinned = PinnedImage("builtin", built.disk, built.kernel, built.initrd)
        backing_format = "qcow2"
    elif image == "debian-12":
        from roost.image.debian import ensure_debian_image

        pinned = PinnedImage("debian-12", ensure_debian_image(progress).disk)
        backing_format = "qcow2"
    else:
        pinned = PinnedImage("file", Path(image))
        backing_format = _image_format(pinned.disk)
    progress("creating the instance disk")
    tmp = inst.path("disk.qcow2.tmp")
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(pinned.disk), "-F", backing_format,
         str(tmp), str(size)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RoostError(f"cannot create the instance disk: {proc.stderr.strip()}")
    tmp.replace(inst.disk)
    write_atomic(inst.path(PIN_FILE), json.dumps(pinned.to_json(), indent=2) + "\n")
    if pinned.kind in ("builtin", "debian-12"):
        from roost.image.prune import record_pin

        record_pin(pinned.disk.parent, inst.dir)  # `roost image prune` keeps it
    return pinned
