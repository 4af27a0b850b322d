"""`roost edit`: change a stopped instance's roost.yaml, with `--set` or in
$VISUAL / $EDITOR, never saving a configuration that does not validate."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from roost.config.document import ConfigError, read_text
from roost.config.loader import dump_config, parse_config
from roost.config.setting import apply_settings, parse_setting
from roost.config.yamltext import YamlProblem, load_yaml
from roost.errors import RoostError, UsageError, listing, shown
from roost.store.durable import write_atomic
from roost.store.instance import Instance, Status, operation_lock

# The lines an unsaved edit comes back with, above the text.
NOT_SAVED = "# roost: NOT SAVED: "
HOW_TO_LEAVE = ("# roost: fix it and save, or quit without saving (or empty the file) "
                "to keep the old roost.yaml\n")


def _validated(text: str, source: str) -> None:
    try:
        data = load_yaml(text)
    except YamlProblem as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None
    parse_config(data, source)


def _without_our_notes(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("# roost: "))


def _editor() -> list[str]:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    return shlex.split(editor)


def edit_in_editor(inst: Instance) -> bool:
    """Whether a changed, valid roost.yaml was saved."""
    original = read_text(inst.config, "roost.yaml")
    with tempfile.TemporaryDirectory(prefix="roost-edit-") as tmp:
        draft = Path(tmp) / f"{inst.name}.roost.yaml"
        draft.write_text(original)
        while True:
            try:
                status = subprocess.run([*_editor(), str(draft)], check=False).returncode
            except FileNotFoundError:
                raise UsageError(f"the editor {_editor()[0]!r} was not found; set $EDITOR, "
                                 "or use `roost edit NAME --set KEY=VALUE`") from None
            if status != 0:
                raise RoostError(f"the editor exited {status}; roost.yaml is unchanged")
            text = _without_our_notes(draft.read_text())
            if text == original or not text.strip():
                return False
            try:
                _validated(text, "the edited roost.yaml")
                break
            except ConfigError as e:
                if not (sys.stdin.isatty() and sys.stdout.isatty()):
                    raise ConfigError(f"{e}\nroost.yaml is unchanged") from None
                notes = "".join(f"{NOT_SAVED}{line}\n" for line in str(e).splitlines())
                draft.write_text(notes + HOW_TO_LEAVE + text)
    write_atomic(inst.config, text)
    return True


def edit_with_settings(inst: Instance, sets: Sequence[str]) -> None:
    settings = [parse_setting(s) for s in sets]
    source = "roost.yaml with " + " ".join(listing([f"--set {shown(s.arg)}" for s in settings],
                                                   5))
    try:
        data = load_yaml(read_text(inst.config, "roost.yaml"))
    except YamlProblem as e:
        raise ConfigError(f"{inst.config} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{inst.config}: expected a mapping of keys to values")
    config = parse_config(apply_settings(data, settings), source)
    write_atomic(inst.config, dump_config(config))


def edit(name: str, sets: Sequence[str]) -> bool:
    """Edit NAME's roost.yaml; whether it changed."""
    inst = Instance.at(name).require()
    with operation_lock(name, "edit it"):
        status = inst.status()
        if status != Status.STOPPED:
            raise RoostError(f"instance {name!r} is {status.value.lower()}; roost.yaml is "
                             f"edited while stopped: `roost stop {name}` first")
        if sets:
            edit_with_settings(inst, sets)
            return True
        return edit_in_editor(inst)
