"""Sizes round-trip exactly: parse(format(n)) == n for every byte count roost
takes, whatever parse accepts formats to text that parses to the same
count, and what `roost create --memory/--disk` writes loads back unchanged
(`--memory 3000MiB` was written as 2.9GiB, which could never load)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.cli.main import cli
from roost.config.loader import dump_config, load_config, parse_config
from roost.config.sizes import _UNITS, MAX_BYTES, format_size, parse_size
from tests.unit.badinput_record import fuzzed, record

MIB = 1024**2
EXAMPLES = {"bytes": 1000, "texts": 600, "configs": 100}


def _power_of_two_multiples() -> st.SearchStrategy[int]:
    # Uniform integers are almost never a whole KiB; sizes people write are.
    return st.builds(lambda k, shift: k << shift, st.integers(1, 2**20),
                     st.sampled_from([0, 10, 20, 30, 40])).filter(lambda n: n <= MAX_BYTES)


@settings(max_examples=EXAMPLES["bytes"], deadline=None)
@given(st.one_of(st.integers(1, MAX_BYTES), _power_of_two_multiples()))
def _format_then_parse(n: int) -> None:
    text = format_size(n)
    assert parse_size(text) == n
    assert format_size(parse_size(text)) == text


def test_format_then_parse_is_the_same_byte_count() -> None:
    fuzzed("hypothesis: byte counts 1..2^63-1 through format_size then parse_size",
           "parse(format(n)) == n", EXAMPLES["bytes"], _format_then_parse)


def _size_texts() -> st.SearchStrategy[str]:
    number = st.one_of(
        st.integers(0, 10**15).map(str),
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(lambda t: f"{t[0]}.{t[1]}"),
    )
    unit = st.sampled_from(sorted({f(u) for u in _UNITS
                                   for f in (str.lower, str.upper, str.capitalize)}))
    space = st.sampled_from(["", " "])
    return st.tuples(space, number, space, unit, space).map("".join)


@settings(max_examples=EXAMPLES["texts"], deadline=None)
@given(_size_texts())
def _parse_then_format(text: str) -> None:
    try:
        n = parse_size(text)
    except ValueError as e:
        assert len(str(e)) < 300
        return
    assert 1 <= n <= MAX_BYTES
    assert parse_size(format_size(n)) == n


def test_what_parse_accepts_formats_to_the_same_count() -> None:
    fuzzed("hypothesis: size texts (numbers, fractions, every unit spelling)",
           "a ValueError under 300 characters, or n with parse(format(n)) == n",
           EXAMPLES["texts"], _parse_then_format)


@settings(max_examples=EXAMPLES["configs"], deadline=None)
@given(memory=st.integers(128, 2**24).map(lambda m: m * MIB),
       disk=st.integers(2048, 2**26).map(lambda m: m * MIB),
       msize=st.integers(1, MAX_BYTES))
def _config_round_trip(memory: int, disk: int, msize: int) -> None:
    config = parse_config({"memory": memory, "disk": disk,
                           "mounts": [{"location": "/tmp", "mountPoint": "/mnt/t",
                                       "9p": {"msize": msize}}]})
    assert parse_config(yaml.safe_load(dump_config(config))) == config


def test_a_config_written_loads_back_the_same() -> None:
    fuzzed("hypothesis: memory, disk and 9p msize written to roost.yaml and read back",
           "the same Config", EXAMPLES["configs"], _config_round_trip)


def test_create_writes_the_sizes_it_was_given(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(cli, ["create", "t", "--memory", "3000MiB", "--disk", "30000MiB"],
                                env={"ROOST_HOME": str(home)})
    written = home / "t" / "roost.yaml"
    text = written.read_text() if written.exists() else ""
    ok = False
    try:
        assert result.exit_code == 0, result.output
        assert "memory: 3000MiB" in text and "disk: 30000MiB" in text
        config = load_config(written)  # what start does
        assert (config.memory, config.disk) == (3000 * MIB, 30000 * MIB)
        ok = True
    finally:
        record("create --memory 3000MiB --disk 30000MiB",
               "written as 3000MiB and 30000MiB; start loads it",
               f"exit {result.exit_code}; wrote " + " ".join(text.splitlines()[1:3]), ok)
