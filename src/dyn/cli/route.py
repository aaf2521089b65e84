"""``dyn route``: show, switch and explain the routing of a running graph."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from dyn.cli._common import WideOption, expected_errors

__all__ = ["frontend_url", "route"]


def frontend_url(url: str | None, wait_s: float = 0.0) -> str:
    """``--url`` as given, else the frontend of the newest live ``dyn up`` on this machine.

    A run still starting is waited for, up to ``wait_s`` seconds, saying so once (``dyn up
    GRAPH &`` and a command right after it)."""
    import time

    from dyn import runs
    from dyn.cli._common import target_run
    from dyn.errors import LaunchError

    if url:
        return url.rstrip("/")
    status = target_run(None, extra=" or pass --url")
    record = status.record
    deadline = time.monotonic() + wait_s
    if record is not None and not record.frontend_url and status.state == "starting" and wait_s:
        sys.stderr.write(f"waiting for run {record.run_id} to serve (up to {wait_s:.0f} s)\n")
        while status.state == "starting" and time.monotonic() < deadline:
            time.sleep(0.2)
            # Live once it serves; stopped or failed if its dyn up ended meanwhile.
            status = runs.run_status(status.run)
        record = status.record
    if record is None or not record.frontend_url:
        run_id = record.run_id if record else "the newest live run"
        raise LaunchError(
            f"run {run_id} has no frontend URL yet; is it still starting? or pass --url"
        )
    return record.frontend_url


def admin_headers() -> dict[str, str]:
    """The admin token: the environment's, else the one the newest live `dyn up` recorded."""
    from dyn import runs
    from dyn.settings import Settings

    token = Settings.from_env().admin_token
    if not token:
        running = runs.running_runs()
        record = running[0].record if running else None
        token = record.admin_token if record is not None else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _request(method: str, url: str, body: Any = None) -> Any:
    import httpx

    from dyn.errors import LaunchError

    try:
        response = httpx.request(method, url, json=body, headers=admin_headers(), timeout=10)
    except httpx.TransportError as exc:
        raise LaunchError(f"cannot reach {url}: {exc}; is the graph running?") from exc
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code == 404:
        raise LaunchError(f"{url} has no admin routes; does the frontend set `openai:`?")
    if response.status_code >= 400:
        message = (data or {}).get("error", {}).get("message") if isinstance(data, dict) else None
        raise LaunchError(f"{url} answered {response.status_code}: {message or response.text}")
    return data


