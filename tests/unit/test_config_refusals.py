"""Bad input is refused at the door: through the real CLI (click's runner,
in-process), each input below ends in exit 2 with a message that names what
is wrong, of bounded length, with no traceback, and leaves nothing in
ROOST_HOME. Each is recorded in tests/.results/badinput.json."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roost.cli.main import cli
from tests.unit.badinput_record import REFUSED, record

AT_START = "refused at start: exit 2, the instance left as it was"
MAX_MESSAGE = 16_000  # characters: 20 error lines of 500, a header, a tail
MIB = 1024 * 1024


@dataclass(frozen=True)
class Bad:
    what: str  # the input, as the record names it
    args: tuple[str, ...]  # `{dir}` is the test's scratch directory
    expect: str  # a fragment the message must hold
    files: dict[str, str | bytes] = field(default_factory=dict)


def _big_yaml() -> str:
    line = "# " + "x" * 1021 + "\n"  # 1 KiB of comment per line
    return "cpus: 2\n" + line * 1025


def _billion_laughs() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ", ".join([f"*{prev}"] * 10)
                     + "]")
    return "env:\n  " + "\n  ".join(lines) + "\n"


def _config(what: str, text: str | bytes, expect: str, command: str = "create") -> Bad:
    return Bad(what, (command, "t", "--config", "{dir}/c.yaml"), expect, {"c.yaml": text})


def _mounts(what: str, entries: str, expect: str) -> Bad:
    return _config(what, f"mounts:\n{entries}", expect)


CASES = [
    # -- mounts -------------------------------------------------------------
    _mounts("mount location that does not exist", "  - location: {dir}/nope\n",
            "mounts[0].location: '{dir}/nope' does not exist on the host"),
    _mounts("mount location that is a file", "  - location: {dir}/file\n",
            "mounts[0].location: '{dir}/file' is not a directory"),
    _mounts("mount location relative", "  - location: share\n",
            "mounts[0].location: must be an absolute host path"),
    _mounts("mount location with a newline", '  - location: "{dir}/share\\nx"\n',
            "mounts[0].location: a host path cannot hold a NUL or a newline"),
    *[_mounts(f"guest mount point {p}", f"  - location: {{dir}}/share\n    mountPoint: {p}\n",
              f"mounts[0].mountPoint: {p} is a system directory")
      for p in ("/", "/etc", "/usr", "/root", "/var", "/proc/x")],
    _mounts("guest mount point /mnt/../etc",
            "  - location: {dir}/share\n    mountPoint: /mnt/../etc\n",
            "mounts[0].mountPoint: the guest path must not contain '..'"),
    _mounts("guest mount point relative", "  - location: {dir}/share\n    mountPoint: mnt/x\n",
            "mounts[0].mountPoint: must be an absolute guest path, got 'mnt/x'"),
    _mounts("host folder /usr as its own guest path (no mountPoint)", "  - location: /usr\n",
            "mounts[0]: without a mountPoint the guest path is the location, and /usr is a "
            "system directory; give a mountPoint"),
    _mounts("/mnt/a beside /mnt/a/",
            "  - {location: {dir}/share, mountPoint: /mnt/a}\n"
            "  - {location: {dir}/other, mountPoint: /mnt/a/}\n",
            "mounts[0] and mounts[1] are both at the guest path /mnt/a"),
    _mounts("/mnt/a beside /mnt//./a",
            "  - {location: {dir}/share, mountPoint: /mnt/a}\n"
            "  - {location: {dir}/other, mountPoint: /mnt//./a}\n",
            "mounts[0] and mounts[1] are both at the guest path /mnt/a"),
    _config("/mnt/a in a base, /mnt/a/ in the child",
            "base: ./base.yaml\nmounts:\n  - {location: {dir}/other, mountPoint: /mnt/a/}\n",
            "both at the guest path /mnt/a"),
    # -- port forwards -------------------------------------------------------
    _config("relative hostSocket out of sock/",
            "portForwards:\n  - {guestSocket: /run/a.sock, hostSocket: ../a.sock}\n",
            "portForwards[0].hostSocket: a relative hostSocket names a socket in the "
            "instance's sock/ directory, without '..'; got '../a.sock'"),
    _config("hostSocket longer than a socket path may be",
            f"portForwards:\n  - {{guestSocket: /run/a.sock, hostSocket: /{'s' * 120}}}\n",
            "portForwards[0].hostSocket: a Unix socket path is at most 107 bytes"),
    _config("hostSocket for a port range",
            "portForwards:\n  - {guestPortRange: [8000, 8010], hostSocket: /tmp/a.sock}\n",
            "hostSocket needs guestSocket or a single guestPort (or reverse: true)"),
    _config("hostSocket for UDP",
            "portForwards:\n  - {guestPort: 53, proto: udp, hostSocket: /tmp/a.sock}\n",
            "hostSocket forwards TCP: drop proto: udp"),
    _config("hostSocket and hostPort",
            "portForwards:\n  - {guestPort: 80, hostPort: 8080, hostSocket: /tmp/a.sock}\n",
            "give hostSocket or hostPort, not both"),
    _config("relative guestSocket",
            "portForwards:\n  - {guestSocket: a.sock, hostSocket: /tmp/a.sock}\n",
            "portForwards[0].guestSocket: must be an absolute guest path"),
    # -- caCerts ----------------------------------------------------------------
    _config("caCerts: an inline cert that is no PEM",
            "caCerts:\n  certs:\n    - hello\n",
            "caCerts.certs[0]: not a PEM certificate: it must start with "
            "-----BEGIN CERTIFICATE-----"),
    _config("caCerts: a relative file", "caCerts:\n  files: [ca.pem]\n",
            "caCerts.files: 'ca.pem': must be an absolute host path"),
    _config("caCerts: a missing file", "caCerts:\n  files: ['{dir}/gone.pem']\n",
            "cannot read '{dir}/gone.pem': No such file or directory"),
    Bad("caCerts: a file that is no certificate", ("create", "t", "--config", "{dir}/c.yaml"),
        "not a PEM certificate", {"c.yaml": "caCerts:\n  files: ['{dir}/key.pem']\n",
                                  "key.pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                             "-----END PRIVATE KEY-----\n"}),
    # -- the YAML itself -----------------------------------------------------
    _config("duplicate key (allowExec lost)",
            "guestAgent:\n  allowExec: true\ncpus: 2\nguestAgent:\n  allowExec: false\n",
            "guestAgent is given twice, on lines 1 and 4"),
    _config("duplicate nested key",
            "guestAgent:\n  allowExec: true\n  allowExec: false\n",
            "guestAgent.allowExec is given twice, on lines 2 and 3"),
    _config("duplicate key in a list entry",
            "mounts:\n  - location: /a\n    writable: true\n    location: /b\n",
            "mounts[0].location is given twice, on lines 2 and 4"),
    _config("duplicate key spelt differently (yes/true)", "env:\n  true: 1\n  yes: 2\n",
            "is given twice, on lines 2 and 3"),
    _config("roost.yaml over 1 MiB", _big_yaml(), "is larger than 1024 KiB"),
    Bad("/dev/zero as --config", ("create", "t", "--config", "/dev/zero"),
        "is larger than 1024 KiB"),
    _config("not UTF-8", b"cpus: 2\nimage: \xff\xfe\n", "is not UTF-8 text (byte 15 is 0xff)"),
    _config("billion laughs (10^9 aliases)", _billion_laughs(),
            "has more than 100000 values (aliases counted in full)"),
    _config("recursive alias", "env: &a\n  X: *a\n", "refers to itself (a recursive alias)"),
    _config("10000 nested lists", "cpus: " + "[" * 10000 + "]" * 10000 + "\n",
            "is not valid YAML"),
    _config("60 nested mappings", "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 60))
            + "  " * 60 + "c\n", "is nested more than 50 levels deep"),
    _config("two YAML documents", "cpus: 2\n---\ncpus: 3\n", "is not valid YAML"),
    _config("a list at the top level", "- cpus: 2\n", "expected a mapping of keys to values"),
    _config("an unknown YAML tag", "cpus: !!python/object:os.system 1\n", "is not valid YAML"),
    _config("a base path with a NUL", 'base: "./a\\0.yaml"\n', "holds a NUL"),
    # -- bounded messages ----------------------------------------------------
    _config("a 2 MB value", "cpus: " + "x" * 2_000_000 + "\n",
            "is larger than 1024 KiB"),
    _config("a 500 KB value", "cpus: " + "x" * 500_000 + "\n",
            "cpus: expected a whole number, got 'xxxxx"),
    _config("a 500 KB unknown key", "? " + "x" * 500_000 + "\n: 1\n", "unknown key"),
    _config("20000 unknown keys", "".join(f"k{i}: 1\n" for i in range(20000)),
            "... and 19980 more"),
    _mounts("a 500 KB guest mount point",
            "  - location: {dir}/share\n    mountPoint: /proc/" + "x" * 500_000 + "\n",
            "mounts[0].mountPoint: /proc/xxx"),
    Bad("a 100 KB --set value", ("create", "t", "--set", "cpus=" + "x" * 100_000),
        "cpus: expected a whole number"),
    Bad("a 100 KB --memory", ("create", "t", "--memory", "9" * 100_000), "memory: invalid size"),
    # -- sizes ---------------------------------------------------------------
    Bad("--memory 1.1GiB (not whole bytes)", ("create", "t", "--memory", "1.1GiB"),
        "memory: '1.1GiB' is not a whole number of bytes"),
    Bad("--memory 3000.5MiB (not whole MiB)", ("create", "t", "--memory", "3000.5MiB"),
        "memory: must be a whole number of MiB"),
    Bad("--disk 2049.5MiB (not whole MiB)", ("create", "t", "--disk", "2049.5MiB"),
        "disk: must be a whole number of MiB"),
    Bad("--memory 1e9", ("create", "t", "--memory", "1e9"), "memory: invalid size '1e9'"),
    Bad("--memory 0", ("create", "t", "--memory", "0"), "memory: expected a positive size"),
    Bad("--memory -1G", ("create", "t", "--memory", "-1G"), "memory: invalid size"),
    Bad("--memory 64MiB", ("create", "t", "--memory", "64MiB"), "at least 128MiB is needed"),
    Bad("--disk 9999999999TiB", ("create", "t", "--disk", "9999999999TiB"), "is too large"),
    Bad("--memory in Arabic-Indic digits", ("create", "t", "--memory", "\u0664GiB"),
        "memory: invalid size"),
    Bad("--cpus 0", ("create", "t", "--cpus", "0"), "cpus: Input should be greater than"),
    Bad("--cpus 256", ("create", "t", "--cpus", "256"), "cpus: Input should be less than"),
    Bad("--cpus abc", ("create", "t", "--cpus", "abc"), "'abc' is not a valid integer"),
    # -- --set ---------------------------------------------------------------
    Bad("--set without =", ("create", "t", "--set", "cpus"), "expected KEY=VALUE"),
    Bad("--set with an empty key", ("create", "t", "--set", "=4"), "expected KEY=VALUE"),
    Bad("--set a..b=1", ("create", "t", "--set", "a..b=1"), "bad key path 'a..b'"),
    Bad("--set with a 20-digit index", ("create", "t", "--set", f"mounts[{'9' * 20}]=x"),
        "bad key path"),
    Bad("--set 40 levels deep", ("create", "t", "--set", ".".join(["a"] * 40) + "=1"),
        "the key path has more than 16 keys"),
    Bad("--set value that is not YAML", ("create", "t", "--set", "cpus=[1,"),
        "the value is not valid YAML"),
    Bad("--set value with a duplicate key", ("create", "t", "--set", "ssh={localPort: 1, "
        "localPort: 2}"), "localPort is given twice"),
    Bad("--set mounts[0] past the end", ("create", "t", "--set", "mounts[1]={location: /x}"),
        "mounts[1] is out of range"),
    # -- names ---------------------------------------------------------------
    Bad("instance name with a trailing newline", ("create", "abc\n"), "invalid instance name"),
    Bad("instance name with capitals", ("create", "Abc"), "invalid instance name"),
    Bad("instance name of 64 characters", ("create", "a" * 64), "invalid instance name"),
    Bad("instance name ../x", ("create", "../x"), "invalid instance name"),
    Bad("template that is a path", ("create", "t", "-t", "../../etc/passwd"),
        "--template takes a template name, not a file"),
    Bad("template with a trailing newline", ("create", "t", "-t", "default\n"),
        "unknown template 'default\\n'"),
    Bad("unknown template", ("create", "t", "-t", "nosuch"), "unknown template 'nosuch'"),
    Bad("--template and --config", ("create", "t", "-t", "default", "--config", "{dir}/x"),
        "give --template or --config, not both"),
    Bad("snapshot tag with a space", ("snapshot", "create", "t", "--tag", "a b"),
        "invalid snapshot tag 'a b'"),
    Bad("snapshot tag with a trailing newline", ("snapshot", "create", "t", "--tag", "a\n"),
        "invalid snapshot tag"),
    Bad("mount add at /etc", ("mount", "add", "t", "{dir}/share", "/etc"),
        "/etc is a system directory"),
    Bad("mount add at a relative path", ("mount", "add", "t", "{dir}/share", "mnt"),
        "the guest path must be absolute"),
    # -- start --config: the same door -------------------------------------------
    _config("start --config with a duplicate key", "cpus: 2\ncpus: 3\n",
            "cpus is given twice", command="start"),
    _config("start --config with a missing mount location",
            "mounts:\n  - location: {dir}/nope\n", "does not exist on the host",
            command="start"),
]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "share").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "file").write_text("a file\n")
    (tmp_path / "base.yaml").write_text(
        f"mounts:\n  - {{location: {tmp_path}/share, mountPoint: /mnt/a}}\n")
    yield tmp_path


def _fill(text: str, where: Path) -> str:
    return text.replace("{dir}", str(where))


def run_roost(args: list[str], home: Path) -> Result:
    cache = home.parent / "cache"  # never the shared image cache
    return CliRunner().invoke(cli, args, env={"ROOST_HOME": str(home), "ROOST_CACHE": str(cache)})


def _residue(home: Path) -> list[str]:
    """What a refused command left in ROOST_HOME (.locks holds lock files of
    instances that exist)."""
    if not home.exists():
        return []
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.name != ".locks" and p.parent.name != ".locks")


def outcome_of(result: Result, scratch: Path) -> str:
    """Exit status and message, one line, the scratch directory as {dir}."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"exception {type(result.exception).__name__}: {result.exception}"
    text = " | ".join(line.strip() for line in result.output.strip().splitlines()[:4])
    return f"exit {result.exit_code}: {text.replace(str(scratch), '{dir}')}"


