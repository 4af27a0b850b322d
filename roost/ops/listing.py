"""What `roost ls` and `roost info` show of instances: read from their
directories, fast.

No pydantic here: roost.yaml was validated when written, and `ls` must
start in well under 100 ms. Nor YAML, most of the time: what `ls` shows of
roost.yaml is kept beside it in ls.json, keyed by roost.yaml's inode, size
and mtime, and parsed again only when those change (a hand edit too).
"""

from __future__ import annotations

import contextlib
import json
import os

from roost.config import MAX_DOCUMENT_BYTES
from roost.config.sizes import parse_size
from roost.errors import RoostError, UsageError
from roost.store.instance import Instance, Status, list_instances

# Not `typing`: `roost ls` imports this module, and typing costs it ~5 ms
# (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SHOWN = ("cpus", "memory", "disk", "image")  # of roost.yaml, in `ls`


def _size(value: Any) -> int | None:
    try:
        return parse_size(value)
    except (TypeError, ValueError):
        return None


def _yaml_loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_config(data: bytes) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.load(data.decode(), Loader=_yaml_loader())
    except (ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return {}
    return config if isinstance(config, dict) else {}


def _config_fields(inst: Instance) -> dict[str, Any]:
    """roost.yaml as far as `ls` shows it; {} for one that is broken (`start`
    says how), never an exception: one bad file must not hide the others."""
    cache = inst.dir / "ls.json"
    try:
        with open(inst.config, "rb") as f:
            st = os.fstat(f.fileno())
            key = [st.st_ino, st.st_size, st.st_mtime_ns]
            with contextlib.suppress(OSError, ValueError):
                cached = json.loads(cache.read_bytes())
                if isinstance(cached, dict) and cached.get("key") == key:
                    return cached.get("fields") or {}
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError:
        return {}
    config = _parse_config(data) if len(data) <= MAX_DOCUMENT_BYTES else {}
    fields = {k: config.get(k) for k in SHOWN}
    fields["memory"], fields["disk"] = _size(fields["memory"]), _size(fields["disk"])
    fields = {k: v for k, v in fields.items() if v is not None}
    with contextlib.suppress(OSError, TypeError, ValueError):  # only a cache
        tmp = cache.with_name(f".ls.json.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "fields": fields}))
        os.replace(tmp, cache)
    return fields


def describe(inst: Instance) -> dict[str, Any]:
    config = _config_fields(inst)
    status = inst.status()
    runtime = inst.read_runtime() if status != Status.STOPPED else {}
    shown = status.value
    if status == Status.RUNNING:
        # The VM runs; the host agent says whether it is ready yet.
        shown = {"starting": Status.STARTING.value, "degraded": "Degraded"}.get(
            str(runtime.get("state")), shown)
    return {
        "name": inst.name,
        "status": shown,
        "degradedBy": runtime.get("degradedBy", []) if shown == "Degraded" else [],
        "dir": str(inst.dir),
        "cpus": config.get("cpus"),
        "memory": config.get("memory"),
        "disk": config.get("disk"),
        "image": config.get("image"),
        "sshLocalPort": runtime.get("sshLocalPort"),
        "accel": runtime.get("accel"),
        "portForwards": runtime.get("portForwards", []) if inst.hostagent_alive() else [],
        "health": runtime.get("health", "-") if inst.hostagent_alive() else "-",
        "hostagentPid": runtime.get("hostagentPid") if inst.hostagent_alive() else None,
        "qemuPid": inst.qemu_pid_alive(),
        "protected": inst.protected.exists(),
    }


def parse_filter(spec: str) -> tuple[str, str]:
    """KEY=VALUE of `roost ls --filter`: a field of `ls --json`."""
    key, eq, value = spec.partition("=")
    if not eq or not key:
        raise UsageError(f"--filter {spec!r}: write KEY=VALUE, e.g. status=Running")
    return key, value


def matches(row: dict[str, Any], filters: list[tuple[str, str]]) -> bool:
    for key, value in filters:
        if key not in row:
            raise UsageError(f"--filter: no field {key!r}; the fields are those of "
                             f"`roost ls --json`: {', '.join(row)}")
        got = row[key]
        text = json.dumps(got) if isinstance(got, (bool, list, dict)) or got is None \
            else str(got)
        if text.lower() != value.lower():
            return False
    return True


def listing(filters: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Every instance as `ls --json` shows it; with `filters` (KEY, VALUE),
    those whose field KEY is VALUE (any case)."""
    rows = [describe(inst) for inst in list_instances()]
    return [r for r in rows if matches(r, filters)] if filters else rows


def info(name: str) -> dict[str, Any]:
    """NAME as `ls` shows it, its roost.yaml as "config", and while it runs
    the host agent's /v1/info as "hostagent" (or why not, "hostagentError")."""
    inst = Instance.at(name).require()
    out = describe(inst)
    import yaml

    out["config"] = yaml.load(inst.config.read_text(), Loader=_yaml_loader())
    if out["status"] == Status.RUNNING.value and inst.ha_sock.exists():
        from roost.ops import hostapi

        try:
            out["hostagent"] = hostapi.request(inst.ha_sock, "GET", "/v1/info", timeout=5)
        except RoostError as e:
            out["hostagentError"] = str(e)
    return out
