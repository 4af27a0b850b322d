"""`roost watch`: the host agents' status events as they happen, of every
instance (also those created or started after the watch began) or of the
named ones. Each host agent appends its events to ha.stdout.log; this
follows those files, across their rotation and a new start's fresh file."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from roost.ops.start import EventFollower
from roost.store.instance import Instance, list_instances

POLL_SECONDS = 0.2


def describe(status: dict[str, Any]) -> str:
    """One line for a person: what this event says."""
    if "portForward" in status:
        fwd = status["portForward"]
        where = f" -> {fwd['hostAddr']}" if fwd.get("hostAddr") else ""
        why = f" ({fwd.get('reason') or fwd.get('error')})" if fwd.get("reason") or \
            fwd.get("error") else ""
        return f"port {fwd.get('type')}: {fwd.get('protocol')} {fwd.get('guestAddr')}{where}{why}"
    for key in ("diskFull", "diskContinued", "mount", "cloudInitProgress"):
        if key in status:
            return f"{key}: {json.dumps(status[key], sort_keys=True)}"
    state = "running" if status.get("running") else "exiting" if status.get("exiting") \
        else "not running"
    text = f"{state}, {status.get('phase') or '-'}"
    if status.get("degraded"):
        text += f" (degraded: {', '.join(status.get('degradedBy') or []) or 'yes'})"
    if status.get("errors"):
        text += f"; last error: {status['errors'][-1]}"
    return text


def _follower(inst: Instance, from_end: bool) -> EventFollower:
    follower = EventFollower(inst.ha_stdout)
    if from_end:
        follower.poll()  # what was there before the watch began
    return follower


def watch(names: Sequence[str], as_json: bool, seconds: float | None = None) -> None:
    for name in names:
        Instance.at(name).require()
    followers: dict[str, EventFollower] = {}
    first = True
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            instances = [Instance.at(n) for n in names] if names else list_instances()
            for inst in instances:
                if inst.name not in followers:
                    followers[inst.name] = _follower(inst, from_end=first)
            first = False
            for name, follower in followers.items():
                for event in follower.poll():
                    status = event.get("status") or {}
                    if as_json:
                        print(json.dumps({"instance": name, **event}), flush=True)
                    else:
                        print(f"{event.get('time', '-')}  {name}  {describe(status)}",
                              flush=True)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        for follower in followers.values():
            follower.close()

