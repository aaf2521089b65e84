"""Every failure of `dyn up` ends in one `error:` line naming the role (or node or
program), the address and the reason; the role's log keeps the traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _dyn_graph import DynUp
from _multinode_copy import multinode_copy

pytestmark = pytest.mark.e2e

# TEST-NET-2 (RFC 5737): never an address of this machine, so binding it fails here
# at once, without a packet sent.
NOT_HERE = "198.51.100.1"

CRASHING_ROLE = """
from dyn.roles.multinode import MultinodeWorker


class CrashingWorker(MultinodeWorker):
    async def start(self) -> None:
        raise RuntimeError("the weights are missing")
"""


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def failed_up(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> DynUp:
    up = DynUp(*args, state=tmp_path / "state", log_path=tmp_path / "up.log", env=env)
    try:
        assert up.wait(60) == 1, up.log()
    finally:
        up.kill()
    return up


def test_a_role_that_cannot_bind_its_address_is_one_error_line(tmp_path: Path) -> None:
    graph = multinode_copy(
        tmp_path / "multinode.yaml",
        binds=("127.0.0.1", NOT_HERE, "127.0.0.3"),
        discovery={"backend": "file", "ttl_s": 2},
    )
    up = failed_up(tmp_path, str(graph), "--launcher", "local")
    err = up.log()
    (line,) = error_lines(err)
    assert line.startswith(
        f"error: role worker[0] on node2 could not start: cannot listen on {NOT_HERE}:0: "
        "Cannot assign requested address (log: "
    ), line
    assert "cancel scope" not in err
    assert "Traceback" not in err
    log = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()  # the detail stays in the role's log


@pytest.mark.parametrize("launcher", ["local", "inprocess"])
def test_a_role_whose_start_raises_is_one_error_line(tmp_path: Path, launcher: str) -> None:
    (tmp_path / "crashing_role.py").write_text(CRASHING_ROLE)
    graph = multinode_copy(tmp_path / "multinode.yaml", discovery={"backend": "file"})
    text = graph.read_text().replace(
        "uses: dyn.roles.multinode:MultinodeWorker", "uses: crashing_role:CrashingWorker"
    )
    graph.write_text(text)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    up = failed_up(tmp_path, str(graph), "--launcher", launcher, env={"PYTHONPATH": path})
    err = up.log()
    (line,) = error_lines(err)
    assert line.startswith(
        "error: role worker[0] on node2 could not start: RuntimeError: the weights are "
        "missing (log: "
    ), line
    assert "Traceback" not in err
    log = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert "raise RuntimeError" in log.read_text()


def test_a_missing_ssh_is_one_error_line(tmp_path: Path) -> None:
    graph = multinode_copy(tmp_path / "multinode.yaml", discovery={"backend": "file"})
    # Nothing but this Python's own scripts on PATH: no ssh.
    env = {"PATH": str(Path(sys.executable).parent)}
    up = failed_up(tmp_path, str(graph), env=env)
    err = up.log()
    (line,) = error_lines(err)
    assert "there is no 'ssh' on PATH" in line
    assert f"dyn up {graph} --local" in line
    assert "Traceback" not in err