def check_refused(result: Result, expect: str, home: Path) -> None:
    assert not (result.exception and not isinstance(result.exception, SystemExit)), (
        f"{type(result.exception).__name__}: {result.exception}")
    assert result.exit_code == 2, result.output[:2000]
    assert "Traceback" not in result.output
    assert len(result.output) <= MAX_MESSAGE, len(result.output)
    assert expect in result.output, result.output[:2000]
    assert _residue(home) == []


@pytest.mark.parametrize("bad", CASES, ids=[c.what for c in CASES])
def test_bad_input_is_refused_at_the_door(bad: Bad, scratch: Path) -> None:
    for name, content in bad.files.items():
        target = scratch / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(_fill(content, scratch))
    home = scratch / "home"
    started = time.monotonic()
    result = run_roost([_fill(a, scratch) for a in bad.args], home)
    seconds = time.monotonic() - started
    ok = False
    try:
        check_refused(result, _fill(bad.expect, scratch), home)
        assert seconds < 10, f"took {seconds:.1f}s"
        ok = True
    finally:
        record(bad.what, REFUSED, outcome_of(result, scratch), ok)


# -- an existing instance whose roost.yaml went bad: `start` refuses it ----------

def _created(scratch: Path, config: str) -> tuple[Path, Path]:
    home = scratch / "home"
    (scratch / "good.yaml").write_text(config)
    result = run_roost(["create", "t", "--config", str(scratch / "good.yaml")], home)
    assert result.exit_code == 0, result.output
    return home, home / "t"


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


