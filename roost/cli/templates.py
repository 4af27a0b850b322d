"""`roost template list` and `roost template show`."""

from __future__ import annotations

import json
import os

import click


def listing(as_json: bool) -> None:
    from roost.config.template import builtin_names, describe

    infos = [describe(name) for name in builtin_names()]
    if as_json:
        click.echo(json.dumps([{"name": i.name, "description": i.description, "image": i.image}
                               for i in infos], indent=2))
        return
    width = max(len(i.name) for i in infos)
    # A URL's file name says what it is; the whole URL is in --json.
    images = [os.path.basename(i.image) if "://" in i.image else i.image for i in infos]
    image_width = max(len(image) for image in images)
    click.echo(f"{'NAME':<{width}}  {'IMAGE':<{image_width}}  DESCRIPTION")
    for info, image in zip(infos, images, strict=True):
        click.echo(f"{info.name:<{width}}  {image:<{image_width}}  {info.description}")


def show(ref: str) -> None:
    """Print the merged template after validating it, so what is shown is
    what `roost create --template` would accept."""
    import yaml

    from roost.config.loader import parse_config
    from roost.config.template import locate, resolve

    doc = locate(ref)
    data = resolve(doc)
    parse_config(data, doc.label)
    click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
