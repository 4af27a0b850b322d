"""propagateProxyEnv: the host's proxy variables, loopback rewritten to the
host's address as the guest sees it."""

from __future__ import annotations

import pytest

from roost.cidata.proxyenv import guest_proxy_url, proxy_env

HOST = "192.168.5.2"


@pytest.mark.parametrize(("value", "guest"), [
    ("http://localhost:3128", "http://192.168.5.2:3128"),
    ("http://127.0.0.1:3128/", "http://192.168.5.2:3128/"),
    ("http://user:pw@127.0.0.2:8080", "http://user:pw@192.168.5.2:8080"),
    ("http://[::1]:3128", "http://192.168.5.2:3128"),
    ("localhost:3128", "192.168.5.2:3128"),  # no scheme, as some write it
    ("socks5h://localhost", "socks5h://192.168.5.2"),
    ("http://proxy.corp.example:3128", "http://proxy.corp.example:3128"),  # not loopback
    ("http://10.1.2.3:3128", "http://10.1.2.3:3128"),
])
def test_loopback_becomes_the_host(value: str, guest: str) -> None:
    assert guest_proxy_url(value, HOST) == guest


def test_only_proxy_variables_travel_and_no_proxy_is_kept() -> None:
    env = proxy_env({"HTTPS_PROXY": "http://localhost:3128", "no_proxy": "localhost,.corp",
                     "http_proxy": "", "PATH": "/usr/bin", "SECRET": "x"}, HOST)
    assert env == {"HTTPS_PROXY": "http://192.168.5.2:3128", "no_proxy": "localhost,.corp"}
