"""YAML with line numbers: the loader study specs are read with, and ``file:line:`` error prefixes.

Mappings and sequences remember the line of each key and item, so every error in a spec points at
the line that caused it. The loader is a SafeLoader within the limits of
:mod:`prunelab.study.yaml_limits`, and reads YAML 1.2 floats (``1e-3``) as floats.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from prunelab.errors import PrunelabError
from prunelab.study.yaml_limits import LimitedComposer


class LineMap(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineSeq(list):
    """A YAML sequence that remembers the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]


class SpecLoader(LimitedComposer, yaml.SafeLoader):
    """A SafeLoader within the size, depth, node and alias limits of :mod:`prunelab.study.yaml_limits`."""


# YAML 1.2 floats with an exponent (1e-3, 5E+2, -1e-4, 1.0e3): PyYAML follows YAML 1.1, whose floats need
# a dot and a signed exponent, and reads these as strings. Added to this loader only, after PyYAML's own
# resolvers, so every scalar they already type keeps its type.
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _construct_sequence(loader: SpecLoader, node: yaml.SequenceNode) -> LineSeq:
    out = LineSeq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


def _construct_mapping(loader: SpecLoader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    out = LineMap()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "mapping keys must be plain values",
                                                    key_node.start_mark) from None
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def plain(obj: Any) -> Any:
    """Drop line bookkeeping: nested plain dicts and lists."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


class Where:
    """Formats ``file:line: `` prefixes for errors."""

    def __init__(self, source: str | None):
        self.source = source

    def __call__(self, node: Any = None, key: Any = None) -> str:
        line = None
        if isinstance(node, LineMap):
            line = node.key_lines.get(key, node.line) if key is not None else node.line
        if self.source and line:
            return f"{self.source}:{line}: "
        if self.source:
            return f"{self.source}: "
        return f"line {line}: " if line else ""

    def error(self, node: Any, key: Any, message: str) -> PrunelabError:
        return PrunelabError(f"{self(node, key)}{message}")


def item_line(items: Any, i: int, parent: LineMap, key: str) -> int:
    """The line of item ``i`` of ``parent[key]`` (the key's line when the sequence kept none)."""
    if isinstance(items, LineSeq):
        return items.item_lines[i]
    return parent.key_lines.get(key, parent.line)


def at_line(line: int) -> LineMap:
    """An empty mapping that stands for a place in the file (errors about a scalar item point at it)."""
    m = LineMap()
    m.line, m.key_lines = line, {}
    return m
