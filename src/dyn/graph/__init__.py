"""Graph files: loading, validating and dumping the YAML that describes a pipeline.

:func:`load_graph` reads a file into a frozen :class:`GraphSpec` or raises one
:class:`~dyn.errors.SpecError` listing every problem, each as
``FILE:LINE: FIELD.PATH: message`` (or ``--set TEXT: FIELD.PATH: message`` when an
override caused it).

The graph is data: it never imports a role. Loading one takes a ``resolve_role``
callable from the caller, which turns each ``uses:`` value into its class
(:data:`~dyn.graph.roles.RoleResolver`); the CLI and the launchers pass
:func:`dyn.launch.role_classes.role_class`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dyn.errors import SpecError
from dyn.graph._dump import dump_graph, dump_graph_yaml
from dyn.graph._fields import did_you_mean
from dyn.graph._overrides import apply_overrides
from dyn.graph._validate import build_graph
from dyn.graph._yaml import Problems, load_yaml
from dyn.graph.model import (
    ComponentSpec,
    DependencySpec,
    DiscoverySpec,
    GraphSpec,
    KubernetesSpec,
    ModelSpec,
    NodeSpec,
    RoleInstance,
)
from dyn.graph.roles import RoleClass, RoleResolver

__all__ = [
    "ComponentSpec",
    "DependencySpec",
    "DiscoverySpec",
    "GraphSpec",
    "KubernetesSpec",
    "ModelSpec",
    "NodeSpec",
    "RoleClass",
    "RoleInstance",
    "RoleResolver",
    "did_you_mean",
    "dump_graph",
    "dump_graph_yaml",
    "load_graph",
    "load_graph_text",
]


def load_graph(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    resolve_role: RoleResolver,
) -> GraphSpec:
    """Read and validate the graph file at ``path``, after applying ``--set`` overrides;
    ``resolve_role`` turns each ``uses:`` into its class."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SpecError([f"{source}: no such file"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: not a UTF-8 text file ({exc.reason})"]) from None
    except OSError as exc:
        raise SpecError([f"{source}: cannot read the file: {exc.strerror}"]) from None
    return load_graph_text(text, source, overrides, resolve_role=resolve_role)


def load_graph_text(
    text: str,
    source: str = "<string>",
    overrides: Sequence[str] = (),
    *,
    resolve_role: RoleResolver,
) -> GraphSpec:
    """Validate graph YAML held in a string; ``source`` names it in problem lines."""
    doc, locator, yaml_problems = load_yaml(text, source)
    if doc is None and yaml_problems:
        raise SpecError(yaml_problems)
    problems = Problems(locator)
    problems.lines.extend(yaml_problems)
    problems.lines.extend(apply_overrides(doc, overrides, locator))
    spec = build_graph(problems, doc, resolve_role)
    if problems or spec is None:
        raise SpecError(_by_line(problems.lines, source) or [f"{source}: invalid graph"])
    return spec


def _by_line(lines: list[str], source: str) -> list[str]:
    """Overrides' problems first, then the file's in line order (stable within a line)."""
    prefix = f"{source}:"

    def line_of(problem: str) -> int:
        if not problem.startswith(prefix):
            return 0
        digits = problem[len(prefix) :].partition(":")[0]
        return int(digits) if digits.isdigit() else 0

    return sorted(lines, key=line_of)
