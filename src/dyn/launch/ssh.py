"""The ssh launcher: every role on the node the graph places it on, over OpenSSH.

Each placed role runs as ``ssh NODE 'cd WORKDIR && exec PYTHON -u -m dyn _role - …'``.
The OpenSSH client is used as is, so ``~/.ssh/config``, agents and ProxyJump work. The
graph and the secrets a role needs travel on the role's stdin (never a command line);
the role becomes its own process group and writes a pidfile on its node. Its output
comes back through ssh, prefixed ``node/role``. Teardown is a separate
``ssh NODE kill -TERM -PGID``, then ``-KILL`` after the grace period, because
signals do not cross an ssh channel reliably. If `dyn up` dies, the channel closes, the
role's stdin reaches EOF, and the role drains and exits by itself.

Before anything starts, every node is probed once (in parallel): it must be reachable,
have dyn for its ``python``, and run the same dyn version as this machine. Roles without
a placement run here, as the local launcher runs them.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

import dyn
from dyn import state
from dyn.errors import LaunchError
from dyn.graph import GraphSpec, NodeSpec, dump_graph_yaml
from dyn.launch.local import LocalLauncher
from dyn.launch.processes import RoleProcess
from dyn.net import is_loopback

__all__ = [
    "SshLauncher",
    "check_nodes",
    "remote_command",
    "signal_script",
    "ssh_argv",
    "stale_pidfile_script",
    "stop_remote_roles",
]

# Options every ssh call gets: never prompt (a launcher cannot answer), notice a dead
# peer within ~15 s, give up connecting after 5 s.
SSH_DEFAULTS = (
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
    "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=3",
)  # fmt: skip
# A refused connection (sshd restarting, a node still booting) is retried this often.
CONNECT_RETRIES = 4
RETRY_DELAY_S = 0.5
PROBE_TIMEOUT_S = 30.0
# A node whose ssh port does not answer a TCP connect within this long is taken as
# unreachable before ssh is tried: a reachable sshd answers in milliseconds, and ssh's
# own ConnectTimeout would make every mistyped or example address cost 5 s.
REACH_TIMEOUT_S = 1.5
# A kill sent over ssh must itself be bounded.
KILL_TIMEOUT_S = 15.0
_VERSION_MARK = "dyn-version "


def ssh_argv(node: NodeSpec) -> list[str]:
    """The ssh command line that reaches ``node`` (the remote command comes after)."""
    user = ["-l", node.user] if node.user else []
    return ["ssh", *SSH_DEFAULTS, "-p", str(node.port), *user, *node.ssh_options, node.host, "--"]


def remote_command(node: NodeSpec, argv: list[str]) -> str:
    """A shell command line for the node: enter its workdir, then exec ``argv``."""
    command = "exec " + " ".join(shlex.quote(a) for a in argv)
    if node.workdir:
        return f"cd {shlex.quote(node.workdir)} && {command}"
    return command


class SshLauncher(LocalLauncher):
    name = "ssh"
    layout_summary = "one process per role replica, on its node"

    def __init__(self, graph_file: str | None = None) -> None:
        super().__init__(graph_file)
        self._graph: GraphSpec | None = None
        self._graph_text = ""

    def resolve(self, graph: GraphSpec) -> GraphSpec:
        if graph.discovery.backend == "memory":
            raise LaunchError(
                "roles on several machines cannot share in-memory discovery; use "
                "'discovery: etcd' (or 'file' on a folder every node shares)"
            )
        if graph.transport == "inproc":
            raise LaunchError(
                "the inproc transport cannot cross machines; use 'transport: tcp' or 'grpc'"
            )
        used = {i.node for i in graph.instances()}
        hosts = {graph.node(name).host for name in used}
        for name in sorted(used):
            node = graph.node(name)
            if len(hosts) > 1 and is_loopback(node.bind) and not is_loopback(node.host):
                raise LaunchError(
                    f"node {name!r} would bind its roles to {node.bind}, which the other "
                    f"nodes cannot reach; set nodes.{name}.bind to an address of {node.host} "
                    "(or 0.0.0.0)"
                )
        return graph

    def _placed(self, role: RoleProcess) -> NodeSpec | None:
        if self._graph is None or not self._graph.has_nodes():
            return None
        return self._graph.node(role.node)

    async def before_roles(
        self,
        graph: GraphSpec,
        run: state.RunDir,
        record: state.RunRecord,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        self._graph = graph
        self._graph_text = dump_graph_yaml(graph)
        used = {instance.node for instance in graph.instances()}
        await check_nodes([n for n in graph.nodes if n.name in used], self.graph_file)
        await super().before_roles(graph, run, record, tasks)

    def role_command(self, run: state.RunDir, graph_path: Path, role: RoleProcess) -> list[str]:
        node = self._placed(role)
        if node is None:
            return super().role_command(run, graph_path, role)
        role.label = f"{node.name}/{role.role}"
        argv = [node.python, "-u", "-m", "dyn", "_role", "-", role.component, str(role.replica)]
        argv += ["--pidfile-run", run.run_id]
        argv += ["--log-level", self.settings.log_level]
        if self.settings.json_logs:
            argv.append("--json-logs")
        return [*ssh_argv(node), remote_command(node, argv)]

    async def role_spawned(self, role: RoleProcess) -> None:
        if self._placed(role) is None:
            return
        env = self.settings.role_secrets()
        boot = json.dumps({"graph": self._graph_text, "env": env}) + "\n"
        assert role.process.stdin is not None
        await role.process.stdin.send(boot.encode())

    def role_record(self, graph: GraphSpec, role: RoleProcess) -> state.RoleRecord:
        record = super().role_record(graph, role)
        node = self._placed(role)
        if node is not None and role.ready is not None:
            record.host = node.host
            record.pid = int(role.ready["pid"])
            record.pidfile = role.ready.get("pidfile")
        return record

    async def terminate(self, role: RoleProcess, sig: signal.Signals) -> None:
        node = self._placed(role)
        pidfile = (role.ready or {}).get("pidfile")
        if node is None:
            await super().terminate(role, sig)
            return
        if pidfile:
            problem = await signal_remote_group(node, pidfile, sig)
            if problem:
                self.log_line(role, f"could not send {sig.name}: {problem}")
        if sig == signal.SIGKILL or not pidfile:
            # Closing the channel closes the role's stdin: it stops by itself.
            role.process.terminate()

    async def cleanup(self, role: RoleProcess) -> None:
        node = self._placed(role)
        pidfile = (role.ready or {}).get("pidfile")
        if node is not None and pidfile and role.died:
            # A role killed outside dyn could not remove its pidfile; a live group keeps it.
            await run_remote(node, stale_pidfile_script(pidfile))


async def run_remote(node: NodeSpec, script: str) -> str | None:
    """Run a short shell script on the node; an error line, or None if it exited 0."""
    with anyio.move_on_after(KILL_TIMEOUT_S):
        result = await anyio.run_process(
            [*ssh_argv(node), script], stdin=subprocess.DEVNULL, check=False
        )
        if result.returncode == 0:
            return None
        return f"{node.name}: {result.stderr.decode(errors='replace').strip()}"
    return f"{node.name}: no answer over ssh within {KILL_TIMEOUT_S:.0f} s"


def signal_script(pidfile: str, sig: signal.Signals) -> str:
    """The shell lines that send ``sig`` to the process group in ``pidfile``.

    ``kill -TERM -PGID``, not ``kill -TERM -- -PGID``: dash, the login shell of many
    accounts, refuses ``--`` in its built-in kill. A missing pidfile or group means the
    role is gone already; a kill that fails otherwise fails the script, with its message.
    After SIGKILL the pidfile (and the run's pid folder, once empty) goes too, since the
    role cannot remove it itself.
    """
    f = shlex.quote(pidfile)
    script = (
        f'if [ -f {f} ]; then g="$(cat {f})"; '
        f'if kill -0 -"$g" 2>/dev/null; then kill -{sig.name[3:]} -"$g" || exit 1; fi; fi'
    )
    if sig == signal.SIGKILL:
        script += f'; rm -f {f}; rmdir "$(dirname {f})" 2>/dev/null'
    return script + "; exit 0"


def stale_pidfile_script(pidfile: str) -> str:
    """Remove ``pidfile`` (and its folder, once empty) if its process group is gone."""
    f = shlex.quote(pidfile)
    rm = f'rm -f {f}; rmdir "$(dirname {f})" 2>/dev/null'
    return f'if [ -f {f} ] && ! kill -0 -"$(cat {f})" 2>/dev/null; then {rm}; fi; exit 0'


async def signal_remote_group(node: NodeSpec, pidfile: str, sig: signal.Signals) -> str | None:
    """Run :func:`signal_script` on the node; an error line, or None."""
    return await run_remote(node, signal_script(pidfile, sig))


async def stop_remote_roles(
    graph: GraphSpec, roles: list[state.RoleRecord], grace_s: float
) -> list[str]:
    """Stop roles a killed `dyn up` left on other nodes (for `dyn down`): SIGTERM their
    process groups, wait for their pidfiles to go, then SIGKILL what is left."""
    remote = [(graph.node(r.node), r) for r in roles if r.pidfile and r.node != "local"]
    done: list[str] = []

    async def stop(node: NodeSpec, role: state.RoleRecord) -> None:
        assert role.pidfile is not None
        gone = f"! test -f {shlex.quote(role.pidfile)}"
        if await run_remote(node, gone) is None:
            return  # it exited cleanly and removed its pidfile
        await signal_remote_group(node, role.pidfile, signal.SIGTERM)
        with anyio.move_on_after(grace_s):
            # polling a remote file: there is no event to wait on
            while await run_remote(node, gone) is not None:  # noqa: ASYNC110
                await anyio.sleep(0.5)
            done.append(f"stopped {node.name}/{role.role} (pid {role.pid})")
            return
        await signal_remote_group(node, role.pidfile, signal.SIGKILL)
        done.append(f"killed {node.name}/{role.role} (pid {role.pid})")

    async with anyio.create_task_group() as tasks:
        for node, role in remote:
            tasks.start_soon(stop, node, role)
    return sorted(done)


async def check_nodes(nodes: list[NodeSpec], graph_file: str | None = None) -> None:
    """Probe every node at once; raise one error line naming each node that cannot run
    roles. Nodes that do not answer at all fail the check before ssh is tried, and the
    error suggests trying the graph on this machine (``--local``)."""
    if shutil.which("ssh") is None:
        raise LaunchError(
            "the ssh launcher needs the OpenSSH client, but there is no 'ssh' on PATH; "
            "install it (Debian: apt-get install openssh-client), or try the graph on "
            f"this machine: dyn up {graph_file or 'GRAPH'} --local"
        )
    problems: dict[str, str] = {}

    async def check(probe: Callable[[NodeSpec], Awaitable[str | None]], node: NodeSpec) -> None:
        problem = await probe(node)
        if problem:
            problems[node.name] = problem

    for probe in (unreachable, _probe):
        async with anyio.create_task_group() as tasks:
            for node in nodes:
                tasks.start_soon(check, probe, node)
        if problems:
            hint = ""
            if probe is unreachable:
                hint = f"; to try the graph on this machine: dyn up {graph_file or 'GRAPH'} --local"
            found = "; ".join(f"node {name!r}: {problems[name]}" for name in sorted(problems))
            raise LaunchError(f"{len(problems)} node(s) cannot run roles: {found}{hint}")


async def unreachable(node: NodeSpec) -> str | None:
    """Why ``node``'s ssh port does not answer a TCP connect at all, or None (it answers,
    refuses, or ssh reaches it through a proxy: ssh itself then says what is wrong)."""
    target = await _ssh_target(node)
    if target is None:
        return None
    host, port = target

    def connect() -> str | None:
        try:
            socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
        except TimeoutError:
            return f"{host}:{port} does not answer (no reply within {REACH_TIMEOUT_S} s)"
        except (ConnectionRefusedError, socket.gaierror):
            return None  # sshd restarting, or a name only ssh knows: ssh's probe says
        except OSError as exc:
            return f"cannot reach {host}:{port}: {exc.strerror or exc}"
        return None

    return await anyio.to_thread.run_sync(connect)


async def _ssh_target(node: NodeSpec) -> tuple[str, int] | None:
    """The address ssh would connect to for ``node`` (``ssh -G`` applies ~/.ssh/config),
    or None when it goes through a proxy or ssh cannot say."""
    user = ["-l", node.user] if node.user else []
    argv = ["ssh", "-G", "-p", str(node.port), *user, *node.ssh_options, node.host]
    result = await anyio.run_process(argv, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        return None
    config: dict[str, str] = {}
    for line in result.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key.lower(), value.strip())
    if config.get("proxyjump", "none") != "none" or config.get("proxycommand", "none") != "none":
        return None
    try:
        return config.get("hostname", node.host), int(config.get("port", node.port))
    except ValueError:
        return None


async def _probe(node: NodeSpec) -> str | None:
    check = f"import dyn; print({_VERSION_MARK!r} + dyn.__version__)"
    command = [*ssh_argv(node), remote_command(node, [node.python, "-c", check])]
    target = f"{node.user + '@' if node.user else ''}{node.host}:{node.port}"
    output, code = "", -1
    with anyio.move_on_after(PROBE_TIMEOUT_S):
        for attempt in range(CONNECT_RETRIES):
            result = await anyio.run_process(command, stdin=subprocess.DEVNULL, check=False)
            output = (result.stdout + result.stderr).decode(errors="replace")
            code = result.returncode
            if code != 255 or "Connection refused" not in output:
                break
            await anyio.sleep(RETRY_DELAY_S * 2**attempt)
    if code == -1:
        return f"no answer over ssh from {target} within {PROBE_TIMEOUT_S:.0f} s"
    for line in output.splitlines():
        if line.startswith(_VERSION_MARK):
            theirs = line[len(_VERSION_MARK) :].strip()
            if theirs != dyn.__version__:
                return (
                    f"runs dyn {theirs}, but this machine runs dyn {dyn.__version__}; "
                    f"install dyn {dyn.__version__} there"
                )
            return None
    last = output.strip().splitlines()[-1] if output.strip() else "(no output)"
    if code == 255:
        return f"cannot connect over ssh to {target}: {last}"
    if "No module named" in output:
        return (
            f"dyn is not installed for {node.python} there (install dyn {dyn.__version__}, "
            f"or set nodes.{node.name}.python to a Python that has it)"
        )
    if code == 127:
        return f"{node.python} not found there (set nodes.{node.name}.python): {last}"
    if node.workdir and ("can't cd" in output or "No such file" in output):
        return f"workdir {node.workdir} does not exist there"
    return f"checking dyn failed (exit {code}): {last}"
