"""Templates: the built-in ones, `base:` composition as Lima merges it, `--set`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from roost.config.compose import compose
from roost.config.document import ConfigError
from roost.config.loader import parse_config
from roost.config.merge import combine_mounts, merge
from roost.config.model import Config
from roost.config.setting import apply_settings, parse_setting
from roost.config.template import (
    MAX_DEPTH,
    builtin,
    builtin_names,
    describe,
    file_document,
    image_of,
    resolve,
)
from roost.errors import UsageError


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


# --- the built-in templates


@pytest.mark.parametrize("name", builtin_names(bases=True))
def test_every_builtin_template_validates(name: str) -> None:
    data = resolve(builtin(name))
    assert "base" not in data
    parse_config(data, name)


@pytest.mark.parametrize("name", [n for n in builtin_names(bases=True)
                                  if resolve(builtin(n)).get("images")])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_cloud_templates_pin_a_digest_first(name: str, arch: str) -> None:
    config = parse_config(resolve(builtin(name)), name)
    mine = [i for i in config.images if i.arch == arch]
    assert mine, f"{name} has no {arch} image"
    assert mine[0].digest is not None and mine[0].location.startswith("https://")
    assert image_of(resolve(builtin(name)), arch) == mine[0].location


def test_the_listed_templates() -> None:
    names = builtin_names()
    assert names[0] == "default"
    assert {"default", "debian-12", "debian-12-cloud", "ubuntu-24.04", "ubuntu",
            "ubuntu-lts", "fedora-43", "fedora"} <= set(names)
    assert not [n for n in names if n.startswith("_")]
    assert "_images/ubuntu-24.04" in builtin_names(bases=True)
    for name in names:
        assert describe(name).description, f"{name} has no description"


def test_default_template_is_the_built_in_defaults() -> None:
    assert parse_config(resolve(builtin("default"))) == Config()
    assert describe("default").image == "builtin"


def test_debian_templates() -> None:
    built = parse_config(resolve(builtin("debian-12")))
    assert built.image == "debian-12" and built.images == []
    assert built.mount_types_unsupported == ["9p"]
    cloud = parse_config(resolve(builtin("debian-12-cloud")))
    assert cloud.mount_types_unsupported == ["9p"]
    assert cloud.images[0].digest is not None and cloud.images[0].digest.startswith("sha512:")
    # the moving "latest" images come after the pinned ones, without a digest
    assert [i.digest is None for i in cloud.images] == [False, False, True, True]


def test_aliases_are_the_same_images() -> None:
    assert resolve(builtin("ubuntu")) == resolve(builtin("ubuntu-24.04"))
    assert resolve(builtin("ubuntu-lts")) == resolve(builtin("ubuntu-24.04"))
    assert resolve(builtin("fedora")) == resolve(builtin("fedora-43"))


def test_unknown_template_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown template 'debian-99'; the templates are: "
                                          r"default, debian-12, .*ubuntu-24.04"):
        builtin("debian-99")
    for bad in ("../default", "/etc/passwd", ""):
        with pytest.raises(ConfigError, match="unknown template"):
            builtin(bad)


# --- merging


def test_merge_scalars_maps_and_lists() -> None:
    child = {"cpus": 4, "ssh": {"localPort": 2222}, "env": {"A": "child"},
             "portForwards": [{"guestPort": 80}], "images": [{"location": "/c.img"}]}
    base = {"cpus": 1, "memory": "4GiB", "ssh": {"localPort": 1, "forwardAgent": True},
            "env": {"A": "base", "B": "base"}, "portForwards": [{"guestPort": 81}],
            "images": [{"location": "/b.img"}], "base": "ignored"}
    out = merge(child, base)
    assert out == {
        "cpus": 4, "memory": "4GiB",
        "ssh": {"localPort": 2222, "forwardAgent": True},
        "env": {"A": "child", "B": "base"},
        "portForwards": [{"guestPort": 80}, {"guestPort": 81}],
        "images": [{"location": "/c.img"}, {"location": "/b.img"}],
    }
    assert list(out) == ["cpus", "ssh", "env", "portForwards", "images", "memory"]
    assert child["portForwards"] == [{"guestPort": 80}]  # inputs untouched


def test_merge_union_and_provision_order() -> None:
    out = merge({"mountTypesUnsupported": ["9p", "virtiofs"],
                 "provision": [{"script": "child"}]},
                {"mountTypesUnsupported": ["reverse-sshfs", "9p"],
                 "provision": [{"script": "base"}]})
    assert out["mountTypesUnsupported"] == ["9p", "virtiofs", "reverse-sshfs"]
    # as in Lima: the base's steps run first (they install what the child's use)
    assert out["provision"] == [{"script": "base"}, {"script": "child"}]


def test_a_childs_value_wins_even_when_null_or_of_another_kind() -> None:
    assert merge({"timezone": None, "mounts": "x"}, {"timezone": "UTC", "mounts": []}) == {
        "timezone": None, "mounts": "x"}


def test_mounts_sharing_a_mount_point_combine() -> None:
    out = combine_mounts({"mounts": [
        {"location": "/src", "writable": True},
        {"location": "/data"},
        {"location": "/src", "writable": False, "mountPoint": "/src", "9p": {"cache": "mmap"}},
    ]})
    assert out["mounts"] == [
        {"location": "/src", "writable": True, "mountPoint": "/src", "9p": {"cache": "mmap"}},
        {"location": "/data"},
    ]


# --- base: references


def test_base_forms(tmp_path: Path) -> None:
    abs_base = write(tmp_path / "elsewhere" / "abs.yaml", {"disk": "30GiB"})
    doc = write(tmp_path / "roost.yaml", {
        "cpus": 3,
        "base": ["template://debian-12", "template:_images/ubuntu-24.04", str(abs_base)],
    })
    data = resolve(file_document(str(doc)))
    # debian-12 comes first, so its scalars beat the later bases'
    assert data["cpus"] == 3 and data["image"] == "debian-12" and data["disk"] == "20GiB"
    assert data["images"][0]["location"].endswith("ubuntu-24.04-server-cloudimg-amd64.img")
    write(doc, {"base": "fedora", "memory": "3GiB"})
    data = resolve(file_document(str(doc)))
    assert data["memory"] == "3GiB" and "Fedora" in data["images"][0]["location"]


def test_relative_bases_are_relative_to_the_including_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    write(tmp_path / "lib" / "tools.yaml", {"base": "./sizes/big.yaml",
                                            "provision": [{"script": "echo tools"}]})
    write(tmp_path / "lib" / "sizes" / "big.yaml", {"cpus": 8, "memory": "8GiB"})
    doc = write(tmp_path / "project" / "roost.yaml", {"base": "../lib/tools.yaml",
                                                      "memory": "4GiB"})
    monkeypatch.chdir("/")
    assert resolve(file_document(str(doc))) == {
        "memory": "4GiB", "provision": [{"script": "echo tools"}], "cpus": 8}


def test_base_cycles_name_the_chain(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, {"base": "./b.yaml"})
    write(b, {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=re.escape(f"base cycle: {a} -> {b} -> {a}") + "$"):
        resolve(file_document(str(a)))
    write(a, {"base": str(a)})
    with pytest.raises(ConfigError, match=re.escape(f"base cycle: {a} -> {a}") + "$"):
        resolve(file_document(str(a)))


def test_base_depth_is_bounded(tmp_path: Path) -> None:
    for i in range(MAX_DEPTH + 1):
        write(tmp_path / f"t{i}.yaml", {"base": f"t{i + 1}.yaml", f"k{i}": i})
    write(tmp_path / f"t{MAX_DEPTH + 1}.yaml", {"cpus": 1})
    # eight bases below the top document are fine
    assert resolve(file_document(str(tmp_path / "t1.yaml")))["cpus"] == 1
    with pytest.raises(ConfigError, match=rf"nested deeper than {MAX_DEPTH}: "
                                          rf".*t0.yaml -> .*t1.yaml -> .* -> .*t9.yaml"):
        resolve(file_document(str(tmp_path / "t0.yaml")))


def test_a_base_included_twice_is_refused(tmp_path: Path) -> None:
    doc = write(tmp_path / "roost.yaml", {"base": ["ubuntu", "ubuntu-24.04"]})
    with pytest.raises(ConfigError, match=r"template _images/ubuntu-24\.04 is included twice"):
        resolve(file_document(str(doc)))


@pytest.mark.parametrize(("base", "error"), [
    ({"name": "x"}, "base: expected a template name or file path"),
    ([1], "base: expected a template name or file path"),
    ("./missing.yaml", "missing.yaml does not exist"),
    ("nosuch", "unknown template 'nosuch'"),
])
def test_bad_bases(tmp_path: Path, base: Any, error: str) -> None:
    doc = write(tmp_path / "roost.yaml", {"base": base})
    with pytest.raises(ConfigError, match=error):
        resolve(file_document(str(doc)))


# --- --set


@pytest.mark.parametrize(("arg", "path", "value"), [
    ("cpus=4", ("cpus",), 4),
    ("firmware.legacyBIOS=false", ("firmware", "legacyBIOS"), False),
    ("mounts[0].writable=true", ("mounts", 0, "writable"), True),
    ("env.FOO=bar", ("env", "FOO"), "bar"),
    ("mountTypesUnsupported=[9p]", ("mountTypesUnsupported",), ["9p"]),
    ("mounts[1]={location: ~/src, writable: true}", ("mounts", 1),
     {"location": "~/src", "writable": True}),
    ("portForwards[0].guestPortRange[1]=90", ("portForwards", 0, "guestPortRange", 1), 90),
    ("timezone=", ("timezone",), None),
    ('cpuType="4"', ("cpuType",), "4"),
    ("provision[0].script=echo a=b", ("provision", 0, "script"), "echo a=b"),
])
def test_parse_setting(arg: str, path: tuple[str | int, ...], value: Any) -> None:
    setting = parse_setting(arg)
    assert (setting.path, setting.value) == (path, value)


@pytest.mark.parametrize(("arg", "error"), [
    ("cpus", "--set 'cpus': expected KEY=VALUE"),
    ("=4", "--set '=4': expected KEY=VALUE"),
    ("cpus..x=1", "--set 'cpus..x=1': bad key path 'cpus..x'"),
    ("mounts[x]=1", "bad key path 'mounts[x]'"),
    ("mounts[-1]=1", "bad key path"),
    ("env.F OO=1", "bad key path"),
    ("cpus=[1", "--set 'cpus=[1': the value is not valid YAML"),
])
def test_malformed_settings(arg: str, error: str) -> None:
    with pytest.raises(UsageError, match=re.escape(error)):
        parse_setting(arg)


def test_apply_settings(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"  # mounts share folders that exist
    a.mkdir()
    b.mkdir()
    data = {"mounts": [{"location": str(a)}], "cpus": 2}
    out = apply_settings(data, [parse_setting(s) for s in (
        "mounts[0].writable=true", f"mounts[1]={{location: {b}}}", "env.FOO=1",
        "firmware.legacyBIOS=false", "cpus=3", "cpus=5")])
    assert out == {"mounts": [{"location": str(a), "writable": True}, {"location": str(b)}],
                   "cpus": 5, "env": {"FOO": 1}, "firmware": {"legacyBIOS": False}}
    assert data == {"mounts": [{"location": str(a)}], "cpus": 2}
    assert parse_config(out).env == {"FOO": "1"}  # env values are text


@pytest.mark.parametrize(("data", "arg", "error"), [
    ({}, "mounts[0].writable=true",
     "--set 'mounts[0].writable=true': mounts[0] is out of range: mounts has no entries"),
    ({"mounts": [{"location": "/a"}]}, "mounts[2]={location: /b}",
     "mounts[2] is out of range: mounts has 1 entry; the last index may be one past the end"),
    ({"cpus": 2}, "cpus.count=1", "cpus is not a mapping, so it has no key 'count'"),
    ({"env": {}}, "env[0]=x", "env is not a list, so it has no entry [0]"),
])
def test_settings_that_do_not_fit(data: dict[str, Any], arg: str, error: str) -> None:
    with pytest.raises(UsageError, match=re.escape(error)):
        apply_settings(data, [parse_setting(arg)])


# --- composing a new instance's configuration


def test_compose_order_template_options_sets() -> None:
    config = compose("debian-12", None, {"cpus": 6, "memory": None}, ["cpus=3"])
    assert (config.cpus, config.memory, config.image) == (3, 2 * 1024**3, "debian-12")
    assert compose(None, None, {"cpus": 6}).cpus == 6
    assert compose().image == "builtin"


def test_compose_errors_name_the_key_and_the_source() -> None:
    with pytest.raises(ConfigError) as e:
        compose("debian-12", None, {}, ["cpus=lots", "firmware.legacyBIOS=maybe"])
    assert str(e.value).splitlines() == [
        "invalid configuration in template debian-12 with --set cpus=lots "
        "--set firmware.legacyBIOS=maybe:",
        "  cpus: expected a whole number, got 'lots'",
        "  firmware.legacyBIOS: expected true or false, got 'maybe'",
    ]
    with pytest.raises(ConfigError, match="mountType 9p is listed in mountTypesUnsupported"):
        compose("debian-12", None, {}, ["mountType=9p"])


def test_compose_refuses_template_with_config(tmp_path: Path) -> None:
    doc = write(tmp_path / "roost.yaml", {"cpus": 1})
    with pytest.raises(UsageError, match="give --template or --config, not both"):
        compose("default", str(doc))
    with pytest.raises(UsageError, match="--template takes a template name, not a file"):
        compose(str(doc))


def test_compose_a_config_file_with_a_base(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "roost.yaml", {"base": "ubuntu-24.04", "cpus": 1})
    monkeypatch.chdir(tmp_path)
    config = compose(None, "roost.yaml", {"memory": "1GiB"}, ["cpus=2"])
    assert (config.cpus, config.memory) == (2, 1024**3)
    assert config.images[0].location.endswith("amd64.img")
    with pytest.raises(ConfigError, match=re.escape(f"config file {tmp_path}/nope does not")):
        compose(None, "nope")
