"""Proxy variables for the guest: the host's proxy settings (roost.yaml's
propagateProxyEnv, as Lima's), where a proxy on the host's loopback is
reached at the host's address as the guest sees it; or, with
network.allowOut, the egress proxy's."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

NAMES = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
PROXY_VARIABLES = (*NAMES, *(n.upper() for n in NAMES))


def _loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def guest_proxy_url(value: str, host_addr: str) -> str:
    """`value` with a loopback host replaced by `host_addr`."""
    bare = "://" not in value
    parts = urlsplit(f"http://{value}" if bare else value)
    host = parts.hostname or ""
    if not _loopback(host):
        return value
    userinfo, at, _ = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{userinfo}{at}{host_addr}{port}"
    rewritten = urlunsplit(parts._replace(netloc=netloc))
    return rewritten.removeprefix("http://") if bare else rewritten


def proxy_env(host_env: Mapping[str, str], host_addr: str) -> dict[str, str]:
    """The proxy variables of `host_env`, for the guest."""
    env = {}
    for name in PROXY_VARIABLES:
        value = host_env.get(name)
        if not value:
            continue
        env[name] = value if name.lower() == "no_proxy" else guest_proxy_url(value, host_addr)
    return env


EGRESS_PROXY_PORT = 3128  # network.allowOut's proxy, on the guest's loopback


def egress_proxy_env() -> dict[str, str]:
    """With network.allowOut: the variables that send the guest's clients
    through the egress proxy (roost.hostagent.egress), not for loopback."""
    url = f"http://127.0.0.1:{EGRESS_PROXY_PORT}"
    env = {}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = url
    env["no_proxy"] = env["NO_PROXY"] = "localhost,127.0.0.1,::1"
    return env
