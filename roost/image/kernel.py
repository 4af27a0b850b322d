"""Kernel pieces for direct boot: the PVH-capable ELF and module closures."""

from __future__ import annotations

import lzma
import re
from collections.abc import Iterable
from pathlib import Path

from roost.errors import RoostError

_XZ_MAGIC = b"\xfd7zXZ\x00"
_ELF_MAGIC = b"\x7fELF"
_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the ELF vmlinux inside a bzImage whose payload is xz.

    QEMU boots the ELF through its PVH entry point, which skips firmware and
    the in-guest decompression: the largest cost of a TCG boot.
    """
    start = bzimage.find(_XZ_MAGIC)
    while start != -1:
        decomp = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = decomp.decompress(bzimage[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(_ELF_MAGIC):
            return elf
        start = bzimage.find(_XZ_MAGIC, start + 1)
    raise RoostError("kernel image has no xz-compressed ELF payload; cannot use PVH boot")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Map module name (with '_' for '-') to its .ko file."""
    index: dict[str, Path] = {}
    for ko in modules_dir.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    return index


def module_depends(ko: Path) -> list[str]:
    """The `depends=` entry of a module's .modinfo section."""
    match = _DEPENDS.search(ko.read_bytes())
    if not match or not match.group(1):
        return []
    return [d.replace("-", "_") for d in match.group(1).decode().split(",") if d]


def load_order(wanted: Iterable[str], index: dict[str, Path]) -> list[str]:
    """Wanted modules plus their dependencies, dependencies first."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise RoostError(f"kernel module {name!r} not found in the kernel package")
        for dep in module_depends(index[name]):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def parallel_load_groups(groups: list[list[str]], index: dict[str, Path]) -> list[list[str]]:
    """Each group with its dependencies, in load order, every module once.

    Groups are loaded concurrently, so a group must not need a module that
    an earlier group loads: that would race. Refuse such a recipe.
    """
    out: list[list[str]] = []
    loaded: dict[str, int] = {}
    for i, group in enumerate(groups):
        order = load_order(group, index)
        for name in order:
            if name in loaded:
                raise RoostError(
                    f"module {name!r} is needed by boot module groups {loaded[name]} and {i}; "
                    "move the modules that share it into one group"
                )
            loaded[name] = i
        out.append(order)
    return out
