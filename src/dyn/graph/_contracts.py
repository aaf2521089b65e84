"""Check that wiring matches contracts: what a dependency slot calls, the wired role serves.

A slot declared with ``depends(calls=(REF, ...))`` names the endpoints its component
calls and the types it sends and expects back. The component the graph wires to the
slot must serve each of them, with the same request and item types when it declares
any (an endpoint taking ``Any`` accepts everything). Endpoints in ``may_call`` are
called only where served: a component without them is fine, one with them must match
the types. Role classes are asked through the methods
:class:`~dyn.graph.roles.RoleClass` names, never imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dyn.graph._wiring import Draft
from dyn.graph._yaml import Problems
from dyn.graph.roles import role_path

__all__ = ["check_contracts"]


def check_contracts(problems: Problems, drafts: Sequence[Draft]) -> None:
    by_name = {d.name: d for d in drafts}
    for draft in drafts:
        if draft.cls is None:
            continue
        slots = draft.cls.dependency_slots()
        for dep, path in draft.deps:
            slot = slots.get(dep.slot)
            callee = by_name.get(dep.component)
            if slot is None or callee is None or callee.cls is None or callee.types is None:
                continue  # nothing declared, or already reported
            refs = [(ref, True) for ref in slot.calls] + [(ref, False) for ref in slot.may_call]
            if not refs:
                continue
            served = callee.types
            caller, target = role_path(draft.cls), f"{callee.name!r} ({role_path(callee.cls)})"
            for ref, required in refs:
                if ref.name not in served:
                    if required:
                        listing = ", ".join(served) or "none"
                        problems.add(
                            path,
                            f"{caller} calls {ref.name!r} through {dep.slot!r}, but component "
                            f"{target} has no endpoint {ref.name!r}; its endpoints: {listing}",
                        )
                    continue
                request, item = served[ref.name]
                if _differs(request, ref.request) or _differs(item, ref.item):
                    problems.add(
                        path,
                        f"{caller} calls {ref.name!r} through {dep.slot!r} with "
                        f"{_name(ref.request)} for {_name(ref.item)} items, but component "
                        f"{target} takes {_name(request)} and yields {_name(item)}",
                    )


def _differs(declared: Any, expected: Any) -> bool:
    return declared is not None and declared != expected


def _name(tp: Any) -> str:
    return "Any" if tp is None else getattr(tp, "__qualname__", repr(tp))
