"""Limits on YAML read from users: size, nesting depth, nodes and aliases, checked before anything is built.

YAML can ask for far more than its bytes: a 699-byte document of nested aliases ("billion laughs")
expands to gigabytes once its values are copied or printed, 100,000 nested brackets overflow the
stack of a recursive composer, and a 50 MB list takes minutes to read. A study spec is a few
kilobytes (the largest recipe is under 5 KB), so the limits below are generous for specs and
tight for attacks. They are checked by :class:`LimitedComposer` while PyYAML composes the node graph,
before any Python value is constructed: an alias counts as every node it repeats (so the expanded
size is bounded, not just the text), an alias to a node still being composed (a recursive
structure) is refused, and depth includes what aliases nest. Each exceeded limit is one
:class:`YAMLLimitError` naming the limit, the value found and the line.
"""

from __future__ import annotations

from typing import Any

import yaml

#: bytes of one spec file (the largest recipe is under 5 KB)
MAX_BYTES = 256 << 10
#: levels of nesting (recipes nest at most 5)
MAX_DEPTH = 50
#: nodes (scalars, lists, mappings), counting every node an alias repeats
MAX_NODES = 50_000
#: alias uses (``*name``) in one document; recipes reuse one training block a few times
MAX_ALIASES = 1_000


class YAMLLimitError(yaml.YAMLError):
    """A limit of this module was exceeded; ``line`` is 1-based where known."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None


def check_size(nbytes: int, what: str = "the YAML") -> None:
    if nbytes > MAX_BYTES:
        raise YAMLLimitError(f"{what} is {nbytes:,} bytes; the limit is {MAX_BYTES:,} bytes")


class LimitedComposer:
    """Mixin for a PyYAML loader (put it before the loader class): counts nodes, nesting and aliases
    while composing. ``_sizes`` holds (expanded node count, height) of every finished node, which is
    what an alias to it adds."""

    def compose_document(self):  # type: ignore[override]
        self._nodes, self._aliases, self._depth, self._deepest = 0, 0, 0, 0
        self._sizes: dict[yaml.Node, tuple[int, int]] = {}
        return super().compose_document()

    def _add_nodes(self, n: int, mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise YAMLLimitError(f"more than {MAX_NODES:,} YAML nodes (aliases count as every node they repeat); "
                                 f"the limit is {MAX_NODES:,}", mark)

    def _reach(self, depth: int, mark) -> None:
        self._deepest = max(self._deepest, depth)
        if depth > MAX_DEPTH:
            raise YAMLLimitError(f"nesting deeper than {MAX_DEPTH} levels; the limit is {MAX_DEPTH}", mark)

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:
                if node not in self._sizes:
                    raise YAMLLimitError(f"alias *{event.anchor} refers to a node that contains it (a recursive "
                                         f"structure)", event.start_mark)
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise YAMLLimitError(f"more than {MAX_ALIASES:,} aliases; the limit is {MAX_ALIASES:,}",
                                         event.start_mark)
                size, height = self._sizes[node]
                self._add_nodes(size, event.start_mark)
                self._reach(self._depth + height, event.start_mark)
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        self._depth += 1
        self._reach(self._depth, mark)
        self._add_nodes(1, mark)
        before, outer, self._deepest = self._nodes, self._deepest, self._depth
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[node] = (self._nodes - before + 1, self._deepest - self._depth)
        self._deepest = max(outer, self._deepest)
        return node


class SafeLimitedLoader(LimitedComposer, yaml.SafeLoader):
    """PyYAML's SafeLoader with the limits of this module."""


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` within the limits of this module (raises :class:`YAMLLimitError`)."""
    check_size(len(text.encode("utf-8", "surrogatepass")))
    return yaml.load(text, Loader=SafeLimitedLoader)  # noqa: S506 -- a SafeLoader subclass
