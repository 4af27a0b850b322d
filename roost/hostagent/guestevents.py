"""The shapes of the guest agent's events, checked before the host acts on them.

The guest is not trusted: an event of a known kind whose fields have other
types, or an event of a kind the host does not know, is dropped (and
counted) by the client, so that no consumer (port forwarding, health,
worker status) ever meets one. Only the fields the host reads are checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from roost_guest.protocol import is_int

PROTOS = ("tcp", "udp")


def event_problem(kind: str, event: dict[str, Any]) -> str:
    """What is wrong with `event` of kind `kind` ("" when nothing is)."""
    check = _CHECKS.get(kind)
    if check is None:
        return f"unknown event {_short(kind)}"
    problem = check(event)
    return f"{kind} event: {problem}" if problem else ""


def listener_problem(item: object) -> str:
    """A listening socket as the guest reports it: {"proto", "ip", "port"}."""
    if not isinstance(item, dict):
        return f"a listener must be an object, got {_short(item)}"
    if item.get("proto") not in PROTOS:
        return f"listener proto must be tcp or udp, got {_short(item.get('proto'))}"
    ip, port = item.get("ip"), item.get("port")
    if not isinstance(ip, str) or not _is_ip(ip):
        return f"listener ip must be an IP address, got {_short(ip)}"
    if not is_int(port) or not 0 <= port <= 65535:
        return f"listener port must be an integer in 0..65535, got {_short(port)}"
    return ""


def listeners_problem(items: object) -> str:
    if not isinstance(items, list):
        return f"listeners must be a list, got {_short(items)}"
    for item in items:
        if problem := listener_problem(item):
            return problem
    return ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ports(event: dict[str, Any]) -> str:
    for key in ("added", "removed"):
        if problem := listeners_problem(event.get(key, [])):
            return f"{key}: {problem}"
    return ""


def _list_of_objects(value: object, name: str) -> str:
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        return f"{name} must be a list of objects"
    return ""


def _health(event: dict[str, Any]) -> str:
    if not isinstance(event.get("summary"), str):
        return "summary must be a string"
    return _list_of_objects(event.get("checks", []), "checks")


def _worker(event: dict[str, Any]) -> str:
    if not isinstance(event.get("state"), str):
        return "state must be a string"
    last = event.get("lastBusyAt")
    if last is not None and (isinstance(last, bool) or not isinstance(last, int | float)):
        return "lastBusyAt must be a number or null"
    return ""


def _probes(event: dict[str, Any]) -> str:
    return _list_of_objects(event.get("probes", []), "probes")


_CHECKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ports": _ports, "health": _health, "worker": _worker, "probes": _probes,
}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
