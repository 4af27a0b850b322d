"""The guest's JSON codec (the `_json` accelerators, without importing
`json`) writes and reads exactly what `json` does for the wire protocol."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost_guest import compactjson

ROOT = Path(__file__).resolve().parents[2]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


def test_the_accelerated_codec_is_in_use() -> None:
    # Not the fallback: that one is json itself, and this test would be moot.
    assert compactjson.dumps.__module__ == "roost_guest.compactjson"
    assert compactjson.dumps.__qualname__.startswith("_c_codec")


@given(json_values)
def test_dumps_is_json_dumps_compact(value: Any) -> None:
    assert compactjson.dumps(value) == json.dumps(value, separators=(",", ":"))


@given(json_values)
def test_loads_reads_what_json_wrote(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=2),
                 json.dumps(value, ensure_ascii=False)):
        assert compactjson.loads(text) == json.loads(text)


def test_special_floats_and_whitespace_as_json_has_them() -> None:
    assert compactjson.dumps([float("inf"), float("-inf")]) == "[Infinity,-Infinity]"
    assert math.isnan(compactjson.loads(" [NaN] \n")[0])
    assert compactjson.loads('\t{"a": [1, 2.5, "\\u00e9"]}\r\n') == {"a": [1, 2.5, "é"]}
    assert compactjson.dumps({"é": "\u2028"}) == '{"\\u00e9":"\\u2028"}'


@pytest.mark.parametrize("text", ["", "   ", "{", '{"a":}', "[1,]", "{} {}", "nul",
                                  "[1] x", '"\\x"', "'a'"])
def test_what_is_not_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        compactjson.loads(text)


def test_what_cannot_be_encoded_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes is not JSON serializable"):
        compactjson.dumps({"a": b"x"})
    with pytest.raises(TypeError):
        compactjson.dumps({(1, 2): 3})


def test_deep_nesting_is_a_recursion_error() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        compactjson.dumps(deep)
    with pytest.raises(RecursionError):
        compactjson.loads("[" * 100_000 + "]" * 100_000)


def test_broken_json_is_a_value_error_before_json_is_loaded() -> None:
    # _json reports errors inside a value through json.decoder, which the
    # agent does not load: without it the scanner raises SystemError.
    probe = ("import sys\n"
             f"sys.path.insert(0, {str(ROOT)!r})\n"
             "from roost_guest import compactjson\n"
             "assert 'json.decoder' not in sys.modules\n"
             "for text in ['\"\\\\x\"', '{\"a\" 1}', '[\"unterminated', '{\"a\":1,}']:\n"
             "    try:\n"
             "        compactjson.loads(text)\n"
             "    except ValueError as e:\n"
             "        print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-S", "-E", "-c", probe], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == ["JSONDecodeError"] * 4


def test_without_the_accelerators_json_is_used() -> None:
    probe = ("import sys; sys.modules['_json'] = None\n"
             f"sys.path.insert(0, {str(ROOT)!r})\n"
             "from roost_guest import compactjson\n"
             "print(compactjson.dumps({'a': [1, 'b']}), compactjson.loads(' [1] '),\n"
             "      'json' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-E", "-c", probe], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert out == ['{"a":[1,"b"]}', "[1]", "True"]
