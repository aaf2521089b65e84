"""Names that resolve to plugins, imported only when chosen.

Transports, routing strategies, engines and discovery backends are found by name in the
entry-point groups ``dyn.transports``, ``dyn.routers``, ``dyn.engines`` and
``dyn.discovery``. A ``"package.module:attr"`` string works wherever a name does.
Canonical names use underscores; the hyphenated spelling is accepted as an alias.
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
    "load",
    "load_import_path",
]

Group = Literal["dyn.transports", "dyn.routers", "dyn.engines", "dyn.discovery"]
GROUPS: tuple[Group, ...] = ("dyn.transports", "dyn.routers", "dyn.engines", "dyn.discovery")

# The built-ins also live here so that a source checkout that was never installed (and so
# has no entry-point metadata) still finds them. Installed entry points take precedence.
_BUILTINS: dict[str, dict[str, str]] = {
    "dyn.transports": {
        "inproc": "dyn.transports.inproc:InprocTransport",
        "tcp": "dyn.transports.tcp:TcpTransport",
        "grpc": "dyn.transports.grpc:GrpcTransport",
    },
    "dyn.routers": {
        "round_robin": "dyn.routing.simple:RoundRobin",
        "random": "dyn.routing.simple:Random",
        "direct": "dyn.routing.simple:Direct",
        "least_loaded": "dyn.routing.least_loaded:LeastLoaded",
        "kv": "dyn.routing.kv.router:KvRouter",
        "kv_approx": "dyn.routing.kv.approx:KvApproxRouter",
    },
    "dyn.engines": {
        "echo": "dyn.engines.echo:EchoEngine",
        "mocker": "dyn.engines.mocker:MockerEngine",
        "openai_proxy": "dyn.engines.openai_proxy:OpenAIProxyEngine",
    },
    "dyn.discovery": {
        "memory": "dyn.discovery.memory:MemoryDiscovery",
        "file": "dyn.discovery.file:FileDiscovery",
        "etcd": "dyn.discovery.etcd:EtcdDiscovery",
    },
}

_KIND = {
    "dyn.transports": "transport",
    "dyn.routers": "strategy",
    "dyn.engines": "engine",
    "dyn.discovery": "discovery backend",
}


def canonical(name: str) -> str:
    """The canonical spelling of a plugin name: hyphens become underscores."""
    return name.strip().replace("-", "_")


@cache
def _table(group: str) -> dict[str, str]:
    table = dict(_BUILTINS.get(group, {}))
    for ep in entry_points(group=group):
        table[canonical(ep.name)] = ep.value
    return table


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
        names = ", ".join(available(group))
        raise PluginError(f"unknown {_KIND[group]} {name!r}; available: {names}") from None


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
