"""Names that resolve to plugins, imported only when chosen.

Every extension point is an entry-point group: transports (``dyn.transports``), routing
strategies (``dyn.routers``), engines (``dyn.engines``), discovery backends
(``dyn.discovery``), roles (``dyn.roles``) and launchers (``dyn.launchers``). dyn's own
plugins are declared once, in its ``pyproject.toml``, exactly as a third-party package
declares its own; nothing here lists them. A ``"package.module:attr"`` string works
wherever a name does. Canonical names use underscores; the hyphenated spelling is
accepted as an alias.

The entry points are read the first time a name is resolved, not at import, so that
``dyn --help`` never pays for scanning the installed distributions.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal

from dyn.errors import PluginError

__all__ = [
    "GROUPS",
    "Group",
    "available",
    "canonical",
    "import_path",
    "is_known",
    "kind",
    "load",
    "load_import_path",
]

Group = Literal[
    "dyn.transports", "dyn.routers", "dyn.engines", "dyn.discovery", "dyn.roles", "dyn.launchers"
]
GROUPS: tuple[Group, ...] = (
    "dyn.transports",
    "dyn.routers",
    "dyn.engines",
    "dyn.discovery",
    "dyn.roles",
    "dyn.launchers",
)
# The distribution whose entry points are dyn's own (named "built-in" in messages).
_OWN_DISTRIBUTION = "dyn"

_KIND = {
    "dyn.transports": "transport",
    "dyn.routers": "strategy",
    "dyn.engines": "engine",
    "dyn.discovery": "discovery backend",
    "dyn.roles": "role",
    "dyn.launchers": "launcher",
}


def canonical(name: str) -> str:
    """The canonical spelling of a plugin name: hyphens become underscores."""
    return name.strip().replace("-", "_")


@cache
def _entries(group: str) -> dict[str, tuple[str, bool]]:
    """Canonical name -> (``module:attr``, whether dyn itself declares it)."""
    table: dict[str, tuple[str, bool]] = {}
    for ep in entry_points(group=group):
        own = ep.dist is not None and ep.dist.name == _OWN_DISTRIBUTION
        table[canonical(ep.name)] = (ep.value, own)
    return table


@cache
def _table(group: str) -> dict[str, str]:
    return {name: value for name, (value, _) in _entries(group).items()}


def kind(group: Group) -> str:
    """What a plugin of ``group`` is called in messages: "strategy", "role", ..."""
    return _KIND[group]


def available(group: Group) -> list[str]:
    """The sorted names registered in ``group``."""
    return sorted(_table(group))


def is_known(group: Group, name: str) -> bool:
    """Whether ``name`` is a registered name or looks like an import path."""
    return ":" in name or canonical(name) in _table(group)


def import_path(group: Group, name: str) -> str:
    """The ``module:attr`` string for ``name``, or a clear error listing what exists."""
    if ":" in name:
        return name
    try:
        return _table(group)[canonical(name)]
    except KeyError:
        raise PluginError(_unknown(group, name)) from None


def _unknown(group: Group, name: str) -> str:
    if group != "dyn.roles":
        return f"unknown {_KIND[group]} {name!r}; available: {', '.join(available(group))}"
    # A role is also often a class of the user's own: say how to name one.
    entries = _entries(group)
    own = sorted(n for n, (_, is_own) in entries.items() if is_own)
    others = sorted(n for n, (_, is_own) in entries.items() if not is_own)
    installed = f"; installed roles: {', '.join(others)}" if others else ""
    return (
        f"unknown role {name!r}; built-in roles: {', '.join(own)}{installed}; "
        "or give an import path 'package.module:Class'"
    )


def load(group: Group, name: str) -> Any:
    """Import and return the object that ``name`` stands for in ``group``."""
    return load_import_path(import_path(group, name))


def load_import_path(path: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute, mapping failures."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{path!r} is not an import path; write it as 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import {module_name!r} (from {path!r}): {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj
