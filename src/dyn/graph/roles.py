"""What a graph, the CLI and the launchers may ask of a role class, without importing one.

A graph names its roles by ``uses:`` (an entry point in ``dyn.roles`` or an import
path). The graph package is data: it imports neither the runtime nor the roles, so it
speaks to a role class through :class:`RoleClass`, the class-level half of
:class:`~dyn.runtime.component.Component`. Every component class satisfies it; the
runtime documents what each member means and what the defaults are.

Loading a graph takes a :data:`RoleResolver` from its caller, which turns a ``uses:``
value into a class (the one dyn uses is :func:`dyn.launch.role_classes.role_class`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

__all__ = [
    "ConfigProblem",
    "RoleClass",
    "RoleResolver",
    "Slot",
    "Wiring",
    "role_path",
]

# A problem in a component's config: the path below ``config`` and the message.
ConfigProblem = tuple[tuple[str | int, ...], str]


class Slot(Protocol):
    """A dependency slot a role declares: its default routing strategy, if any, the
    endpoints it calls (``EndpointRef`` objects: name, request type, item type), and
    those it calls only where the wired component serves them (``may_call``)."""

    @property
    def strategy(self) -> str | None: ...
    @property
    def calls(self) -> tuple[Any, ...]: ...
    @property
    def may_call(self) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class Wiring:
    """What a role sees of the graph around one of its components when it checks its
    config (:meth:`RoleClass.check_wiring`).

    ``targets`` maps every name the component may call by (a slot, or a component it
    depends on) to the component that answers; ``endpoints`` maps each component whose
    role could be resolved to its endpoint names; ``roles`` maps it to ``module:Class``.
    """

    component: str
    targets: Mapping[str, str]
    endpoints: Mapping[str, list[str]]
    roles: Mapping[str, str]


class RoleClass(Protocol):
    """A component class, as the graph, the CLI and the launchers see it.

    The members are documented on :class:`~dyn.runtime.component.Component`, which
    gives each a default; a role overrides what it is.
    """

    config_type: type[msgspec.Struct]
    open_dependencies: bool
    serves_http: bool
    admin_routes: bool
    port_field: str | None
    example_request: dict[str, Any] | None

    def endpoints(self) -> Mapping[str, str]: ...
    def dependency_slots(self) -> Mapping[str, Slot]: ...
    def endpoint_types(self) -> Mapping[str, tuple[Any, Any]]: ...
    def route_targets(self, config: Any) -> Mapping[str, str]: ...
    def admin_token_required(self, config: Any) -> bool: ...
    def check_wiring(self, config: Any, wiring: Wiring) -> list[ConfigProblem]: ...
    def request_token_limit(self, config: Any) -> tuple[int, str] | None: ...
    def config_summary(self, config: Any) -> list[str]: ...


# Turns a ``uses:`` value into its role class, or raises ``PluginError`` saying what
# exists (any other exception is the role's module failing to import).
RoleResolver = Callable[[str], RoleClass]


def role_path(cls: Any) -> str:
    """``module:Class``: how messages name a role class."""
    return f"{cls.__module__}:{cls.__qualname__}"
