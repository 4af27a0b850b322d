"""`roost image list/pull/rm/prune`: the image cache, built-in and cloud."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from roost.cli.table import listing_lines
from roost.errors import UsageError
from roost.image.buildcache import images_dir
from roost.image.builtin import find_cached
from roost.image.cloudcache import entries
from roost.image.prune import BUILT_PREFIXES, BUILTIN_PREFIX, prune, remove_images, users
from roost.store.paths import roost_home

MIB = 1024**2


def _instances(image_dir: Path) -> list[str]:
    return [str(d) for d in users(image_dir)]


def _dir_size(path: Path) -> int:
    return sum(f.lstat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def image_rows() -> list[dict[str, Any]]:
    """Every cached image: those roost built (builtin, debian-12), then cloud
    images (and unfinished downloads, state "partial")."""
    rows: list[dict[str, Any]] = []
    newest = find_cached()
    built = [d for prefix in BUILT_PREFIXES for d in sorted(images_dir().glob(prefix + "*"))
             if d.is_dir() and (d / "manifest.json").exists()] if images_dir().is_dir() else []
    for d in built:
        name = "builtin" if d.name.startswith(BUILTIN_PREFIX) else d.name.rsplit("-", 1)[0]
        rows.append({
            "kind": name, "location": name, "digest": None, "format": "qcow2",
            "size": _dir_size(d), "path": str(d),
            "state": "newest" if newest and newest.directory == d else "complete",
            "instances": _instances(d)})
    for entry in entries():
        meta = entry.meta()
        if meta is not None:
            rows.append({
                "kind": "cloud" if meta.kind == "disk" else meta.kind,
                "location": meta.location, "digest": meta.digest, "format": meta.format,
                "size": meta.size, "path": str(entry.data), "state": "complete",
                "fetched": meta.fetched, "instances": _instances(entry.directory)})
            continue
        size = entry.partial.stat().st_size if entry.partial.exists() else 0
        rows.append({"kind": "cloud", "location": entry.partial_location(), "digest": None,
                     "format": None,
                     "size": size, "path": str(entry.directory), "state": "partial",
                     "instances": []})
    return rows


def _short_instance(path: str) -> str:
    p = Path(path)
    return p.name if p.parent == roost_home() else path


def list_images(as_json: bool) -> None:
    for line in listing_lines(
            image_rows(), as_json, ("LOCATION", "DIGEST", "SIZE", "FORMAT", "STATE", "INSTANCES"),
            lambda r: (str(r["location"] or "?"), (r["digest"] or "-")[:19],
                       f"{r['size'] / MIB:.1f} MiB", r["format"] or "-", r["state"],
                       ",".join(_short_instance(i) for i in r["instances"]) or "-"),
            empty="no cached images (`roost image pull URL` or `roost start` fetch them)"):
        click.echo(line)


def _check_location(location: str, digest: str | None) -> str:
    from pydantic import ValidationError

    from roost.config.model import DIGEST_PATTERN, ImageFile

    if digest is not None and not re.fullmatch(DIGEST_PATTERN, digest):
        raise UsageError(f"--digest {digest!r}: use sha256:<64 hex digits> or "
                         "sha512:<128 hex digits>")
    try:
        return ImageFile.model_validate({"location": location}).location
    except ValidationError as e:
        reason = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
        raise UsageError(f"LOCATION {reason}") from None


def pull(location: str, digest: str | None) -> None:
    from roost.cli.download_bar import DownloadBar
    from roost.image.cloud import fetch_file

    location = _check_location(location, digest)
    with DownloadBar() as bar:
        got = fetch_file(location, digest, "disk", bar,
                         step=lambda message: click.echo(message, err=True))
    click.echo(str(got.path))


def rm(target: str, force: bool) -> None:
    removed = remove_images(target, force)
    for item in removed:
        click.echo(f"removed {item.directory} ({item.size / MIB:.1f} MiB)")


def prune_images(dry_run: bool) -> None:
    removed = prune(dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        click.echo(f"{verb} {item.directory} ({item.size / MIB:.1f} MiB)")
    total = sum(item.size for item in removed) / MIB
    click.echo(f"{verb} {len(removed)} unused image(s), {total:.1f} MiB" if removed
               else "no unused images")
