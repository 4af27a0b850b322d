"""The host's proxy settings for the guest (roost.yaml's propagateProxyEnv,
as Lima's): a proxy on the host's loopback is reached from the guest at
the host's address as the guest sees it."""

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
