"""YAML text to plain data, refusing what a config must never be.

PyYAML alone lets the last of two equal keys win silently (a user lost
`allowExec: true` that way), expands aliases into as many references as a
"billion laughs" asks for (which a deep copy or the schema then walks in
full), and builds recursive data from `&a [*a]`. Here the document is
composed into nodes first and checked: no key twice in one mapping (named
by its key path and both lines), no cycle, at most MAX_DEPTH levels and
MAX_NODES nodes with every alias counted as the nodes it stands for. Only
then is it constructed. libyaml does the parsing where it is installed: the
pure-Python parser takes ten times as long on a large file.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from roost.errors import quote

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 50
MAX_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlProblem(ValueError):
    """Why a YAML text is refused; the caller says which text it was."""


def _key_name(path: str, key: object) -> str:
    text = key if isinstance(key, str) else quote(key, 60)
    return f"{path}.{text}" if path else str(text)


class _Checker:
    def __init__(self) -> None:
        self._sizes: dict[int, int] = {}  # id(node): nodes it expands to
        self._open: set[int] = set()  # nodes being walked: a cycle if met again
        self._keys = SafeConstructor()  # scalar keys as Python sees them (yes == true)

    def walk(self, node: Node, path: str, depth: int) -> int:
        ident = id(node)
        if ident in self._sizes:
            return self._sizes[ident]
        if ident in self._open:
            raise YamlProblem(f"{path or 'the document'} refers to itself (a recursive alias)")
        if depth > MAX_DEPTH:
            raise YamlProblem(f"{path} is nested more than {MAX_DEPTH} levels deep")
        self._open.add(ident)
        size = 1
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                size += self.walk(item, f"{path}[{i}]", depth + 1)
                self._bound(size, path)
        elif isinstance(node, MappingNode):
            size += self._mapping(node, path, depth)
        self._open.discard(ident)
        self._sizes[ident] = size
        return size

    def _mapping(self, node: MappingNode, path: str, depth: int) -> int:
        seen: dict[Any, int] = {}
        size = 0
        for key_node, value_node in node.value:
            name = path
            if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                key = self._keys.construct_object(key_node)
                line = key_node.start_mark.line + 1
                name = _key_name(path, key)
                if key in seen:
                    raise YamlProblem(f"{name} is given twice, on lines {seen[key]} and {line}; "
                                      "keep one (YAML would silently use the last)")
                seen[key] = line
            size += self.walk(key_node, name, depth + 1) + self.walk(value_node, name, depth + 1)
            self._bound(size, path)
        return size

    @staticmethod
    def _bound(size: int, path: str) -> None:
        if size > MAX_NODES:
            raise YamlProblem(f"{path or 'the document'} has more than {MAX_NODES} values "
                              "(aliases counted in full); a configuration is far smaller")


def load_yaml(text: str) -> Any:
    """The data in `text` (None when empty); YamlProblem says why not."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _Checker().walk(node, "", 0)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise YamlProblem(_bounded(str(e))) from None
    except RecursionError:
        raise YamlProblem(f"it is nested more than {MAX_DEPTH} levels deep") from None


def _bounded(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
