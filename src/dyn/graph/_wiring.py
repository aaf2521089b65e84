"""Checks across components: what depends_on names, the slots a role declares, cycles,
and each role's own checks of its config against its wiring (a frontend's routes). They
run once every component has been read, so a component may depend on one written
further down the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dyn.graph._fields import did_you_mean
from dyn.graph._yaml import FieldPath, Problems
from dyn.graph.model import DependencySpec
from dyn.graph.roles import RoleClass, Wiring, role_path

__all__ = ["Draft", "check_wiring"]


@dataclass
class Draft:
    """A component as read so far; ``None`` fields had problems already reported."""

    name: str
    path: FieldPath
    uses: str | None = None
    cls: RoleClass | None = None
    # Endpoint name -> (request, item) types; None when the role's could not be read.
    types: Mapping[str, tuple[Any, Any]] | None = None
    replicas: int | None = None
    placement: tuple[str, ...] | None = None
    deps: list[tuple[DependencySpec, FieldPath]] = field(default_factory=list)
    deps_ok: bool = True
    config: msgspec.Struct | None = None
    config_ok: bool = False
    # Kubernetes requests and limits (None: they had problems).
    resources: Mapping[str, Mapping[str, str]] | None = None


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
    resolved = [d for d in drafts if d.cls is not None]
    endpoints = {d.name: list(d.cls.endpoints()) for d in resolved if d.cls is not None}
    roles = {d.name: role_path(d.cls) for d in resolved}
    for draft in resolved:
        if draft.cls is None or draft.config is None:
            continue
        wiring = Wiring(draft.name, _targets(draft), endpoints, roles)
        for where, message in draft.cls.check_wiring(draft.config, wiring):
            problems.add((*draft.path, "config", *where), message)


def _targets(draft: Draft) -> dict[str, str]:
    """Every name the component may call by (a component, or a slot) -> the component."""
    targets: dict[str, str] = {}
    for dep, _ in draft.deps:
        targets.setdefault(dep.component, dep.component)
        targets[dep.slot] = dep.component
    return targets


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