EDITS = {
    "edited roost.yaml: duplicate key": ("cpus: 2\ncpus: 4\n", "cpus is given twice"),
    "edited roost.yaml: 2 MiB": ("cpus: 2\n" + "#" * (2 * MIB) + "\n", "larger than 1024 KiB"),
    "edited roost.yaml: memory 2.9GiB": ("memory: 2.9GiB\n", "not a whole number of bytes"),
    "edited roost.yaml: mountPoint /etc":
        ("mounts:\n  - {location: /tmp, mountPoint: /etc}\n", "/etc is a system directory"),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_start_refuses_a_config_edited_into_a_bad_one(what: str, scratch: Path) -> None:
    home, inst = _created(scratch, "cpus: 1\n")
    text, expect = EDITS[what]
    (inst / "roost.yaml").write_text(text)
    before = _files(inst)
    result = run_roost(["start", "t", "--timeout", "5"], home)
    ok = False
    try:
        check_refused(result, expect, home / "none")
        assert _files(inst) == before  # nothing written, nothing started
        ok = True
    finally:
        record(what, AT_START, outcome_of(result, scratch), ok)


def test_start_refuses_a_mount_whose_folder_is_gone(scratch: Path) -> None:
    share = scratch / "gone"
    share.mkdir()
    home, inst = _created(scratch, f"mounts:\n  - {{location: {share}, mountPoint: /mnt/s}}\n")
    os.rmdir(share)
    before = _files(inst)
    result = run_roost(["start", "t", "--timeout", "5"], home)
    ok = False
    try:
        check_refused(result, "does not exist on the host", home / "none")
        assert _files(inst) == before
        ok = True
    finally:
        record("mount folder removed after create, then start", AT_START,
               outcome_of(result, scratch), ok)


# -- the host agent's door (POST /v1/mounts): the same refusals, bounded ----------

API_PATHS = {
    "API mount: a 500 KB host path": ("/" + "h" * 500_000, "/mnt/a", "does not exist"),
    "API mount: a host path with a NUL": ("/tmp/a\0b", "/mnt/a", "contains a NUL or newline"),
    "API mount: a 500 KB guest path": ("/tmp", "/proc/" + "g" * 500_000, "a system directory"),
    "API mount: guest path /mnt/../etc": ("/tmp", "/mnt/../etc", "must not contain '..'"),
}


@pytest.mark.parametrize("what", list(API_PATHS))
def test_the_host_agent_refuses_mount_paths_in_few_words(what: str) -> None:
    from roost.errors import UsageError
    from roost.hostagent.mounts.manager import check_guest_path, check_host_path

    location, mount_point, expect = API_PATHS[what]
    message = ""
    try:
        with pytest.raises(UsageError) as e:
            check_guest_path(mount_point)
            check_host_path(location)
        message = str(e.value)
        assert expect in message and len(message) < 1000, message[:2000]
    finally:
        record(what, "UsageError (HTTP 400) of a few hundred characters",
               f"UsageError, {len(message)} characters: {message[:120]}", bool(message)
               and expect in message and len(message) < 1000)
