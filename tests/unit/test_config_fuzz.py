"""Fuzzing the config loader and the create command line with hypothesis.

Whatever the input (any bytes as roost.yaml, YAML made of its syntax
characters, data shaped like a config with the schema's own keys, any
--set string, any --memory/--disk/--cpus/--set through `roost create`):
the result is a valid Config or the project's config error (a UsageError,
exit 2) with a message of bounded length, never another exception. What
is accepted is written and loads back the same; what is refused leaves
nothing in ROOST_HOME. Each property is recorded in
tests/.results/badinput.json with its example count.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from roost.config import model
from roost.config.compose import compose
from roost.config.loader import ConfigError, dump_config, load_config, parse_config
from roost.errors import UsageError
from tests.unit.badinput_record import fuzzed
from tests.unit.test_config_refusals import MAX_MESSAGE, _residue, run_roost

EXAMPLES = {"bytes": 500, "syntax": 500, "shaped": 300, "set": 400, "cli": 150}
EXPECTED = "a valid Config or a ConfigError/UsageError of bounded length, no other exception"

# Every key the schema knows, so that generated data reaches its validators.
MODELS: list[type[BaseModel]] = [
    model.Config, model.SSH, model.NinePOptions, model.VirtiofsOptions, model.SSHFSOptions,
    model.Mount, model.PortForward, model.Provision, model.ImageFile, model.Image,
    model.Firmware, model.CopyToHost, model.GuestAgent, model.HealthCheck, model.Worker]
KEYS = sorted({f.alias or name for cls in MODELS for name, f in cls.model_fields.items()})


@pytest.fixture(scope="module")
def share() -> Iterator[Path]:
    """An existing host folder, for mounts that could be valid."""
    path = Path(tempfile.mkdtemp(prefix="roost-fuzz-"))
    (path / "a-file").write_text("x\n")
    yield path
    shutil.rmtree(path)


TALLY: dict[str, int] = {}


def _tally() -> dict[str, int]:
    TALLY.clear()
    TALLY.update(accepted=0, refused=0)
    return TALLY


def _accepted_or_refused(load: Any) -> Any:
    """Run `load`; its Config, or None after checking the refusal's message."""
    try:
        config = load()
    except UsageError as e:  # ConfigError is one
        assert 0 < len(str(e)) <= MAX_MESSAGE, len(str(e))
        TALLY["refused"] = TALLY.get("refused", 0) + 1
        return None
    TALLY["accepted"] = TALLY.get("accepted", 0) + 1
    return config


def _round_trips(config: model.Config) -> None:
    assert parse_config(yaml.safe_load(dump_config(config))) == config


# -- any bytes, any YAML-ish text as roost.yaml -----------------------------------

def _loads_as_file(data: bytes, where: Path) -> None:
    path = where / "roost.yaml"
    path.write_bytes(data)
    config = _accepted_or_refused(lambda: load_config(path))
    if config is not None:
        _round_trips(config)


def test_any_bytes_as_roost_yaml(share: Path) -> None:
    @settings(max_examples=EXAMPLES["bytes"], deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=600))
    def prop(data: bytes) -> None:
        _loads_as_file(data, share)
    fuzzed("hypothesis: arbitrary bytes as roost.yaml", EXPECTED, EXAMPLES["bytes"], prop, _tally())


YAML_SYNTAX = ":-[]{},&*!|>'\"%@`#?\n\t 0129.aeyZ~/\\\x00\u00e9\ufeff"
LINES = st.sampled_from(["cpus: 2", "memory: 3000MiB", "mounts:", "- location: /tmp",
                         "  mountPoint: /mnt/a", "guestAgent:", "  allowExec: true", "a: &x [1]",
                         "b: *x", "<<: {cpus: 3}", "env: {A: 1}", "? [a]", ": b", "---", "..."])


def test_yaml_syntax_soup_as_roost_yaml(share: Path) -> None:
    @settings(max_examples=EXAMPLES["syntax"], deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(st.text(alphabet=YAML_SYNTAX, max_size=300),
                     st.lists(st.one_of(LINES, st.text(alphabet=YAML_SYNTAX, max_size=20)),
                              max_size=12).map("\n".join)))
    def prop(text: str) -> None:
        _loads_as_file(text.encode("utf-8", "surrogatepass"), share)
    fuzzed("hypothesis: YAML syntax characters and config-like lines as roost.yaml",
           EXPECTED, EXAMPLES["syntax"], prop, _tally())


# -- data shaped like a config ----------------------------------------------------

def _scalars(share: Path) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
        st.text(max_size=30),
        st.sampled_from(["512MiB", "3000MiB", "2.9GiB", "1.5G", "0", "-1", "1e9", "20G",
                         str(share), f"{share}/a-file", f"{share}/nope", "/", "/etc", "/mnt/a",
                         "/mnt/a/", "/mnt/../etc", "relative", "~", "127.0.0.1", "::", "tcp",
                         "virtiofs", "9p", "data", "system", "https://", "file:///x",
                         "sha256:" + "0" * 64, "{{.Dir}}/x", "\x00", "a\nb", "x" * 3000]),
    )


