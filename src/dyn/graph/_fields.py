"""Small checks shared by the validators: types, names, unknown keys, suggestions.

Each check reports into :class:`~dyn.graph._yaml.Problems` and returns ``None`` when
the value is unusable, so validation carries on and every problem is listed at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dyn import plugins
from dyn.graph._yaml import FieldPath, Problems

__all__ = [
    "COMPONENT_NAME",
    "GRAPH_NAME",
    "check_keys",
    "describe",
    "did_you_mean",
    "expect_float",
    "expect_int",
    "expect_mapping",
    "expect_name",
    "expect_str",
    "expect_str_list",
    "plugin_name",
]

GRAPH_NAME = re.compile(r"[A-Za-z0-9_.-]+")
COMPONENT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def describe(value: Any) -> str:
    """How a YAML value reads in a message: ``a string 'two'``, ``a list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"an integer {value}"
    if isinstance(value, float):
        return f"a number {value}"
    if isinstance(value, str):
        return f"a string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} {value!r}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(
    problems: Problems, path: FieldPath, mapping: Mapping[Any, Any], valid: Sequence[str]
) -> None:
    for key in mapping:
        if key not in valid:
            hint = did_you_mean(key, valid)
            problems.add((*path, key), f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def expect_mapping(problems: Problems, path: FieldPath, value: Any) -> dict[Any, Any] | None:
    if isinstance(value, dict):
        return value
    problems.add(path, f"must be a mapping (got {describe(value)})")
    return None


def expect_str(
    problems: Problems, path: FieldPath, value: Any, *, optional: bool = False
) -> str | None:
    if isinstance(value, str) or (optional and value is None):
        return value
    kind = "a string or null" if optional else "a string"
    problems.add(path, f"must be {kind} (got {describe(value)})")
    return None


def expect_name(
    problems: Problems, path: FieldPath, value: Any, pattern: re.Pattern[str]
) -> str | None:
    text = expect_str(problems, path, value)
    if text is not None and not pattern.fullmatch(text):
        allowed = pattern.pattern.strip("[]+")
        problems.add(path, f"{text!r} is not a valid name; use only the characters {allowed}")
        return None
    return text


def expect_int(
    problems: Problems, path: FieldPath, value: Any, *, low: int, high: int | None = None
) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    problems.add(path, f"must be {wanted} (got {describe(value)})")
    return None


def expect_float(problems: Problems, path: FieldPath, value: Any, *, above: float) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and value > above:
        return float(value)
    problems.add(path, f"must be a number > {above:g} (got {describe(value)})")
    return None


def expect_str_list(problems: Problems, path: FieldPath, value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        problems.add(path, f"must be a list of strings (got {describe(value)})")
        return None
    items = [expect_str(problems, (*path, i), item) for i, item in enumerate(value)]
    strings = [item for item in items if item is not None]
    return tuple(strings) if len(strings) == len(items) else None


def plugin_name(
    problems: Problems, path: FieldPath, value: Any, group: plugins.Group
) -> str | None:
    """A registered plugin name in its canonical spelling, or an import path as written."""
    name = expect_str(problems, path, value)
    if name is None:
        return None
    if plugins.is_known(group, name):
        return name if ":" in name else plugins.canonical(name)
    names = plugins.available(group)
    hint = did_you_mean(plugins.canonical(name), names)
    problems.add(
        path,
        f"unknown {plugins.kind(group)} {name!r}{hint}; available: {', '.join(names)} "
        "(or an import path 'package.module:Name')",
    )
    return None
