"""Reading YAML while remembering where every value came from.

PyYAML's safe loader forgets line numbers and silently keeps the last of two equal
mapping keys. Graph errors must point at a line and duplicates must be caught, so the
document is composed into nodes and built here by hand, recording a line per field path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

__all__ = ["FieldPath", "Locator", "Problems", "format_path", "load_yaml"]

FieldPath = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MERGE_TAG = "tag:yaml.org,2002:merge"
# libyaml's parser is several times faster than the pure-Python one and keeps the same
# marks; some builds of PyYAML lack it.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# How many values a document may expand to. Aliases share nodes, so a few lines can
# stand for billions of values ("billion laughs"); real graphs hold a few hundred.
MAX_VALUES = 100_000


class _TooLarge(Exception):
    pass


def format_path(path: FieldPath) -> str:
    """``components.middle.depends_on[0]``; keys that are not plain words are quoted."""
    out = ""
    for part in path:
        if isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class Locator:
    """Maps a field path to where it was written: ``FILE:LINE`` or the ``--set`` text.

    A path without its own entry takes the location of its nearest ancestor, so a missing
    field is reported at the key of the mapping that should hold it.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[FieldPath, int] = {}
        self._overrides: dict[FieldPath, str] = {}

    def where(self, path: FieldPath) -> str:
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self._overrides:
                return f"--set {self._overrides[prefix]}"
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}"
        return f"{self.source}:1"

    def overridden(self, path: FieldPath, text: str) -> None:
        """Record that ``--set text`` replaced the value at ``path`` (and all below it)."""
        size = len(path)
        for stale in [p for p in self.lines if p[:size] == path]:
            del self.lines[stale]
        for stale in [p for p in self._overrides if p[:size] == path]:
            del self._overrides[stale]
        self._overrides[path] = text


class Problems:
    """Collects problem lines ``WHERE: FIELD.PATH: message`` in the order found."""

    def __init__(self, locator: Locator) -> None:
        self.locator = locator
        self.lines: list[str] = []

    def add(self, path: FieldPath, message: str) -> None:
        where = self.locator.where(path)
        field = format_path(path)
        self.lines.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.lines)

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)


def _line(mark: yaml.Mark | None) -> int:
    return mark.line + 1 if mark is not None else 1


def load_yaml(text: str, source: str) -> tuple[Any, Locator, list[str]]:
    """Parse ``text`` into plain builtins, a locator for its fields, and any problems.

    When the text is not valid YAML the value is ``None`` and the one problem says where.
    """
    locator = Locator(source)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return (
                None,
                locator,
                [f"{source}:1: the file is empty; a graph needs a name and components"],
            )
        builder = _Builder(loader, locator)
        try:
            value = builder.build(root, ())
        except _TooLarge:
            return (
                None,
                locator,
                [
                    f"{source}:1: the document expands to more than {MAX_VALUES:,} values "
                    "(aliases repeating aliases?); a graph is far smaller"
                ],
            )
        return value, locator, builder.problems
    except yaml.MarkedYAMLError as exc:
        detail = exc.problem or "invalid YAML"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        return None, locator, [f"{source}:{_line(exc.problem_mark)}: invalid YAML: {detail}"]
    except yaml.YAMLError as exc:
        return None, locator, [f"{source}:1: invalid YAML: {exc}"]
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, locator: Locator) -> None:
        self._loader = loader
        self._locator = locator
        self._active: set[int] = set()
        self._built = 0
        self.problems: list[str] = []

    def _problem(self, node: yaml.Node, path: FieldPath, message: str) -> None:
        where = f"{self._locator.source}:{_line(node.start_mark)}"
        field = format_path(path)
        self.problems.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self._built += 1
        if self._built > MAX_VALUES:
            raise _TooLarge
        self._locator.lines.setdefault(path, _line(node.start_mark))
        if id(node) in self._active:
            self._problem(node, path, "an alias refers to itself; recursive YAML is not allowed")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self._problem(node, path, f"invalid value: {exc.problem}")
        except ValueError as exc:  # e.g. a timestamp with month 13
            self._problem(node, path, f"invalid value {node.value!r}: {exc}")
        return None

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[Any, Any]:
        # Keys brought in by a merge (<<: *base) may legitimately be overridden; only keys
        # written out in this mapping count as duplicates of each other.
        written = {id(key) for key, _ in node.value if key.tag != _MERGE_TAG}
        self._loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node, path)
            try:
                hash(key)
            except TypeError:
                self._problem(key_node, path, "mapping keys must be plain scalars")
                continue
            line = _line(key_node.start_mark)
            if key in first_line and id(key_node) in written:
                self._problem(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first written on line {first_line[key]}); "
                    "YAML would silently keep only the last one",
                )
            if id(key_node) in written:
                first_line.setdefault(key, line)
            child = (*path, key)
            self._locator.lines[child] = line
            result[key] = self.build(value_node, child)
            # The key's line is the better place to point at, also for block values.
            self._locator.lines[child] = line
        return result
