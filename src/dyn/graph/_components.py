"""Reading the ``components`` section: each component's own fields, then the wiring."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dyn.errors import PluginError
from dyn.graph._config import convert_config
from dyn.graph._fields import (
    COMPONENT_NAME,
    check_keys,
    describe,
    did_you_mean,
    expect_int,
    expect_mapping,
    expect_name,
    expect_str,
    plugin_name,
)
from dyn.graph._kubernetes import read_resources
from dyn.graph._wiring import Draft, check_wiring
from dyn.graph._yaml import FieldPath, Problems
from dyn.graph.model import ComponentSpec, DependencySpec
from dyn.graph.roles import RoleClass, RoleResolver

__all__ = ["COMPONENT_KEYS", "read_components"]

COMPONENT_KEYS = ("uses", "replicas", "placement", "depends_on", "config", "resources")
DEPENDENCY_KEYS = ("component", "strategy")


def read_components(
    problems: Problems,
    doc: dict[Any, Any],
    node_names: list[str] | None,
    resolve_role: RoleResolver,
) -> tuple[ComponentSpec, ...] | None:
    if "components" not in doc:
        problems.add(("components",), "missing; a graph needs at least one component")
        return None
    section = expect_mapping(problems, ("components",), doc["components"])
    if section is None:
        return None
    if not section:
        problems.add(("components",), "must name at least one component")
        return None
    drafts = [
        _component(problems, key, body, node_names, resolve_role) for key, body in section.items()
    ]
    check_wiring(problems, drafts)
    specs: list[ComponentSpec] = []
    for d in drafts:
        if d.uses and d.replicas and d.placement and d.deps_ok and d.config_ok:
            assert d.config is not None
            if d.resources is None:
                continue
            deps = tuple(dep for dep, _ in d.deps)
            specs.append(
                ComponentSpec(d.name, d.uses, d.replicas, d.placement, deps, d.config, d.resources)
            )
    return tuple(specs) if len(specs) == len(drafts) else None


def _component(
    problems: Problems,
    key: Any,
    body: Any,
    node_names: list[str] | None,
    resolve_role: RoleResolver,
) -> Draft:
    path: FieldPath = ("components", key)
    draft = Draft(name=str(key), path=path)
    expect_name(problems, path, key, COMPONENT_NAME)
    fields = expect_mapping(problems, path, body)
    if fields is None:
        return draft
    check_keys(problems, path, fields, COMPONENT_KEYS)
    if "uses" not in fields:
        problems.add(
            (*path, "uses"), "missing; name a role (e.g. uses: frontend) or 'package.module:Class'"
        )
    else:
        draft.uses = expect_str(problems, (*path, "uses"), fields["uses"])
    if draft.uses is not None:
        draft.cls = _resolve(problems, (*path, "uses"), draft.uses, resolve_role)
    if draft.cls is not None:
        draft.types = _endpoint_types(problems, (*path, "uses"), draft.cls)
    draft.replicas = expect_int(problems, (*path, "replicas"), fields.get("replicas", 1), low=1)
    draft.placement = _placement(
        problems, (*path, "placement"), fields.get("placement"), node_names
    )
    _depends_on(problems, draft, fields.get("depends_on"))
    draft.resources = read_resources(problems, (*path, "resources"), fields.get("resources"))
    raw_config = fields.get("config")
    config = expect_mapping(problems, (*path, "config"), {} if raw_config is None else raw_config)
    if config is not None and draft.cls is not None:
        draft.config, draft.config_ok = convert_config(
            problems, (*path, "config"), config, draft.cls.config_type
        )
    return draft


def _resolve(
    problems: Problems, path: FieldPath, uses: str, resolve_role: RoleResolver
) -> RoleClass | None:
    try:
        return resolve_role(uses)
    except PluginError as exc:
        problems.add(path, str(exc))
    except Exception as exc:  # the user's module raised while being imported
        problems.add(path, f"importing {uses!r} failed: {type(exc).__name__}: {exc}")
    return None


def _endpoint_types(
    problems: Problems, path: FieldPath, cls: RoleClass
) -> Mapping[str, tuple[Any, Any]] | None:
    """The role's endpoint types; one whose annotation cannot be evaluated is a problem
    of the component's ``uses`` (its checks against the graph are skipped)."""
    try:
        return cls.endpoint_types()
    except PluginError as exc:
        problems.add(path, str(exc))
        return None


def _placement(
    problems: Problems, path: FieldPath, raw: Any, node_names: list[str] | None
) -> tuple[str, ...] | None:
    if raw is None:
        return tuple(node_names[:1]) if node_names else None
    entries: list[tuple[FieldPath, Any]]
    if isinstance(raw, str):
        entries = [(path, raw)]
    elif isinstance(raw, list) and raw:
        entries = [((*path, i), item) for i, item in enumerate(raw)]
    else:
        problems.add(
            path, f"must be a node name or a non-empty list of node names (got {describe(raw)})"
        )
        return None
    placed: list[str] = []
    for where, item in entries:
        node = expect_str(problems, where, item)
        if node is None:
            continue
        if node_names is not None and node not in node_names:
            hint = did_you_mean(node, node_names)
            problems.add(where, f"unknown node {node!r}{hint}; nodes: {', '.join(node_names)}")
        elif node in placed:
            problems.add(where, f"node {node!r} is listed twice")
        else:
            placed.append(node)
    return tuple(placed) if len(placed) == len(entries) else None


def _depends_on(problems: Problems, draft: Draft, raw: Any) -> None:
    path: FieldPath = (*draft.path, "depends_on")
    count = len(problems.lines)
    if raw is None:
        return
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            name = expect_str(problems, (*path, i), item)
            if name is not None:
                _add_dep(problems, draft, DependencySpec(name, name), (*path, i))
    elif isinstance(raw, dict):
        for slot, target in raw.items():
            where: FieldPath = (*path, slot)
            if expect_name(problems, where, slot, COMPONENT_NAME) is None:
                continue
            if isinstance(target, str):
                _add_dep(problems, draft, DependencySpec(slot, target), where)
                continue
            entry = expect_mapping(problems, where, target)
            if entry is None:
                continue
            check_keys(problems, where, entry, DEPENDENCY_KEYS)
            if "component" not in entry:
                problems.add((*where, "component"), "missing; name the component this slot calls")
                continue
            component = expect_str(problems, (*where, "component"), entry["component"])
            strategy = None
            if entry.get("strategy") is not None:
                # An unknown strategy leaves the entry wired with none, so the checks of
                # what it names still run; the problem already stops the graph loading.
                strategy = plugin_name(
                    problems, (*where, "strategy"), entry["strategy"], "dyn.routers"
                )
            if component is not None:
                _add_dep(problems, draft, DependencySpec(slot, component, strategy), where)
    else:
        problems.add(
            path,
            "must be a list of component names or a mapping slot -> component "
            f"(got {describe(raw)})",
        )
    draft.deps_ok = len(problems.lines) == count


def _add_dep(problems: Problems, draft: Draft, dep: DependencySpec, where: FieldPath) -> None:
    if any(existing.slot == dep.slot for existing, _ in draft.deps):
        problems.add(where, f"{dep.slot!r} is listed twice")
        return
    draft.deps.append((dep, where))