def _shaped(share: Path) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.integers(0, 3))
    return st.recursive(
        _scalars(share),
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(keys, inner, max_size=5)),
        max_leaves=25,
    )


def test_config_shaped_data(share: Path) -> None:
    @settings(max_examples=EXAMPLES["shaped"], deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(st.sampled_from(KEYS), _shaped(share), max_size=6))
    def prop(data: dict[str, Any]) -> None:
        config = _accepted_or_refused(lambda: parse_config(data))
        if config is not None:
            _round_trips(config)
        # The same data through YAML text (non-text keys and floats included).
        text = yaml.safe_dump(data, allow_unicode=True)
        _loads_as_file(text.encode(), share)
    fuzzed("hypothesis: config-shaped data (the schema's keys, near-valid values)",
           EXPECTED + "; what is accepted dumps and loads back equal",
           EXAMPLES["shaped"], prop, _tally())


# -- --set ------------------------------------------------------------------------

PATHS = st.sampled_from(["cpus", "memory", "disk", "mounts[0]", "mounts[0].location",
                         "mounts[0].mountPoint", "mounts[1]", "portForwards[0]",
                         "portForwards[0].hostSocket", "guestAgent.allowExec", "env.A",
                         "env", "ssh.localPort", "provision[0]", "images[0].location",
                         "healthChecks[0]", "worker.sampleSecs", "firmware"])
SET_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["{location: %s}", "{location: %s, mountPoint: /mnt/a}",
                     "{location: %s, mountPoint: /etc}", "[%s]", "{guestSocket: /a.sock, "
                     "hostSocket: rel.sock}", "{mode: data, path: /x, content: y}", "true",
                     "3000MiB", "1.1GiB", "{a: 1, a: 2}", "&a [*a]", "[[[[[[", "'x'",
                     "!!binary x"]),
)


def _set_strings(share: Path) -> st.SearchStrategy[list[str]]:
    shaped = st.tuples(PATHS, SET_VALUES).map(lambda t: f"{t[0]}={t[1].replace('%s', str(share))}")
    return st.one_of(st.lists(shaped, max_size=3), st.lists(st.text(max_size=40), max_size=2))


def test_set_strings(share: Path) -> None:
    @settings(max_examples=EXAMPLES["set"], deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_set_strings(share))
    def prop(sets: list[str]) -> None:
        config = _accepted_or_refused(lambda: compose(sets=sets))
        if config is not None:
            _round_trips(config)
    fuzzed("hypothesis: --set strings (schema paths with near-valid values, any text)",
           EXPECTED, EXAMPLES["set"], prop, _tally())


# -- roost create through the command line ----------------------------------------

def _option(values: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), values, st.none(), values, st.text(max_size=12))


def test_create_command_line(share: Path) -> None:
    sizes = st.sampled_from(["128MiB", "3000MiB", "30000MiB", "2.9GiB", "2GiB", "1.5G", "0",
                             "64MiB", "-1G", "1e9", "2049.5MiB", "9999999999TiB", "20G"])
    cpus = st.integers(-3, 300).map(str)
    tally = _tally()

    @settings(max_examples=EXAMPLES["cli"], deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_option(sizes), _option(sizes), _option(cpus), _set_strings(share))
    def prop(memory: str | None, disk: str | None, cpu: str | None, sets: list[str]) -> None:
        args = ["create", "t"]
        for flag, value in (("--memory", memory), ("--disk", disk), ("--cpus", cpu)):
            if value is not None:
                args += [flag, value]
        for s in sets:
            args += ["--set", s]
        home = share / "home"
        try:
            result = run_roost(args, home)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                f"{type(result.exception).__name__}: {result.exception}")
            assert result.exit_code in (0, 2), result.output
            assert "Traceback" not in result.output
            assert len(result.output) <= MAX_MESSAGE
            if result.exit_code == 2:
                assert _residue(home) == []
                tally["refused"] += 1
            else:  # what create wrote, start can load
                _round_trips(load_config(home / "t" / "roost.yaml"))
                tally["accepted"] += 1
        finally:
            shutil.rmtree(home, ignore_errors=True)
    fuzzed("hypothesis: roost create with --memory/--disk/--cpus/--set",
           "exit 0 with a roost.yaml that loads back, or exit 2 and nothing in ROOST_HOME",
           EXAMPLES["cli"], prop, tally)


def test_config_error_is_the_only_refusal() -> None:
    # The properties above accept any UsageError; config errors are the ones
    # the loader raises. (A guard that the names stay as the tests assume.)
    assert issubclass(ConfigError, UsageError)
