"""The configuration a new instance gets: a template or a config file (bases
merged), then the command line's options, then `--set`, validated once at the
end so that every error names its key and nothing is created on a bad one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from roost.config.loader import Config, parse_config
from roost.config.setting import apply_settings, parse_setting
from roost.config.template import Document, builtin, file_document, looks_like_path, resolve
from roost.errors import UsageError, listing, quote, shown

__all__ = ["compose"]


def _document(template: str | None, config_file: str | None) -> Document | None:
    if template is not None and config_file is not None:
        raise UsageError("give --template or --config, not both (a config file can name "
                         f"the template itself: `base: {template}`)")
    if template is not None:
        name = template.removeprefix("template://").removeprefix("template:")
        if looks_like_path(name):
            raise UsageError(f"--template takes a template name, not a file ({quote(template)}); "
                             "give a file with --config")
        return builtin(name)
    return file_document(config_file) if config_file is not None else None


def compose(template: str | None = None, config_file: str | None = None,
            options: Mapping[str, Any] | None = None, sets: Sequence[str] = ()) -> Config:
    """The validated configuration; `options` are the --cpus/--memory/--disk
    values (None: not given), `sets` the raw --set arguments."""
    settings = [parse_setting(s) for s in sets]  # a malformed one fails before any reading
    doc = _document(template, config_file)
    data = resolve(doc) if doc is not None else {}
    data.update({k: v for k, v in (options or {}).items() if v is not None})
    data = apply_settings(data, settings)
    source = doc.label if doc is not None else "the command line"
    if settings:
        source += " with " + " ".join(listing([f"--set {shown(s.arg)}" for s in settings], 5))
    return parse_config(data, source)
