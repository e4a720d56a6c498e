"""The one YAML loader featdistill uses: safe, and bounded in time and memory.

Why this module exists: ``yaml.safe_load`` never executes code, but it happily returns a *billion laughs*
document (a few hundred bytes of nested aliases) as a graph of shared lists; the first thing that walks it as
a tree (validation, an error message's ``repr``, ``model_dump``) then runs for minutes and takes gigabytes.
Every config, ``--set`` value and YAML flag is therefore read here, with these limits (each refusal is one
:class:`YAMLLoadError` naming the file, the line and the limit):

- the file is at most :data:`MAX_BYTES` bytes, UTF-8 text (a binary file is refused before parsing);
- nesting is at most :data:`MAX_DEPTH` levels (checked while scanning flow collections and while composing, so
  a 5,000-deep list neither reaches Python's recursion limit nor PyYAML's quadratic scanner);
- the document, **with every alias expanded**, has at most :data:`MAX_NODES` nodes — counted on the node graph
  (each node's expanded size is computed once from its children), so a bomb is refused after composing its
  few hundred nodes, in milliseconds; an alias that refers to its own ancestor (a recursive document) is refused;
- a key given twice in one mapping is refused naming both lines (PyYAML keeps the last one silently);
- only the standard YAML tags are accepted: ``!!python/...`` and any other tag are refused by name.

:func:`short_repr` is the bounded ``repr`` error messages use for values a user gave (at most a few items per
container, a few levels, a short string); :func:`check_expanded_size` bounds an in-memory value (a config built
in Python with shared references) before something walks it as a tree.

This module imports nothing from featdistill, so every config module can use it.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "YAMLLoadError",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "load_yaml_text",
    "load_yaml_file",
    "short_repr",
    "check_expanded_size",
]

#: largest YAML file read (a real config is a few KiB)
MAX_BYTES = 1 << 20
#: deepest nesting of mappings/sequences accepted
MAX_DEPTH = 64
#: most nodes a document may have with every alias expanded
MAX_NODES = 100_000

_STD_PREFIX = "tag:yaml.org,2002:"


class YAMLLoadError(ValueError):
    """A YAML document that is refused (syntax, tag, duplicate key, size, depth or alias expansion)."""


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_STD_PREFIX) :] if tag.startswith(_STD_PREFIX) else tag


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` with depth, expanded-size, duplicate-key and tag checks while the node graph is composed."""

    def __init__(self, stream: str, source: str, max_depth: int, max_nodes: int) -> None:
        super().__init__(stream)
        self._source = source
        self._max_depth = max_depth
        self._max_nodes = max_nodes
        self._depth = 0

    def _fail(self, node_or_mark: Any, text: str) -> YAMLLoadError:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        where = f"{self._source}:{mark.line + 1}" if mark is not None else self._source
        return YAMLLoadError(f"{where}: {text}")

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # PyYAML's scanner is quadratic in flow depth ("[[[[…"): refuse while scanning, before composing
        if self.flow_level >= self._max_depth:
            raise self._fail(self.get_mark(), f"refused: nested deeper than {self._max_depth} levels")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        is_alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                raise self._fail(mark, f"refused: nested deeper than {self._max_depth} levels")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = getattr(node, "_fd_size", None)
        if size is None:
            if is_alias:  # the alias names a node still being composed: its own ancestor
                raise self._fail(mark, "refused: an alias refers to a node that contains it (recursive document)")
            size = self._size_of(node, mark)
            node._fd_size = size  # type: ignore[attr-defined]
        if size > self._max_nodes:
            raise self._fail(
                mark,
                f"refused: the document expands to more than {self._max_nodes:,} values once its aliases "
                "(&anchor / *alias) are expanded (an alias bomb?); write the values out or use fewer aliases",
            )
        self._check_tag(node)
        return node

    def _size_of(self, node: Node, mark: Any) -> int:
        if isinstance(node, ScalarNode):
            return 1
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for kv in node.value for n in kv]
        total = 1
        for child in children:
            s = getattr(child, "_fd_size", None)
            if s is None:
                raise self._fail(mark, "refused: an alias refers to a node that contains it (recursive document)")
            total += s
        return total

    def _check_tag(self, node: Node) -> None:
        tag = node.tag
        if tag in self.yaml_constructors or tag == _STD_PREFIX + "merge":  # ``<<`` keys are flattened
            return
        hint = " (configs never execute code)" if tag.startswith(_STD_PREFIX + "python/") else ""
        raise self._fail(node, f"not valid YAML for featdistill: the tag {_tag_name(tag)} is not allowed{hint}")

    def compose_mapping_node(self, anchor: Any) -> MappingNode:  # type: ignore[override]
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _STD_PREFIX + "merge":
                continue
            ident = (key.tag, key.value)
            line = key.start_mark.line + 1
            if ident in seen:
                raise YAMLLoadError(
                    f"{self._source}: duplicate key {short_repr(key.value)} at lines {seen[ident]} and {line}; "
                    "keep one (YAML would silently use the last)"
                )
            seen[ident] = line
        return node