@expected_errors
def route(
    url: Annotated[
        str | None,
        typer.Option(
            help="The frontend's base URL. Default: the newest live run's on this machine."
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Switch every processor to this strategy now, e.g. kv or round_robin."),
    ] = None,
    explain: Annotated[
        str | None,
        typer.Option(help="Score every worker for this prompt without sending a request."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --explain: the request's max_tokens (kv_latency weighs the output "
            "to come). Default: the strategy's own assumption.",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    wide: WideOption = False,
) -> None:
    """Show or switch how a running graph routes requests.

    With no option: the strategy and each worker's load and cached KV blocks (the
    columns that fit the terminal; --wide for all). Talks to the frontend's admin routes.

    \b
    Examples:
      dyn route
      dyn route --strategy round_robin   # a wrong name lists the valid ones
      dyn route --explain "Hello there"  # each worker's score for it
      dyn route --explain "Hello there" --max-tokens 64
    """
    import json

    from rich.console import Console

    base = frontend_url(url)
    console = Console()
    if strategy is not None:
        before = _request("GET", f"{base}/admin/route")["strategy"]
        after = _request("POST", f"{base}/admin/route", {"strategy": strategy})["strategy"]
        if json_out:
            typer.echo(json.dumps({"before": before, "strategy": after}))
        else:
            console.print(f"strategy: {before} → [bold]{after}[/]")
        return
    if explain is not None:
        body: dict[str, Any] = {"text": explain}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        data = _request("POST", f"{base}/admin/route/explain", body)
        if json_out:
            typer.echo(json.dumps(data, indent=2))
        else:
            console.print(_explain_table(data))
        return
    data = _request("GET", f"{base}/admin/route")
    if json_out:
        typer.echo(json.dumps(data, indent=2))
    else:
        from dyn.cli._table import print_table

        print_table(console, _info_table(data, console, None if wide else console.width))


# The columns every strategy's stats may have, in display order, with their priority
# (what is shown first on a narrow terminal: the load and cache the routing decides on).
_KNOWN = (
    ("active_blocks", "active", 1),
    ("total_blocks", "total", 6),
    ("cached_blocks", "cached", 2),
    ("waiting", "waiting", 4),
    ("running", "running", 3),
    ("prefix_hit_rate", "hit rate", 5),
)
# Headers of the columns some strategies add, where the raw name is long.
_SHORT = {"prefill_tokens": "prefill tok", "requests": "requests"}


def _info_table(data: dict[str, Any], console: Any, width: int | None) -> Any:
    from dyn.cli._table import Column, fit_table

    workers: dict[str, dict[str, Any]] = data.get("workers") or {}
    known = [key for key, _, _ in _KNOWN]
    # Whatever else the strategy tracks (in-flight requests, prefill tokens, the workers'
    # own reports, ...): after the known ones, the workers' own reports last.
    extra = sorted(
        {k for s in workers.values() for k in s} - set(known),
        key=lambda k: (k.startswith("reported_"), k),
    )
    columns = [Column("worker (replica)", 0)]
    columns += [Column(header, rank, "right") for _, header, rank in _KNOWN]
    columns += [Column(_header(key), 10 + index, "right") for index, key in enumerate(extra)]
    rows = []
    for instance in data.get("instances", []):
        stats = workers.get(instance["instance_id"], {})
        rows.append(
            [
                f"{instance['instance_id'][:8]} ({instance['replica']})",
                *[_cell(key, stats.get(key, "")) for key in (*known, *extra)],
            ]
        )
    return fit_table(
        console,
        columns,
        rows,
        width=width,
        title=f"routing strategy: {data['strategy']}",
        caption="active, total, cached: KV blocks of each worker",
        wide_hint="`dyn route --wide` (or --json)",
    )


def _header(key: str) -> str:
    if key in _SHORT:
        return _SHORT[key]
    if key.startswith("reported_"):
        # What the worker itself last reported, beside the router's own estimate.
        key = key.removeprefix("reported_").removesuffix("_blocks").removeprefix("prefix_")
        key += " (rep.)"
    return key.replace("_", " ")


def _cell(key: str, value: Any) -> str:
    if key.endswith("hit_rate") and isinstance(value, float):
        return f"{value:.0%}"
    return _fmt(value)


def _explain_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"{data['strategy']}: a {data['prompt_tokens']}-token prompt would go to the ✓ worker"
    )
    scores = data["workers"]
    # A strategy whose cost is made of its own terms (kv_latency: milliseconds) shows
    # those; kv shows its blocks.
    terms = list(scores[0].get("terms") or {}) if scores else []
    figures = terms or ["prefill_blocks", "decode_blocks"]
    cost = "cost (ms)" if all(name.endswith("_ms") for name in terms) and terms else "cost"
    headers = ["worker", "overlap blocks", *(_term_header(name) for name in figures), cost, ""]
    if any(score.get("notes") for score in scores):
        headers.append("why")
    for column in headers:
        table.add_column(column, justify="left" if column in ("worker", "why") else "right")
    for score in scores:
        values = score.get("terms") or score
        row = [
            score["instance_id"][:8],
            _fmt(score["overlap_blocks"]),
            *(_fmt(values.get(name, "")) for name in figures),
            _fmt(score["cost"]),
            "✓" if score["chosen"] else "",
        ]
        if "why" in headers:
            row.append(score.get("notes", ""))
        table.add_row(*row)
    return table


def _term_header(name: str) -> str:
    base, _, unit = name.rpartition("_")
    return f"{base.replace('_', ' ')} ({unit})" if unit == "ms" else name.replace("_", " ")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
