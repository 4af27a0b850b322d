"""`roost disk create/ls/delete/resize/unlock`: disks that outlive instances."""

from __future__ import annotations

import click

from roost.cli.table import listing_lines
from roost.config.sizes import format_size, parse_size
from roost.errors import UsageError
from roost.store import disks


def _size(text: str, option: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None
    if size <= 0 or size % (1024**2):
        raise UsageError(f"{option} {text!r}: give a whole number of MiB or more, e.g. 10GiB")
    return size


def create(name: str, size: str, fmt: str) -> None:
    disk = disks.create_disk(name, _size(size, "--size"), fmt)
    click.echo(f"created disk {name} ({size}, {fmt}) in {disk.dir}; add it to an instance's "
               f"additionalDisks to use it")


def import_(name: str, source: str, fmt: str) -> None:
    from pathlib import Path

    disk = disks.import_disk(name, Path(source).expanduser(), fmt)
    size = format_size(int(disk.info()["size"]))
    click.echo(f"imported {source} as disk {name} ({size}, {fmt}) in {disk.dir}")


def list_disks(as_json: bool) -> None:
    rows = [d.info() for d in disks.list_disks()]
    for line in listing_lines(
            rows, as_json, ("NAME", "SIZE", "FORMAT", "IN USE BY", "DIR"),
            lambda r: (r["name"], format_size(r["size"]), r["format"], r["inUseBy"] or "-",
                       r["dir"]),
            empty="no disks (`roost disk create NAME --size 10GiB` makes one)"):
        click.echo(line)


def delete(names: tuple[str, ...]) -> None:
    for name in names:  # all of them there, or none deleted
        disks.Disk(name).require()
    for name in names:
        disks.delete_disk(name)
        click.echo(f"deleted disk {name}")


def resize(name: str, size: str) -> None:
    disks.resize_disk(name, _size(size, "--size"))
    click.echo(f"disk {name} is {size} now; the guest's file system grows at its next mount")


def unlock(names: tuple[str, ...]) -> None:
    for name in names:
        disk = disks.Disk(disks.validate_disk_name(name)).require()
        disk.unlock()
        click.echo(f"disk {name} unlocked")
