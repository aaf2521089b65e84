"""``--set COMPONENT.KEY=VALUE``: changing a graph document from the command line.

KEY is a component field (``uses``, ``replicas``, ``placement``, ``depends_on``,
``config``) or else a key of the component's config, so ``frontend.port=9000`` and
``frontend.config.port=9000`` mean the same. Further dots reach into mappings
(``frontend.routes./v1=middle/generate``). VALUE is read as YAML, so ``2`` is a number
and ``[a, b]`` a list.

Overrides change the raw document before validation. A problem they cause is reported
as ``--set TEXT: FIELD.PATH: message`` in place of ``FILE:LINE: FIELD.PATH: message``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from dyn.graph._components import COMPONENT_KEYS
from dyn.graph._fields import describe, did_you_mean
from dyn.graph._yaml import FieldPath, Locator, format_path

__all__ = ["apply_overrides"]

_FORMAT = "write it as COMPONENT.KEY=VALUE, e.g. --set middle.replicas=2"


def apply_overrides(doc: Any, overrides: Sequence[str], locator: Locator) -> list[str]:
    """Apply each override to ``doc`` in place; return a problem line for each that fails."""
    problems: list[str] = []
    for text in overrides:
        problem = _apply(doc, text, locator)
        if problem:
            problems.append(f"--set {text}: {problem}")
    return problems


def _apply(doc: Any, text: str, locator: Locator) -> str | None:
    target, eq, value_text = text.partition("=")
    component, dot, key = target.strip().partition(".")
    if not (eq and dot and component and key) or "" in key.split("."):
        return f"malformed override; {_FORMAT}"
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as exc:
        detail = getattr(exc, "problem", None) or str(exc)
        return f"the value {value_text!r} is not valid YAML: {detail}"
    components = doc.get("components") if isinstance(doc, dict) else None
    names = [str(name) for name in components] if isinstance(components, dict) else []
    if not isinstance(components, dict) or component not in components:
        hint = did_you_mean(component, names)
        listing = ", ".join(names) or "none"
        return (
            f"components.{component}: unknown component {component!r}{hint}; components: {listing}"
        )
    parts = key.split(".")
    if parts[0] not in COMPONENT_KEYS:
        parts = ["config", *parts]
    path: FieldPath = ("components", component)
    holder: Any = components
    step: str | int = component
    for part in parts:
        if holder[step] is None:
            holder[step] = {}
        if not isinstance(holder[step], dict):
            return f"{format_path(path)}: cannot set {part!r} inside {describe(holder[step])}"
        holder, step = holder[step], part
        path = (*path, part)
        holder.setdefault(step, None)
    holder[step] = value
    locator.overridden(path, text)
    return None
