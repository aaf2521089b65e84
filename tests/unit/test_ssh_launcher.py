"""The ssh launcher's pure parts: the ssh command line, the remote command, and the
graphs it refuses before touching any node (the live parts: tests/multinode/)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dyn.errors import LaunchError
from dyn.graph import NodeSpec, load_graph_text
from dyn.launch.ssh import (
    SshLauncher,
    remote_command,
    signal_script,
    ssh_argv,
    stale_pidfile_script,
)

GRAPH = """
name: g
transport: {transport}
discovery: {discovery}
nodes:
  n1: {{host: 10.1.1.1, bind: 10.1.1.1}}
  n2: {{host: 10.1.1.2{n2_bind}}}
components:
  frontend:
    uses: frontend
    placement: n1
    depends_on: [middle]
    config: {{routes: {{/generate: middle/generate}}}}
  middle: {{uses: "dyn.roles.hello:Middle", placement: n2, depends_on: [backend]}}
  backend: {{uses: "dyn.roles.hello:Backend", placement: n2}}
"""


def _graph(transport: str = "tcp", discovery: str = "etcd", n2_bind: str = ", bind: 10.1.1.2"):  # type: ignore[no-untyped-def]
    return load_graph_text(GRAPH.format(transport=transport, discovery=discovery, n2_bind=n2_bind))


def test_ssh_argv_never_prompts_and_keeps_user_options() -> None:
    node = NodeSpec("n2", "10.1.1.2", user="ops", port=2222, ssh_options=("-i", "/k"))
    argv = ssh_argv(node)
    assert argv[0] == "ssh"
    assert argv[-2:] == ["10.1.1.2", "--"]
    assert "BatchMode=yes" in argv
    assert "ServerAliveInterval=5" in argv
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "ops"
    assert argv[argv.index("-i") + 1] == "/k"


def test_remote_command_quotes_and_enters_the_workdir() -> None:
    node = NodeSpec("n", "h", workdir="/srv/my dir", python="/opt/py env/bin/python")
    command = remote_command(node, [node.python, "-m", "dyn", "_role", "-", "w[1]"])
    assert command.startswith("cd '/srv/my dir' && exec ")
    assert shlex.split(command.split("&& ", 1)[1]) == [
        "exec", "/opt/py env/bin/python", "-m", "dyn", "_role", "-", "w[1]",
    ]  # fmt: skip
    assert remote_command(NodeSpec("n", "h"), ["python3"]) == "exec python3"


def test_a_graph_it_can_run() -> None:
    graph = _graph()
    assert SshLauncher().resolve(graph) is graph


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"discovery": "memory"}, "cannot share in-memory discovery"),
        ({"transport": "inproc"}, "inproc transport cannot cross machines"),
        ({"n2_bind": ""}, "node 'n2' would bind its roles to 127.0.0.1"),
    ],
)
def test_graphs_it_refuses_up_front(change: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        SshLauncher().resolve(_graph(**change))


def _shells() -> list[str]:
    return [shell for shell in ("dash", "bash") if shutil.which(shell)]


def _group(
    tmp_path: Path, command: str = "sleep 60 & wait"
) -> tuple[subprocess.Popen[bytes], Path]:
    """A real process group (by default a leader and a child), with its pidfile."""
    leader = subprocess.Popen(
        ["sh", "-c", command], start_new_session=True, stdout=subprocess.DEVNULL
    )
    pidfile = tmp_path / "run" / "role.pid"
    pidfile.parent.mkdir()
    pidfile.write_text(f"{leader.pid}\n")
    return leader, pidfile


def _kill_group(leader: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the orphaned child is reaped by init, soon
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("shell", _shells())
def test_the_signal_script_reaches_the_whole_group_in_every_shell(
    shell: str, tmp_path: Path
) -> None:
    """The remote login shell may be dash, whose kill refuses ``--``: the script must
    work there too, and must fail loudly rather than silently if kill fails."""
    leader, pidfile = _group(tmp_path)
    try:
        done = subprocess.run([shell, "-c", signal_script(str(pidfile), signal.SIGTERM)])
        assert done.returncode == 0
        assert leader.wait(5) == -signal.SIGTERM
        assert pidfile.exists()  # the role removes its own pidfile when it exits cleanly
        kill = subprocess.run([shell, "-c", signal_script(str(pidfile), signal.SIGKILL)])
        assert kill.returncode == 0
        assert not pidfile.parent.exists()
    finally:
        _kill_group(leader)


@pytest.mark.parametrize("shell", _shells())
def test_the_stale_pidfile_script_keeps_a_live_groups_pidfile(shell: str, tmp_path: Path) -> None:
    leader, pidfile = _group(tmp_path, "exec sleep 60")  # no child to be orphaned
    try:
        subprocess.run([shell, "-c", stale_pidfile_script(str(pidfile))], check=True)
        assert pidfile.exists()  # its group lives
    finally:
        _kill_group(leader)
    subprocess.run([shell, "-c", stale_pidfile_script(str(pidfile))], check=True)
    assert not pidfile.exists()
    assert not pidfile.parent.exists()
