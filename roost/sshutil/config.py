"""The per-instance ssh.config and known_hosts."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from roost.store.durable import write_atomic
from roost.store.instance import Instance


def host_alias(name: str) -> str:
    return f"roost-{name}"


def _quote(path: Path) -> str:
    return '"' + str(path).replace('"', '\\"') + '"'


def render_ssh_config(inst: Instance, port: int, user: str, identity: Path,
                      forward_agent: bool = False) -> str:
    # The host key is pinned through HostKeyAlias, so known_hosts does not
    # depend on the (possibly new each start) local port. IdentitiesOnly: the
    # instance's own key logs in, never another of the user's agent; without
    # ssh.forwardAgent no agent is asked at all (IdentityAgent none), with it
    # the agent must stay reachable, as ssh drops SSH_AUTH_SOCK, and so the
    # forwarding, under IdentityAgent none.
    agent = ["  ForwardAgent yes"] if forward_agent else ["  IdentityAgent none",
                                                          "  ForwardAgent no"]
    return "\n".join([
        f"Host {host_alias(inst.name)}",
        "  HostName 127.0.0.1",
        f"  Port {port}",
        f"  User {user}",
        f"  IdentityFile {_quote(identity)}",
        "  IdentitiesOnly yes",
        *agent,
        f"  UserKnownHostsFile {_quote(inst.known_hosts)}",
        f"  HostKeyAlias {host_alias(inst.name)}",
        "  StrictHostKeyChecking yes",
        "  CheckHostIP no",
        "  BatchMode yes",
        "  LogLevel ERROR",
        "  ConnectTimeout 10",
        "  ServerAliveInterval 5",
        "  ServerAliveCountMax 4",
        "  ControlMaster auto",
        f"  ControlPath {_quote(inst.ssh_sock)}",
        "  ControlPersist yes",
        "",
    ])


def write_ssh_files(inst: Instance, port: int, user: str, identity: Path, host_pub: str,
                    forward_agent: bool = False) -> None:
    key_type, key_b64 = host_pub.split()[:2]
    write_atomic(inst.known_hosts, f"{host_alias(inst.name)} {key_type} {key_b64}\n", 0o600)
    write_atomic(inst.ssh_config, render_ssh_config(inst, port, user, identity, forward_agent),
                 0o600)


def ssh_argv(inst: Instance, command: list[str], tty: bool = False,
             workdir: str | None = None) -> list[str]:
    """argv for the system ssh; each word of `command` reaches the guest intact.
    With `workdir`, the command (or the user's login shell) runs there."""
    argv = ["ssh", "-F", str(inst.ssh_config)]
    if tty:
        argv.append("-t")
    argv.append(host_alias(inst.name))
    words = " ".join(shlex.quote(word) for word in command)
    if workdir is not None:
        run = words or '"${SHELL:-/bin/sh}" -l'
        argv += ["--", f"cd -- {shlex.quote(workdir)} && exec {run}"]
    elif command:
        argv += ["--", words]
    return argv


def control_argv(inst: Instance, op: str) -> list[str]:
    """`ssh -O OP` on the instance's ControlMaster (exit, check, ...)."""
    return ["ssh", "-F", str(inst.ssh_config), "-O", op, host_alias(inst.name)]


def host_timezone() -> str | None:
    """The host's time zone name (tz database), for a guest that follows it."""
    try:
        name = Path("/etc/timezone").read_text().strip()
        if name:
            return name
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return None
    marker = "zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else None


def guest_user() -> tuple[str, int]:
    """The guest user mirrors the host user: same name and uid."""
    import pwd

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        print(f"roost: uid {uid} has no user name; using 'roost' in the guest", file=sys.stderr)
        name = "roost"
    return name, uid
