"""The ssh launcher's pure parts: the ssh command line, the remote command, and the
graphs it refuses before touching any node (the live parts: tests/multinode/)."""

from __future__ import annotations

import shlex

import pytest

from dyn.errors import LaunchError
from dyn.graph import NodeSpec, load_graph_text
from dyn.launch.ssh import SshLauncher, remote_command, ssh_argv

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
    assert argv[0] == "ssh" and argv[-2:] == ["10.1.1.2", "--"]
    assert "BatchMode=yes" in argv and "ServerAliveInterval=5" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "ops"
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
