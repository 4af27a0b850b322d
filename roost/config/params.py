"""roost.yaml's `param` (Lima's): values a template's provisioning steps take
as `{{.Param.KEY}}`, so one template serves many instances
(`roost create --set param.VERSION=1.2 ...`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roost.config.model import Provision

PARAM_RE = re.compile(r"\{\{\s*\.Param\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def used(steps: Sequence[Provision]) -> list[tuple[int, str]]:
    """(step index, key) of every {{.Param.KEY}} in the steps' scripts and contents."""
    found = []
    for i, step in enumerate(steps):
        for text in (step.script, step.content):
            found += [(i, m.group(1)) for m in PARAM_RE.finditer(text or "")]
    return found


def substitute(steps: Sequence[Provision], params: Mapping[str, str]) -> list[Provision]:
    """The steps with {{.Param.KEY}} replaced (every key was checked to exist)."""
    def fill(text: str | None) -> str | None:
        return None if text is None else PARAM_RE.sub(lambda m: params[m.group(1)], text)

    return [step.model_copy(update={"script": fill(step.script), "content": fill(step.content)})
            for step in steps]
