"""How `dyn up` shows a launch: progress on stderr, the URL and a curl line on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from dyn.graph import GraphSpec
from dyn.launch.base import LaunchObserver

__all__ = ["ConsoleObserver"]


class ConsoleObserver(LaunchObserver):
    """Shows progress on stderr; the URL and a curl line to try go to stdout."""

    def __init__(
        self,
        console: Console,
        graph: GraphSpec,
        layout: str = "",
        *,
        detached_run: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.console = console
        self.graph = graph
        self.layout = layout
        # A detached dyn up's output goes to its log, read with no terminal to press keys in.
        self.detached_run = detached_run
        self.admin_token = admin_token
        self.roles_up = 0  # up and not yet stopped: what a stop has to drain
        self.ready = False
        self.targets: Path | None = None  # the run's Prometheus targets file

    def role_starting(self, role: str, node: str) -> None:
        self.console.print(f"[dim]…[/] starting [bold]{role}[/] on {node}")

    def metrics_targets(self, path: Path) -> None:
        self.targets = path

    def role_up(self, role: str, node: str, seconds: float) -> None:
        self.roles_up += 1
        self.console.print(f"[green]✓[/] [bold]{role}[/] up on {node} ({seconds * 1000:.0f} ms)")

    def graph_ready(self, url: str | None, seconds: float) -> None:
        from dyn.launch.base import settle_heap

        # This is `dyn up`'s own process (the roles' too, in the one-process layout).
        settle_heap()
        self.ready = True
        self.console.print(
            f"[green]✓[/] graph [bold]{self.graph.name}[/] ready in {seconds:.2f} s "
            f"({self.graph.transport} transport, {self.graph.discovery.backend} discovery)"
        )
        if self.layout:
            self.console.print(f"[dim]  layout: {self.layout}[/]")
        if url:
            typer.echo(f"Serving on {url}")
            for route, body in self._examples()[:1]:
                typer.echo(f"Try:  curl -N {url}{route} -d '{json.dumps(body)}'")
            if self._has_dashboard():
                # As a notebook server does: the link carries the token once; the page
                # keeps it in a cookie and drops it from the address (docs/dashboard.md).
                query = f"?token={self.admin_token}" if self.admin_token else ""
                typer.echo(f"Dashboard: {url}/dashboard{query}")
        if self.targets is not None:
            self.console.print(
                f"[dim]Prometheus: scrape with file_sd_configs files: ['{self.targets}'] "
                "(an example config: deploy/prometheus/prometheus.yml; docs/metrics.md)[/]",
                soft_wrap=True,  # the path stays whole, to copy
            )
        if self.detached_run:
            self.console.print(
                f"[dim]Running in the background as run {self.detached_run}; "
                f"stop it with `dyn down {self.detached_run}`.[/]",
                soft_wrap=True,  # the command stays whole, to copy
            )
        else:
            self.console.print("[dim]Press Ctrl-C to stop.[/]")

    def _has_dashboard(self) -> bool:
        """Whether an HTTP role of the graph is dyn's frontend, which serves /dashboard."""
        from dyn.errors import PluginError
        from dyn.launch.role_classes import http_components, role_of

        for spec in http_components(self.graph):
            try:
                if role_of(spec).admin_routes:
                    return True
            except (ImportError, PluginError):
                continue
        return False

    def _examples(self) -> list[tuple[str, dict[str, Any]]]:
        """(route, body) for the HTTP routes whose target shows an example request."""
        from dyn.errors import PluginError
        from dyn.launch.role_classes import http_components, role_of

        examples: list[tuple[str, dict[str, Any]]] = []
        for spec in http_components(self.graph):
            for route, target in role_of(spec).route_targets(spec.config).items():
                try:
                    component = self.graph.component(target.split("/", 1)[0])
                    body = role_of(component).example_request
                except (KeyError, ImportError, PluginError):
                    continue
                if body is not None:
                    examples.append((route, body))
        return examples

    def stopping(self) -> None:
        # Launchers call this on every way out, a failed start with nothing up included.
        if self.ready:
            self.console.print("[yellow]stopping[/]: draining the frontend, then the other roles")
        elif self.roles_up:
            self.console.print("[yellow]stopping[/] the roles that started")

    def role_stopped(self, role: str) -> None:
        self.roles_up = max(0, self.roles_up - 1)
        self.console.print(f"[dim]■ {role} stopped[/]")
