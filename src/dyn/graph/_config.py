"""Turning a component's ``config:`` mapping into its role's config struct.

msgspec stops at the first error and names it by a path such as ``$.routes[...]``. To
list every problem at its YAML line, the path is followed through the raw value (finding
which dict entry failed), the problem is reported, the offending top-level field is put
back to its default, and conversion is tried again.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

from dyn.graph._fields import describe, did_you_mean, plugin_name
from dyn.graph._yaml import FieldPath, Problems

__all__ = ["convert_config"]

_AT = re.compile(r"^(?P<msg>.*?)(?: - at (?P<key>`key` in )?`(?P<path>\$[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(\.\.\.)\]")
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]+)`(?P<rest>.*)$", re.S)
_BOUND = re.compile(r"^ (?P<op><=|>=|<|>) (?P<n>\S+)$")
_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def convert_config(
    problems: Problems, path: FieldPath, raw: dict[str, Any], config_type: type[msgspec.Struct]
) -> tuple[msgspec.Struct | None, bool]:
    """The struct for ``raw`` and whether it converted without a problem.

    After a problem, the struct returned is built from the fields that were fine (or is
    ``None``), so the checks across components can still look at it.
    """
    work: dict[Any, Any] = dict(raw)
    found = len(problems.lines)
    names = [f.encode_name for f in msgspec.structs.fields(config_type)]
    if "strategy" in names and isinstance(work.get("strategy"), str):
        # A role's own routing strategy is checked like the one in depends_on.
        strategy = plugin_name(problems, (*path, "strategy"), work["strategy"], "dyn.routers")
        if strategy is None:
            del work["strategy"]
        else:
            work["strategy"] = strategy
    dropped: set[Any] = set()
    for _ in range(len(raw) + 1):
        try:
            config = msgspec.convert(work, config_type)
        except msgspec.ValidationError as exc:
            where = _report(problems, path, work, config_type, str(exc), dropped)
            if not where or where[0] not in work:
                break
            dropped.add(where[0])
            del work[where[0]]
        else:
            return config, len(problems.lines) == found
    return None, False


def _report(
    problems: Problems,
    path: FieldPath,
    work: dict[Any, Any],
    config_type: type,
    error: str,
    dropped: set[Any],
) -> FieldPath:
    match = _AT.match(error)
    assert match is not None  # the pattern matches any text
    message = match["msg"]
    steps = _STEP.findall(match["path"] or "$")
    rel, value, annotation = _follow(work, config_type, steps, key_error=bool(match["key"]))
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if unknown:
        field = unknown.group(1)
        valid = _field_names(annotation)
        hint = did_you_mean(field, valid)
        listing = f"; valid fields: {', '.join(valid)}" if valid else ""
        problems.add((*path, *rel, field), f"unknown field {field!r}{hint}{listing}")
        return (*rel, field)
    if missing:
        if not rel and missing.group(1) in dropped:
            return ()  # a consequence of a problem already reported
        problems.add((*path, *rel), f"missing required field {missing.group(1)!r}")
        return rel
    problems.add((*path, *rel), _rephrase(message, value, annotation))
    return rel


def _follow(
    value: Any, annotation: Any, steps: list[tuple[str, str, str]], *, key_error: bool
) -> tuple[FieldPath, Any, Any]:
    """Walk msgspec's error path through the raw value: (path, value there, its type)."""
    path: list[str | int] = []
    for name, index, _any in steps:
        bare = _bare(annotation)
        if name:
            if not (isinstance(value, dict) and name in value):
                break
            annotation = _field_types(bare).get(name, Any)
            path.append(name)
            value = value[name]
        elif index:
            if not (isinstance(value, list) and int(index) < len(value)):
                break
            args = get_args(bare)
            annotation = args[0] if args else Any
            path.append(int(index))
            value = value[int(index)]
        else:
            args = get_args(bare)
            if not isinstance(value, dict) or len(args) != 2:
                break
            bad = next((k for k, v in value.items() if not _fits(v, args[1])), None)
            if bad is None:
                break
            annotation = args[1]
            path.append(bad)
            value = value[bad]
    if key_error and isinstance(value, dict):
        bare = _bare(annotation)
        args = get_args(bare)
        key_type = str if _field_types(bare) else args[0] if len(args) == 2 else None
        bad = next((k for k in value if key_type and not _fits(k, key_type)), None)
        if bad is not None:
            path.append(bad)
            return tuple(path), bad, key_type
    return tuple(path), value, annotation


def _fits(value: Any, annotation: Any) -> bool:
    try:
        msgspec.convert(value, annotation)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _bare(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``Optional`` to reach the type that holds the value."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            others = [a for a in get_args(annotation) if a is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def _field_types(annotation: Any) -> dict[str, Any]:
    if not (isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)):
        return {}
    hints = typing.get_type_hints(annotation, include_extras=True)
    return {f.encode_name: hints.get(f.name, Any) for f in msgspec.structs.fields(annotation)}


def _field_names(annotation: Any) -> list[str]:
    return list(_field_types(_bare(annotation)))


def _bounds(annotation: Any) -> tuple[Any, Any]:
    """The inclusive ``ge``/``le`` limits declared with ``msgspec.Meta``, if any."""
    low = high = None
    while get_origin(annotation) is Annotated:
        annotation, *metas = get_args(annotation)
        for meta in metas:
            if isinstance(meta, msgspec.Meta):
                low = meta.ge if meta.ge is not None else low
                high = meta.le if meta.le is not None else high
    return low, high


def _rephrase(message: str, value: Any, annotation: Any) -> str:
    """``Expected `int` <= 65535`` becomes ``must be an integer from 1 to 65535 (got …)``."""
    expected = _EXPECTED.match(message)
    if expected is None:
        return f"{message[:1].lower()}{message[1:]} (got {describe(value)})"
    kinds = [_WORDS.get(k, f"`{k}`") for k in expected["type"].split(" | ")]
    rest = expected["rest"]
    if rest.startswith(", got "):
        rest = ""
    bound = _BOUND.match(rest)
    low, high = _bounds(annotation)
    if bound and low is not None and high is not None:
        rest = f" from {low} to {high}"
    return f"must be {' or '.join(kinds)}{rest} (got {describe(value)})"
