"""roost.yaml validation: every error names its key path and the expected form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roost.config.loader import ConfigError, dump_config, load_config, parse_config
from roost.config.sizes import format_size, human_size, parse_size


def error_for(data: Any) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return str(e.value)


def test_defaults() -> None:
    c = parse_config({})
    assert (c.cpus, c.memory, c.disk, c.image) == (2, 2 * 1024**3, 20 * 1024**3, "builtin")
    assert c.ssh.local_port == 0
    assert c.port_forwards == [] and c.mounts == []


def test_sizes_and_camel_case_keys() -> None:
    c = parse_config({"memory": "512MiB", "disk": "4G", "ssh": {"localPort": 2222}})
    assert c.memory == 512 * 1024**2 and c.disk == 4 * 1024**3 and c.ssh.local_port == 2222


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cpus": "many"}, "cpus: expected a whole number, got 'many'"),
        ({"cpus": 0}, "cpus: Input should be greater than or equal to 1"),
        ({"memory": "lots"}, "memory: invalid size 'lots': expected a number with a unit"),
        ({"memory": "64MiB"}, "memory: at least 128MiB is needed, got 64MiB"),
        ({"disk": "1G"}, "disk: at least 2GiB is needed"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"ssh": {"port": 22}}, "ssh.port: unknown key"),
        ({"ssh": {"localPort": 70000}},
         "ssh.localPort: Input should be less than or equal to 65535"),
        ({"mountType": "nfs"}, "mountType: Input should be 'virtiofs', '9p' or 'reverse-sshfs'"),
        ({"portForwards": [{"guestPort": 80}, {"guestPort": 81, "proto": "sctp"}]},
         "portForwards[1].proto: Input should be 'tcp', 'udp' or 'any', got 'sctp'"),
        ({"portForwards": [{"guestPortRange": [90, 80]}]},
         "portForwards[0]: guestPortRange: start 90 is above end 80"),
        ({"portForwards": [{"guestIP": "localhost"}]},
         "portForwards[0].guestIP: not an IP address: 'localhost'"),
        ({"portForwards": [{"guestPort": 80, "guestPortRange": [1, 2]}]},
         "give guestPort or guestPortRange, not both"),
        ({"mounts": [{"mountPoint": "/x"}]}, "mounts[0].location: required key is missing"),
        ({"provision": [{"mode": "yq", "script": "true"}]}, "provision[0].mode"),
        ({"guestAgent": {"allowExec": "perhaps"}},
         "guestAgent.allowExec: expected true or false, got 'perhaps'"),
        ([1, 2], "expected a mapping of keys to values at the top level"),
    ],
)
def test_errors_name_the_key(data: Any, expected: str) -> None:
    assert expected in error_for(data)


def test_every_bad_key_is_reported_at_once() -> None:
    msg = error_for({"cpus": "x", "memory": "lots", "bogus": 1})
    assert "cpus:" in msg and "memory:" in msg and "bogus: unknown key" in msg


def test_load_reports_yaml_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cpus: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_dump_round_trips(tmp_path: Path) -> None:
    c = parse_config({"cpus": 1, "memory": "1GiB",
                      "portForwards": [{"guestPort": 8080, "hostPort": 9090}]})
    path = tmp_path / "roost.yaml"
    path.write_text(dump_config(c))
    assert load_config(path) == c
    assert "guestPort: 8080" in path.read_text()


@pytest.mark.parametrize(
    ("text", "n"),
    [("512MiB", 512 * 1024**2), ("4G", 4 * 1024**3), ("1.5GiB", 1536 * 1024**2),
     ("100", 100), ("2 tb", 2 * 1024**4), (4096, 4096)],
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "1X", "", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size_is_exact_and_human_size_rounds() -> None:
    sizes = (2 * 1024**3, 1536 * 1024**2, 512, 20 * 1024**3, 3000 * 1024**2)
    assert [format_size(n) for n in sizes] == ["2GiB", "1536MiB", "512B", "20GiB", "3000MiB"]
    assert [human_size(n) for n in sizes] == ["2GiB", "1.5GiB", "512B", "20GiB", "2.9GiB"]


def test_what_a_cloud_image_cannot_honour_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="readOnlyRoot needs the built-in image"):
        parse_config({"image": "debian-12", "readOnlyRoot": True})
    with pytest.raises(ConfigError, match="readOnlyRoot needs the built-in image"):
        parse_config({"images": [{"location": "https://example.org/x.qcow2"}],
                      "readOnlyRoot": True})
    with pytest.raises(ConfigError, match="mountType 9p is listed in mountTypesUnsupported"):
        parse_config({"mountType": "9p", "mountTypesUnsupported": ["9p"]})
    with pytest.raises(ConfigError, match="give image or images, not both"):
        parse_config({"image": "debian-12", "images": [{"location": "/x.qcow2"}]})
