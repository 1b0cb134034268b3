"""YAML with limits: settings and mapping files cannot be used as memory or time bombs.

A settings or mapping file is read by the daemon at start and again at every hot reload, on the
event loop. Three limits keep a hostile or broken file from stalling it:

- **Size**: at most :data:`MAX_BYTES` (1 MiB) of text.
- **Aliases**: at most :data:`MAX_ALIASES` uses of ``*anchor`` in one document, and the document
  expanded through its aliases holds at most :data:`MAX_NODES` values (scalars, lists and
  mappings, counted as if every alias were copied out). The classic "billion laughs" file
  (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, nine levels deep) is a few hundred bytes and
  expands to 10^9 values; it is refused while it is composed, in milliseconds, before anything
  is built. An alias that refers to the collection it sits in (a recursive structure) is refused
  too. Anchors and aliases used the ordinary way (``<<: *defaults`` in each of 128 pad rules)
  stay well inside the limits.
- **Depth**: collections nested at most :data:`MAX_DEPTH` levels (deeper nesting would exhaust
  Python's recursion limit while the document is built).

Only the safe YAML tags are understood (PyYAML's ``SafeLoader``): ``!!python/object`` and other
tags that would construct arbitrary Python objects are refused as invalid YAML.

Every refusal is one sentence ``file:line: ...``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1 << 20
MAX_ALIASES = 1000
MAX_NODES = 200_000
MAX_DEPTH = 100


class YamlLimitError(Exception):
    """A YAML document over one of the limits; ``line`` is 1-based (0: the whole file)."""

    def __init__(self, line: int, sentence: str) -> None:
        super().__init__(sentence)
        self.line = line
        self.sentence = sentence

    def located(self, source: str) -> str:
        return f"{source}:{self.line}: {self.sentence}"


def _cap_text(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:,} bytes"


def too_large(size: int, max_bytes: int = MAX_BYTES) -> YamlLimitError | None:
    """The refusal for a file of ``size`` bytes, or None when it is small enough."""
    if size <= max_bytes:
        return None
    return YamlLimitError(0, f"this file is {size:,} bytes, more than the {_cap_text(max_bytes)} livegen "
                             "reads from a settings or mapping file.")


def check_text_size(text: str, max_bytes: int = MAX_BYTES) -> None:
    """Raise :class:`YamlLimitError` when ``text`` is longer than ``max_bytes`` in UTF-8."""
    # a character is at most 4 bytes: only count exactly when the length is close to the cap
    if len(text) * 4 <= max_bytes:
        return
    error = too_large(len(text.encode("utf-8", "surrogatepass")), max_bytes)
    if error is not None:
        raise error


def read_text_capped(path: str | Path, max_bytes: int = MAX_BYTES) -> str:
    """Read a UTF-8 text file of at most ``max_bytes`` without reading more than that from it.

    Raises :class:`YamlLimitError` for a larger file and ``OSError`` / ``UnicodeDecodeError`` as
    ``Path.read_text`` does.
    """
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            try:
                size = max(len(data), Path(path).stat().st_size)
            except OSError:
                size = len(data)
            error = too_large(size, max_bytes)
            assert error is not None
            raise error
    return data.decode("utf-8")


class LimitsMixin:
    """Composer limits for any PyYAML loader class (put it first in the bases)."""

    max_aliases = MAX_ALIASES
    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH

    def compose_document(self) -> Any:
        self._lg_sizes: dict[int, int] = {}
        self._lg_aliases = 0
        self._lg_depth = 0
        try:
            return super().compose_document()  # type: ignore[misc]
        finally:
            self._lg_sizes = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):  # type: ignore[attr-defined]
            event = self.peek_event()  # type: ignore[attr-defined]
            line = event.start_mark.line + 1
            self._lg_aliases += 1
            if self._lg_aliases > self.max_aliases:
                raise YamlLimitError(line, f"this YAML uses more than {self.max_aliases} aliases (*name); "
                                           "livegen refuses it so that it cannot expand without bound.")
            node = super().compose_node(parent, index)  # type: ignore[misc]
            if id(node) not in self._lg_sizes:
                raise YamlLimitError(line, f"the alias *{event.anchor} refers to the list or mapping it "
                                           "is inside; livegen refuses recursive YAML.")
            return node
        self._lg_depth += 1
        if self._lg_depth > self.max_depth:
            line = self.peek_event().start_mark.line + 1  # type: ignore[attr-defined]
            raise YamlLimitError(line, f"this YAML nests lists and mappings more than {self.max_depth} "
                                       "levels deep.")
        try:
            node = super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._lg_depth -= 1
        sizes = self._lg_sizes
        if isinstance(node, SequenceNode):
            size = 1 + sum(sizes[id(child)] for child in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(sizes[id(k)] + sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        if size > self.max_nodes:
            raise YamlLimitError(node.start_mark.line + 1,
                                 f"this YAML expands through its aliases (*name) to more than "
                                 f"{self.max_nodes:,} values; livegen refuses it (an alias bomb?).")
        sizes[id(node)] = size
        return node


@functools.cache
def limited(loader: type) -> type:
    """``loader`` (a PyYAML loader class) with the composer limits of :class:`LimitsMixin`."""
    return type(f"Limited{loader.__name__}", (LimitsMixin, loader), {})


def safe_load(text: str, source: str = "<yaml>") -> Any:
    """``yaml.safe_load`` with the limits; raises :class:`YamlLimitError` or ``yaml.YAMLError``."""
    check_text_size(text)
    loader = limited(yaml.SafeLoader)(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
