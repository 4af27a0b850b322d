"""Writing the seed as an ISO 9660 image labelled `cidata` (NoCloud's label)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from roost.cidata.builtin import DROPBEAR_HOST_KEY

SECRET_FILES = (DROPBEAR_HOST_KEY,)  # mode 0600 on the ISO


def write_iso(path: Path, files: Mapping[str, bytes]) -> None:
    """Rock Ridge names and modes (scripts executable, keys 0600), Joliet for the rest."""
    import pycdlib  # heavy; only the host agent needs it

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    dirs: dict[str, str] = {}
    for counter, name in enumerate(sorted(files), start=1):
        parent = ""
        if "/" in name:
            dirname, _ = name.rsplit("/", 1)
            if dirname not in dirs:
                dirs[dirname] = f"/D{len(dirs):06d}"
                iso.add_directory(dirs[dirname], rr_name=dirname, joliet_path=f"/{dirname}")
            parent = dirs[dirname]
        data = files[name]
        base = name.rsplit("/", 1)[-1]
        mode = 0o100755 if data.startswith(b"#!") else 0o100644
        if base in SECRET_FILES:
            mode = 0o100600
        iso.add_fp(
            io.BytesIO(data), len(data), f"{parent}/F{counter:06d}.;1",
            rr_name=base, joliet_path=f"/{name}", file_mode=mode,
        )
    tmp = path.with_suffix(".tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.replace(path)
