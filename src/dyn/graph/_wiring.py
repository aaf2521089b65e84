"""Checks across components: what depends_on names, the slots a role declares, cycles,
and the frontend's routes. They run once every component has been read, so a component
may depend on one written further down the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from dyn.graph._fields import did_you_mean
from dyn.graph._yaml import FieldPath, Problems
from dyn.graph.model import DependencySpec
from dyn.roles.frontend_config import FrontendConfig

__all__ = ["Draft", "check_wiring", "role_path"]


@dataclass
class Draft:
    """A component as read so far; ``None`` fields had problems already reported."""

    name: str
    path: FieldPath
    uses: str | None = None
    cls: type[Any] | None = None
    replicas: int | None = None
    placement: tuple[str, ...] | None = None
    deps: list[tuple[DependencySpec, FieldPath]] = field(default_factory=list)
    deps_ok: bool = True
    config: msgspec.Struct | None = None
    config_ok: bool = False


def role_path(cls: type[Any]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def check_wiring(problems: Problems, drafts: list[Draft]) -> None:
    names = [d.name for d in drafts]
    for draft in drafts:
        for dep, path in draft.deps:
            if dep.component == draft.name:
                problems.add(path, f"component {draft.name!r} cannot depend on itself")
            elif dep.component not in names:
                hint = did_you_mean(dep.component, names)
                problems.add(
                    path,
                    f"unknown component {dep.component!r}{hint}; components: {', '.join(names)}",
                )
        if draft.cls is not None and not draft.cls.open_dependencies:
            _check_slots(problems, draft)
    _check_cycles(problems, drafts)
    from dyn.graph._contracts import check_contracts  # it imports this module

    check_contracts(problems, drafts)
    by_name = {d.name: d for d in drafts}
    for draft in drafts:
        if isinstance(draft.config, FrontendConfig):
            _check_routes(problems, draft, draft.config, by_name)


def _check_slots(problems: Problems, draft: Draft) -> None:
    assert draft.cls is not None
    declared = list(draft.cls.dependency_slots())
    role = role_path(draft.cls)
    wired = {dep.slot for dep, _ in draft.deps}
    # An entry that could not be read may be the one wiring a slot, so only say a slot is
    # missing when every entry was read.
    for slot in declared if draft.deps_ok else ():
        if slot not in wired:
            problems.add(
                (*draft.path, "depends_on"),
                f"missing dependency {slot!r} (declared by {role}); add it to depends_on",
            )
    for dep, path in draft.deps:
        if dep.slot not in declared:
            hint = did_you_mean(dep.slot, declared)
            slots = f"its slots: {', '.join(declared)}" if declared else "it declares none"
            problems.add(path, f"{role} has no dependency slot {dep.slot!r}{hint}; {slots}")


def _check_cycles(problems: Problems, drafts: list[Draft]) -> None:
    order = {d.name: i for i, d in enumerate(drafts)}
    edges = {
        d.name: [
            (dep.component, path)
            for dep, path in d.deps
            if dep.component in order and dep.component != d.name
        ]
        for d in drafts
    }
    state: dict[str, int] = {}  # 1 while on the stack, 2 when finished
    stack: list[str] = []
    reported: set[frozenset[str]] = set()

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target, _ in edges[name]:
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    _report_cycle(problems, cycle, order, edges)
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for draft in drafts:
        if draft.name not in state:
            visit(draft.name)


def _report_cycle(
    problems: Problems,
    cycle: list[str],
    order: dict[str, int],
    edges: dict[str, list[tuple[str, FieldPath]]],
) -> None:
    # Start the cycle at the component written first, so the message reads like the file.
    start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
    ring = cycle[start:] + cycle[:start]
    path = next(p for target, p in edges[ring[0]] if target == ring[1 % len(ring)])
    problems.add(path, f"dependency cycle: {' -> '.join([*ring, ring[0]])}")


def _check_routes(
    problems: Problems, draft: Draft, config: FrontendConfig, by_name: dict[str, Draft]
) -> None:
    targets: dict[str, str] = {}
    for dep, _ in draft.deps:
        targets.setdefault(dep.component, dep.component)
        targets[dep.slot] = dep.component
    if config.openai is not None:
        _check_openai(problems, draft, config.openai, targets, by_name)
    for route, target in config.routes.items():
        path = (*draft.path, "config", "routes", route)
        if not route.startswith("/"):
            problems.add(path, f"route paths must start with '/' (got {route!r})")
        component, sep, endpoint = target.partition("/")
        if not (sep and component and endpoint) or "/" in endpoint:
            problems.add(path, f"must be 'component/endpoint' (got {target!r})")
            continue
        if component not in targets:
            hint = did_you_mean(component, targets)
            wired = ", ".join(targets) or "nothing"
            problems.add(
                path,
                f"{component!r} is not in depends_on of {draft.name!r}{hint}; "
                f"add it there (it depends on: {wired})",
            )
            continue
        callee = by_name.get(targets[component])
        if callee is None or callee.cls is None:
            continue  # already reported as an unknown component or an unresolvable role
        endpoints = list(callee.cls.endpoints())
        if endpoint not in endpoints:
            hint = did_you_mean(endpoint, endpoints)
            listing = ", ".join(endpoints) or "none"
            problems.add(
                path,
                f"component {callee.name!r} ({role_path(callee.cls)}) has no endpoint "
                f"{endpoint!r}{hint}; its endpoints: {listing}",
            )


def _check_openai(
    problems: Problems,
    draft: Draft,
    target: str,
    targets: dict[str, str],
    by_name: dict[str, Draft],
) -> None:
    path = (*draft.path, "config", "openai")
    if target not in targets:
        wired = ", ".join(targets) or "nothing"
        problems.add(
            path,
            f"{target!r} is not in depends_on of {draft.name!r}{did_you_mean(target, targets)}; "
            f"name the processor it depends on (it depends on: {wired})",
        )
        return
    callee = by_name.get(targets[target])
    if callee is None or callee.cls is None:
        return
    if "generate" not in callee.cls.endpoints():
        problems.add(
            path,
            f"component {callee.name!r} ({role_path(callee.cls)}) has no 'generate' endpoint; "
            "the OpenAI routes need a processor",
        )
