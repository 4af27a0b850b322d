"""`--set KEY.PATH=VALUE`: one change to a configuration before it is validated.

The path is keys joined by dots with `[N]` list indices (`cpus`,
`mounts[0].writable`, `env.FOO`); missing maps on the way are created, and
the last index may be one past the end of a list to append. The value is
YAML: a scalar or a flow collection (`[9p]`, `{location: ~/src}`), so
`4` is a number, `false` a boolean and `"4"` text.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from roost.config.yamltext import YamlProblem, load_yaml
from roost.errors import UsageError, quote

_PART = re.compile(r"([A-Za-z0-9_-]{1,200})((?:\[[0-9]{1,6}\])*)")
MAX_STEPS = 16  # keys and indices; roost.yaml is four levels deep
_INDEX = re.compile(r"\[([0-9]+)\]")
FORM = "expected KEY=VALUE, e.g. --set cpus=4 or --set mounts[0].writable=true"

Step = str | int


@dataclass(frozen=True)
class Setting:
    arg: str  # as given, for messages
    path: tuple[Step, ...]
    value: Any

    def fail(self, why: str) -> UsageError:
        return UsageError(f"--set {quote(self.arg)}: {why}")


def _path(text: str, arg: str) -> tuple[Step, ...]:
    steps: list[Step] = []
    for part in text.split("."):
        match = _PART.fullmatch(part)
        if not match:
            raise UsageError(f"--set {quote(arg)}: bad key path {quote(text)}: keys are "
                             "letters, digits, _ and -, joined by dots, with [N] for a list "
                             "entry")
        steps.append(match.group(1))
        steps.extend(int(i) for i in _INDEX.findall(match.group(2)))
    if len(steps) > MAX_STEPS:
        raise UsageError(f"--set {quote(arg)}: the key path has more than {MAX_STEPS} "
                         "keys and indices; roost.yaml has none that deep")
    return tuple(steps)


def parse_setting(arg: str) -> Setting:
    key, sep, text = arg.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {quote(arg)}: {FORM}")
    try:
        value = load_yaml(text)
    except YamlProblem as e:
        raise UsageError(f"--set {quote(arg)}: the value is not valid YAML "
                         f"(quote text that has YAML syntax in it): {e}") from None
    return Setting(arg, _path(key.strip(), arg), value)


def _name(path: tuple[Step, ...]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _entries(n: int) -> str:
    return "no entries" if n == 0 else f"{n} entr{'y' if n == 1 else 'ies'}"


def _apply(data: dict[str, Any], setting: Setting) -> None:
    node: Any = data
    path = setting.path
    for i, step in enumerate(path):
        last = i == len(path) - 1
        here = _name(path[:i])
        if isinstance(step, str):
            if not isinstance(node, dict):
                raise setting.fail(f"{here} is not a mapping, so it has no key {quote(step)}")
            if last:
                node[step] = setting.value
                return
            if node.get(step) is None:
                node[step] = [] if isinstance(path[i + 1], int) else {}
            node = node[step]
            continue
        if not isinstance(node, list):
            raise setting.fail(f"{here} is not a list, so it has no entry [{step}]")
        if step == len(node) and last:
            node.append(setting.value)
            return
        if step >= len(node):
            extra = "; the last index may be one past the end to add an entry" if last else ""
            raise setting.fail(f"{_name(path[:i + 1])} is out of range: {here} has "
                               f"{_entries(len(node))}{extra}")
        if last:
            node[step] = setting.value
            return
        node = node[step]


def apply_settings(data: dict[str, Any], settings: Iterable[Setting]) -> dict[str, Any]:
    """`data` with each setting applied in order; `data` is not modified."""
    out = copy.deepcopy(data)
    for setting in settings:
        _apply(out, setting)
    return out
