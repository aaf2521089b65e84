"""Resolving a graph's ``uses:`` to a role class: the one resolver dyn has.

The graph package is data and never imports a role, so loading a graph takes a
resolver from its caller (``load_graph(path, resolve_role=role_class)``). The CLI, the
launchers, ``dyn bench`` and the tests all pass :func:`role_class`; it lives with the
launchers because they are the ones that instantiate what it returns.
"""

from __future__ import annotations

from typing import Any

from dyn import plugins
from dyn.errors import PluginError
from dyn.graph import ComponentSpec, GraphSpec
from dyn.runtime.component import Component

__all__ = ["http_components", "role_class", "role_of"]


def role_class(uses: str) -> type[Component[Any]]:
    """The component class a graph's ``uses:`` names (an entry point in ``dyn.roles`` or
    an import path), or a :class:`~dyn.errors.PluginError` saying what exists.
    Exceptions the role's own module raises on import pass through."""
    cls = plugins.load("dyn.roles", uses)
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise PluginError(
            f"{uses!r} is not a component class (it must derive dyn.runtime.component.Component)"
        )
    return cls


def role_of(spec: ComponentSpec) -> type[Component[Any]]:
    """The role class of a validated component (imported once already, when validated)."""
    return role_class(spec.uses)


def http_components(graph: GraphSpec) -> list[ComponentSpec]:
    """The components whose role serves HTTP itself (in the order of the file)."""
    return [spec for spec in graph.components if role_of(spec).serves_http]
