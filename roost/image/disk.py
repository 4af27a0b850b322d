"""An instance's disk: copy-on-write qcow2 over the cached base image.

The instance pins the image it was made from (`image.json`): its disk's
backing file and the kernel modules on it must keep matching the kernel it
boots, whatever newer image is built later.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from roost.errors import RoostError
from roost.store.durable import fsync_dir, fsync_path, write_atomic
from roost.store.instance import Instance

if TYPE_CHECKING:
    from roost.config.model import Config
    from roost.image.download import DownloadProgress

PIN_FILE = "image.json"


@dataclass(frozen=True)
class PinnedImage:
    # "builtin", "debian-12", "file" (config `image:` path) or "cloud" (config `images:`)
    kind: str
    disk: Path  # the base the instance disk is backed by
    kernel: Path | None = None
    initrd: Path | None = None
    kernel_cmdline: str | None = None  # images[].kernel.cmdline

    def to_json(self) -> dict[str, str | None]:
        return {
            "kind": self.kind, "disk": str(self.disk),
            "kernel": str(self.kernel) if self.kernel else None,
            "initrd": str(self.initrd) if self.initrd else None,
            "kernelCmdline": self.kernel_cmdline,
        }

    def files(self) -> list[Path]:
        return [p for p in (self.disk, self.kernel, self.initrd) if p is not None]


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
        data.get("kernelCmdline"),  # absent in pins written before cloud images
    )
    for p in pinned.files():
        if not p.exists():
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


def _pick_image(config: Config, step: Callable[[str], None],
                download: DownloadProgress | None) -> tuple[PinnedImage, str]:
    """The image to pin and its format (qemu-img's -F for the backing file)."""
    if config.images:
        from roost.image.cloud import fetch_image

        fetched = fetch_image(config.images, download, step=step)
        return PinnedImage("cloud", fetched.disk, fetched.kernel, fetched.initrd,
                           fetched.kernel_cmdline), fetched.format
    if config.image == "builtin":
        from roost.image.builtin import ensure_builtin_image

        built = ensure_builtin_image(step)
        return PinnedImage("builtin", built.disk, built.kernel, built.initrd), "qcow2"
    if config.image == "debian-12":
        from roost.image.debian import ensure_debian_image

        return PinnedImage("debian-12", ensure_debian_image(step).disk), "qcow2"
    pinned = PinnedImage("file", Path(config.image))
    return pinned, _image_format(pinned.disk)


def prepare_disk(
    inst: Instance, config: Config, step: Callable[[str], None] = lambda _: None,
    download: DownloadProgress | None = None,
) -> PinnedImage:
    """Create disk.qcow2 and the image pin if the instance has none yet. The
    disk is never smaller than the image (a cloud image's partitions fill it).
    An existing disk is never replaced: it holds the guest's data."""
    pin = inst.path(PIN_FILE)
    if inst.disk.exists():
        if pin.exists():
            return read_pinned(inst)
        raise RoostError(
            f"{inst.disk} exists but {pin}, which says what image it was made from, is "
            f"missing; roost does not replace a disk that may hold data. Move the disk "
            f"away to keep it, or `roost delete {inst.name}` to discard the instance"
        )
    from roost.image.content import virtual_size
    from roost.image.prune import held_for_pinning, record_pins

    pinned, backing_format = _pick_image(config, step, download)
    with held_for_pinning(pinned.files()):  # `roost image rm`/`prune` keep off meanwhile
        step("creating the instance disk")
        _create_disk(inst.disk, pinned.disk, backing_format,
                     max(config.disk, virtual_size(pinned.disk)))
        write_atomic(pin, json.dumps(pinned.to_json(), indent=2) + "\n")
        record_pins(pinned.files(), inst.dir)  # `roost image prune` keeps them
    return pinned


def _create_disk(disk: Path, backing: Path, backing_format: str, size: int) -> None:
    """A new qcow2 over `backing` at `disk`, on disk before it counts; an
    existing `disk` (made meanwhile) is left as it is and refused."""
    tmp = disk.with_name(disk.name + ".tmp")
    try:
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing),
             "-F", backing_format, str(tmp), str(size)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RoostError(f"cannot create the instance disk: {proc.stderr.strip()}")
        fsync_path(tmp)
        try:
            os.link(tmp, disk)  # unlike a rename, never over an existing file
        except FileExistsError:
            raise RoostError(f"{disk} appeared while roost was making it; it is left "
                             "as it is (another roost command made it?)") from None
        fsync_dir(disk.parent)
    finally:
        tmp.unlink(missing_ok=True)
