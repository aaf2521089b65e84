"""Built-in roles, named in graphs by a short ``uses:`` name.

A graph may also name any component class by import path (``uses: pkg.mod:Class``).
"""

from __future__ import annotations

from dyn.errors import PluginError
from dyn.plugins import load_import_path
from dyn.runtime.component import Component

__all__ = ["BUILTIN_ROLES", "resolve_role"]

BUILTIN_ROLES: dict[str, str] = {
    "decode_worker": "dyn.roles.decode_worker:DecodeWorker",
    "frontend": "dyn.roles.frontend:Frontend",
    "prefill_queue": "dyn.roles.prefill_queue:PrefillQueueRole",
    "prefill_worker": "dyn.roles.prefill_worker:PrefillWorker",
    "processor": "dyn.roles.processor:Processor",
    "router": "dyn.roles.router:Router",
    "proxy_worker": "dyn.roles.proxy_worker:ProxyWorker",
    "worker": "dyn.roles.worker:Worker",
}


def resolve_role(uses: str) -> type[Component[object]]:  # type: ignore[type-var]
    """The component class a ``uses:`` value names, or a clear error."""
    path = BUILTIN_ROLES.get(uses.replace("-", "_"))
    if path is None:
        if ":" not in uses:
            names = ", ".join(sorted(BUILTIN_ROLES))
            raise PluginError(
                f"unknown role {uses!r}; built-in roles: {names}; "
                "or give an import path 'package.module:Class'"
            )
        path = uses
    obj = load_import_path(path)
    if not (isinstance(obj, type) and issubclass(obj, Component)):
        raise PluginError(
            f"{uses!r} is not a component class (it must derive dyn.runtime.component.Component)"
        )
    return obj
