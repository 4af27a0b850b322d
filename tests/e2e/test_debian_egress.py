"""network.allowOut on the real distribution (systemd, OpenSSH, cloud-init's
/etc/environment), attacked from guest root as in test_network_policy.py.
Root only, as every test_debian*.py (scripts/test.sh: a normal user's
debian-12 image build is not covered)."""

from __future__ import annotations

from tests.e2e.conftest import START_TIMEOUT, Roost
from tests.e2e.test_network_policy import (
    host_address,
    only_listed_through_proxy,
    probe,
    serving_host,
)


def test_allow_out_on_debian(roost: Roost) -> None:
    """The listed address through the proxy; the host's loopback refused
    there; neither reached around it; logins told of the proxy."""
    name = "deb-offline"
    roost.run("create", name, "--template", "debian-12", "--set", "network.internet=false",
              "--set", f"network.allowOut=[{host_address()}]", "--memory", "1GiB",
              "--disk", "4GiB")
    try:
        with serving_host() as port:
            roost.run("start", name, "--timeout", str(START_TIMEOUT),
                      timeout=START_TIMEOUT + 30)
            check(roost, name, port)
    finally:
        roost.run("delete", "--force", name, timeout=180, check=False)


def check(roost: Roost, name: str, port: int) -> None:
    only_listed_through_proxy(roost, name, port)
    direct = probe(roost, name, port)
    assert all(v.startswith("no answer") for v in direct.values()), direct
    env = roost.run("shell", name, "--", "sh", "-c", "echo $https_proxy").stdout
    assert env.strip() == "http://127.0.0.1:3128", env
