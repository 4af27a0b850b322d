"""Templates: configuration documents that compose with `base:`, as Lima's do.

Built-in templates are YAML files in `roost/config/templates/`; names that
start with `_` (`_images/ubuntu-24.04`) are bases meant to be included, not
listed. A reference to another document (in `base:`, or `--template`) is one of

* `NAME`, `template:NAME` or `template://NAME`: a built-in template;
* `/abs/path.yaml`, `~/path.yaml`, `./path.yaml`, `path.yaml`: a file; a
  relative path is relative to the directory of the document that names it.

`resolve` reads a document and merges its bases (see `roost.config.merge`)
into plain data without `base:`, which the schema then validates. No pydantic
is imported here.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.config.document import ConfigError, leading_comment, read_mapping
from roost.config.merge import combine_mounts, merge
from roost.errors import quote

TEMPLATES_DIR = Path(__file__).parent / "templates"
MAX_DEPTH = 8
_NAME = re.compile(r"[a-z0-9_][a-z0-9._-]{0,99}(/[a-z0-9][a-z0-9._-]{0,99})?")
_SCHEMES = ("template://", "template:")


@dataclass(frozen=True)
class Document:
    """Where one configuration document lives, and how messages name it."""

    path: Path
    label: str  # "template debian-12" or the file's path
    kind: str  # "template" or "config file", for messages about reading it

    @property
    def key(self) -> str:
        return os.path.realpath(self.path)


def builtin_names(*, bases: bool = False) -> list[str]:
    """Built-in template names, `default` first; with `bases`, the
    `_`-prefixed ones too."""
    names = sorted((str(p.relative_to(TEMPLATES_DIR).with_suffix(""))
                    for p in TEMPLATES_DIR.rglob("*.yaml")), key=lambda n: (n != "default", n))
    return [n for n in names if bases or not n.startswith("_")]


def builtin(name: str) -> Document:
    path = TEMPLATES_DIR / f"{name}.yaml"
    if not _NAME.fullmatch(name) or ".." in name or not path.is_file():
        raise ConfigError(f"unknown template {quote(name)}; the templates are: "
                          f"{', '.join(builtin_names())} (`roost template list` describes them)")
    return Document(path, f"template {name}", "template")


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "~", "./", "../")) or ref.endswith((".yaml", ".yml"))


def file_document(ref: str, relative_to: Path | None = None) -> Document:
    """The file `ref`; a relative path is taken from `relative_to` (the
    including document's directory; the working directory if None)."""
    if "\0" in ref or len(ref) > 4096:
        raise ConfigError(f"{quote(ref)} is not a file path (it holds a NUL, or is longer "
                          "than a path may be)")
    path = Path(os.path.expanduser(ref))
    if not path.is_absolute():
        path = (relative_to or Path.cwd()) / path
    path = Path(os.path.normpath(path))
    return Document(path, str(path), "config file")


def locate(ref: str, relative_to: Path | None = None) -> Document:
    """The document a `base:` entry names (see the module's docstring)."""
    for scheme in _SCHEMES:
        if ref.startswith(scheme):
            return builtin(ref[len(scheme):])
    return file_document(ref, relative_to) if looks_like_path(ref) else builtin(ref)


def _base_refs(data: dict[str, Any], doc: Document) -> list[str]:
    refs = data.pop("base", None)
    if refs is None:
        return []
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise ConfigError(f"{doc.label}: base: expected a template name or file path, "
                          "or a list of them")
    return refs


def _chain(docs: tuple[Document, ...]) -> str:
    return " -> ".join(d.label for d in docs)


def _resolve(doc: Document, chain: tuple[Document, ...],
             included: dict[str, tuple[Document, ...]]) -> dict[str, Any]:
    chain = (*chain, doc)
    if len(chain) > MAX_DEPTH + 1:
        raise ConfigError(f"bases are nested deeper than {MAX_DEPTH}: {_chain(chain)}")
    try:
        data = read_mapping(doc.path, doc.kind)
    except ConfigError as e:
        raise ConfigError(f"{e} (a base of {chain[-2].label})" if len(chain) > 1
                          else str(e)) from None
    for ref in _base_refs(data, doc):
        try:
            base = locate(ref, doc.path.parent)
        except ConfigError as e:
            raise ConfigError(f"{doc.label}: base {ref}: {e}") from None
        if any(d.key == base.key for d in chain):
            raise ConfigError(f"base cycle: {_chain((*chain, base))}")
        if base.key in included:
            raise ConfigError(
                f"{base.label} is included twice, by {_chain(included[base.key])} and by "
                f"{_chain((*chain, base))}; name it once (its lists would repeat)")
        included[base.key] = (*chain, base)
        data = merge(data, _resolve(base, chain, included))
    return data


def resolve(doc: Document) -> dict[str, Any]:
    """The document with all its bases merged in, without `base:`."""
    return combine_mounts(_resolve(doc, (), {}))


def host_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def image_of(data: dict[str, Any], arch: str | None = None) -> str:
    """What a resolved template boots on `arch`: `builtin`, `debian-12`, a
    path, or the location of the first `images:` entry for that arch."""
    arch = arch or host_arch()
    images = data.get("images")
    if isinstance(images, list) and images:
        for entry in images:
            if isinstance(entry, dict) and entry.get("arch", "x86_64") == arch:
                return str(entry.get("location"))
        return f"(no image for {arch})"
    return str(data.get("image", "builtin"))


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    description: str
    image: str


def describe(name: str) -> TemplateInfo:
    doc = builtin(name)
    return TemplateInfo(name, leading_comment(doc.path), image_of(resolve(doc)))
