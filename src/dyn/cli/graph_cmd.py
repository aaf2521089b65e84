"""``dyn graph validate`` and ``dyn graph show``: check a graph file, or draw it.

Both exit 2 after printing one line per problem when the graph is invalid. The graph
package (and with it yaml and msgspec) and rich are imported inside the commands so that
``dyn --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.tree import Tree

    from dyn.graph import ComponentSpec, GraphSpec

__all__ = ["app"]

app = typer.Typer(help="Validate and inspect graph files.", no_args_is_help=True)

# Typer's own usage errors exit with 2 as well, so scripts can treat both alike.
SPEC_ERROR_EXIT = 2

FileArg = Annotated[Path, typer.Argument(help="The graph YAML file.", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="COMPONENT.KEY=VALUE",
        help="Override a component field or config key (VALUE is YAML); repeatable.",
        show_default=False,
    ),
]


def _load(file: Path, overrides: list[str] | None) -> GraphSpec:
    from dyn.errors import SpecError
    from dyn.graph import load_graph
    from dyn.launch.role_classes import role_class

    try:
        return load_graph(file, overrides or (), resolve_role=role_class)
    except SpecError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(SPEC_ERROR_EXIT) from None


@app.command()
def validate(file: FileArg, overrides: SetOption = None) -> None:
    """Check a graph file; report every problem at once.

    Each problem names its file, line and field; the exit status is 2 if there is any.
    """
    spec = _load(file, overrides)
    count = len(spec.components)
    instances = len(spec.instances())
    typer.echo(
        f"ok {file}: graph {spec.name!r}, {count} component{'s' * (count != 1)}, "
        f"{instances} instance{'s' * (instances != 1)}"
    )


@app.command()
def show(file: FileArg, overrides: SetOption = None) -> None:
    """Draw a graph: its components, where they run, what they call.

    Also says how `dyn up` would lay the roles out in processes on this machine.
    """
    from rich.console import Console

    spec = _load(file, overrides)
    Console().print(_tree(spec))


def _tree(spec: GraphSpec) -> Tree:
    from rich.text import Text
    from rich.tree import Tree

    discovery = spec.discovery.backend
    if spec.discovery.options:
        discovery += f" {dict(spec.discovery.options)}"
    root = Tree(
        Text.assemble(
            ("graph ", "bold"),
            (spec.name, "bold cyan"),
            f"  namespace {spec.namespace} · transport {spec.transport} · discovery {discovery}",
        )
    )
    if spec.description:
        root.add(Text(spec.description, style="italic"))
    root.add(Text(f"layout {_layout_line(spec)}", style="dim"))
    for component in spec.components:
        nodes = ", ".join(component.placement)
        branch = root.add(
            Text.assemble(
                (component.name, "bold green"),
                f"  uses {component.uses} · replicas {component.replicas} · on {nodes}",
            )
        )
        for line in _details(component):
            branch.add(Text(line))
    return root


def _layout_line(spec: GraphSpec) -> str:
    """How `dyn up` would lay the roles out on this machine."""
    from dyn.launch.layout import apply_layout, core_count, plan_layout

    if spec.has_nodes():
        return f"{spec.layout}: one process per role replica, on its node"
    layout = plan_layout(spec, core_count())
    return layout.describe(apply_layout(spec, layout))


def _details(component: ComponentSpec) -> list[str]:
    from dyn.launch.role_classes import role_of

    role = role_of(component)
    lines: list[str] = []
    slots = role.dependency_slots()
    for dep in component.depends_on:
        declared = slots.get(dep.slot)
        strategy = dep.strategy or (declared.strategy if declared else None) or "default strategy"
        target = dep.component if dep.slot == dep.component else f"{dep.slot}: {dep.component}"
        lines.append(f"→ {target} ({strategy})")
    return lines + role.config_summary(component.config)
