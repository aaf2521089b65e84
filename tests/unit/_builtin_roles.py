"""Every built-in role class that serves endpoints, found by walking ``dyn.roles``."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, get_args, get_type_hints

import dyn.roles
from dyn.runtime.component import Component


def builtin_roles() -> list[type[Component[Any]]]:
    found: dict[str, type[Component[Any]]] = {}
    for module_info in pkgutil.iter_modules(dyn.roles.__path__, "dyn.roles."):
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Component)
                and value.__module__ == module.__name__
                and value.endpoints()
            ):
                found[value.__qualname__] = value
    return sorted(found.values(), key=lambda cls: cls.__qualname__)


def signature_types(role: type[Component[Any]], method: str) -> tuple[Any, Any]:
    """The request and item types of an endpoint, read with ``typing.get_type_hints``."""
    fn = getattr(role, method)
    hints = get_type_hints(fn)
    params = list(hints)
    request = hints[params[0]]  # the parameter after self (ctx and return follow)
    (item,) = get_args(hints["return"])[:1]
    return request, item
