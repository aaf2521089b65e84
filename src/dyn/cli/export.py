"""``dyn export k8s``: write a graph's Kubernetes manifests into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyn import __version__
from dyn.cli._common import expected_errors

__all__ = ["app"]

app = typer.Typer(help="Render a graph for another platform.", no_args_is_help=True)

DEFAULT_IMAGE = f"dyn:{__version__}"


@app.command("k8s")
@expected_errors
def k8s(
    graph_file: Annotated[Path, typer.Argument(help="The graph YAML file.", show_default=False)],
    image: Annotated[
        str, typer.Option(help="The image every role runs (built from the Containerfile).")
    ] = DEFAULT_IMAGE,
    namespace: Annotated[
        str | None,
        typer.Option(help="The Kubernetes namespace of every object. Default: kubectl's."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="The folder to write. Default: k8s-NAME.")
    ] = None,
    include_secrets: Annotated[
        bool,
        typer.Option(
            "--include-secrets",
            help="Write the values of the admin token, API key, cluster secret and TLS "
            "files set in this environment into secrets.yaml (else: a secrets.env to fill in).",
        ),
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="COMPONENT.KEY=VALUE",
            help="Override a component field or config key (VALUE is YAML); repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write plain, kustomize-friendly manifests for GRAPH: a Deployment per component
    (a StatefulSet where a replica's config depends on its index), the frontend's
    Service, the graph as a ConfigMap, etcd for discovery, and the secrets.

    \b
    Example:
      dyn export k8s graphs/kv_routing.yaml --image registry.example/dyn:0.1 -o k8s/
      kubectl apply -k k8s/
    """
    from dyn import k8s as render_k8s
    from dyn.graph import load_graph
    from dyn.launch.role_classes import role_class
    from dyn.settings import Settings

    graph = load_graph(graph_file, overrides or (), resolve_role=role_class)
    export = render_k8s.render(
        graph,
        image=image,
        namespace=namespace,
        settings=Settings.from_env(),
        include_secrets=include_secrets,
    )
    for note in export.notes:
        typer.echo(f"note: {note}", err=True)
    folder = out or Path(f"k8s-{graph.name}")
    paths = render_k8s.write(export, folder)
    counts: dict[str, int] = {}
    for obj in export.objects():
        counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    typer.echo(
        f"wrote {len(paths)} files to {folder}/ ({summary}); apply: kubectl apply -k {folder}"
    )
