"""What the guest agent answers through the host agent: its worker status
(idle or busy), health checks, probes, and the file-system diff."""

from __future__ import annotations

from typing import Any, Literal

from roost.ops import hostapi
from roost.store.instance import Instance

Question = Literal["status", "health", "probes", "diff"]
DIFF_TIMEOUT = 120.0  # a walk of the overlay's upper layer


def ask(name: str, kind: Question, timeout: float | None = None) -> dict[str, Any]:
    """The guest agent's answer to `kind`, as it gave it."""
    inst = Instance.at(name).require_running()
    wait = timeout if timeout is not None else (DIFF_TIMEOUT if kind == "diff" else 10.0)
    answer: dict[str, Any] = hostapi.request(inst.ha_sock, "GET", f"/v1/guest/{kind}",
                                             timeout=wait)
    return answer