def _syntax_message(source: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{source}: not valid YAML: {problem}{where}" + (f" ({context})" if context else "")


def load_yaml_text(
    text: str,
    source: str = "<string>",
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> Any:
    """Parse one YAML document with the limits above; ``source`` names it in messages."""
    if len(text) > max_bytes:
        raise YAMLLoadError(f"{source}: refused: {len(text):,} characters, more than the {max_bytes:,} allowed")
    if "\x00" in text:
        raise YAMLLoadError(f"{source}: not a YAML text file (it contains NUL bytes; a binary file?)")
    loader = _BoundedLoader(text, source, max_depth, max_nodes)
    try:
        return loader.get_single_data()
    except YAMLLoadError:
        raise
    except yaml.YAMLError as err:
        raise YAMLLoadError(_syntax_message(source, err)) from None
    except RecursionError:  # belt and braces: the depth limit is checked first
        raise YAMLLoadError(f"{source}: refused: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(
    path: str | Path,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> Any:
    """Read and parse a YAML file with the limits above (size checked before reading; UTF-8 text only).

    A missing file raises :class:`FileNotFoundError`; everything else refused raises :class:`YAMLLoadError`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    size = p.stat().st_size
    if size > max_bytes:
        raise YAMLLoadError(f"{p}: refused: {size:,} bytes, more than the {max_bytes:,} a YAML config may have")
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YAMLLoadError(f"{p}: refused: more than the {max_bytes:,} bytes a YAML config may have")
    if b"\x00" in data:
        raise YAMLLoadError(f"{p}: not a YAML text file (it contains NUL bytes; a binary file?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise YAMLLoadError(
            f"{p}: not a YAML text file (not UTF-8: byte {err.start} is {data[err.start]:#04x})"
        ) from None
    return load_yaml_text(text, str(p), max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)


# -- bounded views of values ------------------------------------------------------------------------------
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxstring = 60
_REPR.maxlong = 40
_REPR.maxother = 60


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, with bounded work (a few items, a few levels)."""
    try:
        if isinstance(value, (Mapping, list, tuple, set, frozenset)):
            text = _REPR.repr(value)
        elif isinstance(value, str):
            text = repr(value[: limit + 1])
        else:
            text = _REPR.repr(value)
    except Exception:  # a user object whose repr fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_expanded_size(value: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """The number of values ``value`` holds when shared containers are counted once per reference (what a
    tree walk such as ``model_dump`` or ``yaml.dump`` of a copy visits); raise :class:`YAMLLoadError` when it
    exceeds ``max_nodes``, nests deeper than ``max_depth`` or contains itself.  Work is linear in the number of
    distinct containers (each one's expanded size is computed once)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(v: Any, depth: int) -> int:
        if not isinstance(v, (Mapping, list, tuple, set, frozenset)):
            return 1
        key = id(v)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLLoadError("refused: a value contains itself (a recursive structure)")
        if depth > max_depth:
            raise YAMLLoadError(f"refused: nested deeper than {max_depth} levels")
        active.add(key)
        items = [x for kv in v.items() for x in kv] if isinstance(v, Mapping) else list(v)
        total = 1
        for x in items:
            total += size(x, depth + 1)
            if total > max_nodes:
                raise YAMLLoadError(
                    f"refused: expands to more than {max_nodes:,} values (shared references expanded; an alias bomb?)"
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(value, 0)
