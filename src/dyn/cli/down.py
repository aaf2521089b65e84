"""``dyn down``: stop a run started with ``dyn up`` (``--detach`` or in another terminal).

``dyn up`` is asked to stop first (SIGTERM), so it drains and stops its roles in order.
Whatever is still alive after the grace period, or a run whose ``dyn up`` was killed,
has its role process groups killed, and its discovery files removed.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Annotated

import typer

from dyn.cli._common import expected_errors, target_run

if TYPE_CHECKING:
    from dyn.graph import GraphSpec
    from dyn.state import RunDir, RunRecord

__all__ = ["down", "stop_run"]

# dyn up's own drain deadline is 30 s per role; past this it is stuck.
DEFAULT_GRACE_S = 40.0
_POLL_S = 0.1


@expected_errors
def down(
    run: Annotated[
        str | None,
        typer.Argument(
            help="A run id (or its prefix; see `dyn runs`). Default: the newest live run."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for a clean stop before SIGKILL.")
    ] = DEFAULT_GRACE_S,
) -> None:
    """Stop a run: its `dyn up`, then any role process left behind.

    `dyn up` gets SIGTERM and drains its roles; what is still running after --timeout
    seconds is killed.
    """
    from dyn import runs, state

    if run is None and not runs.running_runs(orphaned=True):
        every = runs.run_statuses()
        if not every:
            typer.echo(f"nothing to stop: there are no runs in {state.state_dir()}")
            return
        newest = every[0]
        # A dyn up that was killed recorded no outcome: clean up after it (discovery
        # entries, an etcd it started) rather than leave that to the entries' TTL.
        if newest.record is None or newest.record.outcome is not None:
            typer.echo(
                f"nothing to stop: no run is live; the newest, {newest.run.run_id}, was not "
                f"running ({newest.state}); `dyn runs` lists every run"
            )
            return
        run_dir = newest.run
    else:
        run_dir = target_run(run, orphaned=True).run
    for line in stop_run(run_dir, state.read_record(run_dir), timeout):
        typer.echo(line)


def stop_run(run_dir: RunDir, record: RunRecord, grace_s: float) -> list[str]:
    """Stop everything the run started; return one line per thing stopped."""
    done: list[str] = []
    if _is_dyn(record.pid):
        os.kill(record.pid, signal.SIGTERM)
        how = "stopped" if _wait_gone([record.pid], grace_s) else "killed"
        if how == "killed":
            _kill(record.pid, signal.SIGKILL, group=False)
        done.append(f"{how} dyn up (pid {record.pid}) of run {record.run_id}")
    # Roles are their own process groups (sessions): the group takes their children too.
    left = [r for r in record.roles if not r.pidfile and _is_dyn(r.pid)]
    for role in left:
        _kill(role.pid, signal.SIGTERM, group=True)
    if left and not _wait_gone([r.pid for r in left], grace_s):
        for role in left:
            _kill(role.pid, signal.SIGKILL, group=True)
        _wait_gone([r.pid for r in left], 5.0)
    done += [f"stopped {r.role} (pid {r.pid})" for r in left]
    done += _stop_remote(run_dir, record, grace_s)
    # A killed role's file discovery entries would linger until their TTL.
    removed = 0
    for entry in run_dir.discovery_dir.glob("*.json"):
        entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        done.append(f"removed {removed} discovery entr{'y' if removed == 1 else 'ies'}")
    if record.etcd_pid is not None:
        from dyn.launch.etcd_server import stop_recorded_etcd

        if stop_recorded_etcd(record.etcd_pid):
            _wait_etcd_gone(run_dir, record.etcd_pid, grace_s)
            done.append(f"stopped the run's etcd (pid {record.etcd_pid})")
    if record.nats_pid is not None:
        from dyn.launch.nats_server import stop_recorded_nats

        if stop_recorded_nats(record.nats_pid):
            _wait_nats_gone(run_dir, record.nats_pid, grace_s)
            done.append(f"stopped the run's nats-server (pid {record.nats_pid})")
    if any(r.pidfile for r in record.roles):
        _record_stopped(run_dir)
    if not done:
        done.append(f"run {record.run_id} was not running")
    return done


def _wait_etcd_gone(run_dir: RunDir, pid: int, grace_s: float) -> None:
    """Until the etcd is gone, so `dyn runs` no longer calls the run orphaned."""
    from dyn.runs import runs_its_etcd

    deadline = time.monotonic() + grace_s
    while runs_its_etcd(run_dir, pid):
        if time.monotonic() > deadline:
            _kill(pid, signal.SIGKILL, group=False)
            return
        time.sleep(_POLL_S)


def _wait_nats_gone(run_dir: RunDir, pid: int, grace_s: float) -> None:
    from dyn.runs import runs_its_nats

    deadline = time.monotonic() + grace_s
    while runs_its_nats(run_dir, pid):
        if time.monotonic() > deadline:
            _kill(pid, signal.SIGKILL, group=False)
            return
        time.sleep(_POLL_S)


def _record_stopped(run_dir: RunDir) -> None:
    """Roles on other nodes cannot be seen from this one: once `dyn down` has stopped
    them, the record says the run ended, or `dyn runs` would keep calling it orphaned."""
    from dyn import state

    record = state.read_record(run_dir)
    if record.outcome is None:  # dyn up was killed: it recorded no end
        state.finish_run(run_dir, "stopped", f"dyn up (pid {record.pid}) was killed")


def _stop_remote(run_dir: RunDir, record: RunRecord, grace_s: float) -> list[str]:
    """Roles on other nodes (ssh launcher), then their etcd registrations."""
    if not any(r.pidfile for r in record.roles) and record.discovery != "etcd":
        return []
    import anyio

    from dyn.graph import load_graph
    from dyn.launch.role_classes import role_class
    from dyn.launch.ssh import stop_remote_roles

    graph = load_graph(run_dir.path / "graph.yaml", resolve_role=role_class)
    done = anyio.run(stop_remote_roles, graph, record.roles, grace_s)
    if record.discovery == "etcd" and record.etcd_pid is None:
        # Entries of killed roles would linger until their lease lapses.
        ids = {r.instance_id for r in record.roles if r.instance_id}
        removed = _remove_etcd_entries(graph, ids)
        if removed:
            done.append(f"removed {removed} etcd entr{'y' if removed == 1 else 'ies'}")
    return done


def _remove_etcd_entries(graph: GraphSpec, instance_ids: set[str]) -> int:
    """Delete the run's own registrations (its instances' keys), nothing else: the same
    namespace may hold a `dyn join` worker or another run."""
    import anyio

    from dyn.discovery.etcd import EtcdDiscovery
    from dyn.errors import DiscoveryError

    etcd = EtcdDiscovery(ttl_s=graph.discovery.ttl_s, **dict(graph.discovery.options))
    try:
        return anyio.run(etcd.remove_instances, graph.namespace, instance_ids)
    except DiscoveryError:
        return 0  # etcd is gone too: its entries went with it, or lapse with their lease


def _is_dyn(pid: int) -> bool:
    from dyn.runs import is_dyn_process

    return is_dyn_process(pid)


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_is_dyn(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _kill(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
