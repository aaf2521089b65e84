"""Validating a parsed graph document into a :class:`~dyn.graph.model.GraphSpec`.

Every section is checked even after an earlier one failed, so one run lists every
problem in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dyn.graph._components import read_components
from dyn.graph._config import convert_config
from dyn.graph._fields import (
    GRAPH_NAME,
    check_keys,
    describe,
    did_you_mean,
    expect_float,
    expect_int,
    expect_mapping,
    expect_name,
    expect_str,
    expect_str_list,
    plugin_name,
)
from dyn.graph._kubernetes import read_kubernetes, read_labels
from dyn.graph._yaml import FieldPath, Problems
from dyn.graph.model import (
    DEFAULT_DISCOVERY_TTL_S,
    DEFAULT_LAYOUT,
    DEFAULT_TRANSPORT,
    LAYOUTS,
    LOCAL_NODE,
    ComponentSpec,
    DiscoverySpec,
    GraphSpec,
    ModelSpec,
    NodeSpec,
)
from dyn.graph.roles import RoleResolver

__all__ = ["build_graph"]

TOP_KEYS = (
    "name",
    "namespace",
    "description",
    "transport",
    "layout",
    "discovery",
    "nodes",
    "model",
    "components",
    "kubernetes",
)
DISCOVERY_KEYS = ("backend", "ttl_s", "options")
TRANSPORT_KEYS = ("backend", "options")
# The nats transport's options (transports/nats.md) and the type each must have.
NATS_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "servers": (str, list),
    "start": (bool,),
    "token": (str,),
    "credentials": (str,),
    "tls_ca": (str,),
    "tls_cert": (str,),
    "tls_key": (str,),
    "stream_credit": (int,),
}
NODE_KEYS = ("host", "user", "port", "ssh_options", "python", "workdir", "bind", "labels")


def build_graph(problems: Problems, doc: Any, resolve_role: RoleResolver) -> GraphSpec | None:
    """The graph ``doc`` describes, or ``None`` once every problem is in ``problems``."""
    if not isinstance(doc, dict):
        problems.add(
            (),
            f"the top level must be a mapping with 'name' and 'components' (got {describe(doc)})",
        )
        return None
    check_keys(problems, (), doc, TOP_KEYS)
    name = None
    if "name" not in doc:
        problems.add(("name",), "missing; every graph needs a name")
    else:
        name = expect_name(problems, ("name",), doc["name"], GRAPH_NAME)
    namespace = name
    if doc.get("namespace") is not None:
        namespace = expect_name(problems, ("namespace",), doc["namespace"], GRAPH_NAME)
    description = expect_str(problems, ("description",), doc.get("description"), optional=True)
    transport, transport_options = _transport(problems, doc.get("transport", DEFAULT_TRANSPORT))
    layout = _layout(problems, doc.get("layout", DEFAULT_LAYOUT))
    discovery = _discovery(problems, doc.get("discovery", DiscoverySpec().backend))
    nodes = _nodes(problems, doc.get("nodes"))
    # With the nodes section broken, placements cannot be checked against it.
    node_names = [n.name for n in nodes] if nodes is not None else None
    components = read_components(problems, doc, node_names, resolve_role)
    model = _model(problems, doc.get("model"))
    kubernetes = read_kubernetes(problems, doc.get("kubernetes"))
    if model is not None and components is not None:
        _check_context(problems, doc["model"], model, components, resolve_role)
    if problems or None in (
        name,
        namespace,
        transport,
        transport_options,
        layout,
        discovery,
        nodes,
        components,
        kubernetes,
    ):
        return None
    assert name
    assert namespace
    assert transport
    assert transport_options is not None
    assert layout
    assert discovery
    assert nodes
    assert components
    assert kubernetes
    return GraphSpec(
        name=name,
        namespace=namespace,
        description=description,
        transport=transport,
        transport_options=transport_options,
        discovery=discovery,
        nodes=nodes,
        components=components,
        model=model,
        layout=layout,
        kubernetes=kubernetes,
        source=problems.locator.source,
    )


def _layout(problems: Problems, raw: Any) -> str | None:
    layout = expect_str(problems, ("layout",), raw)
    if layout is None or layout in LAYOUTS:
        return layout
    choices = ", ".join(LAYOUTS)
    problems.add(
        ("layout",),
        f"unknown layout {layout!r}{did_you_mean(layout, LAYOUTS)}; choose one of {choices}",
    )
    return None


def _transport(problems: Problems, raw: Any) -> tuple[str | None, Mapping[str, Any] | None]:
    """A transport name, or ``{backend: NAME, options: {...}}``: the name and options."""
    path: FieldPath = ("transport",)
    if isinstance(raw, str):
        return plugin_name(problems, path, raw, "dyn.transports"), MappingProxyType({})
    section = expect_mapping(problems, path, raw)
    if section is None:
        return None, None
    check_keys(problems, path, section, TRANSPORT_KEYS)
    if "backend" not in section:
        problems.add((*path, "backend"), "missing; name a transport, e.g. backend: nats")
        return None, None
    backend = plugin_name(problems, (*path, "backend"), section["backend"], "dyn.transports")
    options = expect_mapping(problems, (*path, "options"), section.get("options", {}))
    if backend is None or options is None:
        return None, None
    if backend == "nats" and not _nats_options(problems, (*path, "options"), options):
        return None, None
    return backend, MappingProxyType(dict(options))


def _nats_options(problems: Problems, path: FieldPath, options: Mapping[str, Any]) -> bool:
    before = len(problems.lines)
    check_keys(problems, path, options, tuple(NATS_OPTION_TYPES))
    for key, value in options.items():
        types = NATS_OPTION_TYPES.get(key)
        if types is None:
            continue
        names = " or a list of strings" if list in types else ""
        wanted = {"bool": "true or false", "int": "an integer"}.get(types[0].__name__, "a string")
        if not isinstance(value, types) or (bool in types) != isinstance(value, bool):
            problems.add((*path, key), f"must be {wanted}{names} (got {describe(value)})")
        elif isinstance(value, list) and not all(isinstance(s, str) and s for s in value):
            problems.add((*path, key), "must list server URLs, e.g. [nats://127.0.0.1:4222]")
    if options.get("start") is True and "servers" in options:
        servers = options["servers"]
        if isinstance(servers, list) and len(servers) != 1:
            problems.add(
                (*path, "servers"),
                "with start: true, name the one address dyn up's nats-server listens on",
            )
    return len(problems.lines) == before


def _discovery(problems: Problems, raw: Any) -> DiscoverySpec | None:
    path: FieldPath = ("discovery",)
    if isinstance(raw, str):
        backend = plugin_name(problems, path, raw, "dyn.discovery")
        return DiscoverySpec(backend=backend) if backend else None
    section = expect_mapping(problems, path, raw)
    if section is None:
        return None
    check_keys(problems, path, section, DISCOVERY_KEYS)
    if "backend" not in section:
        problems.add((*path, "backend"), "missing; name a discovery backend, e.g. backend: memory")
        return None
    backend = plugin_name(problems, (*path, "backend"), section["backend"], "dyn.discovery")
    ttl_s = expect_float(
        problems, (*path, "ttl_s"), section.get("ttl_s", DEFAULT_DISCOVERY_TTL_S), above=0
    )
    options = expect_mapping(problems, (*path, "options"), section.get("options", {}))
    if backend is None or ttl_s is None or options is None:
        return None
    return DiscoverySpec(backend=backend, ttl_s=ttl_s, options=MappingProxyType(dict(options)))


def _nodes(problems: Problems, raw: Any) -> tuple[NodeSpec, ...] | None:
    if raw is None:
        return (LOCAL_NODE,)
    section = expect_mapping(problems, ("nodes",), raw)
    if section is None:
        return None
    if not section:
        problems.add(
            ("nodes",), "must name at least one node (or leave nodes out to run everything here)"
        )
        return None
    nodes: list[NodeSpec] = []
    for key, body in section.items():
        path: FieldPath = ("nodes", key)
        name = expect_name(problems, path, key, GRAPH_NAME)
        fields = expect_mapping(problems, path, body)
        if name is None or fields is None:
            continue
        check_keys(problems, path, fields, NODE_KEYS)
        host = None
        if "host" not in fields:
            problems.add((*path, "host"), "missing; every node needs a host to reach it at")
        else:
            host = expect_str(problems, (*path, "host"), fields["host"])
            if host == "":
                problems.add((*path, "host"), "must not be empty")
                host = None
        default = NodeSpec(name=name, host="")
        user = expect_str(problems, (*path, "user"), fields.get("user"), optional=True)
        port = expect_int(
            problems, (*path, "port"), fields.get("port", default.port), low=1, high=65535
        )
        ssh = expect_str_list(problems, (*path, "ssh_options"), fields.get("ssh_options", []))
        python = expect_str(problems, (*path, "python"), fields.get("python", default.python))
        workdir = expect_str(problems, (*path, "workdir"), fields.get("workdir"), optional=True)
        bind = expect_str(problems, (*path, "bind"), fields.get("bind", default.bind))
        labels = read_labels(problems, (*path, "labels"), fields.get("labels"))
        if (
            host is not None
            and port is not None
            and ssh is not None
            and python is not None
            and bind is not None
            and labels is not None
        ):
            nodes.append(NodeSpec(name, host, user, port, ssh, python, workdir, bind, labels))
    return tuple(nodes) if len(nodes) == len(section) else None


def _model(problems: Problems, raw: Any) -> ModelSpec | None:
    if raw is None:
        return None
    mapping = expect_mapping(problems, ("model",), raw)
    if mapping is None:
        return None
    if "name" not in mapping:
        problems.add(("model",), "missing 'name': the model id clients ask for")
        return None
    model, _ = convert_config(problems, ("model",), mapping, ModelSpec)
    assert model is None or isinstance(model, ModelSpec)
    return model


def _check_context(
    problems: Problems,
    raw: dict[Any, Any],
    model: ModelSpec,
    components: tuple[ComponentSpec, ...],
    resolve_role: RoleResolver,
) -> None:
    """The context a frontend advertises must fit every engine's cache: otherwise a
    request within ``max_model_len`` is refused (or cut short) by the worker it reaches."""
    smallest: tuple[int, str, str] | None = None
    for component in components:
        limit = resolve_role(component.uses).request_token_limit(component.config)
        if limit is not None and (smallest is None or limit[0] < smallest[0]):
            smallest = (limit[0], limit[1], component.name)
    if smallest is None or model.max_model_len <= smallest[0]:
        return
    tokens, how, name = smallest
    given = "max_model_len" in raw
    path: FieldPath = ("model", "max_model_len") if given else ("model",)
    value = f"max_model_len {model.max_model_len}" + ("" if given else " (the default)")
    problems.add(
        path,
        f"{value} is more than one request can hold on component {name!r} ({how}); "
        f"lower max_model_len to at most {tokens}, or give {name!r} a larger cache",
    )
